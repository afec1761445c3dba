"""Search filters: ``core/filters.py`` against an independent reference evaluator (property
based), its validation paths, and the same filters through SearchVectorStore.

Filters are written here as plain dicts in OpenAI's JSON shape (``{"type", "key", "value"}``
or ``{"type", "filters"}``) and turned into a ``RawFilter`` (unit tests) or a proto
``Filter`` (server tests), so one generator serves both.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from quiver.server.core.errors import InvalidArgument
from quiver.server.core.filters import RawFilter, matches, parse_filter
from quiver.v1 import file_batches_pb2, vector_stores_pb2

from tests.conftest import Running, Tenant, examples
from tests.rpc_helpers import upload, violated_fields

Scalar: TypeAlias = str | float | int | bool
FilterDict: TypeAlias = dict[str, Any]

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
ORDERED = ("gt", "gte", "lt", "lte")

# -- the reference: the module docstring's semantics, written out independently ----------


def _kind(value: Scalar) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    return "number"


def reference(node: FilterDict, attributes: Mapping[str, Scalar]) -> bool:
    """Brute force. A missing key or a value of another kind makes a comparison false,
    except ``ne`` and ``nin`` (then true); ``gt…lte`` order numbers numerically and strings
    by code point; ``in`` holds when some list element has the value's kind and equals it."""
    op: str = node["type"]
    if op == "and":
        return all(reference(child, attributes) for child in node["filters"])
    if op == "or":
        return any(reference(child, attributes) for child in node["filters"])
    key, expected = node["key"], node["value"]
    if key not in attributes:
        return op in ("ne", "nin")
    actual = attributes[key]
    if op in ("in", "nin"):
        found = False
        for candidate in expected:
            if _kind(candidate) == _kind(actual) and candidate == actual:
                found = True
        return found if op == "in" else not found
    if _kind(actual) != _kind(expected):
        return op == "ne"
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if _kind(actual) == "string":
        a_codes = [ord(c) for c in str(actual)]
        e_codes = [ord(c) for c in str(expected)]
        order = (a_codes > e_codes) - (a_codes < e_codes)
    else:
        order = (float(actual) > float(expected)) - (float(actual) < float(expected))
    return {"gt": order > 0, "gte": order >= 0, "lt": order < 0, "lte": order <= 0}[op]


# -- conversions ---------------------------------------------------------------------------

_MISSING = object()


def raw(node: FilterDict) -> RawFilter:
    value = node.get("value", _MISSING)
    return RawFilter(
        type=node.get("type", ""),
        key=node.get("key", ""),
        value=None if value is _MISSING else value,
        has_value=value is not _MISSING,
        filters=[raw(child) for child in node.get("filters", [])],
    )


def pb_value(value: Any) -> struct_pb2.Value:
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=float(value))
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    assert isinstance(value, list)
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[pb_value(v) for v in value]))


def pb_filter(node: FilterDict) -> vector_stores_pb2.Filter:
    message = vector_stores_pb2.Filter(
        type=node.get("type", ""),
        key=node.get("key", ""),
        filters=[pb_filter(child) for child in node.get("filters", [])],
    )
    if "value" in node:
        message.value.CopyFrom(pb_value(node["value"]))
    return message


def violation_paths(exc: InvalidArgument) -> list[str]:
    return [v.field for v in exc.violations]


# -- strategies ----------------------------------------------------------------------------

UNIT_KEYS = ("a", "b", "c")
STRINGS = ("", "a", "ab", "b", "B", "é", "10", "9")
NUMBERS: tuple[float | int, ...] = (-2, -1.5, -0.0, 0, 0.5, 1, 2, 9, 10, 1e300)

scalars: st.SearchStrategy[Scalar] = st.one_of(
    st.sampled_from(STRINGS),
    st.sampled_from(NUMBERS),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=3),
)
unit_attributes = st.dictionaries(st.sampled_from(UNIT_KEYS), scalars, max_size=len(UNIT_KEYS))


