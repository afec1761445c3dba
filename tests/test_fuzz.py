"""Fuzzing the service from outside, against a real in-process server.

1. Adversarial requests to every RPC of FileService, VectorStoreService and FileBatchService:
   messages built from the request descriptors with hostile values (100 KB strings, NaN and
   infinities, unknown enum numbers, wrong ``google.protobuf.Value`` kinds, 10,000 attributes,
   2,001 file ids, deep and wide filters, extreme limits), and hand-built wire bytes (invalid
   UTF-8 in any string field, unknown fields, nesting 1,000 deep, garbage, truncation).
   Oracle: every call ends with a status the contract defines, never INTERNAL, UNKNOWN or a
   hang; INVALID_ARGUMENT carries BadRequest field violations naming a field; the server
   still answers after every example.
2. Adversarial files through the whole pipeline (random bytes, truncated PDFs, corrupted
   DOCX, odd-length UTF-16, files just past the upload limit): each file settles COMPLETED or
   FAILED with a file error code, each batch ends COMPLETED, the server stays healthy.
3. Memory across three identical rounds of hostile files (zip bombs, 50 MB of one character,
   a 5-million-character line): workers' peak RSS stays bounded and the server's RSS does not
   grow after the first round.

Hypothesis runs inside a worker thread and sends each RPC to the test's event loop, as in
test_filters.py. How many examples, calls and files each test ran is printed at the end of
the module (run with ``-s`` or look for "test_fuzz counts"), and asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import io
import math
import os
import re
import resource
import struct
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc import aio
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from quiver.server.config import Settings
from quiver.v1 import common_pb2, file_batches_pb2, files_pb2, vector_stores_pb2

from tests.batch_helpers import poll_batch
from tests.conftest import PROFILE, Running, Tenant, examples
from tests.docgen import make_docx, make_pdf
from tests.rpc_helpers import error_reason, field_violations, upload

T = TypeVar("T")
MiB = 1024 * 1024
Metadata = tuple[tuple[str, str], ...]

CALL_TIMEOUT = 10.0
"""Deadline of every fuzzed call. DEADLINE_EXCEEDED counts as a hang, so as a failure."""

NEVER = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
)
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
TOO_LARGE_REQUEST = "Received message larger than max"
"""How grpc-core refuses a request past the server's max receive size."""
FILE_ERRORS = frozenset({"invalid_file", "unsupported_file"})
F_COMPLETED = common_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED
F_FAILED = common_pb2.VECTOR_STORE_FILE_STATUS_FAILED
B_COMPLETED = file_batches_pb2.FILE_BATCH_STATUS_COMPLETED
TERMINAL_BATCH = frozenset(
    {
        file_batches_pb2.FILE_BATCH_STATUS_COMPLETED,
        file_batches_pb2.FILE_BATCH_STATUS_CANCELLED,
        file_batches_pb2.FILE_BATCH_STATUS_FAILED,
    }
)

# Budgets: the whole module runs in well under 3 minutes on 2 cores.
STRUCTURED_EXAMPLES = examples(120)
RAW_EXAMPLES = examples(100)
FILE_EXAMPLES = examples(100)
MEMORY_ROUNDS = 3

WORKER_PEAK_BOUND = 2 * 1024 * MiB
"""No worker may ever hold more than this (VmHWM), whatever the file."""
SERVER_PEAK_BOUND = 2 * 1024 * MiB
"""Peak RSS of the test process, which hosts the server (and the client)."""
SERVER_GROWTH_BOUND = 100 * MiB
"""The server's RSS after rounds 2 and 3 may exceed its RSS after round 1 by at most this.
Measured: +45…55 MiB, nearly all between rounds 1 and 2 and none of it Python objects
(tracemalloc sees < 1 MiB): glibc raises its mmap threshold once round 1 frees its large
blocks, so later rounds' big buffers come from the heap and stay resident."""
SERVER_STEADY_BOUND = 40 * MiB
"""Round 3 against round 2, past that one-time step: a leak per round shows here (measured
+1…7 MiB)."""

# -- what ran ------------------------------------------------------------------------------

EXAMPLES: Counter[str] = Counter()
"""Hypothesis examples run, per test."""
CALLS: Counter[str] = Counter()
"""RPCs sent, per test."""
CODES: Counter[str] = Counter()
"""Status codes seen, per test and code."""
OUTCOMES: Counter[str] = Counter()
"""How files ended, per test and outcome."""
NOTES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _print_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = [f"examples  {name}: {n}" for name, n in sorted(EXAMPLES.items())]
    lines += [f"rpc calls {name}: {n}" for name, n in sorted(CALLS.items())]
    lines += [f"codes     {name}: {n}" for name, n in sorted(CODES.items())]
    lines += [f"files     {name}: {n}" for name, n in sorted(OUTCOMES.items())]
    lines += NOTES
    plugins = request.config.pluginmanager
    reporter: Any = plugins.get_plugin("terminalreporter")
    capture: Any = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():  # shown with or without -s
        reporter.ensure_newline()
        reporter.write_sep("-", "test_fuzz counts")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """conftest's settings, changed by an indirect parametrization (a dict of fields)."""
    changes: dict[str, Any] = getattr(request, "param", {})
    return replace(settings, **changes)


def fuzz_settings(examples: int, *, shrink: bool = True) -> hypothesis_settings:
    """``@settings(max_examples=…, deadline=None, suppress_health_check=[…])`` for every test
    here; no example database (a failing heavy example is not replayed on the next run)."""
    return hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])),
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a coroutine on the test's event loop from hypothesis' thread."""

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=600)

    return run


# -- the RPCs, from the protos -------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    input: Descriptor
    output: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def _rpcs() -> list[Rpc]:
    out: list[Rpc] = []
    for module, service in (
        (files_pb2, "FileService"),
        (vector_stores_pb2, "VectorStoreService"),
        (file_batches_pb2, "FileBatchService"),
    ):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            out.append(
                Rpc(
                    descriptor.full_name,
                    method.name,
                    method.input_type,
                    GetMessageClass(method.output_type),
                    method.client_streaming,
                    method.server_streaming,
                )
            )
    return out


RPCS = _rpcs()
assert len(RPCS) == 5 + 12 + 5, [r.name for r in RPCS]  # every RPC of the three services


# -- calling and judging -------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    label: str
    metadata: Metadata
    authenticated: bool

    def __repr__(self) -> str:
        return f"Caller({self.label})"


@dataclass(frozen=True)
class Sent:
    """What one call sends: serialized request messages (several for UploadFile)."""

    bodies: tuple[bytes, ...]
    about: str = ""
    expect_code: grpc.StatusCode | None = None
    """For an authenticated caller: the only status allowed."""
    expect_field: str | None = None
    """With INVALID_ARGUMENT: the first violation's field, list indices left out."""

    def __repr__(self) -> str:
        sizes = ", ".join(f"{len(b)} B" for b in self.bodies[:4])
        more = f" +{len(self.bodies) - 4}" if len(self.bodies) > 4 else ""
        return f"Sent([{sizes}{more}] {self.about[:300]})"


def sent_message(message: Message) -> Sent:
    return Sent((message.SerializeToString(),), _about(message))


def _about(message: Message) -> str:
    text = str(message).replace("\n", " ")
    return text[:300] + ("…" if len(text) > 300 else "")


