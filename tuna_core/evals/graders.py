"""Grading one sample against one checked testing criterion: `grade` -> `GradeResult`.

The run worker calls ``grade(criterion, item, sample, judge)`` for each criterion of each item
(``sample`` from `build_sample`).  What a grade can meet that the creation check could not see
is the data: a field the item lacks (`TemplateError`), a judge model that fails or answers
something that is not a score or a label, a regex that runs past its time limit.  Each of those
makes an errored `GradeResult` (``error`` set), which errors that item, not the run.

Scores and passes, per grader:

* ``string_check``: 1 or 0.  ``eq``/``ne`` compare the rendered input and reference exactly;
  ``like`` passes when the input contains the reference, ``ilike`` the same ignoring case
  (OpenAI's graders guide: "like: contains, case-sensitive"; not SQL's ``%``/``_`` patterns).
* ``text_similarity``: the metric's score (`tuna_core.evals.similarity`); passes at
  ``score >= pass_threshold``.
* ``score_model``: the first number in the judge's answer, which must lie within ``range``
  (default [0, 1]); passes at ``score >= pass_threshold``, and when the criterion sets none, at
  the middle of the range (OpenAI documents no default).
* ``label_model``: the judge's answer is matched to one of ``labels`` ignoring case, quotes and
  trailing punctuation, or else as the only label that appears in it as a whole word; score 1
  and a pass when that label is one of ``passing_labels``.
* ``regex`` (Tuna): passes when ``pattern`` matches anywhere in the input (anchor it with
  ``^``/``$`` for a full match); ``ignore_case`` optional.  Runs with a time limit.
* ``json_check`` (Tuna): passes when the input parses as JSON, is valid against ``schema`` when
  one is given, and equals the ``reference`` parsed as JSON when one is given (so key order
  and spacing do not matter).

OpenAI asks a judge for structured output; this server's judges are plain chat models, so the
answer is parsed from text and recorded raw in the result's ``sample``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tuna_core.evals.checks import score_range
from tuna_core.evals.similarity import similarity_score
from tuna_core.evals.templates import TemplateError, TemplateSyntaxError, render, render_messages

# The longest a regex grader may search one answer before that grade errors.
REGEX_TIMEOUT_S = 1.0
# What a judge is asked for when the criterion sets no temperature: the same grade every run.
DEFAULT_JUDGE_TEMPERATURE = 0.0

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_LABEL_TRIM = " \t\r\n\"'`*_.,:;!?()[]{}"


class Judge(Protocol):
    """Answers a model grader's rendered messages with the named model's text.

    ``sampling`` holds chat-completion parameters (``temperature``, ``top_p``, ``seed``,
    ``max_completion_tokens``) from the criterion's ``sampling_params`` (`judge_sampling`).
    Whatever it raises errors that one grade, with the exception's message.
    """

    def __call__(
        self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]
    ) -> str: ...


@dataclass(frozen=True)
class GradeResult:
    """One criterion's verdict on one sample.

    ``type`` is the criterion's type (``"string_check"``); ``error`` is set when the grade
    could not be made (then ``passed`` is False and ``score`` 0); ``sample`` holds what a model
    grader saw and answered.  `as_result` gives OpenAI's output-item ``results`` entry.
    """

    name: str
    type: str
    passed: bool
    score: float
    error: str | None = None
    sample: dict[str, Any] | None = field(default=None)

    @property
    def errored(self) -> bool:
        return self.error is not None

    def as_result(self) -> dict[str, Any]:
        """OpenAI's ``results`` entry: name, type (``"string-check-grader"``), passed, score,
        sample; plus ``error`` (Tuna) when the grade errored."""
        result: dict[str, Any] = {
            "name": self.name,
            "type": result_type(self.type),
            "passed": self.passed,
            "score": self.score,
            "sample": self.sample,
        }
        if self.error is not None:
            result["error"] = self.error
        return result


def result_type(grader_type: str) -> str:
    """A grader type as OpenAI's output items spell it (``string_check`` ->
    ``string-check-grader``, the example in OpenAI's output-item schema)."""
    return grader_type.replace("_", "-") + "-grader"