def comparisons(
    keys: Sequence[str], values: st.SearchStrategy[Scalar]
) -> st.SearchStrategy[FilterDict]:
    @st.composite
    def build(draw: st.DrawFn) -> FilterDict:
        op = draw(st.sampled_from(COMPARISONS))
        key = draw(st.sampled_from(keys))
        value: Any
        if op in ("in", "nin"):
            value = draw(st.lists(values, min_size=1, max_size=4))
        elif op in ORDERED:
            value = draw(values.filter(lambda v: not isinstance(v, bool)))
        else:
            value = draw(values)
        return {"type": op, "key": key, "value": value}

    return build()


def trees(leaves: st.SearchStrategy[FilterDict], depth: int) -> st.SearchStrategy[FilterDict]:
    """Comparisons, or and/or over 1…4 subtrees, at most ``depth`` compounds deep."""
    if depth == 0:
        return leaves
    compounds = st.builds(
        lambda op, children: {"type": op, "filters": children},
        st.sampled_from(("and", "or")),
        st.lists(trees(leaves, depth - 1), min_size=1, max_size=4),
    )
    return st.one_of(leaves, compounds)


unit_filters = trees(comparisons((*UNIT_KEYS, "zz"), scalars), depth=4)


# -- unit: evaluation ----------------------------------------------------------------------


@hypothesis_settings(max_examples=examples(1500), deadline=None)
@given(unit_filters, unit_attributes)
def test_matches_equals_reference(node: FilterDict, attributes: dict[str, Scalar]) -> None:
    parsed = parse_filter(raw(node))
    assert matches(parsed, attributes) == reference(node, attributes)


@hypothesis_settings(max_examples=examples(300), deadline=None)
@given(unit_filters, st.lists(unit_attributes, min_size=1, max_size=5))
def test_compounds_combine_their_children(node: FilterDict, many: list[dict[str, Scalar]]) -> None:
    """``and`` of a tree with itself, and ``or`` of the tree alone, agree with the tree."""
    parsed_and = parse_filter(raw({"type": "and", "filters": [node, node]}))
    parsed_or = parse_filter(raw({"type": "or", "filters": [node]}))
    single = parse_filter(raw(node))
    for attributes in many:
        assert matches(parsed_and, attributes) == matches(single, attributes)
        assert matches(parsed_or, attributes) == matches(single, attributes)


@pytest.mark.parametrize(
    ("node", "attributes", "expected"),
    [
        # A missing key: only ne and nin hold.
        *[({"type": op, "key": "k", "value": 1}, {}, op == "ne") for op in COMPARISONS[:6]],
        ({"type": "in", "key": "k", "value": [1]}, {}, False),
        ({"type": "nin", "key": "k", "value": [1]}, {}, True),
        # Another kind: the same, and bools are not numbers.
        ({"type": "eq", "key": "k", "value": 1}, {"k": True}, False),
        ({"type": "ne", "key": "k", "value": 1}, {"k": True}, True),
        ({"type": "eq", "key": "k", "value": True}, {"k": 1}, False),
        ({"type": "in", "key": "k", "value": [1, "x"]}, {"k": True}, False),
        ({"type": "nin", "key": "k", "value": [1]}, {"k": True}, True),
        ({"type": "gt", "key": "k", "value": 1}, {"k": "2"}, False),
        ({"type": "lt", "key": "k", "value": "2"}, {"k": 1}, False),
        # Numbers: ints and floats compare as numbers.
        ({"type": "eq", "key": "k", "value": 2.0}, {"k": 2}, True),
        ({"type": "gte", "key": "k", "value": 2020}, {"k": 2020.0}, True),
        ({"type": "lt", "key": "k", "value": 10}, {"k": 9}, True),
        # Strings: by code point ("10" < "9", "B" < "a").
        ({"type": "lt", "key": "k", "value": "9"}, {"k": "10"}, True),
        ({"type": "gt", "key": "k", "value": "a"}, {"k": "B"}, False),
        ({"type": "in", "key": "k", "value": ["x", "y"]}, {"k": "y"}, True),
        ({"type": "nin", "key": "k", "value": ["x", "y"]}, {"k": "y"}, False),
        # Booleans: eq/ne/in only.
        ({"type": "eq", "key": "k", "value": False}, {"k": False}, True),
        ({"type": "ne", "key": "k", "value": False}, {"k": True}, True),
    ],
)
def test_documented_semantics(
    node: FilterDict, attributes: dict[str, Scalar], expected: bool
) -> None:
    assert matches(parse_filter(raw(node)), attributes) is expected
    assert reference(node, attributes) is expected


