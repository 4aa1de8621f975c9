"""A packed row through the model, up to what a method's loss needs: hidden states at the
labelled positions and the output head (or, for architectures whose logits are not just the head
applied to the last hidden state, the logits there).  Shared by every training method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from worker.training.attention import packed_segments, use_varlen_attention
from worker.training.data import IGNORE_INDEX, PackedRow
from worker.training.kernels import fuse_lora

# Architectures whose logits are exactly lm_head(final hidden state); others go through the full
# forward (correct, just computes logits at unlabelled positions too).
_PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3"})


def to_device(lists: Sequence[Sequence[int]], device: torch.device) -> list[torch.Tensor]:
    """Integer lists as int64 tensors on ``device``, in one copy that does not wait for the GPU.

    ``torch.tensor(values, device="cuda")`` copies from pageable memory and so synchronizes the
    stream: each row would wait for all the work queued before it (the previous row's backward,
    the last optimizer step) before the host could queue more.  Copying from pinned memory with
    ``non_blocking`` lets the host run ahead; the pinned block stays reserved until the copy is
    done (PyTorch's caching host allocator records it on the stream).
    """
    flat: list[int] = []
    for values in lists:
        flat += values
    host = torch.tensor(flat, dtype=torch.long)
    if device.type == "cuda":
        host = host.pin_memory().to(device, non_blocking=True)
    elif device != host.device:
        host = host.to(device)
    return list(host.split([len(values) for values in lists]))


@dataclass
class Labelled:
    """A row's labelled positions: ``hidden`` states there (head: ``head_weight``), or, for an
    architecture without a plain head, its ``logits`` there; ``targets`` their next tokens."""

    targets: torch.Tensor
    hidden: torch.Tensor | None = None
    head_weight: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class RowForward:
    """Runs packed rows through ``model`` with no attention between the sequences of a row
    (`attention.use_varlen_attention`) and LoRA projections fused (`kernels.fuse_lora`)."""

    def __init__(self, model: Any) -> None:
        use_varlen_attention(model)
        fuse_lora(model)
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        plain = getattr(base.config, "model_type", "") in _PLAIN_HEAD_TYPES
        self.backbone = getattr(base, base.base_model_prefix) if plain else None
        self.head = base.get_output_embeddings() if plain else None
        if self.head is not None and getattr(self.head, "bias", None) is not None:
            self.backbone = self.head = None  # a biased head: the plain forward handles it

    def labelled(self, row: PackedRow, device: torch.device) -> tuple[Labelled, list[int]]:
        """The row at its labelled positions, and those positions (host side: indexing with
        them needs no device sync)."""
        positions = [i for i, target in enumerate(row.targets) if target != IGNORE_INDEX]
        input_ids, position_ids, keep, targets = to_device(
            [row.input_ids, row.position_ids, positions, [row.targets[i] for i in positions]],
            device,
        )
        input_ids, position_ids = input_ids[None], position_ids[None]
        if self.backbone is not None and self.head is not None:
            with packed_segments(row.lengths):
                hidden = self.backbone(
                    input_ids=input_ids, position_ids=position_ids, use_cache=False
                ).last_hidden_state[0]
            return Labelled(targets, hidden=hidden[keep], head_weight=self.head.weight), positions
        with packed_segments(row.lengths):
            output = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        return Labelled(targets, logits=output.logits[0][keep].float()), positions
