"""The one error an export raises for a model it cannot convert (as opposed to a broken one)."""

from __future__ import annotations


class UnsupportedExport(ValueError):
    """The model is valid but this exporter does not handle it (its architecture, rope scaling,
    tokenizer kind or a requested type); the message names what, so a caller can show it."""