# -- unit: validation ----------------------------------------------------------------------


def chain(depth: int) -> FilterDict:
    """``depth`` nodes: and-nodes nested, a comparison at the bottom."""
    node: FilterDict = {"type": "eq", "key": "k", "value": 1}
    for _ in range(depth - 1):
        node = {"type": "and", "filters": [node]}
    return node


def wide(nodes: int) -> FilterDict:
    """An and over and-groups of up to 64 comparisons, ``nodes`` nodes in all."""
    leaf: FilterDict = {"type": "eq", "key": "k", "value": 1}
    groups: list[FilterDict] = []
    left = nodes - 1
    while left > 0:
        size = min(64, left - 1)
        groups.append({"type": "and", "filters": [leaf] * size})
        left -= size + 1
    return {"type": "and", "filters": groups}


def count_nodes(node: FilterDict) -> int:
    return 1 + sum(count_nodes(c) for c in node.get("filters", []))


BAD_FILTERS: list[tuple[str, FilterDict, str]] = [
    (
        "unknown operator",
        {"type": "and", "filters": [{"type": "like", "key": "k", "value": "x"}]},
        "filters.filters[0].type",
    ),
    ("empty type", {"key": "k", "value": "x"}, "filters.type"),
    (
        "bool with gt",
        {"type": "or", "filters": [chain(1), {"type": "gt", "key": "k", "value": True}]},
        "filters.filters[1].value",
    ),
    ("bool with lte", {"type": "lte", "key": "k", "value": False}, "filters.value"),
    ("in with a scalar", {"type": "in", "key": "k", "value": "x"}, "filters.value"),
    ("nin with a scalar", {"type": "nin", "key": "k", "value": 3}, "filters.value"),
    ("in with an empty list", {"type": "in", "key": "k", "value": []}, "filters.value"),
    ("in with 257 values", {"type": "in", "key": "k", "value": list(range(257))}, "filters.value"),
    (
        "in with a list inside",
        {"type": "in", "key": "k", "value": ["a", ["b"]]},
        "filters.value[1]",
    ),
    ("in with null inside", {"type": "nin", "key": "k", "value": [None]}, "filters.value[0]"),
    ("eq with a list", {"type": "eq", "key": "k", "value": ["a"]}, "filters.value"),
    ("eq with null", {"type": "eq", "key": "k", "value": None}, "filters.value"),
    (
        "compound with a key",
        {"type": "and", "key": "k", "filters": [chain(1)]},
        "filters.key",
    ),
    (
        "compound with a value",
        {"type": "or", "value": 1, "filters": [chain(1)]},
        "filters.value",
    ),
    ("compound without filters", {"type": "and", "filters": []}, "filters.filters"),
    ("compound with 65 filters", {"type": "or", "filters": [chain(1)] * 65}, "filters.filters"),
    (
        "comparison with filters",
        {"type": "eq", "key": "k", "value": 1, "filters": [chain(1)]},
        "filters.filters",
    ),
    (
        "missing key",
        {"type": "and", "filters": [chain(1), chain(1), {"type": "eq", "value": 1}]},
        "filters.filters[2].key",
    ),
    ("missing value", {"type": "ne", "key": "k"}, "filters.value"),
    ("NaN", {"type": "eq", "key": "k", "value": math.nan}, "filters.value"),
    ("infinity", {"type": "gte", "key": "k", "value": -math.inf}, "filters.value"),
    ("NaN in a list", {"type": "in", "key": "k", "value": [1, math.nan]}, "filters.value[1]"),
    ("depth 17", chain(17), "filters" + ".filters[0]" * 16),
    # Node 257 is child 59 of the fourth group (1 + 4 groups + 256 leaves = 261 nodes).
    ("257 nodes", wide(261), "filters.filters[3].filters[59]"),
]


