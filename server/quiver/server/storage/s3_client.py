"""A botocore S3 client for an ``S3Location`` (the ``[s3]`` extra), and the errors it raises
told apart: a missing object, a failed ``If-None-Match: *`` precondition, anything else.

Credentials come from the environment of the process that makes the client (botocore's
usual chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, then the AWS files or a role).
Every call here blocks: callers run them in a thread or a worker process.
"""

from __future__ import annotations

import threading
from typing import Any

from quiver.server.storage.blob_location import S3Location

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
ATTEMPTS = 4
"""Tries per call (botocore's standard retry mode: throttling and 5xx, with backoff)."""
MAX_POOL_CONNECTIONS = 32

_clients: dict[S3Location, Any] = {}
_clients_lock = threading.Lock()


class BlobStoreError(OSError):
    """The object store could not be used (unreachable, refused, misconfigured)."""


def client_for(location: S3Location) -> Any:
    """One client per location and process (botocore clients are thread-safe)."""
    with _clients_lock:
        client = _clients.get(location)
        if client is None:
            client = _clients[location] = _make_client(location)
        return client


def _make_client(location: S3Location) -> Any:
    try:
        import botocore.config
        import botocore.session
    except ImportError:
        raise BlobStoreError(
            "--blobs s3://… needs botocore: install the extra quiver-vectorstore[s3]"
        ) from None
    config = botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        # S3-compatible servers (SeaweedFS, MinIO …) answer at one host: bucket in the path.
        s3={"addressing_style": "path" if location.endpoint_url else "auto"},
    )
    session = botocore.session.get_session()
    return session.create_client(
        "s3", endpoint_url=location.endpoint_url, region_name=location.region, config=config
    )


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (``NoSuchKey``, ``404``,
    ``PreconditionFailed`` …), else None."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error") or {}
    code = error.get("Code")
    return str(code) if code is not None else None


def is_missing(exc: BaseException) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound")


def is_precondition_failed(exc: BaseException) -> bool:
    """A conditional write found the key taken (412): the content is already stored."""
    return error_code(exc) in ("PreconditionFailed", "412")


def is_client_error(exc: BaseException) -> bool:
    """Anything botocore raises (ClientError, connection errors …)."""
    module = type(exc).__module__
    return module.startswith("botocore") or module.startswith("urllib3")


def describe(exc: BaseException) -> str:
    code = error_code(exc)
    text = str(exc)
    return f"{code}: {text}" if code and code not in text else text


def check_bucket(location: S3Location) -> None:
    """At start: the bucket exists and these credentials may use it (BlobStoreError naming
    the location otherwise)."""
    client = client_for(location)
    try:
        client.head_bucket(Bucket=location.bucket)
    except Exception as exc:
        if not is_client_error(exc):
            raise
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            why = "the bucket does not exist (create it first)"
        elif code in ("403", "AccessDenied", "Forbidden"):
            why = (
                "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the "
                "bucket's policy)"
            )
        else:
            why = describe(exc)
        raise BlobStoreError(f"--blobs {location.describe()}: {why}") from None
