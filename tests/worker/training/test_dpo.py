"""DPO as a training method: the pair data, the log-prob kernel, the loss against a plain
implementation, reference log-probs, metrics, resume, and continuing a fine-tuned model."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.worker.training.helpers import Recorder, chat, write_jsonl
from tuna_core.base_models import load_tokenizer
from tuna_core.metrics import metric_names
from worker.training.config import TrainingConfig
from worker.training.data import InvalidExample, PreferencePair, load_examples
from worker.training.dpo import DirectPreference, ScoredPair, pack_pairs, sequence_log_probs
from worker.training.forward import RowForward
from worker.training.kernels import linear_log_probs
from worker.training.loop import STATE_FILE, TrainingError, TrainingPaused, _load_model, train

MakeConfig = Callable[..., TrainingConfig]
CPU = torch.device("cpu")


def preference(user: str, good: str, bad: str, history: list[dict[str, Any]] | None = None):
    return {
        "input": {"messages": [*(history or []), {"role": "user", "content": user}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


PAIRS = [
    preference("What is 2+2?", "ANSWER: 4", "The answer is four, of course."),
    preference("Capital of France?", "ANSWER: Paris", "I think it is Paris."),
    preference("Color of the sky?", "ANSWER: blue", "Usually the sky looks blue to us."),
    preference("3 times 3?", "ANSWER: 9", "Three times three makes nine."),
    preference(
        "And 5+5?",
        "ANSWER: 10",
        "Ten.",
        history=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! Ask me anything."},
        ],
    ),
    preference("Largest planet?", "ANSWER: Jupiter", "Jupiter is the biggest one."),
]


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


def dpo_config(make_config: MakeConfig, path: Path, output: str = "out", **kw: Any):
    values: dict[str, Any] = {"method": "dpo", "learning_rate_multiplier": 5.0, "n_epochs": 2}
    return make_config(path, output, **(values | kw))


# Data ------------------------------------------------------------------------------------------


def test_a_pair_trains_only_its_answers(pairs_file: Path, tiny_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_dir)
    pairs = load_examples(pairs_file, tokenizer, 512, method="dpo")
    assert len(pairs) == len(PAIRS) and all(isinstance(p, PreferencePair) for p in pairs)
    with_history = pairs[4]
    for sequence, answer in ((with_history.chosen, "ANSWER: 10"), (with_history.rejected, "Ten.")):
        (span,) = sequence.trained  # the input's assistant turn is context, not trained
        trained = tokenizer.decode(sequence.input_ids[span[0] : span[1]])
        assert trained.startswith(answer) and "Hello" not in trained
    # Both sequences share the prompt's tokens.
    prompt_end = with_history.chosen.trained[0][0]
    assert list(with_history.chosen.input_ids[:prompt_end]) == list(
        with_history.rejected.input_ids[:prompt_end]
    )


def test_each_method_refuses_the_others_files(
    pairs_file: Path, tmp_path: Path, tiny_dir: Path
) -> None:
    tokenizer = load_tokenizer(tiny_dir)
    with pytest.raises(InvalidExample, match="preference example, which the supervised method"):
        load_examples(pairs_file, tokenizer, 512)
    chats = write_jsonl(tmp_path / "chats.jsonl", [chat("Hi", "Hello")])
    with pytest.raises(InvalidExample, match="chat example, which the dpo method"):
        load_examples(chats, tokenizer, 512, method="dpo")


def test_a_too_long_answer_names_its_side(tmp_path: Path, tiny_dir: Path) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [preference("Hi", "Yes", "word " * 100)])
    with pytest.raises(InvalidExample, match=r"Example 1: non_preferred_output has \d+ tokens"):
        load_examples(path, load_tokenizer(tiny_dir), 64, method="dpo")


# The log-prob kernel and the pair loss -------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_linear_log_probs_matches_log_softmax(chunked: bool, monkeypatch) -> None:
    if chunked:  # force several chunks
        monkeypatch.setattr("worker.training.kernels._LOGITS_CHUNK_ELEMENTS", 64)
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 20, (13,))
    scale = torch.randn(13, dtype=torch.float64)

    ours = linear_log_probs(hidden, weight, targets)
    (ours.double() * scale).sum().backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()  # type: ignore[union-attr]
    hidden.grad = weight.grad = None

    plain = (hidden @ weight.t()).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    (plain * scale).sum().backward()
    torch.testing.assert_close(ours.double(), plain.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grads[0], hidden.grad)
    torch.testing.assert_close(ours_grads[1], weight.grad, rtol=1e-5, atol=1e-5)  # f32 sums


def test_pair_loss_and_gradient_match_a_plain_dpo_implementation(
    make_config: MakeConfig, pairs_file: Path, tiny_dir: Path
) -> None:
    """Several pairs packed in one row, through the chunked head, give the loss and gradients
    of the textbook computation: each sequence alone, full logits, log_softmax, gather."""
    config = dpo_config(make_config, pairs_file)
    tokenizer = load_tokenizer(tiny_dir)
    pairs = load_examples(pairs_file, tokenizer, 512, method="dpo")
    model = _load_model(config, tiny_dir, CPU)
    with torch.no_grad():  # a non-zero adapter, so policy and reference differ
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    scored = [ScoredPair(p, (-float(i), -2.0 * i)) for i, p in enumerate(pairs)]
    beta = 0.3

    method = DirectPreference()
    method.beta = beta
    (row,) = method.pack(scored, None)
    loss, stats = method.row_loss(model)(row, CPU)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    def plain_log_prob(sequence) -> torch.Tensor:
        ids = torch.tensor(list(sequence.input_ids))[None]
        logits = model(input_ids=ids).logits[0, :-1].float()
        labels = torch.tensor(sequence.labels[1:])
        keep = labels != -100
        return logits[keep].log_softmax(-1).gather(1, labels[keep][:, None]).sum()

    plain_loss = torch.zeros(())
    margins = []
    for unit in scored:
        chosen = plain_log_prob(unit.pair.chosen) - unit.reference[0]
        rejected = plain_log_prob(unit.pair.rejected) - unit.reference[1]
        margins.append(beta * (chosen - rejected))
        plain_loss = plain_loss - F.logsigmoid(margins[-1])
    plain_loss.backward()

    torch.testing.assert_close(loss, plain_loss, rtol=1e-4, atol=1e-5)
    assert stats[0] == sum(m > 0 for m in margins)
    torch.testing.assert_close(stats[1], sum(margins).detach(), rtol=1e-4, atol=1e-5)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(ours[name], param.grad, rtol=1e-3, atol=1e-6)


def test_packing_pairs_does_not_change_their_log_probs(
    make_config: MakeConfig, pairs_file: Path, tiny_dir: Path
) -> None:
    pairs = load_examples(pairs_file, load_tokenizer(tiny_dir), 512, method="dpo")
    forward = RowForward(_load_model(dpo_config(make_config, pairs_file), tiny_dir, CPU))
    with torch.no_grad():
        (together,) = pack_pairs(pairs, None)
        packed = sequence_log_probs(forward, together, CPU)
        alone = torch.cat([sequence_log_probs(forward, r, CPU) for r in pack_pairs(pairs, 1)])
    assert len(together.lengths) == 2 * len(pairs)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)


# Training --------------------------------------------------------------------------------------


def test_dpo_run_reports_its_metrics_and_learns_the_preference(
    make_config: MakeConfig, pairs_file: Path
) -> None:
    rec = Recorder()
    result = train(
        dpo_config(
            make_config,
            pairs_file,
            n_epochs=4,
            learning_rate_multiplier=25.0,
            validation_file=pairs_file,
        ),
        rec,
    )
    first, last = rec.metrics[0][2], rec.metrics[-1][2]
    for name in (*metric_names("dpo", "train"), *metric_names("dpo", "full_valid")):
        assert name in result.metrics, name
    assert "train_mean_token_accuracy" not in first
    # The reference is the starting model: the first step's margin is zero, its loss log 2.
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["train_reward_margin"] == pytest.approx(0, abs=1e-4)
    assert last["train_loss"] < math.log(2) - 0.15, [m["train_loss"] for _, _, m in rec.metrics]
    assert result.metrics["full_valid_reward_accuracy"] == 1.0
    assert result.metrics["full_valid_chosen_reward"] > result.metrics["full_valid_rejected_reward"]
    assert rec.hyperparameters is not None and rec.hyperparameters.beta == 0.1
    assert any(
        "reference model's log-probabilities of 6 train pairs" in m for _, m, _ in rec.events
    )
    assert (result.final_dir / "adapter_config.json").is_file()


def test_dpo_run_reports_the_starting_models_validation_loss(
    make_config: MakeConfig, pairs_file: Path
) -> None:
    """The baseline is measured against the reference log-probs, which are the starting
    model's: every margin is zero and the loss log 2."""
    rec = Recorder()
    result = train(dpo_config(make_config, pairs_file, validation_file=pairs_file), rec)
    ((before, message, baseline),) = rec.baselines
    assert before == 0
    assert set(baseline) == set(metric_names("dpo", "full_valid"))
    assert baseline["full_valid_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert baseline["full_valid_reward_margin"] == pytest.approx(0, abs=1e-4)
    assert message == f"Validation loss before training: {baseline['full_valid_loss']:.4f}"
    # 6 pairs, batch 2, 2 epochs: checkpoints at steps 3 and 6, each measured on the whole file.
    assert sorted(rec.checkpoint_metrics) == [3, 6]
    assert all(
        set(metric_names("dpo", "full_valid")) <= set(m) for m in rec.checkpoint_metrics.values()
    )
    assert rec.checkpoint_metrics[3]["full_valid_loss"] < baseline["full_valid_loss"]
    assert rec.checkpoint_metrics[6]["full_valid_loss"] == result.metrics["full_valid_loss"]


@pytest.mark.parametrize("training_type", ["lora", "full"])
def test_pause_then_resume_matches_uninterrupted_dpo_run(
    make_config: MakeConfig, pairs_file: Path, training_type: str
) -> None:
    def config(output: str, **kw: Any) -> TrainingConfig:
        return dpo_config(
            make_config, pairs_file, output, n_epochs=3, training_type=training_type, **kw
        )

    full_run = Recorder()
    train(config("ref"), full_run)
    paused_run = Recorder(stop_at=4, request="pause")  # mid-epoch 2
    with pytest.raises(TrainingPaused) as paused:
        train(config("run"), paused_run)
    state = torch.load(paused.value.checkpoint_path / STATE_FILE, weights_only=True)
    assert state["method"] == "dpo" and state["method_state"]["reference"]["train"].shape == (6, 2)

    resumed_run = Recorder()
    train(config("run", resume_from_checkpoint=paused.value.checkpoint_path), resumed_run)
    assert resumed_run.losses == {s: v for s, v in full_run.losses.items() if s > 4}
    # The reference came from the checkpoint, not from the (already trained) weights.
    assert not any("reference model" in m for _, m, _ in resumed_run.events)


def test_a_supervised_checkpoint_does_not_resume_a_dpo_run(
    make_config: MakeConfig, pairs_file: Path, varied_file: Path
) -> None:
    sft = train(make_config(varied_file, "sft", n_epochs=1), Recorder())
    with pytest.raises(TrainingError, match="method"):
        train(
            dpo_config(make_config, pairs_file, resume_from_checkpoint=sft.checkpoints[0].path),
            Recorder(),
        )


# Continuing a fine-tuned model -----------------------------------------------------------------


def test_dpo_continues_an_sft_adapter_with_it_as_reference(
    make_config: MakeConfig, pairs_file: Path, varied_file: Path, tiny_dir: Path
) -> None:
    sft = train(make_config(varied_file, "sft", n_epochs=1, lora_rank=4), Recorder())
    config = dpo_config(make_config, pairs_file, "dpo", init_from=sft.final_dir)
    start = _load_model(config, tiny_dir, CPU)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), sft.final_dir)
    for (name, ours), (_, theirs) in zip(
        start.named_parameters(), saved.named_parameters(), strict=True
    ):
        assert torch.equal(ours, theirs), name  # the adapter's trained weights, rank 4
    assert any(p.requires_grad for p in start.parameters())

    rec = Recorder()
    result = train(config, rec)
    # The reference is the SFT model itself, so the first margin is zero again.
    assert rec.metrics[0][2]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert (result.final_dir / "adapter_config.json").is_file()


