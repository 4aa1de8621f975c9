"""Supervised fine-tuning as a training method: next-token cross-entropy on the trained tokens.

* Loss of a step = sum of token cross-entropies over all label tokens of the batch / number of
  label tokens of the batch (not a mean of per-example means), so long answers weigh in
  proportion to their length and packing or splitting a batch into rows changes nothing.
* Logits are computed only at positions that have a label (hidden states -> select -> lm_head),
  fused with the loss a chunk at a time (`kernels.linear_cross_entropy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tuna_core.metrics import metric_names
from worker.training.data import PackedRow, TokenizedExample, load_examples, pack_examples
from worker.training.forward import RowForward
from worker.training.kernels import linear_cross_entropy
from worker.training.method import RowLoss


def make_row_loss(model: Any) -> RowLoss:
    """A function: packed row -> (summed cross-entropy over its targets, # correct argmax), both
    tensors on the device, so a step reads them back once, at its end.

    For plain-head architectures only labelled positions go through ``lm_head``, fused with the
    loss a chunk at a time: no logits at unlabelled positions and never a full logits tensor.
    LoRA projections run fused (``kernels.fuse_lora``).
    """
    forward = RowForward(model)

    def row_loss(row: PackedRow, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        at, _positions = forward.labelled(row, device)
        if at.hidden is not None and at.head_weight is not None:
            return linear_cross_entropy(at.hidden, at.head_weight, at.targets)
        assert at.logits is not None
        loss = F.cross_entropy(at.logits, at.targets, reduction="sum")
        return loss, (at.logits.argmax(dim=-1) == at.targets).sum()

    return row_loss


class Supervised:
    name = "supervised"

    def load(self, path: Path, tokenizer: Any, max_seq_len: int) -> list[TokenizedExample]:
        return load_examples(path, tokenizer, max_seq_len, method=self.name)

    def reusable(self, units: Sequence[Any], max_seq_len: int) -> bool:
        return all(isinstance(u, TokenizedExample) and u.n_tokens <= max_seq_len for u in units)

    def prepare(
        self,
        splits: dict[str, list[Any]],
        hp: Any,
        run: Any,
        state: Mapping[str, Any] | None,
        callbacks: Any,
    ) -> dict[str, list[Any]]:
        return splits  # nothing to compute before the first step

    def state_dict(self) -> dict[str, Any]:
        return {}

    def pack(self, units: Sequence[Any], max_row_tokens: int | None) -> list[PackedRow]:
        return pack_examples(units, max_row_tokens)

    def row_loss(self, model: Any) -> RowLoss:
        return make_row_loss(model)

    def denominator(self, rows: Sequence[PackedRow]) -> int:
        return sum(row.n_targets for row in rows)

    def metrics(self, totals: Sequence[float], denominator: int, split: str) -> dict[str, float]:
        loss_sum, correct = totals
        values = (loss_sum / denominator, correct / denominator)
        return dict(zip(metric_names(self.name, split), values, strict=True))
