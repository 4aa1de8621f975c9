"""Evals' templates and graders (`tuna_core.evals`): creation checks, rendering, grading."""

from __future__ import annotations

from typing import Any

import pytest

from tuna_core.evals import GraderConfigError, check_criterion, check_messages

PARAM = "testing_criteria[1]"


def string_check(**changes: Any) -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": "exact",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "operation": "eq",
    } | changes


def similarity(**changes: Any) -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "rouge_l",
        "pass_threshold": 0.5,
    } | changes


def judge_messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Grade the answer."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Q: {{item.question}}"},
                {"type": "output_text", "text": " A: {{sample.output_text}}"},
            ],
        },
    ]


def score_model(**changes: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "judge-model",
        "input": judge_messages(),
        "range": [0, 10],
        "pass_threshold": 7,
        "sampling_params": {"temperature": 0, "seed": 1, "max_completions_tokens": 8},
    } | changes


def label_model(**changes: Any) -> dict[str, Any]:
    return {
        "type": "label_model",
        "name": "sentiment",
        "model": "judge-model",
        "input": judge_messages(),
        "labels": ["positive", "negative", "neutral"],
        "passing_labels": ["positive"],
    } | changes


def refused(criterion: Any, **kwargs: Any) -> GraderConfigError:
    with pytest.raises(GraderConfigError) as caught:
        check_criterion(criterion, PARAM, **kwargs)
    return caught.value


VALID = [
    string_check(),
    *(string_check(operation=op) for op in ("ne", "like", "ilike")),
    similarity(),
    *(
        similarity(evaluation_metric=metric)
        for metric in ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_5")
    ),
    score_model(),
    score_model(range=None, pass_threshold=None, sampling_params=None),
    label_model(),
    label_model(input=[{"role": "user", "content": {"type": "input_text", "text": "x"}}]),
    {"type": "regex", "name": "digits", "input": "{{sample.output_text}}", "pattern": r"^\d+$"},
    {"type": "regex", "name": "r", "input": "x", "pattern": "a", "ignore_case": True},
    {"type": "json_check", "name": "json", "input": "{{sample.output_text}}"},
    {
        "type": "json_check",
        "name": "json",
        "input": "{{sample.output_text}}",
        "schema": {"type": "object", "required": ["city"]},
        "reference": "{{item.expected}}",
    },
]


@pytest.mark.parametrize("criterion", VALID, ids=lambda c: c["type"])
def test_valid_criteria_pass_the_check(criterion: dict[str, Any]) -> None:
    check_criterion(criterion, PARAM)