class _GradeError(Exception):
    """A grade that cannot be made for this sample; carries what the result records."""

    def __init__(self, message: str, sample: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.sample = sample


def judge_sampling(criterion: Mapping[str, Any]) -> dict[str, Any]:
    """The chat-completion parameters for a model grader's judge call.

    OpenAI's ``sampling_params`` renamed to chat completions' names
    (``max_completions_tokens`` -> ``max_completion_tokens``), unset ones left out, temperature
    0 unless set; ``reasoning_effort`` dropped (no model here reasons).
    """
    params = criterion.get("sampling_params") or {}
    sampling: dict[str, Any] = {"temperature": DEFAULT_JUDGE_TEMPERATURE}
    for key in ("temperature", "top_p", "seed"):
        if params.get(key) is not None:
            sampling[key] = params[key]
    if params.get("max_completions_tokens") is not None:
        sampling["max_completion_tokens"] = params["max_completions_tokens"]
    return sampling


def _string_check(criterion: Mapping[str, Any], text: str, reference: str) -> bool:
    operation = criterion["operation"]
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.casefold() in text.casefold()


def _regex(criterion: Mapping[str, Any], text: str) -> bool:
    import regex

    flags = regex.IGNORECASE if criterion.get("ignore_case") else 0
    try:
        return regex.search(criterion["pattern"], text, flags, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        raise _GradeError(
            f"the pattern ran past its {REGEX_TIMEOUT_S:g} s limit on this answer"
        ) from None


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: objects by keys, numbers by value (1 == 1.0), but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return bool(a == b)


def _json_check(
    criterion: Mapping[str, Any], item: Mapping[str, Any], sample: Mapping[str, Any] | None
) -> tuple[bool, dict[str, Any]]:
    text = render(criterion["input"], item, sample)
    try:
        value = json.loads(text)
    except ValueError as exc:
        return False, {"reason": f"not valid JSON: {exc}"}
    schema = criterion.get("schema")
    if schema is not None:
        import jsonschema_rs

        errors = list(jsonschema_rs.validator_for(dict(schema)).iter_errors(value))
        if errors:
            return False, {"reason": f"does not match the schema: {errors[0].message}"}
    if criterion.get("reference") is not None:
        reference_text = render(criterion["reference"], item, sample)
        try:
            expected = json.loads(reference_text)
        except ValueError as exc:
            raise _GradeError(f"the reference is not valid JSON: {exc}") from None
        if not same_json(value, expected):
            return False, {"reason": "differs from the reference"}
    return True, {}


def parse_score(answer: str, low: float, high: float) -> float:
    """The first number in a judge's answer, which must lie in [low, high]."""
    match = _NUMBER.search(answer)
    if match is None:
        raise ValueError("the judge's answer holds no number")
    score = float(match.group())
    if not math.isfinite(score) or not low <= score <= high:
        raise ValueError(
            f"the judge's score {match.group()} is outside the range [{low:g}, {high:g}]"
        )
    return score


def parse_label(answer: str, labels: list[str]) -> str:
    """The label a judge's answer names: exactly (ignoring case, quotes, end punctuation), else
    the only label found in it as a whole word."""
    by_key = {label.strip().casefold(): label for label in labels}
    key = answer.strip().strip(_LABEL_TRIM).casefold()
    if key in by_key:
        return by_key[key]
    folded = answer.casefold()
    found = [
        label
        for label_key, label in by_key.items()
        if re.search(rf"(?<!\w){re.escape(label_key)}(?!\w)", folded)
    ]
    if len(found) == 1:
        return found[0]
    shown = ", ".join(repr(label) for label in labels)
    if found:
        raise ValueError(f"the judge's answer names several labels ({', '.join(found)}), not one")
    raise ValueError(f"the judge's answer is none of the labels ({shown})")


def _model_grade(
    criterion: Mapping[str, Any],
    item: Mapping[str, Any],
    sample: Mapping[str, Any] | None,
    judge: Judge | None,
) -> tuple[bool, float, dict[str, Any]]:
    if judge is None:
        raise _GradeError("no judge model is available to this grader")
    messages = render_messages(criterion["input"], item, sample)
    model = criterion["model"]
    record: dict[str, Any] = {"model": model, "input": messages}
    try:
        answer = judge(model, messages, judge_sampling(criterion))
    except Exception as exc:  # the judge is the caller's: any failure errors this grade
        raise _GradeError(f"the judge model {model!r} failed: {exc}", record) from None
    record["output"] = [{"role": "assistant", "content": answer}]
    try:
        if criterion["type"] == "score_model":
            low, high = score_range(criterion)
            score = parse_score(answer, low, high)
            threshold = criterion.get("pass_threshold")
            threshold = (low + high) / 2 if threshold is None else float(threshold)
            record["score"] = score
            return score >= threshold, score, record
        label = parse_label(answer, list(criterion["labels"]))
    except ValueError as exc:
        raise _GradeError(str(exc), record) from None
    record["label"] = label
    passed = label in criterion["passing_labels"]
    return passed, 1.0 if passed else 0.0, record


def _grade(
    criterion: Mapping[str, Any],
    item: Mapping[str, Any],
    sample: Mapping[str, Any] | None,
    judge: Judge | None,
) -> tuple[bool, float, dict[str, Any] | None]:
    gtype = criterion["type"]
    if gtype in ("score_model", "label_model"):
        return _model_grade(criterion, item, sample, judge)
    if gtype == "json_check":
        passed, detail = _json_check(criterion, item, sample)
        return passed, float(passed), detail or None
    text = render(criterion["input"], item, sample)
    if gtype == "regex":
        passed = _regex(criterion, text)
        return passed, float(passed), None
    reference = render(criterion["reference"], item, sample)
    if gtype == "string_check":
        passed = _string_check(criterion, text, reference)
        return passed, float(passed), None
    if gtype == "text_similarity":
        score = similarity_score(criterion["evaluation_metric"], text, reference)
        return score >= float(criterion["pass_threshold"]), score, None
    raise ValueError(f"unknown grader type {gtype!r} (check criteria with check_criterion)")


def grade(
    criterion: Mapping[str, Any],
    item: Mapping[str, Any],
    sample: Mapping[str, Any] | None,
    judge: Judge | None = None,
) -> GradeResult:
    """Grades one sample (a model's answer to ``item``) against one checked criterion.

    Never raises for a problem of the data or the judge: those make an errored result whose
    ``error`` says what went wrong (``"{{ item.answer }}: item has no field 'answer'"``).
    ``judge`` is needed by ``score_model`` and ``label_model`` only.
    """
    name, gtype = str(criterion["name"]), str(criterion["type"])
    try:
        passed, score, detail = _grade(criterion, item, sample, judge)
    except (TemplateError, TemplateSyntaxError) as exc:
        return GradeResult(name, gtype, False, 0.0, error=str(exc))
    except _GradeError as exc:
        return GradeResult(name, gtype, False, 0.0, error=str(exc), sample=exc.sample)
    return GradeResult(name, gtype, passed, float(score), sample=detail)
