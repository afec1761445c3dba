"""Ingest throughput with the local process pool next to Ray tasks (``--ingest ray:auto``) on
the same files, in one run: a ``quiver serve`` process each, upload → CreateFileBatch →
terminal WatchFileBatch (the clock runs from the batch's creation to its end). The Ray
server starts its own local Ray (``ray.init``) with as many CPUs as the machine.

    .venv/bin/python -m bench.ray_ingest --mb 5 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.ingest import Result, service
from bench.results import RESULTS_DIR, save_results
from tests.support.corpus import corpus_files
from tests.support.serve import free_port, serve_command


def run_server(contents: list[tuple[str, bytes]], *flags: str) -> Result:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="quiver-bench-ray-")
    command = serve_command(f"127.0.0.1:{port}", data_dir, *flags)
    proc = subprocess.Popen([*command, "--log-level", "error"])
    try:
        result, _ = asyncio.run(service(contents, port, data_dir))
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=5.0, help="corpus size in MB")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    paths: list[Path] = list(corpus_files(int(args.mb * 1e6)))
    size = sum(p.stat().st_size for p in paths)
    print(f"corpus: {len(paths)} files, {size / 1e6:.1f} MB")
    contents = [(p.name, p.read_bytes()) for p in paths]
    workers = str(args.workers)
    local = run_server(contents, "--ingest-workers", workers)
    local.name = f"local pool ({workers})"
    on_ray = run_server(contents, "--ingest", "ray:auto", "--ray-tasks", workers)
    on_ray.name = f"ray:auto ({workers} tasks)"
    print(local.line())
    print(on_ray.line())
    print(f"ray:auto / local (files/s): {local.seconds / on_ray.seconds:.2f}")
    save_results(
        RESULTS_DIR / "ray_ingest.json",
        {
            "benchmark": "ray_ingest",
            "corpus": {"files": len(paths), "bytes": size, "mb": args.mb},
            "workers": args.workers,
            "runs": {"local": asdict(local), "ray_auto": asdict(on_ray)},
        },
    )


if __name__ == "__main__":
    main()
