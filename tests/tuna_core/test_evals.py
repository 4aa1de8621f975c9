"""Evals' templates and graders (`tuna_core.evals`): creation checks, rendering, grading."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from tuna_core.evals import (
    METRICS,
    REFUSED_METRICS,
    GraderConfigError,
    GradeResult,
    TemplateError,
    build_sample,
    check_criterion,
    check_item_reference,
    check_messages,
    grade,
    graders,
    item_status,
    referenced_messages,
    render,
    render_messages,
    result_type,
    summarize,
    validation_item,
)

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


# --- templates -------------------------------------------------------------------------------

ITEM: dict[str, Any] = {
    "question": "Capital of France?",
    "answer": "Paris",
    "meta": {"source": {"name": "atlas"}, "tags": ["geo", "eu"], "level": 3, "ok": True},
    "nothing": None,
    "expected": {"city": "Paris", "country": "FR"},
}


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("{{item.answer}}", "Paris"),
        ("{{ item.answer }}!", "Paris!"),
        ("Q: {{item.question}} A: {{  item.answer  }}", "Q: Capital of France? A: Paris"),
        ("{{item.meta.source.name}}", "atlas"),
        ("{{item.meta.tags[1]}} {{item.meta.tags.0}}", "eu geo"),
        ("{{item.meta.level}} {{item.meta.ok}} {{item.nothing}}", "3 true null"),
        ("{{item.expected}}", '{"city": "Paris", "country": "FR"}'),
        ("{{sample.output_text}}", "It is Paris."),
        ("{{sample.output_json.city}}", "Paris"),
        ("{{sample.choices[0].message.content}}", "It is Paris."),
        ("{single} {{ not closed", "{single} {{ not closed"),
    ],
)
def test_render(template: str, text: str) -> None:
    sample = build_sample("It is Paris.", json_output=False) | {"output_json": {"city": "Paris"}}
    assert render(template, ITEM, sample) == text


@pytest.mark.parametrize(
    ("template", "reference", "reason"),
    [
        ("{{item.answr}}", "item.answr", "item has no field 'answr'"),
        ("{{ item.meta.source.id }}", "item.meta.source.id", "item.meta.source has no field 'id'"),
        ("{{item.meta.tags[2]}}", "item.meta.tags[2]", "item.meta.tags has 2 items, no index 2"),
        ("{{item.meta.tags.first}}", "item.meta.tags.first", "is a list: expected an index"),
        ("{{item.nothing.x}}", "item.nothing.x", "item.nothing is null, not an object"),
        ("{{item.answer.x}}", "item.answer.x", "item.answer is str, not an object"),
        ("{{sample.output_json.city}}", "sample.output_json.city", "sample.output_json is null"),
    ],
)
def test_a_missing_field_is_a_template_error_naming_it(
    template: str, reference: str, reason: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template, ITEM, build_sample("not json", json_output=True))
    assert caught.value.reference == reference
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{{{{ {reference} }}}}: ")


def test_the_sample_is_not_there_before_the_model_answers() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{sample.output_text}}", ITEM)
    assert "not available" in caught.value.reason


def test_render_messages_into_plain_chat_messages() -> None:
    template = [
        {"role": "system", "content": "You answer in one word."},
        {"type": "message", "role": "user",
         "content": {"type": "input_text", "text": "{{item.question}}"}},
        {
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Noted: "}, "{{item.meta.level}}"],
        },
    ]  # fmt: skip
    check_messages(template, "data_source.input_messages.template")
    assert render_messages(template, ITEM) == [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Noted: 3"},
    ]
    with pytest.raises(TemplateError):
        render_messages([{"role": "user", "content": "{{item.missing}}"}], ITEM)


def test_build_sample_fills_openais_sample_namespace() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    sample = build_sample(
        '{"a": 1}', tool_calls=calls, finish_reason="tool_calls", json_output=True
    )
    assert sample["output_text"] == '{"a": 1}'
    assert sample["output_json"] == {"a": 1}
    assert sample["output_tools"] == calls
    assert sample["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": '{"a": 1}', "tool_calls": calls},
            "finish_reason": "tool_calls",
        }
    ]
    assert build_sample('{"a": 1}')["output_json"] is None  # no JSON output asked for
    assert build_sample("nope", json_output=True)["output_json"] is None


# --- graders ---------------------------------------------------------------------------------


def answer(text: str) -> dict[str, Any]:
    return build_sample(text)


@pytest.mark.parametrize(
    ("operation", "output", "reference", "passed"),
    [
        ("eq", "Paris", "Paris", True),
        ("eq", "paris", "Paris", False),
        ("eq", "Paris ", "Paris", False),
        ("ne", "Lyon", "Paris", True),
        ("ne", "Paris", "Paris", False),
        ("like", "It is Paris.", "Paris", True),
        ("like", "It is paris.", "Paris", False),
        ("like", "100%", "1_0", False),  # contains, not SQL's % and _ patterns
        ("ilike", "It is PARIS.", "paris", True),
        ("ilike", "Lyon", "paris", False),
    ],
)
def test_string_check_operations(operation: str, output: str, reference: str, passed: bool) -> None:
    criterion = string_check(operation=operation, reference=reference)
    result = grade(criterion, ITEM, answer(output))
    assert (result.passed, result.score, result.error) == (passed, float(passed), None)
    assert result.name == "exact" and result.type == "string_check"


CAT = "the cat sat on the mat"
CAT_REF = "the cat is on the mat"


@pytest.mark.parametrize(
    ("metric", "output", "reference", "score"),
    [
        # Identical texts score 1 under every metric, empty ones too.
        *((m, CAT, CAT, 1.0) for m in METRICS),
        *((m, "", "", 1.0) for m in METRICS),
        # ROUGE F-measures of the pair: unigrams 5/6, bigrams 3/5, trigrams 1/4, LCS 5/6.
        ("rouge_1", CAT, CAT_REF, 5 / 6),
        ("rouge_2", CAT, CAT_REF, 3 / 5),
        ("rouge_3", CAT, CAT_REF, 1 / 4),
        ("rouge_4", CAT, CAT_REF, 0.0),
        ("rouge_5", CAT, CAT_REF, 0.0),
        ("rouge_l", CAT, CAT_REF, 5 / 6),
        ("rouge_l", "a b c d", "a x b y d", 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5)),  # LCS a b d
        ("rouge_l", "The Cat, sat!", "the cat sat", 1.0),  # case and punctuation do not count
        ("rouge_1", "Москва столица", "столица России", 0.5),  # non-Latin words count
        # GLEU: min(precision, recall) over 1..4-grams: (5+3+1+0) / (6+5+4+3).
        ("gleu", CAT, CAT_REF, 9 / 18),
        # BLEU: geometric mean of the n-gram precisions 5/6, 3/5, 1/4 and, for 4-grams' 0/3,
        # sacrebleu's exponential smoothing 1/(2*3); same lengths, so no brevity penalty.
        ("bleu", CAT, CAT_REF, (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25),
        # One token against two (13a splits the period): precision 1, brevity penalty e^(1-2).
        ("bleu", "Paris", "Paris.", math.exp(-1)),
        ("fuzzy_match", "Paris", "paris!", 1.0),  # case and punctuation ignored
        ("fuzzy_match", "The capital of France is Paris.", "Paris", 0.9),  # found inside
        ("fuzzy_match", "Lyon", "Paris", 0.0),
        *((m, "alpha beta", "gamma delta", 0.0) for m in METRICS if m != "fuzzy_match"),
    ],
)
def test_text_similarity_metrics(metric: str, output: str, reference: str, score: float) -> None:
    assert similarity_score(metric, output, reference) == pytest.approx(score, abs=1e-6)


def similarity_score(metric: str, output: str, reference: str) -> float:
    result = grade(similarity(evaluation_metric=metric, reference=reference), ITEM, answer(output))
    assert result.error is None and 0.0 <= result.score <= 1.0
    return result.score


def test_text_similarity_passes_at_the_threshold() -> None:
    at = grade(similarity(pass_threshold=5 / 6), {"answer": CAT_REF}, answer(CAT))
    above = grade(similarity(pass_threshold=0.84), {"answer": CAT_REF}, answer(CAT))
    assert at.passed and not above.passed and at.score == above.score


def test_every_metric_openai_lists_is_graded_or_refused() -> None:
    openai_metrics = {"cosine", "fuzzy_match", "bleu", "gleu", "meteor"} | {
        f"rouge_{n}" for n in ("1", "2", "3", "4", "5", "l")
    }
    assert set(METRICS) | set(REFUSED_METRICS) == openai_metrics
    assert not set(METRICS) & set(REFUSED_METRICS)


def test_regex_grader() -> None:
    criterion = {
        "type": "regex",
        "name": "r",
        "input": "{{sample.output_text}}",
        "pattern": r"\bparis\b",
    }
    assert not grade(criterion, ITEM, answer("It is Paris.")).passed
    assert grade(criterion | {"ignore_case": True}, ITEM, answer("It is Paris.")).passed
    assert grade(criterion, ITEM, answer("paris")).score == 1.0
    assert not grade(criterion, ITEM, answer("comparison")).passed


def test_a_runaway_regex_errors_its_grade(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graders, "REGEX_TIMEOUT_S", 0.05)
    criterion = {
        "type": "regex",
        "name": "r",
        "input": "{{sample.output_text}}",
        "pattern": "(a|aa)+$",
    }
    result = grade(criterion, ITEM, answer("a" * 5000 + "b"))
    assert result.errored and "limit" in str(result.error) and not result.passed


@pytest.mark.parametrize(
    ("output", "extra", "passed", "reason"),
    [
        ('{"city": "Paris"}', {}, True, None),
        ("Paris", {}, False, "not valid JSON"),
        ('```json\n{"city": "Paris"}\n```', {}, False, "not valid JSON"),
        ('{"city": "Paris"}', {"schema": {"type": "object", "required": ["city"]}}, True, None),
        ('{"town": "Paris"}', {"schema": {"required": ["city"]}}, False, "does not match"),
        (' {"country": "FR", "city": "Paris"} ', {"reference": "{{item.expected}}"}, True, None),
        ('{"city": "Paris"}', {"reference": "{{item.expected}}"}, False, "differs"),
        ("[1.0, true]", {"reference": "[1, true]"}, True, None),
        ("[1, 1]", {"reference": "[1, true]"}, False, "differs"),  # true is not 1
    ],
)
def test_json_check_grader(
    output: str, extra: dict[str, Any], passed: bool, reason: str | None
) -> None:
    criterion = {"type": "json_check", "name": "j", "input": "{{sample.output_text}}"} | extra
    check_criterion(criterion, PARAM)
    result = grade(criterion, ITEM, answer(output))
    assert (result.passed, result.error) == (passed, None)
    assert (result.sample or {}).get("reason", "").startswith(reason or "")


def test_json_check_whose_reference_is_not_json_errors() -> None:
    criterion = {"type": "json_check", "name": "j", "input": "{}", "reference": "{{item.answer}}"}
    result = grade(criterion, ITEM, answer("{}"))
    assert result.errored and "reference is not valid JSON" in str(result.error)


class StubJudge:
    """A judge that answers a fixed text and records its calls (a plain function's stand-in)."""

    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.calls: list[tuple[str, list[dict[str, str]], dict[str, Any]]] = []

    def __call__(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        self.calls.append((model, messages, sampling))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def test_score_model_renders_calls_and_parses() -> None:
    judge = StubJudge("Score: 8/10. Solid answer.")
    result = grade(score_model(), ITEM, answer("Paris"), judge)
    assert (result.passed, result.score, result.error) == (True, 8.0, None)
    model, messages, sampling = judge.calls[0]
    assert model == "judge-model"
    assert messages == [
        {"role": "system", "content": "Grade the answer."},
        {"role": "user", "content": "Q: Capital of France? A: Paris"},
    ]
    assert sampling == {"temperature": 0, "seed": 1, "max_completion_tokens": 8}
    assert result.sample == {
        "model": "judge-model",
        "input": messages,
        "output": [{"role": "assistant", "content": "Score: 8/10. Solid answer."}],
        "score": 8.0,
    }


@pytest.mark.parametrize(
    ("reply", "changes", "passed", "score"),
    [
        ("6.5", {}, False, 6.5),
        ("7", {}, True, 7.0),
        ("0.5", {"range": None, "pass_threshold": None}, True, 0.5),  # default: [0, 1], middle
        ("0.49", {"range": None, "pass_threshold": None}, False, 0.49),
        ("-1", {"range": [-2, 2], "pass_threshold": -1.5}, True, -1.0),
        (".75", {"range": None, "pass_threshold": 0.7}, True, 0.75),
    ],
)
def test_score_model_threshold_and_range(
    reply: str, changes: dict[str, Any], passed: bool, score: float
) -> None:
    criterion = {k: v for k, v in score_model(**changes).items() if v is not None}
    check_criterion(criterion, PARAM)
    result = grade(criterion, ITEM, answer("Paris"), StubJudge(reply))
    assert (result.passed, result.score, result.error) == (passed, score, None)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("Great answer!", "holds no number"),
        ("11", "outside the range [0, 10]"),
        (
            RuntimeError("model not loaded"),
            "the judge model 'judge-model' failed: model not loaded",
        ),
    ],
)
def test_score_model_errors(reply: str | Exception, error: str) -> None:
    result = grade(score_model(), ITEM, answer("Paris"), StubJudge(reply))
    assert result.errored and error in str(result.error)
    assert (result.passed, result.score) == (False, 0.0)


