"""Request bodies and query strings: read with a size bound, typed field by field.

Every getter names the field it rejects (``InvalidArgument`` → 400 with ``param``), and an
object with fields the route does not know is refused, as OpenAI refuses them.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from quiver.server.core.errors import FieldViolation, InvalidArgument, ResourceExhausted
from starlette.requests import Request

MAX_JSON_BYTES = 4 * 1024 * 1024
JSON_INLINE_BYTES = 64 * 1024
"""A body larger than this is decoded on a thread (4 MiB of JSON: ~50 ms of the loop)."""


async def read_json(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``); 400 if it is not one, 413 past
    ``limit`` bytes (counted as they arrive: a lying Content-Length changes nothing)."""
    value, _ = await read_json_sized(request, limit)
    return value


async def read_json_sized(
    request: Request, limit: int = MAX_JSON_BYTES
) -> tuple[dict[str, Any], int]:
    """``read_json``, and the body's size in bytes (for a route that decides where to do
    heavy work on it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            raise _too_large(limit)
    if not data.strip():
        return {}, len(data)
    try:
        if len(data) > JSON_INLINE_BYTES:
            value = await asyncio.to_thread(json.loads, data, parse_constant=_no_constant)
        else:
            value = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(
            [FieldViolation("body", f"is not valid JSON ({str(exc)[:200]})")],
            reason="MALFORMED_JSON",
        ) from None
    if not isinstance(value, dict):
        raise InvalidArgument(
            [FieldViolation("body", f"must be a JSON object, not {_kind(value)}")],
            reason="MALFORMED_JSON",
        )
    return value, len(data)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_large(limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the request body is larger than {limit} bytes", reason="BODY_TOO_LARGE"
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def only(
    body: Mapping[str, Any],
    allowed: tuple[str, ...],
    where: str = "",
    unsupported: Mapping[str, Any] | None = None,
) -> None:
    """400 naming the first field that ``allowed`` does not list. Fields in ``unsupported``
    (OpenAI's or the gateway's, which Quiver does not implement) pass only when null or at
    the default given there, so a client sending its defaults works and nothing asked for
    is silently dropped."""
    for key, value in body.items():
        if unsupported is not None and key in unsupported:
            if value is None or value == unsupported[key]:
                continue
            field = f"{where}.{key}" if where else key
            raise InvalidArgument.one(field[:200], "is not supported by this server (Quiver)")
        if key not in allowed:
            field = f"{where}.{key}" if where else key
            raise InvalidArgument.one(
                field[:200], f"is not a known field here (known: {', '.join(allowed)})"
            )


def string(body: Mapping[str, Any], key: str, default: str = "", where: str = "") -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument.one(where or key, f"must be a string, not {_kind(value)}")
    return value


def integer(body: Mapping[str, Any], key: str, default: int = 0, where: str = "") -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument.one(where or key, f"must be an integer, not {_kind(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise InvalidArgument.one(where or key, f"must be an integer, not {value}")
    number = int(value)
    if abs(number) > 2**62:
        raise InvalidArgument.one(where or key, f"is out of range ({number})")
    return number


def number(body: Mapping[str, Any], key: str, default: float = 0.0, where: str = "") -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument.one(where or key, f"must be a number, not {_kind(value)}")
    return float(value)


def boolean(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgument.one(key, f"must be true or false, not {_kind(value)}")
    return value


def obj(body: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument.one(where or key, f"must be an object, not {_kind(value)}")
    return value


def array(body: Mapping[str, Any], key: str, where: str = "") -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidArgument.one(where or key, f"must be an array, not {_kind(value)}")
    return value


def strings(body: Mapping[str, Any], key: str, max_items: int = 10_000) -> list[str]:
    items = array(body, key) or []
    if len(items) > max_items:
        raise InvalidArgument.one(key, f"has {len(items)} items; at most {max_items} are allowed")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidArgument.one(f"{key}[{i}]", f"must be a string, not {_kind(item)}")
    return list(items)


def string_map(body: Mapping[str, Any], key: str) -> dict[str, str] | None:
    value = obj(body, key)
    if value is None:
        return None
    for k, v in value.items():
        if not isinstance(v, str):
            raise InvalidArgument.one(f"{key}[{k[:64]!r}]", f"must be a string, not {_kind(v)}")
    return dict(value)


def query_int(request: Request, key: str) -> int:
    raw = request.query_params.get(key, "")
    if not raw:
        return 0
    if len(raw) > 19 or not raw.isascii() or not raw.lstrip("-").isdigit():
        raise InvalidArgument.one(key, f"must be an integer, not {raw[:40]!r}")
    return int(raw)


def query_str(request: Request, key: str) -> str:
    return request.query_params.get(key, "")