async def _aiter(items: Sequence[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def invoke(
    channel: aio.Channel, rpc: Rpc, sent: Sent, metadata: Metadata
) -> tuple[grpc.StatusCode, aio.AioRpcError | None]:
    """Sends raw bytes (no serializer), reads every response, checks each one parses."""
    raw: list[bytes] = []
    try:
        if rpc.client_streaming:
            call = channel.stream_unary(rpc.path, None, None)
            raw.append(await call(_aiter(sent.bodies), timeout=CALL_TIMEOUT, metadata=metadata))
        elif rpc.server_streaming:
            stream = channel.unary_stream(rpc.path, None, None)
            responses = stream(sent.bodies[0], timeout=CALL_TIMEOUT, metadata=metadata)
            async for response in responses:
                raw.append(response)
        else:
            unary = channel.unary_unary(rpc.path, None, None)
            raw.append(await unary(sent.bodies[0], timeout=CALL_TIMEOUT, metadata=metadata))
    except aio.AioRpcError as exc:
        return exc.code(), exc
    for body in raw:
        rpc.output.FromString(body)  # the server's answer is a well-formed message
    return grpc.StatusCode.OK, None


def judge(
    test: str,
    rpc: Rpc,
    code: grpc.StatusCode,
    error: aio.AioRpcError | None,
    caller: Caller,
    sent: Sent | None = None,
) -> str:
    """The oracle for one call. Returns why it failed, or "" when the outcome is allowed."""
    try:
        problem = _judge(test, rpc, code, error, caller)
        if not problem and sent is not None and caller.authenticated:
            problem = _expected(rpc, code, error, sent)
        return problem
    except Exception as exc:  # e.g. grpc_status finding details that do not match
        return f"{rpc.name} answered {code.name}; checking it raised {exc!r}"


def _expected(rpc: Rpc, code: grpc.StatusCode, error: aio.AioRpcError | None, sent: Sent) -> str:
    if sent.expect_code is not None and code != sent.expect_code:
        details = error.details() if error is not None else ""
        return f"{rpc.name} answered {code.name}, not {sent.expect_code.name}: {details!r}"
    if sent.expect_field is not None and error is not None:
        field = field_violations(error)[0][0]
        clipped = field.endswith("…")  # the server clips long paths
        named = re.sub(r"\[\d*$", "", re.sub(r"\[\d+\]", "", field.removesuffix("…")))
        if not (sent.expect_field.startswith(named) if clipped else named == sent.expect_field):
            return f"{rpc.name}: the violation names {field!r}, not {sent.expect_field!r}"
    return ""


def _judge(
    test: str, rpc: Rpc, code: grpc.StatusCode, error: aio.AioRpcError | None, caller: Caller
) -> str:
    CALLS[test] += 1
    CODES[f"{test} {code.name}"] += 1
    details = (error.details() or "") if error is not None else ""
    if code in NEVER:
        return f"{rpc.name} answered {code.name}: {details[:500]!r}"
    allowed = ALLOWED if caller.authenticated else frozenset({grpc.StatusCode.UNAUTHENTICATED})
    if code not in allowed:
        return f"{rpc.name} as {caller.label} answered {code.name}: {details[:300]!r}"
    if error is None:
        return ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and TOO_LARGE_REQUEST in details:
        return ""  # the transport refused a request past --max-message-bytes: defined
    try:
        reason = error_reason(error)  # exactly one ErrorInfo, domain "quiver"
    except AssertionError as exc:
        return f"{rpc.name} answered {code.name} without the server's ErrorInfo: {exc}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert reason
        violations = field_violations(error)
        if not violations:
            return f"{rpc.name}: INVALID_ARGUMENT without BadRequest field violations"
        if not all(f for f, _ in violations):
            return f"{rpc.name}: a field violation names no field: {violations[:3]}"
        named = violations[0][0].removesuffix("…")[:100]  # the server clips long paths
        if named not in details:
            return f"{rpc.name}: the message does not name {named!r}: {details!r}"
    return ""


async def healthy(tenant: Tenant) -> None:
    """The server still answers a plain read."""
    reply = await tenant.stores.ListVectorStores(
        vector_stores_pb2.ListVectorStoresRequest(limit=1),
        metadata=tenant.metadata,
        timeout=CALL_TIMEOUT,
    )
    assert reply.object == "list"


# -- real objects to aim at ----------------------------------------------------------------


@dataclass
class Owned:
    """One tenant's store, file and batch, recreated when a fuzzed call deletes them."""

    tenant: Tenant
    store: str = ""
    file: str = ""
    batch: str = ""

    async def ensure(self) -> None:
        t = self.tenant
        if not self.file or not await _exists(
            t.files.GetFile(files_pb2.GetFileRequest(file_id=self.file), metadata=t.metadata)
        ):
            self.file = (await upload(t, "notes.txt", b"quivers hold arrows\n" * 20)).id
            self.batch = ""
        if not self.store or not await _exists(
            t.stores.GetVectorStore(
                vector_stores_pb2.GetVectorStoreRequest(vector_store_id=self.store),
                metadata=t.metadata,
            )
        ):
            reply = await t.stores.CreateVectorStore(
                vector_stores_pb2.CreateVectorStoreRequest(name="fuzz"), metadata=t.metadata
            )
            self.store = reply.vector_store.id
            self.batch = ""
        if not self.batch or not await _exists(
            t.batches.GetFileBatch(
                file_batches_pb2.GetFileBatchRequest(
                    vector_store_id=self.store, batch_id=self.batch
                ),
                metadata=t.metadata,
            )
        ):
            batch = await t.batches.CreateFileBatch(
                file_batches_pb2.CreateFileBatchRequest(
                    vector_store_id=self.store, file_ids=[self.file]
                ),
                metadata=t.metadata,
            )
            self.batch = batch.file_batch.id


async def _exists(call: Any) -> bool:
    try:
        await call
    except aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


@dataclass(frozen=True)
class Ids:
    """Ids the strategies aim at: the caller's own, another tenant's, and made-up ones."""

    stores: tuple[str, ...]
    files: tuple[str, ...]
    batches: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.stores + self.files + self.batches


@dataclass
class World:
    running: Running
    alice: Owned
    bob: Owned
    callers: tuple[Caller, ...] = ()

    @classmethod
    async def create(cls, running: Running) -> World:
        world = cls(running, Owned(running.alice), Owned(running.bob))
        await world.ensure()
        alice, bob = running.alice, running.bob
        bearer = alice.metadata[0]
        world.callers = (
            Caller("alice", alice.metadata, True),
            Caller("bob", bob.metadata, True),
            Caller("alice/user-7", (bearer, ("x-on-behalf-of", "user-7")), True),
            Caller("no key", (), False),
            Caller("wrong key", (("authorization", "Bearer not-a-key"),), False),
            Caller("basic", (("authorization", "Basic " + alice.key),), False),
            Caller("empty bearer", (("authorization", "Bearer  "),), False),
            Caller("long on-behalf-of", (bearer, ("x-on-behalf-of", "u" * 300)), False),
        )
        return world

    async def ensure(self) -> None:
        await self.alice.ensure()
        await self.bob.ensure()

    def ids(self) -> Ids:
        return Ids(
            (self.alice.store, self.bob.store),
            (self.alice.file, self.bob.file),
            (self.alice.batch, self.bob.batch),
        )

    def caller_st(self) -> st.SearchStrategy[Caller]:
        # alice on three branches, anyone on the fourth: most calls reach the servicers.
        alice = st.just(self.callers[0])
        return st.one_of(alice, alice, alice, st.sampled_from(self.callers))


# -- strategies: scalars -------------------------------------------------------------------

FILLERS = ["a", "é", "💥", "\u202e", "\x00", "/", "\\", "'", '"', "%", "\ufeff", "\U0010ffff", "\n"]
HUGE_TEXT = st.builds(
    lambda c, n: c * n,
    st.sampled_from(FILLERS),
    st.sampled_from([65, 129, 257, 513, 4097, 100_000]),
)
WEIRD_TEXT = st.sampled_from(
    [
        "", " ", ".", "..", "a/b", "file-", "vs_", "vsfb_", "\x00", "\x7f", "\t", "\r\n",
        "\ufffe", "\uffff", "' OR 1=1 --", '"', "NEAR(a b)", "*", "a AND b", "%00", "-",
        "file-" + "A" * 24, "vs_" + "A" * 24, "vsfb_" + "A" * 24, "default-2024-11-15",
    ]
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=24), WEIRD_TEXT, HUGE_TEXT)
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
FLOATS = st.one_of(
    st.floats(),  # NaN and ±infinity included
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1.0, 1.0000000000000002, 5e-324]),
)
INT_EDGES: dict[str, list[int]] = {
    "limit": [20, 100, 101],
    "max_num_results": [10, 50, 51],
    "days": [365, 366],
    "embedding_dimensions": [7, 8, 512, 4096, 4097],
    "max_chunk_size_tokens": [99, 100, 4096, 4097],
    "chunk_overlap_tokens": [50, 200, 2048, 2049],
    "after_sequence": [2, 2**63, 2**64 - 1],
}
STRING_CHOICES: dict[str, list[str]] = {
    "order": ["", "asc", "desc", "ASC", "newest"],
    "purpose": ["", "assistants", "batch", "fine-tune", "vision", "user_data", "evals", "x"],
    "type": ["", "auto", "static", "AUTO", "dynamic"],
    "ranker": ["", "auto", "none", "default-2024-11-15", "default-9999-99-99x", "bm25"],
    "anchor": ["", "last_active_at", "created_at"],
    "embedding_model": ["", "hash", "HASH", "openai:", "openai:text-embedding-3-small", "st"],
    "sha256": ["0" * 64, "F" * 64, "0" * 63, "g" * 64],
    "request_id": ["r1", "r2", "r" * 128, "r" * 129],
    "query": ["quivers", "arrows hold", " ", "\x00", '"unbalanced', "NEAR(", "*"],
    "key": ["k", "n", "flag", "a" * 64, "a" * 65],
    "paths": ["name", "expires_after", "metadata", "*", "name.x", "id"],
}


