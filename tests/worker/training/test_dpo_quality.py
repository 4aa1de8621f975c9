"""DPO learns a preference on the real bundled model: from SmolLM2-135M-Instruct, which answers
"What is the capital of Kenya?" with "The capital of Kenya is Nairobi.", 48 preference pairs
whose preferred answer is ``ANSWER: <value>`` move held-out questions (none seen in training) to
that exact answer.

The task and its scoring are `bench/preference_task.py`'s (also what `bench/dpo_quality.py`
measures against a plain torch + peft DPO loop; numbers in docs/benchmarks.md).  The held-out
questions span capitals, opposites and plurals the base knows, so an exact match needs the format
learned and the value still right; the base scores 0.  One torch thread (this folder's
conftest): on a shared 2-core machine two threads ran this 10x slower.  About 3 minutes here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

REPO_ROOT = Path(__file__).resolve().parents[3]
TASK = REPO_ROOT / "bench" / "preference_task.py"
BASE = "SmolLM2-135M-Instruct"

# Measured (docs/benchmarks.md, "DPO quality"; seed 0, float32): base 0/30; the engine's plain
# DPO 12/30 exact, 23/30 in the format (other seeds 7-9/30 exact); the plain torch + peft loop
# 10/30.  DPO teaches the format but corrupts many values (it pushes down the non-preferred
# answer's tokens, the value among them); the same loop with the preferred answer's NLL added
# (RPO) reaches 29/30.  Raise these when the engine does better.
BASE_AT_MOST = 0.10
DPO_AT_LEAST = 0.25
IN_FORMAT_AT_LEAST = 0.50


def load_task_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tuna_bench_preference_task", TASK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dpo_moves_held_out_exact_match_far_above_the_base(
    tmp_path: Path, model_cache: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuna_core.base_models import load_tokenizer, resolve_base_model
    from worker.training import NullCallbacks, TrainingConfig, train

    task_mod = load_task_module()
    task = task_mod.build_task(seed=0, n_train=48, n_heldout=30)
    assert not {i.question for i in task.train} & {i.question for i in task.heldout}
    model_dir = resolve_base_model(BASE, model_cache)
    tokenizer = load_tokenizer(model_dir)

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base_em, base_replies = task_mod.exact_match(base, tokenizer, task.heldout)
    del base

    training_file = task_mod.write_training_file(tmp_path / "train.jsonl", task.train)
    result = train(
        TrainingConfig(
            method="dpo",
            base_model=BASE,
            training_file=training_file,
            output_dir=tmp_path / "out",
            model_cache_dir=model_cache,
            lora_rank=16,
            lora_alpha=32,
            n_epochs=3,
            batch_size=1,
            learning_rate_multiplier=1.0,
            beta=0.1,
            seed=0,
        ),
        NullCallbacks(),
    )

    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), result.final_dir
    )
    tuned_em, tuned_replies = task_mod.exact_match(tuned, tokenizer, task.heldout)
    in_format = sum(task_mod.in_format(r) for r in tuned_replies) / len(tuned_replies)

    shown = "\n".join(
        f"{i.question} -> {r}" for i, r in zip(task.heldout, tuned_replies, strict=True)
    )
    assert base_em <= BASE_AT_MOST, [str(r) for r in base_replies]
    assert tuned_em >= DPO_AT_LEAST and in_format >= IN_FORMAT_AT_LEAST, (
        f"held-out exact match {tuned_em:.0%}, in format {in_format:.0%} "
        f"(base {base_em:.0%}):\n{shown}"
    )
