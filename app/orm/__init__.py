"""All tables; importing this module registers them on `Base.metadata` (Alembic reads it)."""

from app.orm.base import Base
from app.orm.evals import Eval, EvalOutputItem, EvalRun
from app.orm.exports import ModelExport
from app.orm.file import File
from app.orm.fine_tuning import (
    FineTunedModel,
    FineTuningCheckpoint,
    FineTuningEvent,
    FineTuningJob,
)
from app.orm.project import ApiKey, Project
from app.orm.webhooks import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "ApiKey",
    "Base",
    "Eval",
    "EvalOutputItem",
    "EvalRun",
    "File",
    "FineTunedModel",
    "FineTuningCheckpoint",
    "FineTuningEvent",
    "FineTuningJob",
    "ModelExport",
    "Project",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