def _ints(name: str, bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [e for e in [0, 1, -1, lo, hi, *INT_EDGES.get(name, [])] if lo <= e <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _id_st(real: Sequence[str], prefix: str) -> st.SearchStrategy[str]:
    made_up = st.text(ID_ALPHABET, min_size=24, max_size=24).map(lambda s: prefix + s)
    own = st.sampled_from(list(real))
    return st.one_of(own, own, own, made_up, TEXT)  # mostly real ids, so calls reach deeper


def _string_st(name: str, ids: Ids) -> st.SearchStrategy[str]:
    if name == "vector_store_id":
        return _id_st(ids.stores, "vs_")
    if name in ("file_id", "file_ids"):
        return _id_st(ids.files, "file-")
    if name == "batch_id":
        return _id_st(ids.batches, "vsfb_")
    if name in ("after", "before"):
        return st.one_of(st.just(""), st.sampled_from(list(ids.all)), TEXT)
    if name in STRING_CHOICES:
        return st.one_of(st.sampled_from(STRING_CHOICES[name]), TEXT)
    return TEXT


# -- strategies: google.protobuf.Value and filters -----------------------------------------


def _num(x: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=x)


def _str(x: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=x)


def _bool(x: bool) -> struct_pb2.Value:
    return struct_pb2.Value(bool_value=x)


def _list(items: Sequence[struct_pb2.Value]) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.list_value.SetInParent()
    for item in items:
        value.list_value.values.add().CopyFrom(item)
    return value


def _struct(items: dict[str, struct_pb2.Value]) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.SetInParent()
    for key, item in items.items():
        value.struct_value.fields[key].CopyFrom(item)
    return value


SCALAR_VALUES = st.one_of(
    FLOATS.map(_num),
    TEXT.map(_str),
    st.booleans().map(_bool),
    st.just(struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
    st.just(struct_pb2.Value()),  # no kind set at all
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf]).map(_num)
VALUES = st.one_of(
    NON_FINITE,  # also deep inside, but rarely: NaN and ±infinity get a branch of their own
    st.recursive(
        SCALAR_VALUES,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(_list),
            st.dictionaries(st.text(max_size=6), inner, max_size=3).map(_struct),
        ),
        max_leaves=10,
    ),
    st.sampled_from([256, 257, 1000]).map(lambda n: _list([_num(float(i)) for i in range(n)])),
)
FILTER_TYPES = st.one_of(
    st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "and", "or"]),
    st.sampled_from(["", "EQ", "not", "xor", "eq "]),
    HUGE_TEXT,
)
FILTER_KEYS = st.one_of(st.sampled_from(STRING_CHOICES["key"]), TEXT)


def _filter(
    kind: str,
    key: str,
    value: struct_pb2.Value | None,
    children: Sequence[vector_stores_pb2.Filter],
) -> vector_stores_pb2.Filter:
    node = vector_stores_pb2.Filter(type=kind, key=key)
    if value is not None:
        node.value.CopyFrom(value)
    for child in children:
        node.filters.add().CopyFrom(child)
    return node


def _chain(depth: int, kind: str) -> vector_stores_pb2.Filter:
    """``depth`` levels: compounds of one child each, a comparison at the bottom. Built top
    down so no level is ever copied (copies re-parse, and parsing stops at 100 levels)."""
    root = vector_stores_pb2.Filter()
    node = root
    for _ in range(depth - 1):
        node.type = kind
        node = node.filters.add()
    node.type, node.key = "eq", "k"
    node.value.string_value = "v"
    return root


def _wide(children: int, grandchildren: int) -> vector_stores_pb2.Filter:
    leaf = vector_stores_pb2.Filter(type="eq", key="k", value=_str("v"))
    middle = _filter("or", "", None, [leaf] * grandchildren)
    return _filter("and", "", None, [middle] * children)


FILTERS = st.one_of(
    st.recursive(
        st.builds(_filter, FILTER_TYPES, FILTER_KEYS, st.none() | VALUES, st.just([])),
        lambda kids: st.builds(
            _filter,
            FILTER_TYPES,
            st.sampled_from(["", "k"]),
            st.none() | st.just(_str("v")),
            st.lists(kids, max_size=4),
        ),
        max_leaves=16,
    ),
    st.builds(_chain, st.sampled_from([15, 16, 17, 18, 50, 90]), st.sampled_from(["and", "or"])),
    st.builds(_wide, st.sampled_from([64, 65]), st.sampled_from([1, 4])),
)
MASKS = st.lists(st.one_of(st.sampled_from(STRING_CHOICES["paths"]), TEXT), max_size=4)


# -- strategies: any request message, from its descriptor ----------------------------------


def _many_ids(kind: str, n: int, real: str) -> list[str]:
    if kind == "distinct":
        return [f"file-{i:024d}" for i in range(n)]
    if kind == "duplicates":
        return [real] * n
    return [real] + [f"file-{i:024d}" for i in range(n - 1)]


def _many_attributes(n: int) -> dict[str, struct_pb2.Value]:
    return {f"k{i}": _num(float(i)) for i in range(n)}


