"""Direct Preference Optimization (Rafailov et al., 2023) as a training method.

For a prompt x with a preferred answer y_w and a non-preferred one y_l, the policy's reward of an
answer is ``beta * (log p(y | x) - log p_ref(y | x))`` and the loss of the pair is
``-log sigmoid(reward(y_w) - reward(y_l))``; a step's loss is the mean over its pairs.

What must hold:

* A pair is one unit: its two sequences (prompt + preferred, prompt + non-preferred) go into the
  same row, one after the other, attention kept within each sequence (as packing does for
  supervised examples), so a pair is never split across rows or steps.
* ``log p(y | x)`` is the sum of the answer tokens' log-probabilities, computed through the
  chunked head (`kernels.linear_log_probs`): never a full logits tensor.
* The reference model is the starting model: its log-probabilities are computed once, before the
  first step, without gradients (in evaluation mode, with the step's autocast), for the training
  and the validation pairs.  For LoRA from a base model the starting adapter is zero, so this is
  the base model, the adapter disabled; for a run that continues a fine-tuned model it is that
  model; for full fine-tuning it is the starting weights.  No second copy of the model is kept.
* They are saved with every checkpoint, so a resumed run uses exactly the same numbers and
  reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tuna_core.metrics import metric_names
from worker.training.data import PackedRow, PreferencePair, load_examples
from worker.training.forward import RowForward, to_device
from worker.training.kernels import linear_log_probs
from worker.training.method import RowLoss


@dataclass(frozen=True)
class ScoredPair:
    """A pair with the reference model's log-probabilities of its two answers."""

    pair: PreferencePair
    reference: tuple[float, float]  # (preferred, non-preferred)

    @property
    def n_tokens(self) -> int:
        return self.pair.n_tokens


@dataclass
class PairRow(PackedRow):
    """Packed pairs: sequences alternate preferred, non-preferred; ``segments`` gives each
    token's sequence, ``reference`` each sequence's reference log-probability."""

    segments: list[int] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return len(self.lengths) // 2

    def add_pair(self, unit: PreferencePair | ScoredPair) -> None:
        pair = unit.pair if isinstance(unit, ScoredPair) else unit
        for sequence in (pair.chosen, pair.rejected):
            self.segments.extend([len(self.lengths)] * sequence.n_tokens)
            self.add(sequence)
        self.reference.extend(unit.reference if isinstance(unit, ScoredPair) else (0.0, 0.0))


def pack_pairs(
    units: Sequence[PreferencePair | ScoredPair], max_tokens: int | None
) -> list[PairRow]:
    """Pairs, in order, into as few rows of at most ``max_tokens`` as greedily fit (a pair
    longer than that gets a row to itself)."""
    rows: list[PairRow] = []
    for unit in units:
        full = max_tokens is not None and rows and rows[-1].n_tokens + unit.n_tokens > max_tokens
        if not rows or full:
            rows.append(PairRow())
        rows[-1].add_pair(unit)
    return rows


def sequence_log_probs(forward: RowForward, row: PairRow, device: torch.device) -> torch.Tensor:
    """Summed log-probability of each sequence's trained tokens (its answer), in row order."""
    at, positions = forward.labelled(row, device)
    if at.hidden is not None and at.head_weight is not None:
        token_log_probs = linear_log_probs(at.hidden, at.head_weight, at.targets)
    else:
        assert at.logits is not None
        token_log_probs = at.logits.log_softmax(-1).gather(1, at.targets[:, None]).squeeze(1)
    (segments,) = to_device([[row.segments[i] for i in positions]], device)
    sums = torch.zeros(len(row.lengths), dtype=torch.float32, device=device)
    return sums.index_add(0, segments, token_log_probs.float())


class DirectPreference:
    name = "dpo"

    def __init__(self) -> None:
        self.beta = 0.1
        self.reference: dict[str, torch.Tensor] = {}  # split -> (pairs, 2), on the CPU

    def load(self, path: Path, tokenizer: Any, max_seq_len: int) -> list[PreferencePair]:
        return load_examples(path, tokenizer, max_seq_len, method=self.name)

    def reusable(self, units: Sequence[Any], max_seq_len: int) -> bool:
        return all(
            isinstance(u, PreferencePair)
            and max(u.chosen.n_tokens, u.rejected.n_tokens) <= max_seq_len
            for u in units
        )

    def prepare(
        self,
        splits: dict[str, list[Any]],
        hp: Any,
        run: Any,
        state: Mapping[str, Any] | None,
        callbacks: Any,
    ) -> dict[str, list[Any]]:
        """Score every pair with the starting model, or take the scores a checkpoint kept."""
        self.beta = float(hp.beta)
        saved = dict(state.get("reference", {})) if state else {}
        scored: dict[str, list[Any]] = {}
        for split, pairs in splits.items():
            if not pairs:
                scored[split] = []
                continue
            reference = saved.get(split)
            if reference is None or len(reference) != len(pairs):
                n_pairs = len(pairs)
                callbacks.on_event(
                    "info",
                    f"Computing the reference model's log-probabilities of {n_pairs} {split} pairs",
                    None,
                )
                reference = self._score(pairs, run)
            self.reference[split] = reference
            scored[split] = [
                ScoredPair(pair, (float(c), float(r)))
                for pair, (c, r) in zip(pairs, reference.tolist(), strict=True)
            ]
        return scored

    @torch.no_grad()
    def _score(self, pairs: Sequence[PreferencePair], run: Any) -> torch.Tensor:
        forward = RowForward(run.model)
        values = []
        with run.inference():
            for row in pack_pairs(pairs, run.max_row_tokens):
                values.append(sequence_log_probs(forward, row, run.device))
        return torch.cat(values).float().cpu().view(-1, 2)

    def state_dict(self) -> dict[str, Any]:
        return {"reference": dict(self.reference)}

    def pack(self, units: Sequence[Any], max_row_tokens: int | None) -> list[PackedRow]:
        return list(pack_pairs(units, max_row_tokens))

    def row_loss(self, model: Any) -> RowLoss:
        forward = RowForward(model)

        def row_loss(row: PairRow, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            log_probs = sequence_log_probs(forward, row, device)
            reference = torch.tensor(row.reference, dtype=torch.float32).to(device)
            rewards = self.beta * (log_probs - reference)
            chosen, rejected = rewards[0::2], rewards[1::2]
            margin = chosen - rejected
            loss = -F.logsigmoid(margin).sum()
            stats = torch.stack(
                [(margin > 0).sum().float(), margin.sum(), chosen.sum(), rejected.sum()]
            ).detach()
            return loss, stats

        return row_loss

    def denominator(self, rows: Sequence[PackedRow]) -> int:
        return sum(len(row.lengths) // 2 for row in rows)

    def metrics(self, totals: Sequence[float], denominator: int, split: str) -> dict[str, float]:
        return dict(
            zip(metric_names(self.name, split), (t / denominator for t in totals), strict=True)
        )
