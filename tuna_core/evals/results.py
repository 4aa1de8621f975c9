"""A run's totals from its items' grades: OpenAI's ``result_counts`` and
``per_testing_criteria_results``, and each output item's ``status``.

An item passes when every criterion passes, fails when none errored and one failed, and is
errored when its sample could not be made (no grades: ``None``) or any criterion errored.
``result_counts`` counts items; ``per_testing_criteria_results`` counts each criterion's
passes and fails over the items where it gave a verdict (an errored grade counts in neither),
and (Tuna's extension) ``average_score``: the mean of those verdicts' scores (a similarity's
0..1, a score model's number), or null when there was none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from tuna_core.evals.graders import GradeResult

ItemStatus = Literal["pass", "fail", "error"]


def item_status(grades: Sequence[GradeResult] | None) -> ItemStatus:
    """An output item's status from its grades (None: the item errored before grading)."""
    if grades is None or any(g.errored for g in grades):
        return "error"
    return "pass" if all(g.passed for g in grades) else "fail"


def summarize(
    criteria: Sequence[str], items: Iterable[Sequence[GradeResult] | None]
) -> dict[str, Any]:
    """``{"result_counts": {...}, "per_testing_criteria_results": [...]}`` for a run.

    ``criteria`` names the testing criteria in the eval's order (the ``testing_criteria``
    string of each entry); each element of ``items`` is one item's grades in that same order,
    or None for an item whose sample could not be made.
    """
    counts = {"total": 0, "errored": 0, "failed": 0, "passed": 0}
    passed = [0] * len(criteria)
    failed = [0] * len(criteria)
    scores = [0.0] * len(criteria)
    for grades in items:
        counts["total"] += 1
        status = item_status(grades)
        counts[{"pass": "passed", "fail": "failed", "error": "errored"}[status]] += 1
        if grades is None:
            continue
        if len(grades) != len(criteria):
            raise ValueError(f"an item has {len(grades)} grades for {len(criteria)} criteria")
        for index, result in enumerate(grades):
            if not result.errored:
                scores[index] += result.score
                if result.passed:
                    passed[index] += 1
                else:
                    failed[index] += 1
    per = [
        {
            "testing_criteria": name,
            "passed": passed[i],
            "failed": failed[i],
            "average_score": scores[i] / (passed[i] + failed[i]) if passed[i] + failed[i] else None,
        }
        for i, name in enumerate(criteria)
    ]
    return {"result_counts": counts, "per_testing_criteria_results": per}