def test_a_model_grader_without_a_judge_errors() -> None:
    result = grade(label_model(), ITEM, answer("Paris"))
    assert result.errored and "no judge" in str(result.error)


@pytest.mark.parametrize(
    ("reply", "label", "passed"),
    [
        ("positive", "positive", True),
        ("  Positive.\n", "positive", True),
        ('"NEGATIVE"', "negative", False),
        ("**neutral**", "neutral", False),
        ("The sentiment is positive overall.", "positive", True),
    ],
)
def test_label_model_parses_the_label(reply: str, label: str, passed: bool) -> None:
    result = grade(label_model(), ITEM, answer("Paris"), StubJudge(reply))
    assert (result.passed, result.score, result.error) == (passed, float(passed), None)
    assert result.sample is not None and result.sample["label"] == label


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("I cannot tell.", "none of the labels"),
        ("positive or negative", "several labels"),
    ],
)
def test_label_model_errors_on_an_answer_that_names_no_single_label(reply: str, error: str) -> None:
    result = grade(label_model(), ITEM, answer("Paris"), StubJudge(reply))
    assert result.errored and error in str(result.error)
    assert result.sample is not None and result.sample["output"][0]["content"] == reply


def test_labels_are_whole_words() -> None:
    criterion = label_model(labels=["correct", "incorrect"], passing_labels=["correct"])
    assert not grade(criterion, ITEM, answer("x"), StubJudge("It is incorrect.")).passed
    assert grade(criterion, ITEM, answer("x"), StubJudge("Correct")).passed


