"""Attention that stays inside each example of a packed row, and computes nothing across them.

A packed row holds several examples back to back (``position_ids`` restart at 0 for each).
Given a block-diagonal mask, SDPA still computes every score of the full row and then masks the
cross-example ones away: quadratic work in the row's length, not in each example's. This module
registers an attention function with transformers that splits queries, keys and values at the
example boundaries and runs causal SDPA once per example, so the projections and MLPs see one
large row (efficient matmuls, one forward and one backward) while attention costs what the
examples would cost alone. The boundaries are set around the forward with
``packed_segments(lengths)`` (a list of ints, known on the host: no device sync); they never pass
through the model's code, so a compiled layer sees no per-row Python values to guard on or
specialise for, and the attention itself runs outside the compiled graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "tuna_varlen"

_registered = False
_segments: ContextVar[Sequence[int] | None] = ContextVar("tuna_packed_segments", default=None)


@contextmanager
def packed_segments(lengths: Sequence[int] | None) -> Iterator[None]:
    """Within this block, rows fed to a varlen-attention model hold examples of ``lengths``."""
    token = _segments.set(list(lengths) if lengths else None)
    try:
        yield
    finally:
        _segments.reset(token)


def current_segments() -> Sequence[int] | None:
    """The example lengths of the innermost ``packed_segments`` block, or None outside one."""
    return _segments.get()


def _varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """(batch, heads, seq, dim) in, (batch, seq, heads, dim) out, as transformers expects."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lengths = _segments.get()
    if lengths is None or attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    grouped = query.shape[1] != key.shape[1]  # grouped-query attention, without copying K/V
    parts = [
        F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=grouped
        ).transpose(1, 2)
        for q, k, v in zip(
            query.split(lengths, dim=2),
            key.split(lengths, dim=2),
            value.split(lengths, dim=2),
            strict=True,
        )
    ]
    return (parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=1)), None


def _no_mask(*_: Any, **__: Any) -> None:
    # Causality and the example boundaries are applied inside `_varlen_sdpa`.
    return None


def _register(attention: Any) -> None:
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _no_mask)
    _registered = True


def use_varlen_attention(model: Any) -> None:
    """Switch ``model`` (a transformers model, or a peft wrapper of one) to varlen attention."""
    if not _registered:
        _register(_varlen_sdpa)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(VARLEN_ATTENTION)


def keep_attention_eager() -> None:
    """Run the varlen attention eagerly inside compiled layers (its shapes are per example).

    Called when layers are compiled (``kernels.compile_layers``), not at import, so that a run
    that compiles nothing never imports dynamo (over a second of start-up).
    """
    _register(torch.compiler.disable(_varlen_sdpa))
