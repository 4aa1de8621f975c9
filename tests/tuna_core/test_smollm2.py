"""The real bundled model: converted from its GGUF once, cached, and still answering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuna_core.base_models import resolve_base_model
from tuna_core.chat_template import render_prompt


@pytest.mark.slow
def test_bundled_smollm2_knows_the_capital_of_france(model_cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", model_cache)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert tokenizer.chat_template

    prompt = render_prompt(
        tokenizer, [{"role": "user", "content": "What is the capital of France?"}]
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
