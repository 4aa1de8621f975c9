"""Evals: templates and graders, shared by the Evals API (creation checks) and the run worker.

* `check_criterion(criterion, param)` checks a testing criterion at eval creation, raising
  `GraderConfigError(message, param)` with the exact parameter;
  `check_messages(messages, param)` checks a run's ``input_messages`` template.
* `render`, `render_messages`, `build_sample` turn templates, an item and a model's answer into
  text and chat messages (`TemplateError` names a missing field).
* `grade(criterion, item, sample, judge=None)` grades one sample -> `GradeResult` (its
  `as_result()` is OpenAI's output-item ``results`` entry); `item_status` and `summarize` make
  an output item's ``status`` and a run's ``result_counts`` / ``per_testing_criteria_results``.
* `expected_answer_criteria(field)`: the `exact` + `similar` criteria every preset grades with;
  `validation_item(example)`: a fine-tuning example as the item a job's comparison grades.
* `referenced_messages(reference, item)`: a run's ``item_reference`` input messages.

Pure library code: no model calls (a model grader is handed a ``judge`` callable), no database.
"""

from tuna_core.evals.checks import (
    EXTENSION_GRADERS,
    GRADER_TYPES,
    OPENAI_GRADERS,
    STRING_CHECK_OPERATIONS,
    GraderConfigError,
    check_criterion,
    check_item_reference,
    check_messages,
    check_template,
    score_range,
)
from tuna_core.evals.graders import (
    GradeResult,
    Judge,
    grade,
    judge_sampling,
    parse_label,
    parse_score,
    result_type,
)
from tuna_core.evals.presets import (
    SIMILARITY_THRESHOLD,
    VALIDATION_EXPECTED_FIELD,
    VALIDATION_INPUT_REFERENCE,
    VALIDATION_ITEM_SCHEMA,
    expected_answer_criteria,
    validation_item,
)
from tuna_core.evals.results import ItemStatus, item_status, summarize
from tuna_core.evals.similarity import METRICS, REFUSED_METRICS, similarity_score
from tuna_core.evals.templates import (
    TemplateError,
    build_sample,
    referenced_messages,
    render,
    render_messages,
)

__all__ = [
    "EXTENSION_GRADERS",
    "GRADER_TYPES",
    "METRICS",
    "OPENAI_GRADERS",
    "REFUSED_METRICS",
    "SIMILARITY_THRESHOLD",
    "STRING_CHECK_OPERATIONS",
    "VALIDATION_EXPECTED_FIELD",
    "VALIDATION_INPUT_REFERENCE",
    "VALIDATION_ITEM_SCHEMA",
    "GradeResult",
    "GraderConfigError",
    "ItemStatus",
    "Judge",
    "TemplateError",
    "build_sample",
    "check_criterion",
    "check_item_reference",
    "check_messages",
    "check_template",
    "expected_answer_criteria",
    "grade",
    "item_status",
    "judge_sampling",
    "parse_label",
    "parse_score",
    "referenced_messages",
    "render",
    "render_messages",
    "result_type",
    "score_range",
    "similarity_score",
    "summarize",
    "validation_item",
]
