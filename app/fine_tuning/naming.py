"""Fine-tuned model ids in OpenAI's format: `ft:{base}:{org}:{suffix}:{8 alphanumerics}`.

An empty suffix leaves its segment empty (`ft:base:org::Ab12Cd34`); a checkpoint appends
`:ckpt-step-{N}` to its job's model id. The suffix may not contain ':' (checked at job creation)
so the segments always split back apart.
"""

from __future__ import annotations

from app.ids import random_token

FT_PREFIX = "ft:"


def new_fine_tuned_model_id(base_model: str, organization: str, suffix: str | None) -> str:
    return f"{FT_PREFIX}{base_model}:{organization}:{suffix or ''}:{random_token(8)}"


def checkpoint_model_id(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def is_fine_tuned_model_id(model: str) -> bool:
    return model.startswith(FT_PREFIX)
