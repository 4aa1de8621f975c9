"""What a training method supplies to the loop (`loop.train`), and which method a run uses.

The loop owns everything a method does not care about: model loading, the optimizer and
schedule, the memory plan, autocast, compiling, checkpoints, pause/cancel/resume, randomness.
A method owns its data and its loss:

* ``load``: read and check a file's examples (the same checks as the upload), tokenized into
  units; one unit is what one line trains on and is never split across rows.
* ``prepare``: anything computed once with the starting model before the first step (DPO's
  reference log-probabilities), or taken back from a checkpoint's ``state_dict()`` on resume.
* ``pack``: a batch's units into rows of at most ``max_row_tokens`` tokens.
* ``row_loss``: a row -> (summed loss, a vector of summed statistics), both tensors on the device,
  read back once per step; a step's loss is the sum over its rows / ``denominator(rows)``.
* ``metrics``: the summed loss and statistics of a step (or an evaluation) as the named metrics of
  `tuna_core.metrics` for a split ("train", "valid", "full_valid").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from worker.training.data import PackedRow

if TYPE_CHECKING:
    from worker.training.callbacks import TrainingCallbacks
    from worker.training.config import ResolvedHyperparameters, TrainingConfig

RowLoss = Callable[[Any, torch.device], tuple[torch.Tensor, torch.Tensor]]
# Evaluates rows without gradients: rows -> (summed loss, summed statistics) as floats.
Scorer = Callable[[Sequence[PackedRow]], Any]


class TrainingMethod(Protocol):
    name: str

    def load(self, path: Path, tokenizer: Any, max_seq_len: int) -> list[Any]: ...

    def reusable(self, units: Sequence[Any], max_seq_len: int) -> bool:
        """Whether units tokenized earlier (by the worker's file check) can be trained on."""
        ...

    def prepare(
        self,
        splits: dict[str, list[Any]],
        hp: ResolvedHyperparameters,
        run: Any,
        state: Mapping[str, Any] | None,
        callbacks: TrainingCallbacks,
    ) -> dict[str, list[Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def pack(self, units: Sequence[Any], max_row_tokens: int | None) -> list[PackedRow]: ...

    def row_loss(self, model: Any) -> RowLoss: ...

    def denominator(self, rows: Sequence[PackedRow]) -> int: ...

    def metrics(
        self, totals: Sequence[float], denominator: int, split: str
    ) -> dict[str, float]: ...


def method_for(config: TrainingConfig) -> TrainingMethod:
    """The method object of ``config.method``."""
    if config.method == "dpo":
        from worker.training.dpo import DirectPreference

        return DirectPreference()
    from worker.training.supervised import Supervised

    return Supervised()
