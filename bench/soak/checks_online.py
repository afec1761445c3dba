"""The checks through the API, before the server stops: uploads, batches, search."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

from quiver.client import (
    FileBatch,
    QuiverError,
    VectorStoreFile,
)

from bench.soak.load import Soak
from bench.soak.records import EXPECTED_ERROR, Batch, Check, Upload


async def gather_limited(limit: int, coros: Iterable[Awaitable[None]]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[None]) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


async def check_uploads(soak: Soak) -> Check:
    check = Check("(a) every confirmed upload is kept, byte for byte")
    client = await soak.client()

    async def one(upload: Upload) -> None:
        try:
            file = await client.files.retrieve(upload.file_id)
            data = await client.files.content(upload.file_id, timeout=soak.profile.rpc_timeout)
        except QuiverError as exc:
            check.fail(f"{upload.file_id} ({upload.filename}): {exc}")
            return
        if (file.bytes, file.sha256, file.filename) != (
            upload.size,
            upload.sha256,
            upload.filename,
        ):
            check.fail(f"{upload.file_id}: GetFile says {file.bytes} bytes {file.sha256[:12]}")
        if hashlib.sha256(data).hexdigest() != upload.sha256:
            check.fail(f"{upload.file_id} ({upload.filename}): downloaded bytes differ")

    await gather_limited(8, (one(u) for u in soak.uploads.values()))
    lost = sum(soak.lost_uploads.values())
    check.summary = (
        f"{len(soak.uploads) - len(check.problems)}/{len(soak.uploads)} intact "
        f"({lost} uploads cut by kills were not counted)"
    )
    return check


@dataclass
class Listed:
    """What the server says about one batch at the end."""

    batch: FileBatch
    files: dict[str, VectorStoreFile]


async def list_batches(soak: Soak, check: Check) -> dict[str, Listed]:
    client = await soak.client()
    out: dict[str, Listed] = {}

    async def one(b: Batch) -> None:
        try:
            got = await client.vector_stores.file_batches.retrieve(
                b.batch_id, vector_store_id=b.store_id
            )
            files = {
                f.id: f
                async for f in client.vector_stores.file_batches.list_files(
                    b.batch_id, vector_store_id=b.store_id
                )
            }
        except QuiverError as exc:
            check.fail(f"{b.batch_id}: {exc}")
            return
        out[b.batch_id] = Listed(got, files)

    await gather_limited(8, (one(b) for b in soak.batches.values()))
    return out


def check_batches(soak: Soak, listed: dict[str, Listed], check: Check) -> None:
    for b in soak.batches.values():
        entry = listed.get(b.batch_id)
        if entry is None:
            continue
        got, files, counts = entry.batch, entry.files, entry.batch.file_counts
        where = f"{b.batch_id} ({b.request_id})"
        if got.status == "in_progress":
            check.fail(f"{where}: still in_progress after the drain")
        if (
            counts.in_progress
            or counts.total != counts.completed + counts.failed + counts.cancelled
        ):
            check.fail(f"{where}: file_counts do not add up: {counts}")
        if counts.total != len(b.file_ids):
            check.fail(f"{where}: total {counts.total}, the batch had {len(b.file_ids)} files")
        if set(files) != set(b.file_ids):
            check.fail(f"{where}: ListFileBatchFiles gave {sorted(files)}, sent {b.file_ids}")
        statuses = Counter(f.status for f in files.values())
        listed_counts = (statuses["completed"], statuses["failed"], statuses["cancelled"])
        if listed_counts != (counts.completed, counts.failed, counts.cancelled):
            check.fail(f"{where}: file_counts {counts} but ListFileBatchFiles has {statuses}")
        for file_id, f in files.items():
            if file_id in b.attributes and f.attributes != b.attributes[file_id]:
                check.fail(
                    f"{where}: {file_id} attributes {f.attributes} != {b.attributes[file_id]}"
                )
            if file_id in b.chunking and f.chunking_strategy != b.chunking[file_id]:
                check.fail(
                    f"{where}: {file_id} chunking {f.chunking_strategy} != {b.chunking[file_id]}"
                )
            reported = b.reported.get(file_id)
            if reported is not None and reported != f.status:
                check.fail(f"{where}: {file_id} was streamed as {reported}, is now {f.status}")
        if b.watched_final is not None and b.watched_final.status != got.status:
            check.fail(f"{where}: streamed as {b.watched_final.status}, is now {got.status}")
        cancelled = got.status == "cancelled" or statuses["cancelled"] > 0
        if b.cancel == "confirmed" and got.status != "cancelled":
            check.fail(f"{where}: CancelFileBatch succeeded but the batch ended {got.status}")
        if cancelled and b.cancel not in ("confirmed", "lost"):
            check.fail(f"{where}: cancelled ({got.status}, {statuses}) but no cancel was asked")
    for problem in soak.stream_problems:
        check.fail(f"WatchFileBatch: {problem}")
    for problem in soak.idempotency:
        check.fail(f"request_id: {problem}")


async def check_store_counts(soak: Soak, listed: dict[str, Listed], check: Check) -> None:
    client = await soak.client()
    for store_id in soak.stores:
        expected: Counter[str] = Counter()
        for b in soak.batches.values():
            if b.store_id == store_id and b.batch_id in listed:
                expected.update(f.status for f in listed[b.batch_id].files.values())
        store = await client.vector_stores.retrieve(store_id)
        counts = store.file_counts
        have = (counts.completed, counts.failed, counts.cancelled, counts.in_progress)
        want = (expected["completed"], expected["failed"], expected["cancelled"], 0)
        if have != want:
            check.fail(f"store {store_id}: file_counts {counts}, its batches' files give {want}")


async def replay_request_ids(soak: Soak, check: Check) -> None:
    """Every batch's CreateFileBatch once more, the same body with the same request id (a
    different body is refused with ALREADY_EXISTS): the same batch."""
    client = await soak.client()

    async def one(b: Batch) -> None:
        assert b.create is not None
        try:
            again = await b.create(client)
        except QuiverError as exc:
            check.fail(f"{b.request_id}: replaying CreateFileBatch failed: {exc}")
            return
        if again.id != b.batch_id:
            check.fail(f"{b.request_id}: replay gave {again.id}, not {b.batch_id}")
        else:
            soak.idempotency_ok += 1

    await gather_limited(8, (one(b) for b in soak.batches.values()))


def check_reasons(soak: Soak, listed: dict[str, Listed], final_epoch: int) -> Check:
    check = Check("(e) files failed for the expected reasons")
    codes: Counter[str] = Counter()
    for b in soak.batches.values():
        entry = listed.get(b.batch_id)
        if entry is None:
            continue
        ended = final_epoch if b.terminal_epoch is None else b.terminal_epoch
        lived_through_kill = b.created_epoch != ended
        for file_id, f in entry.files.items():
            upload = soak.uploads[file_id]
            code = f.last_error.code if f.last_error else ""
            message = f.last_error.message if f.last_error else ""
            codes[f"{upload.kind}:{f.status}{':' + code if code else ''}"] += 1
            where = f"{file_id} ({upload.filename}, batch {b.batch_id})"
            if f.status == "cancelled":
                continue  # checked with the batch: only when a cancel was asked
            if code == "server_error":
                line = f"{where}: server_error: {message}"
                if lived_through_kill:
                    check.notes.append(f"after a kill: {line}")
                else:
                    check.fail(f"no kill while it ran: {line}")
                continue
            if upload.kind in EXPECTED_ERROR:
                if f.status != "failed" or code != EXPECTED_ERROR[upload.kind]:
                    check.fail(
                        f"{where}: {f.status} {code or ''} {message}, expected failed "
                        f"{EXPECTED_ERROR[upload.kind]}"
                    )
            elif f.status != "completed":
                check.fail(f"{where}: a valid {upload.kind} file ended {f.status} {code} {message}")
    check.summary = ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))
    return check


async def check_findable(soak: Soak, listed: dict[str, Listed], check: Check) -> int:
    client = await soak.client()
    wanted = [
        (entry.batch.vector_store_id, file_id, soak.uploads[file_id].token)
        for entry in listed.values()
        for file_id, f in entry.files.items()
        if f.status == "completed"
    ]
    missing: list[str] = []

    async def one(store_id: str, file_id: str, token: str | None) -> None:
        if token is None:
            check.fail(f"{file_id} completed but it is a {soak.uploads[file_id].kind} file")
            return
        try:
            found = await client.vector_stores.search(store_id, query=token, max_num_results=10)
        except QuiverError as exc:
            check.fail(f"search for {file_id}'s token: {exc}")
            return
        if file_id not in {hit.file_id for hit in found.data}:
            missing.append(file_id)

    await gather_limited(4, (one(*w) for w in wanted))
    for file_id in missing:
        check.fail(
            f"{file_id} ({soak.uploads[file_id].filename}): completed, but a search for "
            f"its unique token does not return it"
        )
    return len(wanted) - len(missing)
