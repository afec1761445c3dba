"""The summary the soak prints: one line per check, and the figures of the run."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence

from bench.soak.load import Soak
from bench.soak.options import Options
from bench.soak.records import Check
from bench.soak.server import ServerLoop
from bench.soak.server_log import LogFacts


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "none"
    return (
        f"n={len(values)} min {min(values):.2f} s, median {statistics.median(values):.2f} s, "
        f"max {max(values):.2f} s"
    )


def summary(
    options: Options,
    load: Soak,
    server: ServerLoop,
    checks: dict[str, Check],
    facts: LogFacts,
    chunks: int,
    drained_in: float,
    started: float,
    fatal: list[str],
) -> list[str]:
    statuses: Counter[str] = Counter()
    for b in load.batches.values():
        if b.watched_final is not None:
            counts = b.watched_final.file_counts
            statuses.update(
                completed=counts.completed, failed=counts.failed, cancelled=counts.cancelled
            )
    kinds = Counter(u.kind for u in load.uploads.values())
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    retried = sum(b.reply_lost for b in load.batches.values())
    startup_kills = sum(1 for k in server.kills if ": during start-up," in k)
    rpc_kills = sum(1 for k in server.kills if ": just after" in k)
    ingest_kills = sum(1 for k in server.kills if ": while batches" in k)
    out = [
        f"Quiver soak: seed {options.seed}, {'quick' if options.quick else 'full'} profile, "
        f"{time.monotonic() - started:.0f} s",
        f"  kills: {len(server.kills)} ({startup_kills} while the server was starting up, "
        f"{rpc_kills} just after an RPC was sent, {ingest_kills} while batches were processed)",
        f"  restarts: {server.starts - 1} (incl. the final clean restart); start → SERVING: "
        f"{_stats(server.serving_times)}",
        f"    per start (s): {' '.join(server.per_start)}",
        f"  uploads confirmed: {len(load.uploads)} ({by_kind}); "
        f"cut by kills: {sum(load.lost_uploads.values())}",
        f"  batches confirmed: {len(load.batches)} ({retried} only by a retry after a kill); "
        f"request-id replays giving the same batch: "
        f"{load.idempotency_ok}; never confirmed: {len(load.given_up)}",
        f"  cancels: {Counter(b.cancel for b in load.batches.values() if b.cancel)}",
        f"  files: {statuses['completed']} completed, {statuses['failed']} failed, "
        f"{statuses['cancelled']} cancelled; chunks: {chunks}",
        f"  watch reconnects: {sum(b.reconnects for b in load.batches.values())}; searches: "
        f"{load.searches}; drain after the last restart: {drained_in:.1f} s",
        f"  RPCs cut by kills: {dict(sorted(load.cut.items()))}",
        f"  server log: {facts.resumed_files} unfinished files resumed at start-up; "
        f"{facts.reconciled} index reconciliations (+{facts.labels_added} / "
        f"-{facts.labels_removed} labels, {facts.rebuilt} rebuilt); "
        f"{len(facts.errors)} error lines; warnings {dict(facts.warnings)}; "
        f"{len(facts.stderr)} other stderr outputs",
    ]
    disk = server.disk
    if disk.mounted:
        disk.note_usage()
        out.append(
            f"  data dir on its own tmpfs of {options.tmpfs_size}: at most "
            f"{disk.peak_used / 2**20:.1f} MiB used (without ballast); "
            f"{len(disk.events)} disk-full episodes"
        )
    else:
        out.append(f"  disk-full fault skipped: {disk.why_not}")
    out += [f"    {k}" for k in server.kills]
    for line in facts.errors[:10]:
        out.append(f"    server error: {line}")
    for line, count in Counter(facts.stderr).most_common(10):
        out.append(f"    server stderr ({count}x): {line}")
    out.append("checks:")
    order = [
        *("a", "b", "c-chunks", "c-index", "c-search", "c-restart", "d", "e", "stop", "rpc"),
        "disk",
    ]
    for key in sorted(checks, key=lambda k: order.index(k) if k in order else len(order)):
        check = checks[key]
        verdict = "PASS" if check.passed else ("WARN" if check.warn_only else "FAIL")
        out.append(f"  {verdict} {check.name}{': ' + check.summary if check.summary else ''}")
        for problem in check.problems[:15]:
            out.append(f"      - {problem}")
        if len(check.problems) > 15:
            out.append(f"      … and {len(check.problems) - 15} more")
        for note in check.notes[:15]:
            out.append(f"      note: {note}")
    for line in fatal:
        out.append(f"  FAIL {line}")
    return out
