"""Fine-tuned model ids in OpenAI's format: `ft:{base}:{org}:{suffix}:{8 alphanumerics}`.

An empty suffix leaves its segment empty (`ft:base:org::Ab12Cd34`); a checkpoint appends
`:ckpt-step-{N}` to its job's model id. The suffix may not contain ':' (`SUFFIX_PATTERN`, checked
at job creation) so the segments always split back apart. The tail is the job id's, so every
attempt of a job (a crash, a pause) names its model the same.
"""

from __future__ import annotations

import re

FT_PREFIX = "ft:"
SUFFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAIL = 8


def fine_tuned_model_id(base_model: str, organization: str, suffix: str | None, job_id: str) -> str:
    """The model a job publishes; ``job_id`` ends in random alphanumerics (`ftjob-...`)."""
    return f"{FT_PREFIX}{base_model}:{organization}:{suffix or ''}:{job_id[-_TAIL:]}"


def checkpoint_model_id(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def is_fine_tuned_model_id(model: str) -> bool:
    return model.startswith(FT_PREFIX)
