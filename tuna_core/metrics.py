"""The metrics a training step reports, per method: one list for the engine, the job's events,
the results CSV, the CLI and the dashboard.

Each name is measured on the training batch (``train_``), on one validation batch now and then
(``valid_``) and on the whole validation file at the end (``full_valid_``).
"""

from __future__ import annotations

SPLITS = ("train", "valid", "full_valid")

# Supervised: mean token cross-entropy and the share of tokens whose argmax is the target.
# DPO: -log sigmoid(beta * margin) averaged over pairs; the share of pairs whose chosen reward
# beats the rejected one; the mean margin (chosen - rejected reward); each side's mean reward,
# where a reward is beta * (policy - reference) log-probability of the answer.
METHOD_METRICS: dict[str, tuple[str, ...]] = {
    "supervised": ("loss", "mean_token_accuracy"),
    "dpo": ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"),
}


def metric_names(method: str, split: str) -> tuple[str, ...]:
    """``("train_loss", "train_mean_token_accuracy")`` for ("supervised", "train")."""
    return tuple(f"{split}_{name}" for name in METHOD_METRICS[method])