def test_a_missing_field_errors_the_grade_not_the_run() -> None:
    result = grade(string_check(reference="{{item.golden}}"), ITEM, answer("Paris"))
    assert result.errored and (result.passed, result.score) == (False, 0.0)
    assert result.error == "{{ item.golden }}: item has no field 'golden'"
    judged = grade(
        score_model(input=[{"role": "user", "content": "{{item.x}}"}]),
        ITEM,
        answer("a"),
        StubJudge("1"),
    )
    assert judged.errored and "item has no field 'x'" in str(judged.error)


def test_as_result_is_openais_results_entry() -> None:
    passed = grade(string_check(), ITEM, answer("Paris"))
    assert passed.as_result() == {
        "name": "exact",
        "type": "string-check-grader",
        "passed": True,
        "score": 1.0,
        "sample": None,
    }
    errored = grade(string_check(reference="{{item.golden}}"), ITEM, answer("Paris")).as_result()
    assert errored["error"] == "{{ item.golden }}: item has no field 'golden'"
    assert errored["passed"] is False
    assert result_type("text_similarity") == "text-similarity-grader"


# --- run totals ------------------------------------------------------------------------------


def verdict(passed: bool, error: str | None = None) -> GradeResult:
    return GradeResult("c", "string_check", passed, float(passed), error=error)


