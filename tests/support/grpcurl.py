"""The real grpcurl binary (installed in the venv by `make dev`), called on a plaintext server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

GRPCURL = Path(sys.executable).with_name("grpcurl")


def grpcurl(
    address: str,
    *positional: str,
    flags: Sequence[str] = (),
    key: str = "",
    stdin: str | None = None,
    timeout: float = 20,
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [flags] ADDRESS positional...`` with a Bearer key when given."""
    auth = ["-H", f"authorization: Bearer {key}"] if key else []
    return subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "10", *auth, *flags, address, *positional],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
