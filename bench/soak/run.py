"""One soak: the server, the load and the chaos, then every check."""

from __future__ import annotations

import asyncio
import time
import traceback
from pathlib import Path

from bench.soak.chaos import chaos
from bench.soak.checks_offline import check_database, check_disk_full, check_integrity
from bench.soak.checks_online import (
    Listed,
    check_batches,
    check_findable,
    check_reasons,
    check_store_counts,
    check_uploads,
    list_batches,
    replay_request_ids,
)
from bench.soak.disk import Disk
from bench.soak.load import Soak
from bench.soak.options import Options
from bench.soak.records import Check
from bench.soak.report import summary
from bench.soak.server import ServerLoop
from bench.soak.server_log import read_log


async def verify_online(soak: Soak, checks: dict[str, Check]) -> dict[str, Listed]:
    checks["a"] = await check_uploads(soak)
    batches = checks["b"]
    listed = await list_batches(soak, batches)
    check_batches(soak, listed, batches)
    await check_store_counts(soak, listed, batches)
    checks["e"] = check_reasons(soak, listed, soak.server.epoch)
    found = await check_findable(soak, listed, checks["c-search"])
    checks["c-search"].summary = f"{found} completed files found by their token"
    await replay_request_ids(soak, batches)
    return listed


async def soak(
    options: Options, run_dir: Path, mounted: bool = False, why_not: str = ""
) -> tuple[bool, list[str]]:
    profile = options.profile
    server = ServerLoop(options, run_dir, Disk(run_dir / "data", mounted, why_not))
    load = Soak(options, server)
    checks: dict[str, Check] = {
        "b": Check("(b) batches ended, counts add up, nothing taken back or made up"),
        "c-chunks": Check("(c) chunks stored exactly once, 0..n-1, only for completed files"),
        "c-index": Check("(c) each saved hnswlib index holds exactly its store's chunk ids"),
        "c-search": Check("(c) every completed file is found by its unique token"),
    }
    fatal: list[str] = []
    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    drained_in = 0.0
    chunks = 0
    exit_codes: list[str] = []
    try:
        server.start()
        await server.wait_serving(profile.start_timeout)
        await load.create_stores()
        tasks = [asyncio.create_task(load.client_loop(n)) for n in range(profile.clients)]
        tasks.append(asyncio.create_task(load.search_loop()))
        await chaos(load)
        load.stop_work.set()
        drain_started = time.monotonic()
        done, pending = await asyncio.wait(tasks, timeout=profile.drain_timeout)
        for task in done:
            if task.exception() is not None:
                raise RuntimeError("a client loop crashed") from task.exception()
        if pending:
            fatal.append(f"{len(pending)} client loops did not stop in {profile.drain_timeout} s")
        left = max(1.0, profile.drain_timeout - (time.monotonic() - drain_started))
        if load.watchers:
            _, unfinished = await asyncio.wait(load.watchers, timeout=left)
            for task in unfinished:
                task.cancel()
        drained_in = time.monotonic() - drain_started
        listed = await verify_online(load, checks)

        code = await server.stop()
        exit_codes.append(f"SIGTERM after the soak: exit {code}")
        await server.wait_reapers()
        db_path = server.data_dir / "quiver.sqlite3"
        chunks = check_database(
            load,
            db_path,
            server.data_dir / "indexes",
            listed,
            checks["c-chunks"],
            checks["c-index"],
            checks["b"],
        )
        checks["d"] = check_integrity(run_dir, db_path)

        # A clean restart: SERVING again, nothing to reconcile, the files still found, exit 0.
        server.start()
        await server.wait_serving(profile.start_timeout)
        again = Check("(c) after a clean stop, a restart reconciles nothing and still finds")
        found = await check_findable(load, listed, again)
        code_again = await server.stop()
        exit_codes.append(f"SIGTERM after a clean restart: exit {code_again}")
        facts = read_log(server.log_path)
        if options.log_level in ("debug", "info") and facts.last_start_reconciled:
            again.fail(
                f"{facts.last_start_reconciled} index(es) were reconciled after a clean stop "
                "(the stop did not save what SQLite holds)"
            )
        again.summary = f"{found} files found after the restart"
        checks["c-restart"] = again
        stop_check = Check("SIGTERM exits 0")
        stop_check.summary = "; ".join(exit_codes)
        if code != 0 or code_again != 0:
            stop_check.fail(stop_check.summary)
        checks["stop"] = stop_check
    except Exception as exc:  # reported below, with whatever was checked
        fatal.append(f"{type(exc).__name__}: {exc}")
        fatal.append(traceback.format_exc())
    finally:
        for task in [*tasks, *load.watchers]:
            task.cancel()
        await asyncio.gather(*tasks, *load.watchers, return_exceptions=True)
        await load.close_clients()
        server.kill_everything()

    unexpected = Check("no RPC failed except while the server was being killed")
    for line in load.unexpected:
        unexpected.fail(line)
    checks["rpc"] = unexpected
    orphans = Check("no process of a killed server outlives it")
    for line in server.orphans:
        orphans.fail(line)
    checks["orphans"] = orphans
    checks["disk"] = check_disk_full(load, server.disk, read_log(server.log_path))

    facts = read_log(server.log_path)
    lines = summary(options, load, server, checks, facts, chunks, drained_in, started, fatal)
    passed = not fatal and all(c.passed or c.warn_only for c in checks.values())
    lines.append(f"RESULT: {'PASS' if passed else 'FAIL'}")
    return passed, lines
