"""Search filters on file attributes, in OpenAI's flat shape: parsing, validation, evaluation.

Comparison: ``eq ne gt gte lt lte in nin`` on a key; compound: ``and or`` over sub-filters,
nested freely (depth ≤ 16, ≤ 256 nodes). Evaluation: a missing key or a value of another
type makes every comparison false except ``ne`` and ``nin``, which are then true.
``gt/gte/lt/lte`` compare numbers with numbers and strings with strings (lexicographically).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from quiver.server.core.errors import FieldViolation, InvalidArgument
from quiver.server.core.models import AttributeValue

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")
MAX_DEPTH = 16
MAX_NODES = 256
MAX_CHILDREN = 64
MAX_LIST = 256


@dataclass(frozen=True)
class Comparison:
    op: str
    key: str
    value: AttributeValue | tuple[AttributeValue, ...]


@dataclass(frozen=True)
class Compound:
    op: str
    filters: tuple[Filter, ...]


Filter = Comparison | Compound


@dataclass(frozen=True)
class RawFilter:
    """What the edge hands over: the message's fields, values already made Python."""

    type: str
    key: str
    value: Any
    has_value: bool
    filters: list[RawFilter]


def _scalar(value: Any) -> bool:
    if isinstance(value, bool | str):
        return True
    return isinstance(value, float | int) and math.isfinite(value)


def parse_filter(raw: RawFilter, path: str = "filters") -> Filter:
    nodes = [0]
    violations: list[FieldViolation] = []
    parsed = _parse(raw, path, 1, nodes, violations)
    if violations:
        raise InvalidArgument(violations[:20])
    assert parsed is not None
    return parsed


def _parse(
    raw: RawFilter, path: str, depth: int, nodes: list[int], out: list[FieldViolation]
) -> Filter | None:
    nodes[0] += 1
    if nodes[0] > MAX_NODES:
        if nodes[0] == MAX_NODES + 1:
            out.append(FieldViolation(path, f"a filter may have at most {MAX_NODES} nodes"))
        return None
    if depth > MAX_DEPTH:
        out.append(FieldViolation(path, f"filters nest at most {MAX_DEPTH} levels deep"))
        return None
    if raw.type in COMPOUNDS:
        # Name the offending field, as for a comparison given `filters` (`{path}.filters`).
        if raw.key:
            out.append(FieldViolation(f"{path}.key", f'"{raw.type}" takes filters, not a key'))
        if raw.has_value:
            out.append(FieldViolation(f"{path}.value", f'"{raw.type}" takes filters, not a value'))
        if not 1 <= len(raw.filters) <= MAX_CHILDREN:
            out.append(
                FieldViolation(
                    f"{path}.filters", f"must hold 1…{MAX_CHILDREN} filters, not {len(raw.filters)}"
                )
            )
            return None
        children = [
            _parse(child, f"{path}.filters[{i}]", depth + 1, nodes, out)
            for i, child in enumerate(raw.filters)
        ]
        if any(c is None for c in children):
            return None
        return Compound(raw.type, tuple(c for c in children if c is not None))
    if raw.type not in COMPARISONS:
        allowed = ", ".join(COMPARISONS + COMPOUNDS)
        out.append(
            FieldViolation(f"{path}.type", f"must be one of {allowed}; not {raw.type[:40]!r}")
        )
        return None
    if raw.filters:
        out.append(
            FieldViolation(f"{path}.filters", f'"{raw.type}" takes key and value, not filters')
        )
    if not raw.key:
        out.append(FieldViolation(f"{path}.key", "is required for a comparison"))
        return None
    if not raw.has_value:
        out.append(FieldViolation(f"{path}.value", "is required for a comparison"))
        return None
    value = raw.value
    where = f"{path}.value"
    if raw.type in ("in", "nin"):
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST:
            out.append(FieldViolation(where, f'"{raw.type}" needs a list of 1…{MAX_LIST} values'))
            return None
        bad = [i for i, v in enumerate(value) if not _scalar(v)]
        if bad:
            out.append(
                FieldViolation(
                    f"{where}[{bad[0]}]", "must be a string, a finite number or a boolean"
                )
            )
            return None
        return Comparison(raw.type, raw.key, tuple(_clean(v) for v in value))
    if not _scalar(value):
        out.append(FieldViolation(where, "must be a string, a finite number or a boolean"))
        return None
    if raw.type in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        out.append(FieldViolation(where, f'"{raw.type}" compares numbers or strings, not booleans'))
        return None
    return Comparison(raw.type, raw.key, _clean(value))


