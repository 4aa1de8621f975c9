"""The training loop on the tiny llama: learning, determinism, checkpoints, resume, stop."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.training.helpers import Recorder, chat, write_jsonl
from worker.training.config import TrainingConfig
from worker.training.loop import (
    STATE_FILE,
    TrainingCancelled,
    TrainingError,
    TrainingPaused,
    train,
)

MakeConfig = Callable[..., TrainingConfig]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors"
        if (folder / "adapter_config.json").exists()
        else ("model.safetensors")
    )
    return load_file(folder / name)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize(("training_type", "multiplier"), [("lora", 20.0), ("full", 100.0)])
def test_training_reduces_loss(
    make_config: MakeConfig, repetitive_file: Path, training_type: str, multiplier: float
) -> None:
    cfg = make_config(
        repetitive_file,
        training_type=training_type,
        learning_rate_multiplier=multiplier,
        validation_file=repetitive_file,
        n_epochs=3,
    )
    rec = Recorder()
    result = train(cfg, rec)

    losses = [m["train_loss"] for _, _, m in rec.metrics]
    assert result.total_steps == len(losses) == 12
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.metrics["full_valid_loss"] < losses[0] - 0.5
    assert "full_valid_mean_token_accuracy" in result.metrics
    assert all("valid_loss" in m for _, _, m in rec.metrics)  # eval every step for 12 steps
    # trained_tokens counts every real token once per epoch.
    n_tokens = rec.events[1][2]["n_tokens"]  # type: ignore[index]
    assert result.trained_tokens == n_tokens * 3 == result.metrics["trained_tokens"]
    assert rec.hyperparameters is not None and rec.hyperparameters.n_epochs == 3

    marker = "adapter_config.json" if training_type == "lora" else "model.safetensors"
    assert (result.final_dir / marker).is_file()
    assert (result.final_dir / "tokenizer_config.json").is_file()


def test_same_seed_same_losses(make_config: MakeConfig, varied_file: Path) -> None:
    first, second, other = Recorder(), Recorder(), Recorder()
    train(make_config(varied_file, "a"), first)
    train(make_config(varied_file, "b"), second)
    train(make_config(varied_file, "c", seed=99), other)
    assert first.losses == second.losses
    assert first.losses != other.losses


def test_epoch_checkpoints_are_pruned_to_the_last_n(
    make_config: MakeConfig, varied_file: Path
) -> None:
    rec = Recorder()
    result = train(make_config(varied_file, n_epochs=4, keep_checkpoints=2), rec)
    # 6 examples, batch 2: 3 steps per epoch, a checkpoint at each epoch end.
    assert [step for step, _ in rec.checkpoints] == [3, 6, 9, 12]
    assert [step for step, _ in rec.deleted] == [3, 6]
    assert [c.step for c in result.checkpoints] == [9, 12]
    on_disk = sorted(p.name for p in (result.final_dir.parent / "checkpoints").iterdir())
    assert on_disk == ["step-12", "step-9"]
    assert (result.checkpoints[-1].path / STATE_FILE).is_file()
    assert_same_weights(result.checkpoints[-1].path, result.final_dir)


@pytest.mark.parametrize("training_type", ["lora", "full"])
def test_resume_from_epoch_checkpoint_matches_uninterrupted_run(
    make_config: MakeConfig, varied_file: Path, training_type: str
) -> None:
    full_run = Recorder()
    reference = train(
        make_config(varied_file, "ref", training_type=training_type, n_epochs=3), full_run
    )
    checkpoint = reference.checkpoints[0].path  # end of epoch 1 (step 3)

    resumed_run = Recorder()
    resumed = train(
        make_config(
            varied_file,
            "resumed",
            training_type=training_type,
            n_epochs=3,
            resume_from_checkpoint=checkpoint,
        ),
        resumed_run,
    )
    assert list(resumed_run.losses) == [4, 5, 6, 7, 8, 9]
    assert resumed_run.losses == {s: v for s, v in full_run.losses.items() if s > 3}
    assert resumed.trained_tokens == reference.trained_tokens
    assert len(resumed.history) == 9
    assert_same_weights(resumed.final_dir, reference.final_dir)


def test_pause_then_resume_matches_uninterrupted_run(
    make_config: MakeConfig, varied_file: Path
) -> None:
    full_run = Recorder()
    reference = train(make_config(varied_file, "ref", n_epochs=3), full_run)

    paused_run = Recorder(stop_at=4, request="pause")  # mid-epoch 2
    with pytest.raises(TrainingPaused) as paused:
        train(make_config(varied_file, "run", n_epochs=3), paused_run)
    assert paused.value.step == 4
    assert paused.value.checkpoint_path.name == "step-4"
    assert list(paused_run.losses) == [1, 2, 3, 4]

    resumed_run = Recorder()
    resumed = train(
        make_config(
            varied_file, "run", n_epochs=3, resume_from_checkpoint=paused.value.checkpoint_path
        ),
        resumed_run,
    )
    assert resumed_run.losses == {s: v for s, v in full_run.losses.items() if s > 4}
    assert_same_weights(resumed.final_dir, reference.final_dir)
    assert not paused.value.checkpoint_path.exists()  # removed once the run finished
    assert [c.step for c in resumed.checkpoints] == [3, 6, 9]


# Validation: the starting model, then every checkpoint -----------------------------------------


def test_fresh_run_reports_the_starting_models_validation_loss(
    make_config: MakeConfig, varied_file: Path
) -> None:
    """Validation file = training file, one batch of all six examples: the first step's train
    loss is the starting model's loss on the file (the baseline), the second step's the loss
    after one step (the first epoch checkpoint's full_valid_loss)."""
    rec = Recorder()
    result = train(make_config(varied_file, batch_size=6, validation_file=varied_file), rec)

    ((before, message, baseline),) = rec.baselines
    assert before == 0  # reported before any step's metrics
    assert set(baseline) == {"full_valid_loss", "full_valid_mean_token_accuracy"}
    loss = baseline["full_valid_loss"]
    assert math.isfinite(loss) and loss > 0
    assert message == f"Validation loss before training: {loss:.4f}"
    assert [level for level, _, data in rec.events if data and "baseline" in data] == ["info"]
    first, second = rec.metrics[0][2], rec.metrics[1][2]
    assert loss == pytest.approx(first["train_loss"], rel=1e-5)
    assert baseline["full_valid_mean_token_accuracy"] == pytest.approx(
        first["train_mean_token_accuracy"], abs=1e-6
    )

    # Every checkpoint carries the whole validation file's metrics, measured at its step.
    assert sorted(rec.checkpoint_metrics) == [1, 2]
    after_one = rec.checkpoint_metrics[1]
    assert after_one["full_valid_loss"] == pytest.approx(second["train_loss"], rel=1e-5)
    assert after_one["full_valid_loss"] < loss
    assert "full_valid_mean_token_accuracy" in after_one
    assert after_one["train_loss"] == first["train_loss"]  # the step's metrics, plus these
    assert "full_valid_loss" not in first  # on_metrics of a step before the last: unchanged
    assert rec.checkpoint_metrics[2]["full_valid_loss"] == result.metrics["full_valid_loss"]
    assert [c.metrics["full_valid_loss"] for c in result.checkpoints] == [
        rec.checkpoint_metrics[1]["full_valid_loss"],
        rec.checkpoint_metrics[2]["full_valid_loss"],
    ]
    state = torch.load(result.checkpoints[0].path / STATE_FILE, weights_only=True)
    assert state["checkpoints"][0][2]["full_valid_loss"] == after_one["full_valid_loss"]


def test_evaluating_changes_nothing_in_training(
    make_config: MakeConfig, varied_file: Path, tmp_path: Path
) -> None:
    """Evaluation (before training, on evaluation steps, at checkpoints) consumes no RNG: with
    LoRA dropout drawing from it, a run with a validation file trains exactly as one without."""
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat("Say hi", "Hi there."), chat("2+2?", "4.")])
    plain_run, validated_run = Recorder(), Recorder()
    plain = train(make_config(varied_file, "plain", lora_dropout=0.1), plain_run)
    validated = train(
        make_config(varied_file, "validated", lora_dropout=0.1, validation_file=valid),
        validated_run,
    )
    assert plain_run.baselines == []
    assert sorted(plain_run.checkpoint_metrics) == [3, 6]
    assert not any("full_valid_loss" in m for m in plain_run.checkpoint_metrics.values())
    assert len(validated_run.baselines) == 1
    assert all("full_valid_loss" in m for m in validated_run.checkpoint_metrics.values())
    assert validated_run.losses == plain_run.losses
    assert_same_weights(validated.final_dir, plain.final_dir)


