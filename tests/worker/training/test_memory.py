"""Activation memory: the probe measures what rows really keep, checkpointed layers compute the
same gradients with less kept, and a run within a small budget trains exactly like one without."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.training.helpers import Recorder, chat, write_jsonl
from tuna_core.base_models import load_tokenizer
from worker.training.config import TrainingConfig
from worker.training.data import load_examples
from worker.training.loop import _load_model, train
from worker.training.memory import (
    GIB,
    ActivationCost,
    LayerCheckpointing,
    MemoryPlan,
    _kept_bytes,
    _probe_row,
    activation_budget,
    describe_memory_plan,
    measure_activation_cost,
)
from worker.training.supervised import make_row_loss

CPU = torch.device("cpu")


@pytest.fixture
def lora_run(make_config: Any, tmp_path: Path, tiny_dir: Path) -> Any:
    """The tiny model as the engine trains it: LoRA, fused, varlen, switchable checkpointing."""
    config = make_config(write_jsonl(tmp_path / "unused.jsonl", [chat("a", "b")]))
    torch.manual_seed(0)
    model = _load_model(config, tiny_dir, CPU)
    with torch.no_grad():  # B starts at zero, which would hide a wrong adapter gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    row_loss = make_row_loss(model)
    return model, row_loss, LayerCheckpointing(model)


def test_the_probe_predicts_what_longer_rows_keep(lora_run: Any) -> None:
    _model, row_loss, checkpointing = lora_run
    cost = measure_activation_cost(row_loss, checkpointing, CPU)
    assert checkpointing.n_layers == cost.n_layers == 2
    assert 0 < cost.per_token_all_checkpointed < cost.per_token / 3

    for checkpointed, per_token in ((0, cost.per_token), (2, cost.per_token_all_checkpointed)):
        short_row, long_row = _probe_row(1, length=100), _probe_row(4, length=100)
        with checkpointing.layers_checkpointed(checkpointed):
            short, long = (_kept_bytes(row_loss, row, CPU) for row in (short_row, long_row))
        growth = long - short
        assert growth == pytest.approx(
            per_token * (long_row.n_tokens - short_row.n_tokens), rel=0.05
        )


def test_checkpointed_layers_give_the_same_loss_and_gradients(lora_run: Any) -> None:
    model, row_loss, checkpointing = lora_run
    row = _probe_row(3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for checkpointed in (0, 1, 2):
        with checkpointing.layers_checkpointed(checkpointed):
            loss, _correct = row_loss(row, CPU)
        results[checkpointed] = (loss.detach(), torch.autograd.grad(loss, trainable))
    assert checkpointing.active == 0  # the block restores it

    expected_loss, expected_grads = results[0]
    for checkpointed in (1, 2):
        loss, grads = results[checkpointed]
        torch.testing.assert_close(loss, expected_loss, rtol=0, atol=0)
        for got, expected in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_plan_splits_rows_then_checkpoints_as_few_layers_as_fit() -> None:
    measured = {0: 1000.0, 10: 100.0}  # bytes per token: plain, and with all 10 layers
    cost = ActivationCost(measured.__getitem__, n_layers=10)
    plan = MemoryPlan(cost, budget=1_000_000)

    assert plan.row_tokens == 1000
    assert plan.checkpointed_layers(1000) == 0
    layers = [plan.checkpointed_layers(tokens) for tokens in (1001, 1500, 2000, 4000)]
    assert layers == sorted(layers) and layers[0] > 0 and layers[-1] <= 10
    for tokens, count in zip((1001, 1500, 2000, 4000), layers, strict=True):
        assert cost.step_bytes(tokens, count) <= plan.budget
        assert cost.step_bytes(tokens, count - 1) > plan.budget
    assert plan.fits(4000) and not plan.fits(6000)

    messages = describe_memory_plan(plan, longest_example=6000, longest_batch=9000)
    assert [level for level, _ in messages] == ["info", "info", "warn"]
    assert "split into rows" in messages[0][1] and "gradient checkpointing" in messages[1][1]
    assert describe_memory_plan(plan, longest_example=900, longest_batch=1000) == []


def test_the_budget_is_the_limit_given_or_less_than_what_is_free(lora_run: Any) -> None:
    model, _, _ = lora_run
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    assert activation_budget(CPU, model, optimizer, 0.5) == 0.5 * GIB
    free = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    assert 0 < activation_budget(CPU, model, optimizer, None) < free


@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_training_within_a_small_budget_matches_an_unbounded_run(
    make_config: Any, tmp_path: Path, tiny_dir: Path, lora_run: Any, compile_mode: str
) -> None:
    """Rows split and the longest example checkpointed: the same losses as one row per batch."""
    long_answer = " ".join(f"word{i}" for i in range(40))
    rows = [chat(f"Question {i}?", f"Answer {i}.") for i in range(6)]
    rows.insert(2, chat("Tell me a long story.", long_answer))
    training_file = write_jsonl(tmp_path / "mixed.jsonl", rows)
    lengths = [e.n_tokens for e in load_examples(training_file, load_tokenizer(tiny_dir), 512)]
    _, row_loss, checkpointing = lora_run
    per_token = measure_activation_cost(row_loss, checkpointing, CPU).per_token
    budget_tokens = max(lengths) - 8  # the longest example does not fit unchecked
    assert budget_tokens > 2 * sorted(lengths)[-2]

    losses = {}
    for name, limit in (("unbounded", None), ("small", per_token * budget_tokens / GIB)):
        config: TrainingConfig = make_config(
            training_file,
            f"out-{name}",
            batch_size=4,
            n_epochs=1,
            compile=compile_mode if name == "small" else "off",
            activation_memory_gib=limit,
        )
        recorder = Recorder()
        train(config, recorder)
        losses[name] = recorder.losses
        messages = [message for _, message, _ in recorder.events]
        planned = [m for m in messages if "split into rows" in m or "checkpointing" in m]
        assert len(planned) == (2 if name == "small" else 0), messages

    assert len(losses["small"]) == 2
    assert losses["small"] == pytest.approx(losses["unbounded"], rel=1e-5)
