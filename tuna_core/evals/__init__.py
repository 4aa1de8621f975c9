"""Evals: templates and graders, shared by the Evals API (creation checks) and the run worker.

* `check_criterion(criterion, param)` checks a testing criterion at eval creation, raising
  `GraderConfigError(message, param)` with the exact parameter;
  `check_messages(messages, param)` checks a run's ``input_messages`` template.
* `render`, `render_messages`, `build_sample` turn templates, an item and a model's answer into
  text and chat messages (`TemplateError` names a missing field).

Pure library code: no model calls (a model grader is handed a ``judge`` callable), no database.
"""

from tuna_core.evals.checks import (
    EXTENSION_GRADERS,
    GRADER_TYPES,
    OPENAI_GRADERS,
    STRING_CHECK_OPERATIONS,
    GraderConfigError,
    check_criterion,
    check_messages,
    check_template,
    score_range,
)
from tuna_core.evals.similarity import METRICS, REFUSED_METRICS, similarity
from tuna_core.evals.templates import (
    TemplateError,
    build_sample,
    render,
    render_messages,
)

__all__ = [
    "EXTENSION_GRADERS",
    "GRADER_TYPES",
    "METRICS",
    "OPENAI_GRADERS",
    "REFUSED_METRICS",
    "STRING_CHECK_OPERATIONS",
    "GraderConfigError",
    "TemplateError",
    "build_sample",
    "check_criterion",
    "check_messages",
    "check_template",
    "render",
    "render_messages",
    "score_range",
    "similarity",
]