@pytest.mark.parametrize(
    ("criterion", "param", "words"),
    [
        ("string_check", PARAM, "expected an object"),
        ({"name": "x"}, f"{PARAM}.type", "missing"),
        (string_check(type="fuzzy"), f"{PARAM}.type", "expected one of"),
        ({"type": "python", "name": "p", "source": ""}, f"{PARAM}.type", "not supported"),
        ({"type": "multi", "name": "m"}, f"{PARAM}.type", "not supported"),
        (string_check(name=""), f"{PARAM}.name", "non-empty"),
        (string_check(operation="contains"), f"{PARAM}.operation", "eq, ne, like, ilike"),
        (string_check(extra=1), f"{PARAM}.extra", "unknown parameter"),
        (string_check(input=3), f"{PARAM}.input", "expected a string"),
        (string_check(reference="{{ 1 }}"), f"{PARAM}.reference", "not a reference"),
        (string_check(reference="{{ answer }}"), f"{PARAM}.reference", "unknown namespace"),
        (string_check(reference="{{ items.a }}"), f"{PARAM}.reference", "unknown namespace"),
        (string_check(reference="{{ item }}"), f"{PARAM}.reference", "name a variable"),
        (string_check(reference="{{ item.a b }}"), f"{PARAM}.reference", "cannot read"),
        (similarity(evaluation_metric="cosine"), f"{PARAM}.evaluation_metric", "embeddings"),
        (similarity(evaluation_metric="meteor"), f"{PARAM}.evaluation_metric", "WordNet"),
        (similarity(evaluation_metric="rouge_6"), f"{PARAM}.evaluation_metric", "one of"),
        (similarity(pass_threshold=None), f"{PARAM}.pass_threshold", "missing"),
        (similarity(pass_threshold="0.5"), f"{PARAM}.pass_threshold", "number"),
        (score_model(model=""), f"{PARAM}.model", "non-empty"),
        (score_model(input=[]), f"{PARAM}.input", "at least one message"),
        (score_model(input="hi"), f"{PARAM}.input", "array of messages"),
        (
            score_model(input=[{"role": "tool", "content": "x"}]),
            f"{PARAM}.input[0].role",
            "system, developer, user, assistant",
        ),
        (
            score_model(input=[{"role": "user", "content": []}]),
            f"{PARAM}.input[0].content",
            "at least one content part",
        ),
        (
            score_model(
                input=[{"role": "user", "content": {"type": "input_audio", "input_audio": {}}}]
            ),
            f"{PARAM}.input[0].content.type",
            "not supported",
        ),
        (
            score_model(input=[{"role": "user", "content": [{"type": "input_text"}]}]),
            f"{PARAM}.input[0].content[0].text",
            "missing",
        ),
        (
            score_model(input=[{"role": "user", "content": "{{ smaple.x }}"}]),
            f"{PARAM}.input[0].content",
            "unknown namespace",
        ),
        (score_model(range=[1]), f"{PARAM}.range", "two numbers"),
        (score_model(range=[5, 1]), f"{PARAM}.range", "below the maximum"),
        (score_model(range=[0, "9"]), f"{PARAM}.range[1]", "number"),
        (score_model(pass_threshold=11), f"{PARAM}.pass_threshold", "within the range [0, 10]"),
        (score_model(sampling_params={"top_p": 0}), f"{PARAM}.sampling_params.top_p", "(0, 1]"),
        (
            score_model(sampling_params={"temperature": 3}),
            f"{PARAM}.sampling_params.temperature",
            "[0, 2]",
        ),
        (
            score_model(sampling_params={"max_completions_tokens": 0}),
            f"{PARAM}.sampling_params.max_completions_tokens",
            "at least 1",
        ),
        (
            score_model(sampling_params={"max_tokens": 5}),
            f"{PARAM}.sampling_params.max_tokens",
            "unknown parameter",
        ),
        (label_model(labels=[]), f"{PARAM}.labels", "non-empty"),
        (label_model(labels=["a", "A"], passing_labels=["a"]), f"{PARAM}.labels[1]", "duplicate"),
        (label_model(passing_labels=["good"]), f"{PARAM}.passing_labels[0]", "subset"),
        (label_model(passing_labels=[]), f"{PARAM}.passing_labels", "non-empty"),
        (
            {"type": "regex", "name": "r", "input": "x", "pattern": "(unclosed"},
            f"{PARAM}.pattern",
            "not a valid regular expression",
        ),
        (
            {"type": "regex", "name": "r", "input": "x", "pattern": "a", "ignore_case": "yes"},
            f"{PARAM}.ignore_case",
            "boolean",
        ),
        (
            {"type": "json_check", "name": "j", "input": "x", "schema": {"type": "thing"}},
            f"{PARAM}.schema",
            "not a valid JSON schema",
        ),
        (
            {"type": "json_check", "name": "j", "input": "x", "schema": "object"},
            f"{PARAM}.schema",
            "expected a JSON schema",
        ),
    ],
)
def test_each_refusal_names_its_exact_param(criterion: Any, param: str, words: str) -> None:
    error = refused(criterion)
    assert error.param == param
    assert words in error.message


def test_a_judge_model_the_server_does_not_serve_is_refused() -> None:
    served = {"judge-model"}.__contains__
    check_criterion(score_model(), PARAM, known_model=served)
    error = refused(label_model(model="gpt-4o"), known_model=served)
    assert error.param == f"{PARAM}.model" and "not served here" in error.message


def test_a_prompt_template_may_not_use_the_sample() -> None:
    check_messages([{"role": "user", "content": "{{item.q}}"}], "data_source.input_messages")
    with pytest.raises(GraderConfigError) as caught:
        check_messages(
            [
                {"role": "user", "content": "ok"},
                {"role": "user", "content": "{{sample.output_text}}"},
            ],
            "data_source.input_messages.template",
        )
    assert caught.value.param == "data_source.input_messages.template[1].content"
    assert "item namespace only" in caught.value.message
