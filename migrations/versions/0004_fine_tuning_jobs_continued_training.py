"""fine_tuning_jobs: base_model and init_from for continued training; model fits an ft: id

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("base_model", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("init_from", sa.String(length=256), nullable=True))
        batch.alter_column(
            "model",
            existing_type=sa.String(length=256),
            type_=sa.String(length=400),
            existing_nullable=False,
        )
    # Every older job started from a base model, which `model` names.
    op.execute("UPDATE fine_tuning_jobs SET base_model = model")


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.alter_column(
            "model",
            existing_type=sa.String(length=400),
            type_=sa.String(length=256),
            existing_nullable=False,
        )
        batch.drop_column("init_from")
        batch.drop_column("base_model")