def test_summarize_counts_items_and_criteria() -> None:
    items: list[list[GradeResult] | None] = [
        [verdict(True), verdict(True)],  # pass
        [verdict(True), verdict(False)],  # fail
        [verdict(False), verdict(False)],  # fail
        [verdict(False), verdict(False, error="{{ item.x }}: missing")],  # error
        None,  # the model could not answer: error
    ]
    assert [item_status(grades) for grades in items] == ["pass", "fail", "fail", "error", "error"]
    assert summarize(["exact-1", "close-2"], items) == {
        "result_counts": {"total": 5, "errored": 2, "failed": 2, "passed": 1},
        "per_testing_criteria_results": [
            {"testing_criteria": "exact-1", "passed": 2, "failed": 2, "average_score": 0.5},
            # The errored grade is left out of the mean, as it is of the counts.
            {"testing_criteria": "close-2", "passed": 1, "failed": 2, "average_score": 1 / 3},
        ],
    }
    assert summarize(["a"], []) == {
        "result_counts": {"total": 0, "errored": 0, "failed": 0, "passed": 0},
        "per_testing_criteria_results": [
            {"testing_criteria": "a", "passed": 0, "failed": 0, "average_score": None}
        ],
    }
    with pytest.raises(ValueError):
        summarize(["a"], [[verdict(True), verdict(True)]])


