"""The fused kernels compute what the plain modules compute: values and every gradient."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from tests.worker.training.helpers import Recorder
from worker.training import kernels
from worker.training.config import TrainingConfig
from worker.training.kernels import fuse_lora, linear_cross_entropy
from worker.training.loop import train


class TwoLayers(torch.nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.up = torch.nn.Linear(16, 24, bias=bias)
        self.down = torch.nn.Linear(24, 16, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def lora_model(bias: bool, dropout: float = 0.0) -> Any:
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout, target_modules=["up", "down"])
    model = get_peft_model(TwoLayers(bias), config)
    with torch.no_grad():  # B starts at zero, which would hide a wrong adapter path
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return model


def forward_and_grads(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), [x, *trainable])
    return out, list(grads)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_lora_matches_peft_values_and_gradients(bias: bool) -> None:
    plain = lora_model(bias)
    fused = copy.deepcopy(plain)
    assert fuse_lora(fused) == 2
    x = torch.randn(3, 5, 16)

    out_plain, grads_plain = forward_and_grads(plain, x)
    out_fused, grads_fused = forward_and_grads(fused, x)

    torch.testing.assert_close(out_fused, out_plain)
    assert len(grads_fused) == len(grads_plain) == 5  # input, and A and B of both layers
    for got, expected in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(got, expected)


def test_fused_lora_is_used_and_gives_way_where_it_does_not_apply() -> None:
    fused = lora_model(bias=False)
    fuse_lora(fused)
    x = torch.randn(2, 16, requires_grad=True)
    assert type(fused(x).grad_fn).__name__ == "LoraLinearBackward"

    with_dropout = lora_model(bias=False, dropout=0.5)
    reference = copy.deepcopy(with_dropout)
    fuse_lora(with_dropout)
    torch.manual_seed(1)
    dropped = with_dropout(x)
    torch.manual_seed(1)
    torch.testing.assert_close(dropped, reference(x))  # peft's own forward, same dropout draw
    assert "LoraLinear" not in type(dropped.grad_fn).__name__


@pytest.mark.parametrize("bias", [False, True])
def test_fused_lora_under_autocast_is_as_close_to_float32_as_peft_under_autocast(
    bias: bool,
) -> None:
    # bf16 autocast is how a GPU trains; the fused function then runs in bf16, as peft's
    # matmuls do, and hands float32 gradients to the float32 adapters.
    plain = lora_model(bias)
    fused = copy.deepcopy(plain)
    fuse_lora(fused)
    x = torch.randn(3, 5, 16)
    out_exact, grads_exact = forward_and_grads(plain, x)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_plain, grads_plain = forward_and_grads(plain, x)
        out_fused, grads_fused = forward_and_grads(fused, x)

    assert type(out_fused.grad_fn).__name__ == "LoraLinearBackward"  # fused, not peft's
    assert out_fused.dtype == out_plain.dtype == torch.bfloat16
    # bf16 keeps about 3 significant digits: both stay within 2% of the largest exact value.
    for exact, peft_bf16, fused_bf16 in zip(
        [out_exact, *grads_exact], [out_plain, *grads_plain], [out_fused, *grads_fused], strict=True
    ):
        assert fused_bf16.dtype == peft_bf16.dtype
        bound = 2e-2 * exact.abs().max().item()
        assert (peft_bf16.float() - exact).abs().max().item() < bound
        assert (fused_bf16.float() - exact).abs().max().item() < bound


def reference_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, int]:
    logits = (hidden @ weight.t()).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, int((logits.argmax(-1) == targets).sum())


@pytest.mark.parametrize("weight_trains", [False, True])
def test_linear_cross_entropy_matches_full_logits_in_several_chunks(
    monkeypatch: pytest.MonkeyPatch, weight_trains: bool
) -> None:
    monkeypatch.setattr(kernels, "_LOGITS_CHUNK_ELEMENTS", 50 * 6)  # 6 rows per chunk: 7 chunks
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=weight_trains)
    targets = torch.randint(0, 50, (37,))
    targets[:5] = (hidden[:5] @ weight.t()).argmax(-1)  # some hits for the accuracy count

    loss, correct = linear_cross_entropy(hidden, weight, targets)
    expected_loss, expected_correct = reference_loss(hidden, weight, targets)
    torch.testing.assert_close(loss, expected_loss)
    assert int(correct) == expected_correct >= 5

    inputs = [hidden, weight] if weight_trains else [hidden]
    got = torch.autograd.grad(loss * 0.25, inputs)  # a scaled loss, as the step scales it
    expected = torch.autograd.grad(expected_loss * 0.25, inputs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_linear_cross_entropy_without_grad_computes_no_gradient() -> None:
    hidden = torch.randn(9, 8, requires_grad=True)
    weight = torch.randn(20, 8)
    targets = torch.randint(0, 20, (9,))
    with torch.no_grad():
        loss, _ = linear_cross_entropy(hidden, weight, targets)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, reference_loss(hidden, weight, targets)[0])


def test_linear_cross_entropy_under_autocast_stays_close_to_float32() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(40, 32, requires_grad=True)
    weight = torch.randn(64, 32) / 4
    targets = torch.randint(0, 64, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, targets)
    (grad,) = torch.autograd.grad(loss, hidden)
    expected_loss, _ = reference_loss(hidden, weight, targets)
    (expected_grad,) = torch.autograd.grad(expected_loss, hidden)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(loss, expected_loss, rtol=2e-2, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=5e-2, atol=5e-2)


def test_compiled_layers_train_exactly_like_eager_layers(
    make_config: Any, varied_file: Path
) -> None:
    """The compiled step (and eager evaluation of a compiled run) against the eager step."""
    from torch._dynamo.utils import counters

    losses = {}
    for mode in ("off", "on"):
        counters.clear()
        config: TrainingConfig = make_config(
            varied_file, f"out-{mode}", compile=mode, validation_file=varied_file, n_epochs=1
        )
        recorder = Recorder()
        result = train(config, recorder)
        losses[mode] = [*recorder.losses.values(), result.metrics["full_valid_loss"]]
        compiling = [e for e in recorder.events if "Compiling" in str(e[1])]
        assert len(compiling) == (mode == "on")
        assert bool(counters["stats"]["unique_graphs"]) == (mode == "on")  # really compiled
    assert len(losses["on"]) > 2
    for eager, compiled in zip(losses["off"], losses["on"], strict=True):
        assert compiled == pytest.approx(eager, rel=1e-4)


@pytest.mark.parametrize("training_type", ["lora", "full"])
def test_bf16_steps_the_gpus_precision_stay_close_to_float32(
    make_config: Any, varied_file: Path, training_type: str
) -> None:
    """bf16 autocast, as on a GPU, through every fused path (LoRA, head and loss, varlen
    attention), eager and compiled: no dtype error, and losses within bf16's precision."""
    from torch._dynamo.utils import counters

    losses = {}
    for precision, mode in (("float32", "off"), ("bf16", "off"), ("bf16", "on")):
        counters.clear()
        config: TrainingConfig = make_config(
            varied_file,
            f"out-{precision}-{mode}",
            training_type=training_type,
            precision=precision,
            compile=mode,
            validation_file=varied_file,
            n_epochs=1,
        )
        result = train(config, recorder := Recorder())
        losses[precision, mode] = [*recorder.losses.values(), result.metrics["full_valid_loss"]]
        assert bool(counters["stats"]["unique_graphs"]) == (mode == "on")  # really compiled
        said = [str(e[1]) for e in recorder.events if " steps on " in str(e[1])]
        assert said[0].endswith(" in bf16") == (precision == "bf16"), said
    exact = losses["float32", "off"]
    assert len(exact) > 2
    assert losses["bf16", "off"] != exact  # autocast really ran
    for bf16 in (losses["bf16", "off"], losses["bf16", "on"]):
        assert bf16 == pytest.approx(exact, rel=2e-2)


def test_auto_compile_on_a_cpu_waits_for_a_run_long_enough_to_pay_it_back(
    make_config: Any, varied_file: Path
) -> None:
    from worker.training.loop import _has_cxx_compiler, _use_compile

    cpu = torch.device("cpu")
    exact = make_config(varied_file, precision="float32", compile="auto")
    mixed = make_config(varied_file, precision="bf16", compile="auto")
    assert not _use_compile(exact, cpu, 1_000) and not _use_compile(mixed, cpu, 1_000)
    # bf16 gains more from compiling (the casts fuse), so it pays back sooner.
    assert _use_compile(mixed, cpu, 50_000) == _has_cxx_compiler()
    assert not _use_compile(exact, cpu, 50_000)
    assert _use_compile(exact, cpu, 200_000) == _has_cxx_compiler()
    assert _use_compile(make_config(varied_file, compile="off"), cpu, 10**9) is False
