"""Object ids in OpenAI's style: a prefix and 24 random letters and digits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_LENGTH = 24

FILE = "file-"
VECTOR_STORE = "vs_"
FILE_BATCH = "vsfb_"


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))