@pytest.mark.parametrize(("node", "path"), [(n, p) for _, n, p in BAD_FILTERS],
                         ids=[name for name, _, _ in BAD_FILTERS])  # fmt: skip
def test_invalid_filters_name_the_path(node: FilterDict, path: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_filter(raw(node))
    assert path in violation_paths(err.value), violation_paths(err.value)


def test_limits_are_inclusive() -> None:
    assert count_nodes(wide(256)) == 256
    assert count_nodes(wide(261)) == 261
    parse_filter(raw(chain(16)))
    parse_filter(raw(wide(256)))
    parse_filter(raw({"type": "or", "filters": [chain(1)] * 64}))
    parse_filter(raw({"type": "in", "key": "k", "value": list(range(256))}))


def test_every_violation_is_reported() -> None:
    node = {
        "type": "and",
        "filters": [
            {"type": "gt", "key": "k", "value": True},
            chain(1),
            {"type": "or", "filters": [{"type": "in", "key": "k", "value": []}, {"type": "?"}]},
        ],
    }
    with pytest.raises(InvalidArgument) as err:
        parse_filter(raw(node))
    assert set(violation_paths(err.value)) == {
        "filters.filters[0].value",
        "filters.filters[2].filters[0].value",
        "filters.filters[2].filters[1].type",
    }


def test_a_path_prefix_can_be_given() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_filter(raw({"type": "eq", "key": "k"}), path="request.filters")
    assert violation_paths(err.value) == ["request.filters.value"]


# -- through the server --------------------------------------------------------------------

TEAMS = ("red", "green", "blue", "gold")
YEARS = (2015, 2017, 2019.5, 2020, 2024)
OTHERS: tuple[Scalar, ...] = ("", "Red", "zzz", 7, 2014, 2025, -1, True, False)


def server_comparisons() -> st.SearchStrategy[FilterDict]:
    """Values mostly of the key's own kind (so filters select some files, not none), now and
    then of another kind or out of range."""
    own: dict[str, st.SearchStrategy[Scalar]] = {
        "team": st.sampled_from(TEAMS),
        "year": st.sampled_from(YEARS),
        "public": st.booleans(),
        "absent": st.sampled_from(TEAMS + YEARS),
    }
    others = st.sampled_from(OTHERS)
    return st.one_of(
        *[
            comparisons((key,), st.one_of(values, values, values, others))
            for key, values in own.items()
        ]
    )


server_filters = trees(server_comparisons(), depth=3)
N_FILES = 40


def file_attributes(i: int) -> dict[str, Scalar]:
    """Varied: every team/year/public, some keys missing, and a few values of another kind."""
    attributes: dict[str, Scalar] = {}
    if i % 7 != 3:
        attributes["team"] = TEAMS[i % 4]
    elif i % 2:
        attributes["team"] = 7  # a number where the others hold strings
    if i % 9 != 5:
        attributes["year"] = 2015 + (i * 3) % 10
    if i % 5 != 0:
        attributes["public"] = i % 3 == 0
    elif i == 10:
        attributes["public"] = "yes"
    return attributes


async def watch_to_terminal(tenant: Tenant, store_id: str, batch_id: str) -> int:
    """Follows WatchFileBatch to its last message; returns the terminal batch status."""
    last = None
    async for message in tenant.batches.WatchFileBatch(
        file_batches_pb2.WatchFileBatchRequest(vector_store_id=store_id, batch_id=batch_id),
        metadata=tenant.metadata,
        timeout=120,
    ):
        last = message
    assert last is not None
    return int(last.file_batch.status)


async def filtered_store(tenant: Tenant) -> tuple[str, dict[str, dict[str, Scalar]]]:
    """A store of 40 one-chunk files with varied attributes; ids → attributes."""
    ids: list[str] = []
    for i in range(N_FILES):
        text = (
            f"Quarterly report number {i}. The team reviewed the search filters, "
            f"the vector index and the attributes of file {i}."
        )
        ids.append((await upload(tenant, f"report-{i}.txt", text.encode())).id)
    store = await tenant.stores.CreateVectorStore(
        vector_stores_pb2.CreateVectorStoreRequest(name="filters"), metadata=tenant.metadata
    )
    store_id = store.vector_store.id
    attributes = {file_id: file_attributes(i) for i, file_id in enumerate(ids)}
    batch = await tenant.batches.CreateFileBatch(
        file_batches_pb2.CreateFileBatchRequest(
            vector_store_id=store_id,
            files=[
                file_batches_pb2.FileBatchFileSpec(
                    file_id=file_id, attributes={k: pb_value(v) for k, v in attrs.items()}
                )
                for file_id, attrs in attributes.items()
            ],
        ),
        metadata=tenant.metadata,
    )
    status = await watch_to_terminal(tenant, store_id, batch.file_batch.id)
    assert status == file_batches_pb2.FILE_BATCH_STATUS_COMPLETED
    return store_id, attributes


async def search_files(
    tenant: Tenant, store_id: str, node: FilterDict
) -> list[vector_stores_pb2.SearchResult]:
    reply = await tenant.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store_id,
            query=["quarterly report of the team"],
            max_num_results=50,
            filters=pb_filter(node),
            ranking_options=vector_stores_pb2.RankingOptions(ranker="none"),
        ),
        metadata=tenant.metadata,
    )
    return list(reply.data)


