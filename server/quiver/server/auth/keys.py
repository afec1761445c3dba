"""API keys from a file or the environment, stored as sha256 hashes, checked in constant time.

File format, one key per line (``#`` starts a comment)::

    <tenant> sha256:<64 hex digits>

Keys are 256-bit random strings, so an unsalted sha256 is safe to store; the raw key is
printed once by ``quiver keys add`` and never written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
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
    """The configured keys. Empty at start means the server runs open (loopback only).

    The keys file is re-read by ``reload`` (SIGHUP, or a change noticed by
    ``reload_if_changed``); a server that started with keys never turns open, even if the
    file is emptied: it then refuses every key.
    """

    def __init__(
        self, entries: list[KeyEntry], file: Path | None = None, env_value: str | None = None
    ) -> None:
        self._entries = self._checked(entries)
        self._file = file
        self._env_value = env_value
        self._open = not entries
        self._stamp = _stamp(file)

    @staticmethod
    def _checked(entries: list[KeyEntry]) -> list[KeyEntry]:
        owners: dict[bytes, str] = {}
        for entry in entries:
            other = owners.setdefault(entry.digest, entry.tenant)
            if other != entry.tenant:
                raise KeyConfigError(
                    f"the same key is listed for tenants {other!r} and {entry.tenant!r}; "
                    "a key must belong to one tenant"
                )
        return entries

    @staticmethod
    def _read(file: Path | None, env_value: str | None) -> list[KeyEntry]:
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
        return entries

    @classmethod
    def load(cls, file: Path | None, env_value: str | None) -> KeyRing:
        return cls(cls._read(file, env_value), file, env_value)

    @property
    def open(self) -> bool:
        return self._open

    @property
    def file(self) -> Path | None:
        return self._file

    def __len__(self) -> int:
        return len(self._entries)

    def reload(self) -> None:
        """Re-reads the keys file; raises KeyConfigError (keeping the current keys) when the
        new content is malformed. Does nothing in open mode: keys need a restart there (the
        open server listens on loopback only, a keyed one may not)."""
        if self._open or self._file is None:
            return
        stamp = _stamp(self._file)
        entries = self._checked(self._read(self._file, self._env_value))
        self._entries = entries
        self._stamp = stamp

    def changed(self) -> bool:
        """Whether the keys file's size or mtime differs from when it was last read."""
        return not self._open and self._file is not None and _stamp(self._file) != self._stamp

    def tenant_for(self, key: str) -> str | None:
        """The key's tenant, or None. Compares against every entry, whatever matches."""
        digest = hash_key(key)
        found: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.tenant
        return found


def _stamp(file: Path | None) -> tuple[int, int] | None:
    if file is None:
        return None
    try:
        st = file.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


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


def fingerprint(digest: bytes) -> str:
    """How ``keys list`` names a key: the first 12 hex digits of its sha256."""
    return digest.hex()[:12]


def list_keys(file: Path) -> list[KeyEntry]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyConfigError(f"cannot read API keys file {file}: {exc}") from exc
    return parse_entries(text, str(file))


def revoke_keys(file: Path, *, key_or_fingerprint: str = "", tenant: str = "") -> list[KeyEntry]:
    """Removes from ``file`` the key given (raw key or a fingerprint of at least 8 hex
    digits) or every key of ``tenant``; returns what was removed. The file is replaced
    atomically, comments and other lines kept as they were."""
    if bool(key_or_fingerprint) == bool(tenant):
        raise KeyConfigError("name one key (the key or its fingerprint) or --tenant, not both")
    entries = list_keys(file)  # validates the whole file first

    def matches(entry: KeyEntry) -> bool:
        if tenant:
            return entry.tenant == tenant
        if key_or_fingerprint.startswith(KEY_PREFIX):
            return hmac.compare_digest(entry.digest, hash_key(key_or_fingerprint))
        return entry.digest.hex().startswith(key_or_fingerprint.lower())

    by_fingerprint = not tenant and not key_or_fingerprint.startswith(KEY_PREFIX)
    if by_fingerprint and not re.fullmatch(r"[0-9a-fA-F]{8,64}", key_or_fingerprint):
        raise KeyConfigError(
            "a fingerprint is 8…64 hex digits as 'quiver keys list' shows it "
            f"(or pass the key itself, which starts with {KEY_PREFIX!r})"
        )
    removed = [e for e in entries if matches(e)]
    if not removed:
        what = f"tenant {tenant!r}" if tenant else "that key"
        raise KeyConfigError(f"no key of {what} in {file}")
    if not tenant and len(removed) > 1:
        raise KeyConfigError(
            f"fingerprint {key_or_fingerprint!r} matches {len(removed)} keys; give more digits"
        )
    gone = {e.digest for e in removed}
    kept_lines: list[str] = []
    for raw in file.read_text(encoding="utf-8").splitlines(keepends=True):
        match = _LINE.match(raw.split("#", 1)[0].strip())
        if match is not None and bytes.fromhex(match["hash"]) in gone:
            continue
        kept_lines.append(raw)
    temp = file.with_name(f".{file.name}.tmp")
    temp.write_text("".join(kept_lines), encoding="utf-8")
    temp.chmod(0o600)
    os.replace(temp, file)
    return removed