def test_resumed_run_reports_no_baseline_and_the_same_checkpoint_metrics(
    make_config: MakeConfig, varied_file: Path
) -> None:
    full_run = Recorder()
    reference = train(
        make_config(varied_file, "ref", n_epochs=3, validation_file=varied_file), full_run
    )
    resumed_run = Recorder()
    resumed = train(
        make_config(
            varied_file,
            "resumed",
            n_epochs=3,
            validation_file=varied_file,
            resume_from_checkpoint=reference.checkpoints[0].path,
        ),
        resumed_run,
    )
    assert len(full_run.baselines) == 1
    assert resumed_run.baselines == []  # the starting model is not this run's start
    assert resumed_run.losses == {s: v for s, v in full_run.losses.items() if s > 3}
    assert sorted(resumed_run.checkpoint_metrics) == [6, 9]
    for step, metrics in resumed_run.checkpoint_metrics.items():
        assert metrics["full_valid_loss"] == full_run.checkpoint_metrics[step]["full_valid_loss"]
    # Step 3's checkpoint, from the state, keeps its full_valid_loss too.
    assert [c.metrics["full_valid_loss"] for c in resumed.checkpoints] == [
        c.metrics["full_valid_loss"] for c in reference.checkpoints
    ]
    assert_same_weights(resumed.final_dir, reference.final_dir)


