"""API keys from a file or the environment, stored as sha256 hashes, checked in constant time.

File format, one key per line (``#`` starts a comment)::

    <tenant> sha256:<64 hex digits>

Keys are 256-bit random strings, so an unsalted sha256 is safe to store; the raw key is
printed once by ``quiver keys add`` and never written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LINE = re.compile(r"^(?P<tenant>\S+)\s+sha256:(?P<hash>[0-9a-f]{64})$")
KEY_PREFIX = "qv_"


class KeyConfigError(ValueError):
    """The key file or variable is malformed; the message names the line."""


@dataclass(frozen=True)
class KeyEntry:
    tenant: str
    digest: bytes


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_entries(text: str, source: str) -> list[KeyEntry]:
    """One entry per line; ``number`` in errors is the line (or, inline, the entry) number."""
    entries: list[KeyEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None or not TENANT_PATTERN.match(match["tenant"]):
            raise KeyConfigError(
                f"{source}:{number}: expected '<tenant> sha256:<64 hex digits>' "
                "with a tenant of letters, digits, '.', '_' or '-'"
            )
        entries.append(KeyEntry(match["tenant"], bytes.fromhex(match["hash"])))
    return entries


class KeyRing:
    """The configured keys. Empty means the server runs open (loopback only)."""

    def __init__(self, entries: list[KeyEntry]) -> None:
        owners: dict[bytes, str] = {}
        for entry in entries:
            other = owners.setdefault(entry.digest, entry.tenant)
            if other != entry.tenant:
                raise KeyConfigError(
                    f"the same key is listed for tenants {other!r} and {entry.tenant!r}; "
                    "a key must belong to one tenant"
                )
        self._entries = entries

    @classmethod
    def load(cls, file: Path | None, env_value: str | None) -> KeyRing:
        entries: list[KeyEntry] = []
        if file is not None:
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                raise KeyConfigError(f"cannot read API keys file {file}: {exc}") from exc
            entries += parse_entries(text, str(file))
        if env_value:
            # Inline keys are comma separated; in a file a comma may appear in a comment.
            entries += parse_entries(env_value.replace(",", "\n"), "QUIVER_API_KEYS")
        return cls(entries)

    @property
    def open(self) -> bool:
        return not self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_for(self, key: str) -> str | None:
        """The key's tenant, or None. Compares against every entry, whatever matches."""
        digest = hash_key(key)
        found: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.tenant
        return found


def append_key(file: Path, tenant: str) -> str:
    """Adds a new key for ``tenant`` to ``file`` (created if missing) and returns the raw key."""
    if not TENANT_PATTERN.match(tenant):
        raise KeyConfigError("tenant must be 1…64 letters, digits, '.', '_' or '-'")
    key = new_key()
    file.parent.mkdir(parents=True, exist_ok=True)
    exists = file.exists()
    with file.open("a", encoding="utf-8") as out:
        if not exists:
            out.write("# Quiver API keys: '<tenant> sha256:<hash of the key>', one per line.\n")
        out.write(f"{tenant} sha256:{hash_key(key).hex()}\n")
    file.chmod(0o600)
    return key