def _many_metadata(n: int, size: int) -> dict[str, str]:
    return {f"{i:0{size}d}": "v" * size for i in range(n)}


@functools.lru_cache(maxsize=256)
def message_st(descriptor: Descriptor, ids: Ids) -> st.SearchStrategy[Message]:
    """Messages of this type with every field absent or drawn from a hostile strategy."""
    cls = GetMessageClass(descriptor)
    fields = {f.name: _maybe(f.name, _field_st(f, ids)) for f in descriptor.fields}
    return st.fixed_dictionaries(fields).map(functools.partial(_build, cls))


ID_FIELDS = frozenset({"vector_store_id", "file_id", "batch_id", "query"})


def _maybe(name: str, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Absent half of the time; ids (and search queries) only a quarter of the time."""
    if name in ID_FIELDS:
        return st.one_of(strategy, strategy, strategy, st.none())
    return st.none() | strategy


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for f in cls.DESCRIPTOR.fields:
        value = values.get(f.name)
        if value is None:
            continue
        target: Any = getattr(message, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            if f.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    target[key].CopyFrom(item)
            else:
                target.update(value)
        elif f.is_repeated:
            if f.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif f.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, f.name, value)
    return message


def _field_st(f: FieldDescriptor, ids: Ids) -> st.SearchStrategy[Any]:
    """One field's value: a scalar, a list, a dict (maps) or a message."""
    entry = f.message_type
    if entry is not None and entry.GetOptions().map_entry:
        if entry.fields_by_name["value"].message_type is not None:  # attributes
            return st.one_of(
                st.dictionaries(FILTER_KEYS, VALUES, max_size=18),
                st.sampled_from([17, 10_000]).map(_many_attributes),
            )
        return st.one_of(  # metadata
            st.dictionaries(TEXT, TEXT, max_size=18),
            st.builds(_many_metadata, st.sampled_from([17, 10_000]), st.sampled_from([4, 65])),
        )
    if f.is_repeated:
        if f.name == "file_ids":
            return st.one_of(
                st.lists(_string_st("file_ids", ids), max_size=5),
                st.builds(
                    _many_ids,
                    st.sampled_from(["distinct", "duplicates", "mixed"]),
                    st.sampled_from([2000, 2001, 5000]),
                    st.sampled_from(list(ids.files)),
                ),
            )
        if f.name == "files":
            one = _single_st(f, ids)
            spec = file_batches_pb2.FileBatchFileSpec(file_id=ids.files[0])
            return st.one_of(
                st.lists(one, max_size=3),
                st.sampled_from([2000, 2001]).map(lambda n: [spec] * n),
            )
        if f.name == "paths":
            return MASKS
        return st.lists(_single_st(f, ids), max_size=12 if f.name == "query" else 4)
    return _single_st(f, ids)


def _single_st(f: FieldDescriptor, ids: Ids) -> st.SearchStrategy[Any]:
    if f.message_type is not None:
        name = f.message_type.full_name
        if name == "google.protobuf.Value":
            return VALUES
        if name == "quiver.v1.Filter":
            return FILTERS
        return message_st(f.message_type, ids)
    if f.enum_type is not None:
        numbers = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-(2**31), 2**31 - 1))
    kind = f.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string_st(f.name, ids)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=256), st.just(b"\x00" * 65536))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS
    if kind == FieldDescriptor.TYPE_INT32:
        return _ints(f.name, 32, True)
    if kind == FieldDescriptor.TYPE_INT64:
        return _ints(f.name, 64, True)
    if kind == FieldDescriptor.TYPE_UINT32:
        return _ints(f.name, 32, False)
    if kind == FieldDescriptor.TYPE_UINT64:
        return _ints(f.name, 64, False)
    raise AssertionError(f"no strategy for field {f.full_name} of type {kind}")


def structured_st(rpc: Rpc, ids: Ids) -> st.SearchStrategy[Sent]:
    message = message_st(rpc.input, ids)
    if not rpc.client_streaming:
        return message.map(sent_message)
    # UploadFile: a first message, then pieces of data, some of them setting header fields.
    data_only = st.binary(max_size=2048).map(lambda d: files_pb2.UploadFileRequest(data=d))
    return st.lists(st.one_of(message, data_only), max_size=4).map(
        lambda ms: Sent(
            tuple(m.SerializeToString() for m in ms), " | ".join(_about(m) for m in ms[:2])
        )
    )


# -- strategies: wire bytes ----------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(number, 2) + varint(len(payload)) + payload


def nest(inner: bytes, levels: Sequence[tuple[bytes, int]]) -> bytes:
    """Wraps ``inner`` in one message per level, innermost level first: each level is its
    other fields' bytes and the field number holding the level below. Linear time."""
    prefixes: list[bytes] = []
    size = len(inner)
    for head, number in levels:
        prefix = head + tag(number, 2) + varint(size)
        prefixes.append(prefix)
        size += len(prefix)
    return b"".join(reversed(prefixes)) + inner


BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
DEPTHS = [17, 64, 99, 100, 101, 1000, 10_000]


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[tuple[FieldDescriptor, ...]]:
    """Every string field reachable within 3 levels (map keys and Value strings included)."""
    out: list[tuple[FieldDescriptor, ...]] = []
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            out.append((f,))
        elif f.message_type is not None and depth < 3:
            out += [(f, *path) for path in _string_paths(f.message_type, depth + 1)]
    return out


def _in_path(path: Sequence[FieldDescriptor], payload: bytes) -> bytes:
    return nest(ld(path[-1].number, payload), [(b"", f.number) for f in reversed(path[:-1])])


def _deep_bodies(rpc: Rpc, depth: int, ids: Ids) -> list[Sent]:
    """Bodies nesting ``depth`` levels: unknown groups (any RPC), filters and lists inside
    filter values (search), lists inside attribute values (RPCs taking attributes). All but
    the groups are INVALID_ARGUMENT however deep (filters nest at most 16 levels, and an
    attribute or a filter value is never a list of lists)."""
    group = tag(9999, 3) * depth + tag(9999, 4) * depth
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    out = [Sent((group,), f"unknown groups {depth} deep")]
    value_in_value = [(b"", 1), (b"", 6)] * depth  # Value.list_value.values[0], repeated
    deep_value = nest(ld(3, b"x"), value_in_value)
    fields = rpc.input.fields_by_name
    if rpc.name == "SearchVectorStore":
        head = ld(1, ids.stores[0].encode()) + ld(2, b"arrows")
        comparison = ld(1, b"eq") + ld(2, b"k") + ld(3, ld(3, b"v"))
        chain = nest(comparison, [(ld(1, b"and"), 4)] * (depth - 1))
        out.append(Sent((head + ld(4, chain),), f"filters {depth} deep", invalid))
        in_list = ld(1, b"in") + ld(2, b"k") + ld(3, deep_value)
        out.append(Sent((head + ld(4, in_list),), f"filter value {depth} deep", invalid))
    if "attributes" in fields:
        number = fields["attributes"].number
        entry = ld(1, b"k") + ld(2, deep_value)
        base = ld(1, ids.stores[0].encode()) + ld(2, ids.files[0].encode())
        out.append(Sent((base + ld(number, entry),), f"attribute {depth} deep", invalid))
    return out


def _deep_body(rpc: Rpc, ids: Ids, depth: int, pick: int) -> Sent:
    bodies = _deep_bodies(rpc, depth, ids)
    return bodies[pick % len(bodies)]


