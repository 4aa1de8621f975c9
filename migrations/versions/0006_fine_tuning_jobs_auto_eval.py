"""fine_tuning_jobs: auto_eval (the job's comparison settings), eval_id, eval_reported_at

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.orm.base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("auto_eval", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("eval_id", sa.String(length=40), nullable=True))
        batch.add_column(
            sa.Column("eval_reported_at", app.orm.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.create_index("ix_fine_tuning_jobs_eval_id", ["eval_id"])


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_index("ix_fine_tuning_jobs_eval_id")
        batch.drop_column("eval_reported_at")
        batch.drop_column("eval_id")
        batch.drop_column("auto_eval")
