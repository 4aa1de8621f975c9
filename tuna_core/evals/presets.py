"""Ready-made testing criteria: what "grade against the expected answer" means everywhere.

The CLI's ``tuna evals create --expect FIELD``, the dashboard's new-eval form and the comparison
a fine-tuning job runs on its validation set all grade an answer the same two ways.
"""

from __future__ import annotations

from typing import Any

#: `similar` passes when the answer's fuzzy match with the expected one reaches this.
SIMILARITY_THRESHOLD = 0.8


def expected_answer_criteria(field: str) -> list[dict[str, Any]]:
    """`exact`: the answer equals ``item.<field>``; `similar`: fuzzy match >= the threshold."""
    reference = "{{ item." + field + " }}"
    return [
        {
            "type": "string_check",
            "name": "exact",
            "input": "{{ sample.output_text }}",
            "reference": reference,
            "operation": "eq",
        },
        {
            "type": "text_similarity",
            "name": "similar",
            "input": "{{ sample.output_text }}",
            "reference": reference,
            "evaluation_metric": "fuzzy_match",
            "pass_threshold": SIMILARITY_THRESHOLD,
        },
    ]