def _bad_string(path: tuple[FieldDescriptor, ...], bad: bytes, base: bytes) -> Sent:
    """Invalid UTF-8 in the field at ``path``, ahead of a valid message (so it is the first
    fault the server meets, whatever the message holds)."""
    where = ".".join(f.name for f in path)
    body = _in_path(path, bad) + base
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return Sent((body,), f"invalid UTF-8 in {where}", invalid, where)


def raw_st(rpc: Rpc, ids: Ids) -> st.SearchStrategy[Sent]:
    base = message_st(rpc.input, ids).map(lambda m: m.SerializeToString())
    unknown = st.lists(
        st.tuples(
            st.integers(0, 2**29 - 1),
            st.sampled_from([0, 1, 2, 5]),
            st.binary(max_size=16),
            st.integers(0, 2**64 - 1),
        ).map(_unknown_field),
        min_size=1,
        max_size=4,
    ).map(b"".join)
    bad_string = st.builds(
        _bad_string,
        st.sampled_from(_string_paths(rpc.input)),
        st.builds(lambda bad, n: bad * n, st.sampled_from(BAD_UTF8), st.sampled_from([1, 1000])),
        base,
    )
    options: list[st.SearchStrategy[bytes]] = [
        st.binary(max_size=300),
        st.tuples(base, st.integers(0, 10**6)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)]),
        st.tuples(base, unknown).map(b"".join),
    ]
    enums = [f for f in rpc.input.fields if f.enum_type is not None]
    if enums:
        bad_enum = st.builds(
            lambda b, f, v: b + tag(f.number, 0) + varint(v),
            base,
            st.sampled_from(enums),
            st.sampled_from([99, -1, 2**31 - 1, -(2**31), 2**32 + 2, 2**63]),
        )
        options.append(bad_enum)
    deep = st.builds(
        functools.partial(_deep_body, rpc, ids), st.sampled_from(DEPTHS), st.integers()
    )
    sent = st.one_of(
        st.one_of(options).map(lambda b: Sent((b,), f"{len(b)} raw bytes")), bad_string, deep
    )
    if not rpc.client_streaming:
        return sent
    # UploadFile: a good header then bad bytes, or bad bytes first; data pieces around them.
    header = files_pb2.UploadFileRequest(filename="fuzz.txt").SerializeToString()
    data = files_pb2.UploadFileRequest(data=b"payload").SerializeToString()
    pieces = st.one_of(sent.map(lambda s: s.bodies[0]), st.just(header), st.just(data))
    return st.lists(pieces, max_size=4).map(lambda bodies: Sent(tuple(bodies), "raw upload"))


def _unknown_field(spec: tuple[int, int, bytes, int]) -> bytes:
    number, wire, payload, number_value = spec
    if wire == 0:
        return tag(number, 0) + varint(number_value)
    if wire == 1:
        return tag(number, 1) + struct.pack("<Q", number_value)
    if wire == 5:
        return tag(number, 5) + struct.pack("<I", number_value & 0xFFFFFFFF)
    return ld(number, payload)


def known_cases(ids: Ids) -> list[tuple[str, Sent]]:
    """Hand-picked bodies with the one answer each must get (alice calling)."""
    store, file, batch = (x.encode() for x in (ids.stores[0], ids.files[0], ids.batches[0]))
    header = files_pb2.UploadFileRequest(filename="fine.txt").SerializeToString()
    comparison = ld(1, b"eq") + ld(2, b"k") + ld(3, ld(3, b"v"))
    filters_1000 = nest(comparison, [(ld(1, b"and"), 4)] * 999)
    filters_17 = nest(comparison, [(ld(1, b"or"), 4)] * 16)
    list_1000 = nest(ld(3, b"x"), [(b"", 1), (b"", 6)] * 1000)
    search = ld(1, store) + ld(2, b"q")

    def invalid(body: bytes | tuple[bytes, ...], named: str | None = None) -> Sent:
        bodies = body if isinstance(body, tuple) else (body,)
        return Sent(bodies, "", grpc.StatusCode.INVALID_ARGUMENT, named)

    def answered(body: bytes, code: grpc.StatusCode) -> Sent:
        return Sent((body,), "", code)

    return [
        ("ListVectorStoreFiles", invalid(ld(1, store) + tag(6, 0) + varint(99), "filter")),
        ("ListVectorStoreFiles", invalid(ld(1, store) + tag(6, 0) + varint(-1), "filter")),
        (
            "ListFileBatchFiles",
            invalid(ld(1, store) + ld(2, batch) + tag(7, 0) + varint(77), "filter"),
        ),
        (
            "ListVectorStoreFiles",
            answered(ld(1, store) + tag(6, 0) + varint(2), grpc.StatusCode.OK),
        ),
        ("GetFile", invalid(ld(1, b"file-\xff"), "file_id")),
        (
            "GetVectorStore",
            answered(ld(1, store) + ld(999, b"?") + tag(5000, 0) + b"\x07", grpc.StatusCode.OK),
        ),
        ("GetVectorStore", invalid(b"\xff\xff\xff", "request")),
        ("DeleteFile", answered(ld(1, file[:-1]), grpc.StatusCode.NOT_FOUND)),
        ("UploadFile", invalid(ld(1, b"a\xffb.txt"), "filename")),
        ("UploadFile", invalid((header, ld(4, b"data"), ld(1, b"\xc0\x80")), "filename")),
        ("UploadFile", invalid((header, b"\x0a\x7f"), "filename")),
        ("SearchVectorStore", invalid(search + ld(4, filters_1000), "filters" + ".filters" * 99)),
        ("SearchVectorStore", invalid(search + ld(4, filters_17))),
        (
            "CreateVectorStoreFile",
            invalid(ld(1, store) + ld(2, file) + ld(3, ld(1, b"k") + ld(2, list_1000))),
        ),
        ("CreateFileBatch", invalid(ld(1, store) + ld(2, b"\xed\xa0\x80"), "file_ids")),
        (
            "UpdateVectorStore",
            invalid(ld(1, store) + ld(4, ld(1, b"k\xff") + ld(2, b"v")), "metadata.key"),
        ),
    ]


# -- 1. adversarial requests to every RPC --------------------------------------------------


async def _fuzz_rpcs(
    running: Running,
    test: str,
    examples: int,
    make: Callable[[Rpc, Ids], st.SearchStrategy[Sent]],
) -> None:
    world = await World.create(running)
    run = on_loop(asyncio.get_running_loop())

    @fuzz_settings(examples, shrink=False)  # a replay sends 22 RPCs: too slow to shrink
    @given(st.data())
    def example(data: st.DataObject) -> None:
        run(world.ensure())
        ids = world.ids()
        problems: list[str] = []
        for rpc in data.draw(st.permutations(RPCS), label="order"):
            sent = data.draw(make(rpc, ids), label=rpc.name)
            caller = data.draw(world.caller_st(), label="caller")
            started = time.monotonic()
            code, error = run(invoke(running.channel, rpc, sent, caller.metadata))
            problem = judge(test, rpc, code, error, caller, sent)
            if time.monotonic() - started > CALL_TIMEOUT:
                problem = problem or f"{rpc.name} took {time.monotonic() - started:.1f} s"
            if problem:
                problems.append(f"{problem}\n    sent: {sent!r}")
        run(healthy(running.alice))
        assert not problems, "\n".join(problems)
        EXAMPLES[test] += 1  # counted once complete (hypothesis drops overrun examples)

    await asyncio.to_thread(example)
    assert EXAMPLES[test] >= examples
    assert CALLS[test] >= EXAMPLES[test] * len(RPCS)