def from_pb(value: struct_pb2.Value) -> Scalar:
    kind = value.WhichOneof("kind")
    assert kind in ("string_value", "number_value", "bool_value"), kind
    return getattr(value, kind)  # type: ignore[no-any-return]


async def test_search_results_satisfy_random_filters(running: Running) -> None:
    alice = running.alice
    store_id, attributes = await filtered_store(alice)
    searcher = running.server.core.searcher
    exact_limit = searcher.exact_max_chunks
    assert exact_limit >= N_FILES  # so the first search of each example is exact
    loop = asyncio.get_running_loop()
    seen = {"some": 0, "none": 0, "all": 0}

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    @hypothesis_settings(
        max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(server_filters)
    def check(node: FilterDict) -> None:
        expected = {f for f, attrs in attributes.items() if reference(node, attrs)}
        seen["none" if not expected else "all" if len(expected) == N_FILES else "some"] += 1

        # Exact search (the filter leaves at most 40 chunks): every matching file, only them.
        results = run(search_files(alice, store_id, node))
        assert {r.file_id for r in results} == expected
        assert len(results) == len(expected)  # one chunk per file
        for r in results:
            assert {k: from_pb(v) for k, v in r.attributes.items()} == attributes[r.file_id]
            assert 0.0 <= r.score <= 1.0

        # hnswlib with the label filter: still only matching files.
        searcher.exact_max_chunks = 0
        try:
            approximate = run(search_files(alice, store_id, node))
        finally:
            searcher.exact_max_chunks = exact_limit
        assert {r.file_id for r in approximate} <= expected
        if expected:
            assert approximate, "hnswlib found none of the matching chunks"

    await asyncio.to_thread(check)
    assert seen["some"] > 0, seen


@pytest.mark.parametrize(("node", "path"), [(n, p) for _, n, p in BAD_FILTERS],
                         ids=[name for name, _, _ in BAD_FILTERS])  # fmt: skip
async def test_invalid_filters_through_grpc(running: Running, node: FilterDict, path: str) -> None:
    alice = running.alice
    store = await alice.stores.CreateVectorStore(
        vector_stores_pb2.CreateVectorStoreRequest(name="empty"), metadata=alice.metadata
    )
    with pytest.raises(aio.AioRpcError) as err:
        await alice.stores.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(
                vector_store_id=store.vector_store.id, query=["x"], filters=pb_filter(node)
            ),
            metadata=alice.metadata,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert path in violated_fields(err.value), violated_fields(err.value)
    assert path in (err.value.details() or "")
