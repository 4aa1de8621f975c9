"""Object ids in OpenAI's formats: a prefix and a random tail."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    """`file-…`, `ftjob-…`, `ftevent-…`, `ftckpt_…`: the prefix carries its own separator."""
    return prefix + random_token(length)