async def test_structured_requests_to_every_rpc(running: Running) -> None:
    """Well-formed messages with hostile values, to all 22 RPCs in every example."""
    await _fuzz_rpcs(running, "structured", STRUCTURED_EXAMPLES, structured_st)


async def test_raw_wire_requests_to_every_rpc(running: Running) -> None:
    """Hand-built bytes: invalid UTF-8, unknown fields and enum numbers, nesting 17…10,000
    deep, garbage, truncation; and a body past the server's message size limit."""
    world = await World.create(running)
    alice = Caller("alice", running.alice.metadata, True)
    too_big = Sent((ld(9999, b"\x00" * (running.server.settings.max_message_bytes + 1)),))
    for rpc in RPCS:
        code, error = await invoke(running.channel, rpc, too_big, alice.metadata)
        assert not judge("raw", rpc, code, error, alice), (rpc.name, code, error)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (rpc.name, code)
    for rpc in RPCS:  # an empty body is the default message: allowed, any defined status
        code, error = await invoke(running.channel, rpc, Sent((b"",)), alice.metadata)
        assert not judge("raw", rpc, code, error, alice), (rpc.name, code, error)
    await world.ensure()
    for name, sent in known_cases(world.ids()):
        rpc = next(r for r in RPCS if r.name == name)
        code, error = await invoke(running.channel, rpc, sent, alice.metadata)
        problem = judge("raw", rpc, code, error, alice, sent)
        assert not problem, f"{problem}\n    sent: {sent!r}"
    await _fuzz_rpcs(running, "raw", RAW_EXAMPLES, raw_st)


# -- what the fuzzers found, kept as explicit examples --------------------------------------
#
# A randomized run (`make fuzz`) that finds a failing request adds it here as an @example of
# a test over the field it broke, so every `make test` checks it again, whatever the seed.

FIELD_RPCS = {r.name: r for r in RPCS}


def test_make_test_runs_hypothesis_derandomized() -> None:
    """`make test` (profile "ci"): fixed examples, no database carried between runs; a
    failure prints its replay blob. The found examples below run in every profile."""
    if PROFILE != "ci":
        pytest.skip(f"the {PROFILE!r} profile is randomized on purpose")
    current = hypothesis_settings.default
    assert current is not None
    assert current.derandomize and current.database is None and current.print_blob
    assert Phase.explicit in fuzz_settings(1).phases


async def _call_field(
    running: Running, world: World, rpc_name: str, message: Message
) -> tuple[grpc.StatusCode, list[str]]:
    rpc = FIELD_RPCS[rpc_name]
    alice = world.callers[0]
    sent = sent_message(message)
    code, error = await invoke(running.channel, rpc, sent, alice.metadata)
    problem = judge("found", rpc, code, error, alice, sent)
    assert not problem, f"{problem}\n    sent: {sent!r}"
    fields = [f for f, _ in field_violations(error)] if error is not None else []
    return code, fields


async def _completed_world(running: Running) -> World:
    world = await World.create(running)
    a = world.alice
    assert (await poll_batch(running.alice, a.store, a.batch)).status == B_COMPLETED
    return world


async def test_found_after_sequence_past_int64(running: Running) -> None:
    """WatchFileBatch with ``after_sequence`` ≥ 2^63 answered INTERNAL (SQLite integers are
    signed 64-bit): INVALID_ARGUMENT naming the field."""
    world = await _completed_world(running)
    run = on_loop(asyncio.get_running_loop())
    a = world.alice

    @fuzz_settings(examples(25))
    @given(after_sequence=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 10)))
    @example(after_sequence=2**63)
    @example(after_sequence=2**64 - 1)
    @example(after_sequence=2**63 - 1)
    @example(after_sequence=0)
    def check(after_sequence: int) -> None:
        request = file_batches_pb2.WatchFileBatchRequest(
            vector_store_id=a.store, batch_id=a.batch, after_sequence=after_sequence
        )
        code, fields = run(_call_field(running, world, "WatchFileBatch", request))
        if after_sequence < 2**63:
            assert code == grpc.StatusCode.OK
        else:
            assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["after_sequence"])

    await asyncio.to_thread(check)


async def test_found_content_page_tokens(running: Running) -> None:
    """GetVectorStoreFileContent with ``page`` "9"*30, 2^63 or "²" (a digit to str.isdigit,
    not to int) answered INTERNAL: INVALID_ARGUMENT naming the field; a page past the end of
    the file is an empty page."""
    world = await _completed_world(running)
    run = on_loop(asyncio.get_running_loop())
    a = world.alice

    @fuzz_settings(examples(25))
    @given(page=st.one_of(TEXT, st.integers(0, 2**70).map(str)))
    @example(page="9" * 30)
    @example(page=str(2**63))
    @example(page="²")
    @example(page="٣")
    @example(page="-1")
    @example(page=str(2**63 - 1))
    @example(page="0")
    @example(page="")
    def check(page: str) -> None:
        request = vector_stores_pb2.GetVectorStoreFileContentRequest(
            vector_store_id=a.store, file_id=a.file, page=page
        )
        code, fields = run(_call_field(running, world, "GetVectorStoreFileContent", request))
        if page == "" or (page.isascii() and page.isdigit() and int(page) < 2**63):
            assert code == grpc.StatusCode.OK
        else:
            assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page"])

    await asyncio.to_thread(check)


# -- 2. adversarial files through the pipeline ---------------------------------------------


@dataclass(frozen=True)
class Doc:
    """A file to upload, with what may become of it."""

    name: str
    data: bytes
    kind: str
    outcomes: frozenset[str] = frozenset({"completed"}) | FILE_ERRORS
    upload_code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""
    """When it fails: words its last_error.message must hold (it failed for that reason)."""

    def __repr__(self) -> str:
        return f"Doc({self.kind}, {self.name!r}, {len(self.data)} B, {self.data[:24]!r}…)"


FAILS_INVALID = frozenset({"invalid_file"})


@functools.cache
def sample_pdf() -> bytes:
    return make_pdf([f"Line {i}: quivers hold arrows, bows stay strung." for i in range(90)])


@functools.cache
def sample_docx() -> bytes:
    paragraphs = [f"Paragraph {i} about quivers and arrows." for i in range(40)]
    return make_docx(paragraphs, table=[["name", "count"], ["arrows", "12"]])


def _flip(flips: list[tuple[int, int]]) -> Doc:
    data = bytearray(sample_docx())
    for at, mask in flips:
        data[at % len(data)] ^= mask
    return Doc("flipped.docx", bytes(data), "corrupt-docx")


def _odd_utf16(text: str, bom: bool) -> Doc:
    data = (b"\xff\xfe" if bom else b"") + text.encode("utf-16-le") + b"\x00"
    # With a byte-order mark the decoder meets the odd byte: always invalid_file.
    if bom:
        return Doc("odd-utf16.txt", data, "odd-utf16+bom", FAILS_INVALID, reason="UTF-16")
    return Doc("odd-utf16.txt", data, "odd-utf16")


EXTENSIONS = ["", ".txt", ".md", ".json", ".html", ".pdf", ".docx", ".py", ".bin", ".PDF"]
FILES_LIMIT = 1 * MiB