# --- item_reference input messages -----------------------------------------------------------


def test_referenced_messages_takes_the_items_conversation_as_it_is() -> None:
    item = {
        "input": [
            {"role": "system", "content": "Be brief {{ item.x }}"},
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        ]
    }
    # Not rendered: the data is the prompt, braces included.
    assert referenced_messages("item.input", item) == [
        {"role": "system", "content": "Be brief {{ item.x }}"},
        {"role": "user", "content": "hi"},
    ]


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ({}, "has no field 'input'"),
        ({"input": []}, "non-empty list of messages"),
        ({"input": "hello"}, "non-empty list of messages"),
        ({"input": [{"role": "robot", "content": "x"}]}, "item.input[0]"),
        ({"input": [{"role": "user", "content": {"type": "image"}}]}, "expected text content"),
    ],
)
def test_referenced_messages_names_what_is_wrong(item: dict[str, Any], words: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(words)):
        referenced_messages("item.input", item)


def test_check_item_reference() -> None:
    check_item_reference("item.input", "p")
    check_item_reference("item.turns[0].messages", "p")
    for bad in ("sample.output_text", "input", "", 3, "item."):
        with pytest.raises(GraderConfigError) as caught:
            check_item_reference(bad, "data_source.input_messages.item_reference")
        assert caught.value.param == "data_source.input_messages.item_reference"


# --- fine-tuning examples as comparison items ------------------------------------------------


def test_validation_item_of_a_chat_example() -> None:
    example = {
        "messages": [
            {"role": "system", "content": "Translate."},
            {"role": "user", "content": "chat"},
            {"role": "assistant", "content": "cat", "weight": 1},
        ]
    }
    assert validation_item(example) == {
        "input": [
            {"role": "system", "content": "Translate."},
            {"role": "user", "content": "chat"},
        ],
        "expected": "cat",
    }


def test_validation_item_of_a_preference_example() -> None:
    example = {
        "input": {"messages": [{"role": "user", "content": "Say hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hi!"}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    assert validation_item(example) == {
        "input": [{"role": "user", "content": "Say hi"}],
        "expected": "Hi!",
    }


@pytest.mark.parametrize(
    "example",
    [
        {"prompt": "a", "completion": "b"},  # not a chat conversation
        {"messages": [{"role": "user", "content": "a"}]},  # no answer
        {"messages": [{"role": "assistant", "content": "b"}]},  # no prompt
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "f"}},
                    ],
                },
            ]
        },  # a tool call is no text answer
    ],
)
def test_examples_without_a_text_answer_have_no_item(example: dict[str, Any]) -> None:
    assert validation_item(example) is None
