"""The check of an eval's testing criteria at creation: every refusal with the exact ``param``.

`check_criterion` is what the API calls for ``testing_criteria[i]``; a criterion it accepts can
be graded by `tuna_core.evals.grade` for any item and sample (what remains to go wrong is the
data: a missing field, a judge that answers nonsense; those error one item, not the run).
`check_messages` checks a run's ``input_messages`` template the same way.

The grader types are OpenAI's (``string_check``, ``text_similarity``, ``score_model``,
``label_model``) with their exact field names, plus two Tuna extensions (``regex``,
``json_check``).  OpenAI's ``python`` and ``multi`` graders, the ``cosine`` and ``meteor``
metrics, and image or audio content are refused with a sentence that says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from tuna_core.evals.similarity import METRICS, REFUSED_METRICS
from tuna_core.evals.templates import (
    MESSAGE_ROLES,
    NAMESPACES,
    TemplateSyntaxError,
    parse_reference,
    references,
)
from tuna_core.json_types import described_kind

STRING_CHECK_OPERATIONS = ("eq", "ne", "like", "ilike")
# OpenAI's grader types this server grades, then Tuna's extensions.
OPENAI_GRADERS = ("string_check", "text_similarity", "score_model", "label_model")
EXTENSION_GRADERS = ("regex", "json_check")
GRADER_TYPES = (*OPENAI_GRADERS, *EXTENSION_GRADERS)
REFUSED_GRADERS = {
    "python": "python graders are not supported by this server (it runs no user code)",
    "multi": "multi graders are not supported by this server",
}
# The keys each grader type takes; OpenAI's names (``sampling_params.max_completions_tokens``
# is spelt so in OpenAI's API).
GRADER_KEYS: dict[str, frozenset[str]] = {
    "string_check": frozenset({"type", "name", "input", "reference", "operation"}),
    "text_similarity": frozenset(
        {"type", "name", "input", "reference", "evaluation_metric", "pass_threshold"}
    ),
    "score_model": frozenset(
        {"type", "name", "input", "model", "range", "sampling_params", "pass_threshold"}
    ),
    "label_model": frozenset({"type", "name", "input", "model", "labels", "passing_labels"}),
    "regex": frozenset({"type", "name", "input", "pattern", "ignore_case"}),
    "json_check": frozenset({"type", "name", "input", "schema", "reference"}),
}
SAMPLING_KEYS = frozenset(
    {"max_completions_tokens", "temperature", "top_p", "seed", "reasoning_effort"}
)
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
DEFAULT_SCORE_RANGE = (0.0, 1.0)
TEXT_PART_TYPES = ("input_text", "output_text")
MEDIA_PART_TYPES = ("input_image", "input_audio")
# The longest regex pattern a criterion may carry (a guard, not a style rule).
MAX_PATTERN_LENGTH = 10_000


class GraderConfigError(ValueError):
    """A testing criterion (or prompt template) the server refuses at creation.

    ``param`` is the exact request parameter (``testing_criteria[1].evaluation_metric``),
    ``message`` the sentence for OpenAI's error envelope.
    """

    def __init__(self, message: str, param: str) -> None:
        super().__init__(f"{param}: {message}")
        self.message = message
        self.param = param


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise GraderConfigError(f"expected an object, got {described_kind(value)}", param)
    return value


def _require(obj: Mapping[str, Any], key: str, param: str) -> Any:
    if key not in obj or obj[key] is None:
        raise GraderConfigError(f"missing required parameter {key!r}", f"{param}.{key}")
    return obj[key]


def _string(value: Any, param: str, *, non_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise GraderConfigError(f"expected a string, got {described_kind(value)}", param)
    if non_empty and not value.strip():
        raise GraderConfigError("expected a non-empty string", param)
    return value


def _number(value: Any, param: str) -> float:
    if not _is_number(value):
        raise GraderConfigError(f"expected a finite number, got {described_kind(value)}", param)
    return float(value)


def _choice(value: Any, choices: tuple[str, ...], param: str) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if isinstance(value, str) else described_kind(value)
        raise GraderConfigError(f"expected one of {', '.join(choices)}; got {shown}", param)
    return value


def _check_keys(obj: Mapping[str, Any], allowed: frozenset[str], param: str) -> None:
    for key in obj:
        if key not in allowed:
            raise GraderConfigError(
                f"unknown parameter {key!r} (allowed: {', '.join(sorted(allowed))})",
                f"{param}.{key}",
            )


def check_template(template: Any, param: str, *, allow_sample: bool = True) -> str:
    """A template string whose every ``{{ }}`` is a reference in an allowed namespace."""
    text = _string(template, param)
    try:
        found = references(text)
    except TemplateSyntaxError as exc:
        raise GraderConfigError(str(exc), param) from None
    if not allow_sample:
        for reference in found:
            if reference.namespace == "sample":
                raise GraderConfigError(
                    f"{{{{ {reference.text} }}}}: a prompt template may use the item namespace"
                    " only (the sample is the model's answer to this prompt)",
                    param,
                )
    return text


def _check_part(part: Any, param: str, allow_sample: bool) -> None:
    if isinstance(part, str):
        check_template(part, param, allow_sample=allow_sample)
        return
    obj = _object(part, param)
    ptype = obj.get("type")
    if ptype in MEDIA_PART_TYPES:
        raise GraderConfigError(
            f"{ptype} content is not supported by this server (its models read text only)",
            f"{param}.type",
        )
    _choice(_require(obj, "type", param), TEXT_PART_TYPES, f"{param}.type")
    _check_keys(obj, frozenset({"type", "text"}), param)
    check_template(_require(obj, "text", param), f"{param}.text", allow_sample=allow_sample)


def check_messages(messages: Any, param: str, *, allow_sample: bool = False) -> None:
    """Checks eval input messages: a run's ``input_messages.template`` or a grader's ``input``.

    Each message is ``{"role", "content"}`` (``"type": "message"`` optional) with a role of
    `MESSAGE_ROLES` and content a template string, a text part (``input_text`` or
    ``output_text``) or a non-empty list of them.  ``allow_sample`` says whether the ``sample``
    namespace exists where these messages are rendered: in a grader's input it does, in a
    prompt template it does not.
    """
    if not isinstance(messages, list):
        raise GraderConfigError(
            f"expected an array of messages, got {described_kind(messages)}", param
        )
    if not messages:
        raise GraderConfigError("expected at least one message", param)
    for index, message in enumerate(messages):
        where = f"{param}[{index}]"
        obj = _object(message, where)
        _check_keys(obj, frozenset({"type", "role", "content"}), where)
        if "type" in obj:
            _choice(obj["type"], ("message",), f"{where}.type")
        _choice(_require(obj, "role", where), MESSAGE_ROLES, f"{where}.role")
        content = _require(obj, "content", where)
        if isinstance(content, list):
            if not content:
                raise GraderConfigError("expected at least one content part", f"{where}.content")
            for position, part in enumerate(content):
                _check_part(part, f"{where}.content[{position}]", allow_sample)
        else:
            _check_part(content, f"{where}.content", allow_sample)


def check_item_reference(reference: Any, param: str) -> None:
    """Checks an ``input_messages.item_reference``: one ``item.<path>`` naming the messages."""
    text = _string(reference, param, non_empty=True)
    try:
        parsed = parse_reference(text)
    except TemplateSyntaxError as exc:
        raise GraderConfigError(str(exc), param) from None
    if parsed.namespace != "item":
        raise GraderConfigError(
            f"expected a reference into the item namespace such as 'item.input', got {text!r}",
            param,
        )


def _check_model(
    criterion: Mapping[str, Any], param: str, known_model: Callable[[str], bool] | None
) -> None:
    model = _string(_require(criterion, "model", param), f"{param}.model", non_empty=True)
    if known_model is not None and not known_model(model):
        raise GraderConfigError(
            f"the model {model!r} does not exist or is not served here", f"{param}.model"
        )
    check_messages(_require(criterion, "input", param), f"{param}.input", allow_sample=True)


def score_range(criterion: Mapping[str, Any]) -> tuple[float, float]:
    """A checked ``score_model`` criterion's range, OpenAI's default [0, 1] when absent."""
    value = criterion.get("range")
    if value is None:
        return DEFAULT_SCORE_RANGE
    return float(value[0]), float(value[1])


def _check_score_model(criterion: Mapping[str, Any], param: str) -> None:
    value = criterion.get("range")
    if value is not None:
        if not isinstance(value, list) or len(value) != 2:
            raise GraderConfigError(
                f"expected two numbers [min, max], got {described_kind(value)}", f"{param}.range"
            )
        low = _number(value[0], f"{param}.range[0]")
        high = _number(value[1], f"{param}.range[1]")
        if not low < high:
            raise GraderConfigError(
                f"the minimum {value[0]} must be below the maximum {value[1]}", f"{param}.range"
            )
    if criterion.get("pass_threshold") is not None:
        low, high = score_range(criterion)
        threshold = _number(criterion["pass_threshold"], f"{param}.pass_threshold")
        if not low <= threshold <= high:
            raise GraderConfigError(
                f"expected a number within the range [{low:g}, {high:g}], got {threshold:g}",
                f"{param}.pass_threshold",
            )
    sampling = criterion.get("sampling_params")
    if sampling is None:
        return
    where = f"{param}.sampling_params"
    _check_keys(_object(sampling, where), SAMPLING_KEYS, where)
    checks: dict[str, Callable[[Any, str], None]] = {
        "max_completions_tokens": _check_positive_int,
        "seed": _check_int,
        "temperature": lambda v, p: _check_between(v, p, 0.0, 2.0),
        "top_p": lambda v, p: _check_between(v, p, 0.0, 1.0, open_low=True),
        # Accepted for OpenAI's clients; this server's models do not reason, so it changes nothing.
        "reasoning_effort": lambda v, p: _check_effort(v, p),
    }
    for key, check in checks.items():
        if sampling.get(key) is not None:
            check(sampling[key], f"{where}.{key}")


def _check_effort(value: Any, param: str) -> None:
    _choice(value, REASONING_EFFORTS, param)


def _check_int(value: Any, param: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise GraderConfigError(f"expected an integer, got {described_kind(value)}", param)


def _check_positive_int(value: Any, param: str) -> None:
    _check_int(value, param)
    if value < 1:
        raise GraderConfigError(f"expected an integer of at least 1, got {value}", param)


def _check_between(
    value: Any, param: str, low: float, high: float, *, open_low: bool = False
) -> None:
    number = _number(value, param)
    if number > high or number < low or (open_low and number == low):
        bracket = "(" if open_low else "["
        raise GraderConfigError(
            f"expected a number in {bracket}{low:g}, {high:g}], got {number:g}", param
        )


def _check_labels(criterion: Mapping[str, Any], param: str) -> None:
    labels = _require(criterion, "labels", param)
    if not isinstance(labels, list) or not labels:
        raise GraderConfigError("expected a non-empty array of labels", f"{param}.labels")
    seen: set[str] = set()
    for index, label in enumerate(labels):
        _string(label, f"{param}.labels[{index}]", non_empty=True)
        key = label.strip().casefold()
        if key in seen:
            # The judge's answer is matched without regard to case: two such labels are one.
            raise GraderConfigError(
                f"duplicate label {label!r} (labels are matched ignoring case)",
                f"{param}.labels[{index}]",
            )
        seen.add(key)
    passing = _require(criterion, "passing_labels", param)
    if not isinstance(passing, list) or not passing:
        raise GraderConfigError("expected a non-empty array of labels", f"{param}.passing_labels")
    for index, label in enumerate(passing):
        if label not in labels:
            shown = repr(label) if isinstance(label, str) else described_kind(label)
            raise GraderConfigError(
                f"{shown} is not one of labels (passing_labels must be a subset of labels)",
                f"{param}.passing_labels[{index}]",
            )


def _check_regex(criterion: Mapping[str, Any], param: str) -> None:
    import regex

    pattern = _string(_require(criterion, "pattern", param), f"{param}.pattern", non_empty=True)
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise GraderConfigError(
            f"the pattern is longer than {MAX_PATTERN_LENGTH} characters", f"{param}.pattern"
        )
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise GraderConfigError(
            f"not a valid regular expression: {exc}", f"{param}.pattern"
        ) from None
    ignore_case = criterion.get("ignore_case")
    if ignore_case is not None and not isinstance(ignore_case, bool):
        raise GraderConfigError(
            f"expected a boolean, got {described_kind(ignore_case)}", f"{param}.ignore_case"
        )


def _check_json(criterion: Mapping[str, Any], param: str) -> None:
    if criterion.get("reference") is not None:
        check_template(criterion["reference"], f"{param}.reference")
    schema = criterion.get("schema")
    if schema is None:
        return
    if not isinstance(schema, Mapping):
        raise GraderConfigError(
            f"expected a JSON schema (an object), got {described_kind(schema)}", f"{param}.schema"
        )
    import jsonschema_rs

    try:
        jsonschema_rs.meta.validate(dict(schema))
        jsonschema_rs.validator_for(dict(schema))
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        reason = getattr(exc, "message", None) or str(exc).splitlines()[0]
        raise GraderConfigError(f"not a valid JSON schema: {reason}", f"{param}.schema") from None


def check_criterion(
    criterion: Any, param: str, *, known_model: Callable[[str], bool] | None = None
) -> None:
    """Checks one testing criterion; raises `GraderConfigError` naming the exact parameter.

    ``param`` is where the criterion sits in the request (``"testing_criteria[1]"``); errors
    name a path below it (``"testing_criteria[1].evaluation_metric"``).  ``known_model``, when
    given, says whether a judge model (``score_model``/``label_model``'s ``model``) is one this
    server serves to the caller; without it any name passes and an unknown model errors each
    item at run time.
    """
    obj = _object(criterion, param)
    gtype = _require(obj, "type", param)
    if isinstance(gtype, str) and gtype in REFUSED_GRADERS:
        raise GraderConfigError(REFUSED_GRADERS[gtype], f"{param}.type")
    _choice(gtype, GRADER_TYPES, f"{param}.type")
    _check_keys(obj, GRADER_KEYS[gtype], param)
    _string(_require(obj, "name", param), f"{param}.name", non_empty=True)

    if gtype in ("string_check", "text_similarity"):
        check_template(_require(obj, "input", param), f"{param}.input")
        check_template(_require(obj, "reference", param), f"{param}.reference")
    if gtype == "string_check":
        _choice(_require(obj, "operation", param), STRING_CHECK_OPERATIONS, f"{param}.operation")
    elif gtype == "text_similarity":
        metric = _require(obj, "evaluation_metric", param)
        if isinstance(metric, str) and metric in REFUSED_METRICS:
            raise GraderConfigError(REFUSED_METRICS[metric], f"{param}.evaluation_metric")
        _choice(metric, tuple(METRICS), f"{param}.evaluation_metric")
        _number(_require(obj, "pass_threshold", param), f"{param}.pass_threshold")
    elif gtype in ("score_model", "label_model"):
        _check_model(obj, param, known_model)
        if gtype == "score_model":
            _check_score_model(obj, param)
        else:
            _check_labels(obj, param)
    elif gtype == "regex":
        check_template(_require(obj, "input", param), f"{param}.input")
        _check_regex(obj, param)
    elif gtype == "json_check":
        check_template(_require(obj, "input", param), f"{param}.input")
        _check_json(obj, param)


__all__ = [
    "EXTENSION_GRADERS",
    "GRADER_TYPES",
    "NAMESPACES",
    "OPENAI_GRADERS",
    "STRING_CHECK_OPERATIONS",
    "GraderConfigError",
    "check_criterion",
    "check_messages",
    "check_template",
    "score_range",
]