DOCS = st.one_of(
    st.builds(
        lambda ext, data: Doc("random" + ext, data, "random", Doc.outcomes),
        st.sampled_from(EXTENSIONS),
        st.binary(max_size=4096),
    ),
    st.builds(
        lambda ext, text: Doc("text" + ext, text.encode(), "text"),
        st.sampled_from(EXTENSIONS),
        st.text(max_size=2000),
    ),
    st.integers(0, 10**9).map(
        lambda cut: Doc("cut.pdf", sample_pdf()[: cut % len(sample_pdf())], "truncated-pdf")
    ),
    st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=8).map(
        _flip
    ),
    st.builds(_odd_utf16, st.text(max_size=200), st.booleans()),
    st.sampled_from(
        [
            Doc("empty.txt", b"", "empty", FAILS_INVALID, reason="empty"),
            Doc("deep.json", b"[" * 100_000, "deep-json", FAILS_INVALID, reason="JSON"),
            Doc("nul.txt", b"text\x00" * 100, "nul", frozenset({"unsupported_file"})),
            Doc("fake.pdf", b"%PDF-1.7\n" + b"\xff" * 500, "fake-pdf"),
            Doc("not-a-zip.docx", b"just text", "fake-docx", FAILS_INVALID),
        ]
    ),
    st.integers(1, 65536).map(
        lambda over: Doc(
            "too-big.txt",
            b"x" * (FILES_LIMIT + over),
            "too-big",
            upload_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    ),
    st.just(Doc("at-limit.txt", b"y" * FILES_LIMIT, "at-limit", frozenset({"completed"}))),
)


def outcome_of(f: vector_stores_pb2.VectorStoreFile) -> str:
    if f.status == F_COMPLETED:
        return "completed"
    if f.status == F_FAILED:
        return f.last_error.code
    return common_pb2.VectorStoreFileStatus.Name(f.status)


async def settle(tenant: Tenant, store_id: str, batch_id: str, within: float) -> None:
    """Watches the batch to its end: the last message carries a terminal status."""
    last: file_batches_pb2.WatchFileBatchResponse | None = None
    call = tenant.batches.WatchFileBatch(
        file_batches_pb2.WatchFileBatchRequest(vector_store_id=store_id, batch_id=batch_id),
        metadata=tenant.metadata,
        timeout=within,
    )
    try:
        async for message in call:
            last = message
    except aio.AioRpcError as exc:
        raise AssertionError(
            f"watching batch {batch_id}: {exc.code().name} {exc.details()}"
        ) from exc
    assert last is not None
    assert last.file_batch.status in TERMINAL_BATCH, last


async def run_batch(
    tenant: Tenant, store_id: str, docs: Sequence[Doc], test: str, within: float
) -> dict[str, vector_stores_pb2.VectorStoreFile]:
    """Uploads the docs, attaches the accepted ones as one batch, waits for it, and checks
    every file's end and the batch's. Returns the store files by document kind and index."""
    uploaded: dict[str, Doc] = {}
    for doc in docs:
        try:
            file = await upload(tenant, doc.name, doc.data)
        except aio.AioRpcError as exc:
            assert exc.code() == doc.upload_code, (doc, exc.code(), exc.details())
            assert exc.code() not in NEVER
            OUTCOMES[f"{test} {doc.kind}: upload {exc.code().name}"] += 1
            continue
        assert doc.upload_code == grpc.StatusCode.OK, (doc, "was accepted")
        assert file.bytes == len(doc.data)
        uploaded[file.id] = doc
    if not uploaded:
        return {}
    batch = await tenant.batches.CreateFileBatch(
        file_batches_pb2.CreateFileBatchRequest(vector_store_id=store_id, file_ids=list(uploaded)),
        metadata=tenant.metadata,
        timeout=CALL_TIMEOUT,
    )
    batch_id = batch.file_batch.id
    await settle(tenant, store_id, batch_id, within)
    reply = await tenant.batches.GetFileBatch(
        file_batches_pb2.GetFileBatchRequest(vector_store_id=store_id, batch_id=batch_id),
        metadata=tenant.metadata,
        timeout=CALL_TIMEOUT,
    )
    counts = reply.file_batch.file_counts
    assert reply.file_batch.status == B_COMPLETED, reply
    assert counts.completed + counts.failed == counts.total == len(uploaded), counts
    listed = await tenant.batches.ListFileBatchFiles(
        file_batches_pb2.ListFileBatchFilesRequest(
            vector_store_id=store_id, batch_id=batch_id, limit=100
        ),
        metadata=tenant.metadata,
        timeout=CALL_TIMEOUT,
    )
    assert {f.id for f in listed.data} == set(uploaded)
    out: dict[str, vector_stores_pb2.VectorStoreFile] = {}
    for f in listed.data:
        doc = uploaded[f.id]
        outcome = outcome_of(f)
        OUTCOMES[f"{test} {doc.kind}: {outcome}"] += 1
        allowed = doc.outcomes
        # Past --file-timeout (wall clock) or --file-parse-seconds (CPU): invalid_file.
        timed_out = outcome == "invalid_file" and any(
            flag in f.last_error.message for flag in ("--file-timeout", "--file-parse-seconds")
        )
        assert outcome in allowed or (timed_out and "timeout" in allowed), (doc, f)
        if f.status == F_FAILED:
            assert f.last_error.message, f
            assert doc.reason in f.last_error.message, (doc, f.last_error)
        else:
            assert not f.HasField("last_error"), f
            content = await tenant.stores.GetVectorStoreFileContent(
                vector_stores_pb2.GetVectorStoreFileContentRequest(
                    vector_store_id=store_id, file_id=f.id
                ),
                metadata=tenant.metadata,
                timeout=CALL_TIMEOUT,
            )
            assert content.data, f
        out[f"{doc.kind}#{len(out)}"] = f
    return out


async def search_still_works(tenant: Tenant, store_id: str) -> None:
    for query in ("quivers arrows", "x"):
        reply = await tenant.stores.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(vector_store_id=store_id, query=[query]),
            metadata=tenant.metadata,
            timeout=CALL_TIMEOUT,
        )
        assert all(0.0 <= r.score <= 1.0 for r in reply.data)


@pytest.mark.parametrize(
    "settings", [{"max_file_bytes": FILES_LIMIT}], indirect=True, ids=["max_file_bytes=1MiB"]
)
async def test_adversarial_files_settle(running: Running) -> None:
    """Batches of hostile files: each file COMPLETED or FAILED with a file error code, each
    batch COMPLETED; uploads past the (here 1 MiB) limit are RESOURCE_EXHAUSTED. The default
    limit is 512 MB, so a 1 GB upload meets the same refusal; this test sends 1 MiB + n."""
    assert Settings().max_file_bytes == 512 * MiB  # what a 1 GB upload would meet
    assert running.server.settings.max_file_bytes == FILES_LIMIT
    alice = running.alice
    store = await alice.stores.CreateVectorStore(
        vector_stores_pb2.CreateVectorStoreRequest(name="files"), metadata=alice.metadata
    )
    store_id = store.vector_store.id
    run = on_loop(asyncio.get_running_loop())

    @fuzz_settings(FILE_EXAMPLES)
    @given(st.lists(DOCS, min_size=1, max_size=5))
    def example(docs: list[Doc]) -> None:
        EXAMPLES["files"] += 1
        run(run_batch(alice, store_id, docs, "files", within=60.0))
        run(search_still_works(alice, store_id))
        run(healthy(alice))

    await asyncio.to_thread(example)
    assert EXAMPLES["files"] >= FILE_EXAMPLES


# -- 3. memory across rounds of hostile files ----------------------------------------------

