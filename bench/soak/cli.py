"""``python -m bench.soak``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.soak.options import Options
from bench.soak.run import soak
from tests.support import tmpfs


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs before checking")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill times and load")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller files, short waits")
    parser.add_argument("--ingest-workers", type=int, default=2)
    parser.add_argument("--log-level", default="info", help="the server's --log-level")
    parser.add_argument(
        "--index-save-interval",
        type=float,
        default=2.0,
        help="the server's --index-save-interval: short, so kills land before, during and "
        "after index saves (default 2)",
    )
    parser.add_argument(
        "--damage-every",
        type=int,
        default=3,
        help="damage a saved index (flipped links, random bytes, truncation, no sidecar) "
        "after every Nth kill, before the restart; 0: never (default 3)",
    )
    parser.add_argument(
        "--disk-full-every",
        type=int,
        default=3,
        help="fill the data dir's disk for a few seconds under load before every Nth kill "
        "(the data dir gets its own small tmpfs; needs root, else skipped); 0: never "
        "(default 3)",
    )
    parser.add_argument(
        "--disk-full-seconds",
        type=float,
        nargs=2,
        default=(2.0, 5.0),
        metavar=("MIN", "MAX"),
        help="how long the disk stays full (default 2 5)",
    )
    parser.add_argument(
        "--tmpfs-size",
        default="",
        help="size of the data dir's tmpfs, e.g. 64m (default by profile and kills)",
    )
    parser.add_argument("--work-dir", type=Path, help="where the data dir and log go")
    parser.add_argument("--keep", action="store_true", help="keep the data dir even on PASS")
    parser.add_argument(
        "--timeout", type=float, default=0, help="bound on the whole run (default by profile)"
    )
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    timeout = args.timeout or (120.0 + 20.0 * args.kills if args.quick else 600.0 + 30 * args.kills)
    return Options(
        kills=args.kills,
        seed=args.seed,
        quick=args.quick,
        ingest_workers=args.ingest_workers,
        log_level=args.log_level,
        index_save_interval=args.index_save_interval,
        damage_every=args.damage_every,
        disk_full_every=args.disk_full_every,
        disk_full_seconds=(min(args.disk_full_seconds), max(args.disk_full_seconds)),
        tmpfs_size=args.tmpfs_size or _tmpfs_size(args.quick, args.kills),
        work_dir=args.work_dir,
        keep=args.keep,
        timeout=timeout,
    )


def _tmpfs_size(quick: bool, kills: int) -> str:
    """About 3-4 times what the data dir grows to (peak, ballast not counted): a quick soak
    grew 2-4 MiB a kill (7-17 MiB in 4 kills, seed 7), a full one ~13 MiB a kill (40.5 MiB
    in 3 kills, seed 7)."""
    if quick:
        return f"{max(64, 16 * kills)}m"
    return f"{max(256, 48 * kills)}m"


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="quiver-soak-", dir=options.work_dir))
    data_dir = run_dir / "data"
    why_not = "--disk-full-every 0"
    if options.disk_full_every:
        why_not = tmpfs.mount_tmpfs(data_dir, options.tmpfs_size) or ""
        if why_not:
            print(f"the disk-full fault is skipped: {why_not}", flush=True)
    mounted = not why_not

    async def bounded() -> tuple[bool, list[str]]:
        return await asyncio.wait_for(soak(options, run_dir, mounted, why_not), options.timeout)

    try:
        try:
            passed, lines = asyncio.run(bounded())
        except TimeoutError:
            passed, lines = False, [f"RESULT: FAIL (the soak ran past {options.timeout:g} s)"]
        if mounted and (options.keep or not passed):  # the tmpfs goes with the unmount
            shutil.copytree(data_dir, run_dir / "data.kept", dirs_exist_ok=True)
    finally:
        if mounted:
            tmpfs.unmount(data_dir)
    print("\n".join(lines), flush=True)
    if passed and not options.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"data dir and server log kept in {run_dir}", flush=True)
    return 0 if passed else 1
