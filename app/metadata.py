"""OpenAI's `metadata` objects (on jobs, evals, runs): at most 16 string pairs, checked alike."""

from __future__ import annotations

from typing import Any

from app.errors import InvalidRequest

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    """The metadata as stored, or a 400 naming the offending key."""
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} pairs are allowed, "
            f"got {len(metadata)}.",
            param="metadata",
        )
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            raise InvalidRequest(
                f"Invalid 'metadata': keys must be 1 to {MAX_METADATA_KEY} characters, "
                f"got {len(key)}.",
                param="metadata",
            )
        if not isinstance(value, str):
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': values must be strings.", param=f"metadata.{key}"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': values must be at most {MAX_METADATA_VALUE} "
                f"characters, got {len(value)}.",
                param=f"metadata.{key}",
            )
    return dict(metadata)