def test_cancel_stops_between_steps(make_config: MakeConfig, varied_file: Path) -> None:
    rec = Recorder(stop_at=2, request="cancel")
    cfg = make_config(varied_file)
    with pytest.raises(TrainingCancelled) as cancelled:
        train(cfg, rec)
    assert cancelled.value.step == 2
    assert list(rec.losses) == [1, 2]
    assert not (cfg.output_dir / "final").exists()


def test_training_starts_from_examples_already_tokenized(
    make_config: MakeConfig, repetitive_file: Path, tmp_path: Path, tiny_dir: Path
) -> None:
    """Upload-time validation hands its tokenized examples over; they are not tokenized again
    (here the handed-over examples are another file's, to tell them apart), unless they do not
    fit this run's max_seq_len."""
    from tuna_core.base_models import load_tokenizer
    from worker.training.data import load_examples

    rows = [chat("Hi", "Hello"), chat("Hi", "Hey"), chat("Tell me more", "more " * 40)]
    other = load_examples(
        write_jsonl(tmp_path / "other.jsonl", rows), load_tokenizer(tiny_dir), 512
    )

    def announced(config: TrainingConfig) -> str:
        recorder = Recorder()
        train(config, recorder, {repetitive_file: other})
        return next(m for _, m, _ in recorder.events if m.startswith("Training file has"))

    n_tokens = sum(e.n_tokens for e in other)
    used = announced(make_config(repetitive_file, "handed-over", n_epochs=1))
    assert used == f"Training file has 3 examples and {n_tokens} tokens"
    too_long = max(e.n_tokens for e in other) - 1
    reloaded = make_config(repetitive_file, "reloaded", n_epochs=1, max_seq_len=too_long)
    assert announced(reloaded).startswith("Training file has 8 examples")


def test_resume_refuses_a_different_training_file(
    make_config: MakeConfig, varied_file: Path, repetitive_file: Path
) -> None:
    reference = train(make_config(varied_file, "ref", n_epochs=1), Recorder())
    with pytest.raises(TrainingError, match="training_file"):
        train(
            make_config(repetitive_file, resume_from_checkpoint=reference.checkpoints[0].path),
            Recorder(),
        )


def test_bad_data_and_unknown_model_fail_readably(make_config: MakeConfig, tmp_path: Path) -> None:
    too_long = write_jsonl(tmp_path / "long.jsonl", [chat("hi", "ok"), chat("hi", "word " * 80)])
    with pytest.raises(TrainingError, match="Example 2") as failed:
        train(make_config(too_long, max_seq_len=64), Recorder())
    assert failed.value.code == "invalid_training_file"
    assert failed.value.param == "training_file"

    with pytest.raises(TrainingError) as unknown:
        train(make_config(too_long, base_model="no-such-model"), Recorder())
    assert unknown.value.code == "model_not_found"


def test_lora_adapter_loads_with_peft(
    make_config: MakeConfig, repetitive_file: Path, tiny_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(make_config(repetitive_file, n_epochs=1), Recorder())
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, result.final_dir)
    assert not torch.allclose(tuned(input_ids=ids).logits, before)


def test_divergence_fails_readably(make_config: MakeConfig, repetitive_file: Path) -> None:
    """A loss that turns NaN or inf stops the run with an error the user can act on."""
    from worker.training.loop import TrainingError

    with pytest.raises(TrainingError) as caught:
        train(
            make_config(
                repetitive_file, training_type="full", learning_rate_multiplier=1e12, n_epochs=3
            ),
            Recorder(),
        )
    assert caught.value.code == "training_diverged"
    assert "learning_rate_multiplier" in str(caught.value)
