"""Where the blobs live, and one blob's address in it: small, picklable values that an ingest
worker (a local process or a task on another machine) is given to read a file's bytes.

``--blobs`` is parsed here: empty (``data_dir/blobs``), a directory (shared by every replica,
an NFS-style mount), or ``s3://bucket/prefix`` (endpoint and region from the usual AWS
variables; credentials are never part of a location: every reader takes them from its own
environment).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_REGION = "us-east-1"

# S3's bucket naming rules (3-63 lowercase letters, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DirLocation:
    """Blobs as files ``<root>/<sha256[:2]>/<sha256>``; ``shared`` when other replicas use
    the same directory (then no replica removes another's temp files at start)."""

    root: str
    shared: bool = False

    def path_for(self, sha256: str) -> Path:
        return Path(self.root) / sha256[:2] / sha256

    def describe(self) -> str:
        return f"{'shared directory' if self.shared else 'directory'} {self.root}"


@dataclass(frozen=True)
class S3Location:
    """Blobs as objects ``<prefix>/<sha256>`` of ``bucket`` at ``endpoint_url`` (None: AWS)."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str

    def key_for(self, sha256: str) -> str:
        return f"{self.prefix}/{sha256}" if self.prefix else sha256

    def describe(self) -> str:
        where = self.endpoint_url or f"AWS {self.region}"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


BlobLocation = DirLocation | S3Location


@dataclass(frozen=True)
class BlobRef:
    """One blob: its content address, its size in bytes and the store that holds it."""

    location: BlobLocation
    sha256: str
    size: int


def blob_location(
    setting: str, data_dir: Path, env: Mapping[str, str] | None = None
) -> BlobLocation:
    """The ``--blobs`` setting as a location; ValueError naming ``--blobs`` (or the AWS
    variable) when it cannot be one."""
    env = os.environ if env is None else env
    value = setting.strip()
    if not value:
        return DirLocation(str(data_dir / "blobs"))
    if value.startswith("s3://"):
        return _s3_location(value, env)
    if "://" in value:
        raise ValueError(f"--blobs must be a directory or s3://bucket/prefix, not {value[:100]!r}")
    root = Path(value)
    if not root.is_absolute():
        raise ValueError(
            f"--blobs: a shared blob directory must be an absolute path, not {value[:100]!r}"
        )
    return DirLocation(str(root), shared=True)


def _s3_location(value: str, env: Mapping[str, str]) -> S3Location:
    parts = urlsplit(value)
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"--blobs: {bucket[:100]!r} is not a valid S3 bucket name (3 to 63 lowercase "
            "letters, digits, dots and hyphens), in s3://bucket/prefix"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"--blobs: s3://bucket/prefix takes no query or fragment: {value!r}")
    prefix = parts.path.strip("/")
    if "//" in prefix or len(prefix) > 512:
        raise ValueError(
            f"--blobs: the prefix {prefix[:100]!r} must be at most 512 characters, without "
            "empty path segments"
        )
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    if endpoint is not None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            variable = "AWS_ENDPOINT_URL_S3"
            if not env.get(variable):
                variable = "AWS_ENDPOINT_URL"
            raise ValueError(
                f"{variable} must be an http:// or https:// URL, not {endpoint[:100]!r}"
            )
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    key_id = env.get("AWS_ACCESS_KEY_ID", "")
    secret = env.get("AWS_SECRET_ACCESS_KEY", "")
    if bool(key_id) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        raise ValueError(
            f"--blobs {value}: {missing} is not set (set both AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or neither to use the AWS configuration files or role)"
        )
    return S3Location(bucket=bucket, prefix=prefix, endpoint_url=endpoint, region=region)


def check_sha256(sha256: str) -> None:
    """Guards every path or key built from a digest (never a path traversal)."""
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