def test_full_dpo_continues_an_adapter_merged(
    make_config: MakeConfig, pairs_file: Path, varied_file: Path, tiny_dir: Path
) -> None:
    sft = train(make_config(varied_file, "sft", n_epochs=1), Recorder())
    config = dpo_config(
        make_config, pairs_file, "dpo", training_type="full", init_from=sft.final_dir
    )
    model = _load_model(config, tiny_dir, CPU)
    assert not hasattr(model, "peft_config")
    rec = Recorder()
    train(config, rec)
    assert rec.metrics[0][2]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_lora_cannot_continue_a_full_fine_tune_or_another_base(
    make_config: MakeConfig, pairs_file: Path, varied_file: Path, tmp_path: Path
) -> None:
    full = train(make_config(varied_file, "full", n_epochs=1, training_type="full"), Recorder())
    with pytest.raises(TrainingError, match="training_type 'full'") as refused:
        train(dpo_config(make_config, pairs_file, "dpo", init_from=full.final_dir), Recorder())
    assert refused.value.param == "training_type"

    other = tmp_path / "other"
    other.mkdir()
    (other / "tuna_model.json").write_text(
        '{"base_model": "someone-else", "training_type": "lora"}'
    )
    with pytest.raises(TrainingError, match="trained on 'someone-else'"):
        train(dpo_config(make_config, pairs_file, "dpo2", init_from=other), Recorder())
