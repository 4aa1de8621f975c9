"""Fixtures for the export library: the tiny llama (`tests.model_fixtures`), a LoRA adapter that
really changes its outputs, the merged folder, and one GGUF file per type.

Everything is built once per session: a merge takes a second, a GGUF a few, and reading a GGUF
back through transformers several (its reader parses 49k tokens and merges in Python).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.model_fixtures import model_cache, tiny_dir, tokenizer

__all__ = ["model_cache", "tiny_dir", "tokenizer"]  # fixtures, made this folder's own
from worker.export import write_gguf, write_merged

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 12


def perturbed_adapter(base_dir: Path, folder: Path) -> Any:
    """A rank-8 LoRA on every linear layer whose B matrices are seeded noise (peft starts them
    at zero, which would make merging a no-op no test could tell from a broken merge); saved
    with the tokenizer, as the engine saves adapters.  Returns the peft model.

    The noise (std 0.5) is large enough that the greedy continuation of the test prompt is 12
    different tokens, not one token repeated (which a half-broken model also produces), and
    small enough that f16 and q8_0 keep the merged model's choices."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # peft draws the A matrices from the global generator
        peft = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape) * 0.5)
    peft.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    return peft.eval()


@dataclass(frozen=True)
class Exported:
    base_dir: Path
    adapter_dir: Path
    merged_dir: Path
    peft: Any  # the adapter applied by peft itself: what the merge must reproduce
    merged: Any  # the merged folder loaded by plain transformers
    prompt: str  # the question rendered by the chat template, generation prompt included
    prompt_ids: torch.Tensor  # (1, n)


@pytest.fixture(scope="session")
def exported(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("export")
    peft = perturbed_adapter(tiny_dir, root / "adapter")
    merged_dir = write_merged(tiny_dir, root / "adapter", root / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tok: Any = AutoTokenizer.from_pretrained(merged_dir)
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return Exported(tiny_dir, root / "adapter", merged_dir, peft, merged, prompt, ids)


def greedy(model: Any, ids: torch.Tensor, new_tokens: int = NEW_TOKENS) -> list[int]:
    """The ``new_tokens`` greedy continuation (no early stop, so lengths always compare)."""
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, ids.shape[1] :]]


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits[0].float()


@pytest.fixture(scope="session")
def gguf_file(
    exported: Exported, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """``gguf_file(type)``: the merged model written as ``<type>.gguf`` (once per type)."""
    folder = tmp_path_factory.mktemp("gguf")
    written: dict[str, Path] = {}

    def get(quantization: str) -> Path:
        if quantization not in written:
            written[quantization] = write_gguf(
                exported.merged_dir, folder / f"{quantization}.gguf", quantization
            )
        return written[quantization]

    return get
