"""`ft:` ids: OpenAI's shape, the same for every attempt of a job."""

from __future__ import annotations

from tuna_core.model_ids import (
    SUFFIX_PATTERN,
    checkpoint_model_id,
    fine_tuned_model_id,
    is_fine_tuned_model_id,
)


def test_ids_split_back_into_their_segments() -> None:
    job_id = "ftjob-abcdefghijklmnopAb12Cd34"
    model = fine_tuned_model_id("SmolLM2-135M-Instruct", "research", "adder", job_id)
    assert model == "ft:SmolLM2-135M-Instruct:research:adder:Ab12Cd34"
    assert model.split(":") == ["ft", "SmolLM2-135M-Instruct", "research", "adder", "Ab12Cd34"]
    assert fine_tuned_model_id("base", "org", None, job_id) == "ft:base:org::Ab12Cd34"
    assert checkpoint_model_id(model, 30) == f"{model}:ckpt-step-30"
    assert is_fine_tuned_model_id(model) and not is_fine_tuned_model_id("SmolLM2-135M-Instruct")


def test_a_suffix_cannot_break_the_segments() -> None:
    assert SUFFIX_PATTERN.fullmatch("my-model_2")
    assert not SUFFIX_PATTERN.fullmatch("a:b")
    assert not SUFFIX_PATTERN.fullmatch("x" * 65)
