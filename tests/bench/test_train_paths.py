"""The training benchmark's two paths compute the same thing (no timing is asserted here).

The engine's fast path (examples packed into rows with restarting ``position_ids``, logits only
where there is a label) must give the same loss, and for LoRA the same gradients, as the plain
Hugging Face path (a padded batch, logits everywhere, mean cross-entropy over label tokens).
Then ``bench/train_throughput.py`` runs end to end on the tiny model.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench" / "train_throughput.py"
MODEL_CACHE = REPO_ROOT / "var" / "model-cache"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tuna_bench_train_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


@pytest.fixture(scope="module")
def tiny() -> tuple[Path, Any]:
    from tuna_core.base_models import resolve_base_model

    folder = resolve_base_model("tuna-tiny-test", MODEL_CACHE)
    tokenizer = load_bench().load_tokenizer(MODEL_CACHE)
    assert tokenizer is not None
    return folder, tokenizer


def padded_loss(model: Any, examples: list[Any], pad_id: int) -> Any:
    """The plain path: pad to the longest, full logits, HF's mean over label tokens."""
    longest = max(e.n_tokens for e in examples)
    ids, mask, labels = [], [], []
    for e in examples:
        pad = longest - e.n_tokens
        ids.append([*e.input_ids, *[pad_id] * pad])
        mask.append([1] * e.n_tokens + [0] * pad)
        labels.append(e.labels + [-100] * pad)
    out = model(
        input_ids=torch.tensor(ids),
        attention_mask=torch.tensor(mask),
        labels=torch.tensor(labels),
        use_cache=False,
    )
    return out.loss


def packed_loss(model: Any, examples: list[Any], row_tokens: int) -> tuple[Any, int]:
    """The engine's path: packed rows, label-only logits, summed then divided once."""
    from worker.training.data import pack_examples
    from worker.training.supervised import make_row_loss

    rows = pack_examples(examples, row_tokens)
    row_loss = make_row_loss(model)
    n_targets = sum(row.n_targets for row in rows)
    total = sum(row_loss(row, torch.device("cpu"))[0] for row in rows)
    return total / n_targets, len(rows)


def some_examples(bench: ModuleType, tokenizer: Any) -> list[Any]:
    examples, _ = bench.make_examples(tokenizer, 6, 160, 7, 60.0, 0.8, 49152)
    return examples


def test_packed_label_only_loss_equals_padded_full_logits_loss(
    bench: ModuleType, tiny: tuple[Path, Any]
) -> None:
    from transformers import AutoModelForCausalLM

    folder, tokenizer = tiny
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    examples = some_examples(bench, tokenizer)
    assert len({e.n_tokens for e in examples}) > 1, "lengths must differ so padding happens"

    with torch.no_grad():
        plain = padded_loss(model, examples, tokenizer.pad_token_id)
        fast, n_rows = packed_loss(model, examples, row_tokens=400)

    assert n_rows < len(examples), "several examples must share a packed row"
    assert abs(plain.item() - fast.item()) < 1e-4, (plain.item(), fast.item())


def test_lora_losses_and_gradients_agree_between_paths(
    bench: ModuleType, tiny: tuple[Path, Any]
) -> None:
    """With non-zero adapters (B = 0 at init would hide a wrong adapter path)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder, tokenizer = tiny
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.train()
    examples = some_examples(bench, tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]

    plain = padded_loss(model, examples, tokenizer.pad_token_id)
    plain_grads = torch.autograd.grad(plain, trainable)
    fast, _ = packed_loss(model, examples, row_tokens=400)
    fast_grads = torch.autograd.grad(fast, trainable)

    assert abs(plain.item() - fast.item()) < 1e-4, (plain.item(), fast.item())
    for g_plain, g_fast in zip(plain_grads, fast_grads, strict=True):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-3, atol=1e-6)


def test_training_state_counts_each_storage_once_with_gradients_and_adam_moments(
    bench: ModuleType, tiny: tuple[Path, Any]
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder, _ = tiny
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tied = base.get_input_embeddings().weight is base.get_output_embeddings().weight
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    weights = {p.data_ptr(): p.numel() * 4 for p in model.parameters()}  # tied weights once
    weights.update({b.data_ptr(): b.numel() * b.element_size() for b in model.buffers()})
    adapters = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

    assert tied, "the tiny model ties its head to its embeddings: counted once, not twice"
    assert bench.training_state_bytes(model, optimizer) == sum(weights.values())
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    n_adapters = sum(1 for p in model.parameters() if p.requires_grad)
    # + gradients, + exp_avg and exp_avg_sq, + a float32 step count per adapter tensor
    expected = sum(weights.values()) + 3 * adapters + 4 * n_adapters
    assert bench.training_state_bytes(model, optimizer) == expected


def test_benchmark_runs_end_to_end_on_the_tiny_model(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = "--model tiny --steps 2 --batch-size 2 --max-len 128 --median-len 64"
    result = bench.main(argv.split(" "))

    lines = capsys.readouterr().out.splitlines()
    assert result.loss_parity, "\n".join(lines)
    assert "loss parity: ok" in lines
    assert lines[-1].startswith("speedup ")
    assert float(lines[-1].split()[1]) > 0
    assert len(result.records) == 3  # 1 warmup + 2 measured rounds
    assert result.engine_peak_mem_mb > result.engine_step_mem_mb  # the weights count too
    assert result.memory_ratio == pytest.approx(
        result.engine_peak_mem_mb / result.baseline_peak_mem_mb
    )
    assert any(line.startswith("peak memory (own weights") for line in lines)


# What the GPU machines have: torch, transformers and peft, none of the web stack.
WEB_STACK = ("app", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings",
             "sqlalchemy", "alembic", "psycopg", "celery", "kombu", "redis", "httpx")  # fmt: skip
WITHOUT_WEB_STACK = f"""
import importlib.abc, importlib.util, runpy, sys

class WebStackAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {WEB_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
        return None

sys.meta_path.insert(0, WebStackAbsent())
# Libraries probe for optional packages (datasets: "is sqlalchemy installed?"); an absent
# package answers None there, not an error.
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    if name.split(".")[0] in {WEB_STACK!r}:
        return None
    return _find_spec(name, package)
importlib.util.find_spec = find_spec
sys.argv = [{str(BENCH)!r}, *sys.argv[1:]]
runpy.run_path({str(BENCH)!r}, run_name="__main__")
"""


def test_the_benchmark_and_engine_run_without_the_web_stack() -> None:
    # As on a GPU machine: a module of worker.training importing the app (or FastAPI,
    # SQLAlchemy, Celery, ...) would break every GPU run, and nothing else would notice.
    import subprocess

    argv = "--model tiny --steps 1 --warmup-steps 0 --batch-size 2 --max-len 64 --median-len 32"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_WEB_STACK, *argv.split(" ")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("speedup ")
