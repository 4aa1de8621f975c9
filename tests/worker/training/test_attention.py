"""Varlen attention: each example of a packed row attends only to itself, exactly as SDPA would
with a block-diagonal causal mask, and the engine's loss function switches models to it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from worker.training.attention import VARLEN_ATTENTION, _varlen_sdpa, packed_segments
from worker.training.supervised import make_row_loss


def block_causal_mask(lengths: list[int]) -> torch.Tensor:
    total = sum(lengths)
    mask = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for length in lengths:
        block = torch.ones(length, length, dtype=torch.bool).tril()
        mask[start : start + length, start : start + length] = block
        start += length
    return mask


def test_matches_sdpa_with_a_block_diagonal_mask_including_grouped_heads() -> None:
    torch.manual_seed(0)
    lengths = [5, 1, 9, 3]
    heads, kv_heads, dim = 6, 2, 8
    total = sum(lengths)
    query = torch.randn(1, heads, total, dim, requires_grad=True)
    key = torch.randn(1, kv_heads, total, dim, requires_grad=True)
    value = torch.randn(1, kv_heads, total, dim, requires_grad=True)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads)

    with packed_segments(lengths):
        output, _ = _varlen_sdpa(module, query, key, value, None)  # type: ignore[arg-type]
    expected = F.scaled_dot_product_attention(
        query,
        key.repeat_interleave(heads // kv_heads, dim=1),
        value.repeat_interleave(heads // kv_heads, dim=1),
        attn_mask=block_causal_mask(lengths),
    ).transpose(1, 2)

    assert output.shape == (1, total, heads, dim)
    torch.testing.assert_close(output, expected)
    (grad_ours,) = torch.autograd.grad(output.sum(), query)
    (grad_ref,) = torch.autograd.grad(expected.sum(), query)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_the_row_loss_switches_the_model_to_varlen_attention(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert model.config._attn_implementation != VARLEN_ATTENTION
    make_row_loss(model)
    assert model.config._attn_implementation == VARLEN_ATTENTION
