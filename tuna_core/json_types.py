"""How an error names the JSON type of a value it refused: "a string", "an array", "null"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def described_kind(value: Any) -> str:
    """The JSON type of a decoded value with its article, for "expected X, got <this>"."""
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
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