BOMB_BYTES = 210 * MiB
"""What the zip bombs' document.xml inflates to: past the parser's 200 MB limit."""


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _docx_members() -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(sample_docx())) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@functools.cache
def zip_bomb() -> bytes:
    """A real DOCX whose word/document.xml is its own XML then zeros, 210 MB inflated, ~200 KB
    deflated. Streamed into the archive, so building it never holds 210 MB."""
    members = _docx_members()
    xml = members.pop("word/document.xml")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo("word/document.xml")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as out:
            out.write(xml)
            zeros = b"\x00" * MiB
            for _ in range((BOMB_BYTES - len(xml)) // MiB):
                out.write(zeros)
    return buffer.getvalue()


@functools.cache
def lying_zip_bomb() -> bytes:
    """The same bomb, but its headers declare only the real XML's size and CRC: a reader that
    trusts the declared size stops there; one that inflates everything meets 210 MB."""
    xml = _docx_members()["word/document.xml"]
    return _declare(zip_bomb(), "word/document.xml", zlib.crc32(xml), len(xml))


def _declare(archive_bytes: bytes, name: str, crc: int, size: int) -> bytes:
    """Rewrites the CRC and uncompressed size that the member's local header and central
    directory entry declare (the compressed data stays as it is)."""
    data = bytearray(archive_bytes)
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        local = archive.getinfo(name).header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, local + 14, crc)
    struct.pack_into("<I", data, local + 22, size)
    end = data.rfind(b"PK\x05\x06")
    (entry,) = struct.unpack_from("<I", data, end + 16)
    while data[entry : entry + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, entry + 28)
        if data[entry + 46 : entry + 46 + name_len] == name.encode():
            struct.pack_into("<I", data, entry + 16, crc)
            struct.pack_into("<I", data, entry + 24, size)
        entry += 46 + name_len + extra_len + comment_len
    return bytes(data)


@functools.cache
def many_parts_docx() -> bytes:
    members = _docx_members()
    members.update({f"word/media/part{i}.bin": b"" for i in range(10_001)})
    return _zip(members)


@functools.cache
def one_char_50mb() -> bytes:
    return b"a" * (50 * MiB)


@functools.cache
def one_line_5m() -> bytes:
    words = b"quiver arrow bow string fletching nock shaft point "
    return (words * (5_000_000 // len(words) + 1))[:5_000_000]


ROUND_OUTCOMES_TIMEOUT = frozenset({"completed", "timeout"})


def hostile_docs() -> list[Doc]:
    """One round's fixed hostile files."""
    return [
        Doc("bomb.docx", zip_bomb(), "zip-bomb", FAILS_INVALID, reason="zip bomb"),
        Doc("lying-bomb.docx", lying_zip_bomb(), "lying-zip-bomb", Doc.outcomes),
        Doc("parts.docx", many_parts_docx(), "many-parts", FAILS_INVALID, reason="too many"),
        Doc("one-char.txt", one_char_50mb(), "one-char-50MB", ROUND_OUTCOMES_TIMEOUT),
        Doc("one-line.txt", one_line_5m(), "one-line-5M", ROUND_OUTCOMES_TIMEOUT),
        _odd_utf16("odd length utf-16 text " * 1000, bom=True),
        Doc("cut.pdf", sample_pdf()[: len(sample_pdf()) // 2], "truncated-pdf"),
    ]


def proc_status(pid: int | str) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def settled_rss() -> int:
    """The test process's RSS once garbage is collected and free heap handed back to the
    OS, so it measures live memory rather than what the allocator keeps cached."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return proc_status("self").get("VmRSS", 0)


@dataclass
class WorkerPeaks:
    """Samples every worker's VmHWM while files are processed (a worker killed by a timeout
    is gone at the end, but its last sample stays)."""

    pids: Callable[[], list[int]]
    peaks: dict[int, int] = field(default_factory=dict)

    def sample(self) -> None:
        for pid in self.pids():
            hwm = proc_status(pid).get("VmHWM", 0)
            self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        self.sample()


@pytest.mark.parametrize(
    "settings",
    [{"max_file_bytes": 64 * MiB, "file_timeout": 150.0}],
    indirect=True,
    ids=["max_file_bytes=64MiB"],
)
async def test_memory_bounded_across_hostile_rounds(running: Running) -> None:
    """Three identical rounds of hostile files (zip bombs, 50 MB of one character, a line of
    5 million characters, odd UTF-16, a cut PDF), each in a fresh store deleted afterwards.
    Every file ends as expected; worker peaks stay under 2 GiB; the server's RSS after rounds
    2 and 3 is within 100 MiB of its RSS after round 1."""
    alice = running.alice
    pool = running.server.core.pool
    docs = hostile_docs()  # built once, before any measurement
    peaks = WorkerPeaks(pool.worker_pids)
    rss_after: list[int] = []
    loop = asyncio.get_running_loop()
    run = on_loop(loop)

    async def one_round(order: list[int]) -> None:
        store = await alice.stores.CreateVectorStore(
            vector_stores_pb2.CreateVectorStoreRequest(name="hostile"), metadata=alice.metadata
        )
        store_id = store.vector_store.id
        stop = asyncio.Event()
        sampler = asyncio.create_task(peaks.run(stop))
        try:
            ended = await run_batch(alice, store_id, [docs[i] for i in order], "memory", 240.0)
        finally:
            stop.set()
            await sampler
        assert len(ended) == len(docs)
        await search_still_works(alice, store_id)
        await alice.stores.DeleteVectorStore(
            vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=store_id),
            metadata=alice.metadata,
        )
        for f in ended.values():
            await alice.files.DeleteFile(
                files_pb2.DeleteFileRequest(file_id=f.id), metadata=alice.metadata
            )
        await healthy(alice)

    @fuzz_settings(MEMORY_ROUNDS, shrink=False)
    @given(st.permutations(range(len(docs))))
    def a_round(order: list[int]) -> None:
        EXAMPLES["memory"] += 1
        run(one_round(order))
        rss_after.append(settled_rss())

    await asyncio.to_thread(a_round)
    assert len(rss_after) == MEMORY_ROUNDS

    worker_peak = max(peaks.peaks.values())
    server_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    growth = max(rss_after[1:]) - rss_after[0]
    steady = rss_after[2] - rss_after[1]
    NOTES.append(
        "memory    server RSS after each round: "
        + ", ".join(f"{r / MiB:.0f} MiB" for r in rss_after)
        + f" (growth after round 1: {growth / MiB:+.0f} MiB, bound {SERVER_GROWTH_BOUND // MiB};"
        + f" round 3 vs 2: {steady / MiB:+.0f} MiB, bound {SERVER_STEADY_BOUND // MiB})"
    )
    NOTES.append(
        f"memory    worker peak RSS (VmHWM) {worker_peak / MiB:.0f} MiB over "
        f"{len(peaks.peaks)} worker(s) (bound {WORKER_PEAK_BOUND // MiB}); test process peak "
        f"{server_peak / MiB:.0f} MiB (bound {SERVER_PEAK_BOUND // MiB}); "
        f"pool restarts {pool.restarts}"
    )
    assert worker_peak < WORKER_PEAK_BOUND, peaks.peaks
    assert server_peak < SERVER_PEAK_BOUND, server_peak
    assert growth < SERVER_GROWTH_BOUND, [r // MiB for r in rss_after]
    assert steady < SERVER_STEADY_BOUND, [r // MiB for r in rss_after]
    assert os.getpid() not in peaks.peaks  # the workers are other processes