def _clean(value: Any) -> AttributeValue:
    if isinstance(value, bool | str):
        return value
    return float(value)


def _same_kind(a: AttributeValue, b: AttributeValue) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return isinstance(a, str) == isinstance(b, str)


def matches(filter: Filter, attributes: Mapping[str, AttributeValue]) -> bool:
    if isinstance(filter, Compound):
        results = (matches(f, attributes) for f in filter.filters)
        return all(results) if filter.op == "and" else any(results)
    present = filter.key in attributes
    actual = attributes.get(filter.key)
    if filter.op in ("in", "nin"):
        assert isinstance(filter.value, tuple)
        found = present and any(
            actual is not None and _same_kind(actual, v) and actual == v for v in filter.value
        )
        return found if filter.op == "in" else not found
    assert not isinstance(filter.value, tuple)
    expected = filter.value
    if not present or actual is None or not _same_kind(actual, expected):
        return filter.op == "ne"
    if filter.op == "eq":
        return actual == expected
    if filter.op == "ne":
        return actual != expected
    ordered: Any = actual
    if filter.op == "gt":
        return bool(ordered > expected)
    if filter.op == "gte":
        return bool(ordered >= expected)
    if filter.op == "lt":
        return bool(ordered < expected)
    return bool(ordered <= expected)


def _kind(value: AttributeValue) -> str:
    """The comparison class of a value: booleans, strings and numbers never compare equal."""
    if isinstance(value, bool):
        return "b"
    return "s" if isinstance(value, str) else "n"


