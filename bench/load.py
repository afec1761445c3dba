"""Load: 32 concurrent clients mixing uploads, batches (watched to the end), searches and
reads against one `quiver serve` for several minutes. The figures come from the server's
Prometheus endpoint: requests and errors by method and code, p99 latency (histogram bucket
bound), ingest totals and peak RSS.

    .venv/bin/python -m bench.load --clients 32 --seconds 180
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families
from quiver.client import AsyncClient, QuiverError

from tests.support.serve import ServerProcess

_WORDS = (
    "vector store batch watch stream index chunk token embed search filter rank fusion "
    "phrase keyword hnsw sqlite durable restart crash recover tenant upload download"
)
WORDS = _WORDS.split()
QUEUE_LIMIT = 2000


def _text(rng: random.Random, words: int) -> bytes:
    return " ".join(rng.choice(WORDS) for _ in range(words)).encode()


async def client_loop(
    n: int, target: str, stores: list[str], deadline: float, errors: Counter[str]
) -> None:
    rng = random.Random(n)
    uploaded: list[str] = []
    async with AsyncClient(target=target, timeout=60) as client:
        while time.monotonic() < deadline:
            action = rng.random()
            store = rng.choice(stores)
            try:
                if action < 0.25:
                    file = await client.files.upload(
                        (f"c{n}.txt", _text(rng, rng.randint(50, 3000)))
                    )
                    uploaded.append(file.id)
                elif action < 0.40 and uploaded:
                    ids = uploaded[-rng.randint(1, 5) :]
                    del uploaded[-len(ids) :]
                    await client.vector_stores.file_batches.create_and_poll(
                        vector_store_id=store, file_ids=ids, attributes={"client": n}
                    )
                elif action < 0.90:
                    await client.vector_stores.search(
                        store,
                        query=" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))),
                        ranker=rng.choice(("auto", "none")),
                        filters={"type": "eq", "key": "client", "value": rng.randrange(32)}
                        if rng.random() < 0.3
                        else None,
                    )
                else:
                    await client.vector_stores.retrieve(store)
                    [s async for s in client.vector_stores.list(page_size=20)]
            except QuiverError as exc:
                errors[exc.code.name] += 1


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _report(text: str, seconds: float) -> None:
    requests: Counter[tuple[str, str]] = Counter()
    buckets: dict[str, list[tuple[float, float]]] = {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "quiver_rpc_requests_total":
                requests[(sample.labels["method"], sample.labels["code"])] += int(sample.value)
            elif sample.name == "quiver_rpc_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets.setdefault(sample.labels["method"], []).append((bound, sample.value))
            elif not sample.labels:
                values[sample.name] = sample.value
    methods = sorted({m for m, _ in requests})
    print(f"{'method':<28}{'requests':>10}{'per s':>9}{'p99 ms ≤':>10}  errors by code")
    for method in methods:
        total = sum(v for (m, _), v in requests.items() if m == method)
        errs = {c: v for (m, c), v in requests.items() if m == method and c != "OK"}
        series = sorted(buckets.get(method, []))
        count = series[-1][1] if series else 0
        p99 = next((b for b, v in series if v >= 0.99 * count), float("inf"))
        print(
            f"{method:<28}{total:>10}{total / seconds:>9.1f}{p99 * 1000:>10.1f}  "
            f"{', '.join(f'{c} {v}' for c, v in sorted(errs.items())) or '-'}"
        )
    print(
        f"ingest: {values.get('quiver_ingest_chunks_total', 0):.0f} chunks, "
        f"{values.get('quiver_ingest_tokens_total', 0):.0f} tokens; "
        f"peak RSS of the server process "
        f"{values.get('quiver_process_peak_rss_bytes', 0) / 2**20:.0f} MB"
    )


async def run(clients: int, seconds: float) -> None:
    server = ServerProcess.start("--max-queued-files", str(QUEUE_LIMIT))
    try:
        async with AsyncClient(target=server.target) as client:
            stores = [(await client.vector_stores.create(name=f"load{i}")).id for i in range(4)]
            rng = random.Random(0)
            for store in stores:
                await client.vector_stores.file_batches.upload_and_poll(
                    vector_store_id=store,
                    files=[(f"seed{i}.txt", _text(rng, 800)) for i in range(40)],
                    attributes={"client": -1},
                )
        errors: Counter[str] = Counter()
        started = time.monotonic()
        await asyncio.gather(
            *(
                client_loop(n, server.target, stores, started + seconds, errors)
                for n in range(clients)
            )
        )
        elapsed = time.monotonic() - started
        print(f"{clients} clients for {elapsed:.0f} s against {server.target}")
        print(f"client-side errors by code: {dict(errors) or 'none'}")
        bad = {c: v for c, v in errors.items() if c != "RESOURCE_EXHAUSTED"}
        print("unexpected errors: " + (str(bad) if bad else "none"))
        _report(_scrape(server.metrics_port), elapsed)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=180.0)
    args = parser.parse_args()
    asyncio.run(run(args.clients, args.seconds))


if __name__ == "__main__":
    main()