Posting = dict[tuple[str, AttributeValue], set[int]]
Rows = npt.NDArray[np.int64]
_NO_ROWS: Rows = np.zeros(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False


def _sorted_rows(rows: set[int] | frozenset[int]) -> Rows:
    """The rows as a sorted array, read-only: the table keeps it and hands it out as is."""
    out = np.fromiter(rows, dtype=np.int64, count=len(rows))
    out.sort()
    out.flags.writeable = False
    return out


def _member(rows: Rows, among: Rows) -> npt.NDArray[np.bool_]:
    """Which of ``rows`` are in ``among`` (both sorted, unique): a binary search each."""
    if not len(among):
        return np.zeros(len(rows), dtype=bool)
    at = np.searchsorted(among, rows)
    at[at == len(among)] = 0
    found: npt.NDArray[np.bool_] = among[at] == rows
    return found


def _without(rows: Rows, excluded: Rows) -> Rows:
    return rows[~_member(rows, excluded)] if len(excluded) and len(rows) else rows


class AttributeTable:
    """The attributes of many files, indexed per key and value, so that a filter is
    evaluated over sorted arrays of row numbers (numpy: binary searches, one sort per
    union) instead of walking the filter once per file. ``select`` equals ``matches``
    applied to each file.

    Rows are numbered 0… in the order given; ``put`` and ``drop`` change one row in place
    (core/attribute_index.py keeps one table per store between queries). Each key and
    value's rows are a set (changed in place) and, once a filter asks, a sorted array kept
    until that set changes; ranges read a column per key and kind (its rows in value order,
    with each distinct value's offset), kept until a row holding that key changes. Not
    thread-safe: the caller serialises changes and selections."""

    def __init__(self, rows: list[Mapping[str, AttributeValue]]) -> None:
        self._rows: dict[int, Mapping[str, AttributeValue]] = {}
        self._everyone: set[int] = set()
        self._everyone_rows: Rows | None = None
        self._by_key: dict[str, Posting] = {}
        self._arrays: dict[tuple[str, str, AttributeValue], Rows] = {}
        self._columns: dict[tuple[str, str], tuple[list[Any], Rows, Rows]] = {}
        """Per key and kind (numbers, strings): its distinct values in order (for ranges),
        each value's first offset into the rows, and the rows, value after value."""
        for i, attributes in enumerate(rows):
            self.put(i, attributes)

    @property
    def size(self) -> int:
        return len(self._rows)

    def put(self, row: int, attributes: Mapping[str, AttributeValue]) -> None:
        """Row ``row`` holds ``attributes`` from now on (replacing what it held)."""
        self.drop(row)
        self._rows[row] = dict(attributes)
        self._everyone.add(row)
        self._everyone_rows = None
        for key, value in attributes.items():
            if value is None:
                continue
            kind = _kind(value)
            self._columns.pop((key, kind), None)
            self._arrays.pop((key, kind, value), None)
            self._by_key.setdefault(key, {}).setdefault((kind, value), set()).add(row)

    def drop(self, row: int) -> None:
        """Row ``row`` is gone (nothing happens if it was not there)."""
        attributes = self._rows.pop(row, None)
        if attributes is None:
            return
        self._everyone.discard(row)
        self._everyone_rows = None
        for key, value in attributes.items():
            if value is None:
                continue
            kind = _kind(value)
            self._columns.pop((key, kind), None)
            self._arrays.pop((key, kind, value), None)
            postings = self._by_key[key]
            held = postings[(kind, value)]
            held.discard(row)
            if not held:
                del postings[(kind, value)]
                if not postings:
                    del self._by_key[key]

    def select(self, filter: Filter) -> Rows:
        """The numbers of the rows ``filter`` matches, ascending."""
        if isinstance(filter, Compound):
            if filter.op == "and":
                return self._select_all(filter.filters)
            parts = [self.select(f) for f in filter.filters]
            return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))
        if filter.op in ("ne", "nin"):
            return _without(self._everyone_sorted(), self._equal_to_any(filter))
        if filter.op in ("eq", "in"):
            return self._equal_to_any(filter)
        assert not isinstance(filter.value, tuple)
        expected = filter.value
        kind = _kind(expected)
        values, offsets, rows = self._column(filter.key, kind)
        if filter.op == "gt":
            lo, hi = bisect.bisect_right(values, expected), len(values)
        elif filter.op == "gte":
            lo, hi = bisect.bisect_left(values, expected), len(values)
        elif filter.op == "lt":
            lo, hi = 0, bisect.bisect_left(values, expected)
        else:
            lo, hi = 0, bisect.bisect_right(values, expected)
        return np.sort(rows[offsets[lo] : offsets[hi]])

    def _equal_to_any(self, filter: Comparison) -> Rows:
        """The rows whose value of the key equals (in kind too) the value, or one of the
        list's values."""
        values = filter.value if isinstance(filter.value, tuple) else (filter.value,)
        parts = [self._posting(filter.key, _kind(v), v) for v in values]
        parts = [p for p in parts if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else _NO_ROWS
        return np.unique(np.concatenate(parts))

    def _select_all(self, filters: Sequence[Filter]) -> Rows:
        """The rows every one of ``filters`` matches: the positive parts intersected,
        smallest first, less the rows the ``ne``/``nin`` parts exclude (never built as
        their complement over every row)."""
        kept: list[Rows] = []
        excluded: list[Rows] = []
        for part in filters:
            if isinstance(part, Comparison) and part.op in ("ne", "nin"):
                excluded.append(self._equal_to_any(part))
            else:
                kept.append(self.select(part))
        if not kept:
            kept.append(self._everyone_sorted())
        kept.sort(key=len)
        found = kept[0]
        for other in kept[1:]:
            if not len(found):
                break
            found = found[_member(found, other)]
        for rows in excluded:
            found = _without(found, rows)
        return found

    def _everyone_sorted(self) -> Rows:
        rows = self._everyone_rows
        if rows is None:
            rows = self._everyone_rows = _sorted_rows(self._everyone)
        return rows

    def _posting(self, key: str, kind: str, value: AttributeValue) -> Rows:
        """The rows holding this value (of this kind) under the key, ascending."""
        cached = self._arrays.get((key, kind, value))
        if cached is None:
            held = self._by_key.get(key, {}).get((kind, value))
            if held is None:
                return _NO_ROWS
            cached = self._arrays[(key, kind, value)] = _sorted_rows(held)
        return cached

    def _column(self, key: str, kind: str) -> tuple[list[Any], Rows, Rows]:
        """The key's distinct values of that kind (``n`` numbers, ``s`` strings), sorted
        (numbers numerically, strings by code point: Python's order for each), with the
        offset of each value's rows into the rows of all of them, value after value."""
        cached = self._columns.get((key, kind))
        if cached is None:
            postings = self._by_key.get(key, {})
            values = sorted(value for value_kind, value in postings if value_kind == kind)
            held = [postings[(kind, value)] for value in values]
            sizes = np.fromiter((len(h) for h in held), dtype=np.int64, count=len(held))
            offsets = np.zeros(len(values) + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
            rows = np.fromiter(
                (row for h in held for row in h), dtype=np.int64, count=int(offsets[-1])
            )
            rows.flags.writeable = False
            cached = self._columns[(key, kind)] = (values, offsets, rows)
        return cached


def filter_nodes(filter: Filter) -> int:
    """How many comparisons and compounds ``filter`` holds (its evaluation cost grows with it)."""
    if isinstance(filter, Compound):
        return 1 + sum(filter_nodes(f) for f in filter.filters)
    return 1
