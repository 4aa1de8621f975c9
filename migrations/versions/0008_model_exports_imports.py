"""model_exports (built downloads of a model); fine_tuned_models: imports (no job, imported_from)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.orm.base

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = app.orm.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("fine_tuned_models") as batch:
        batch.alter_column("job_id", existing_type=sa.String(length=40), nullable=True)
        batch.add_column(sa.Column("imported_from", sa.String(length=1024), nullable=True))
    op.create_table(
        "model_exports",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("model_id", sa.String(length=400), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("storage_key", sa.String(length=256), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", UTC, nullable=True),
        sa.Column("enqueued_at", UTC, nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_model_exports_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["fine_tuned_models.id"],
            name=op.f("fk_model_exports_model_id_fine_tuned_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_exports")),
        sa.UniqueConstraint("model_id", "key", name="uq_model_exports_model_key"),
    )
    op.create_index(op.f("ix_model_exports_project_id"), "model_exports", ["project_id"])
    op.create_index(op.f("ix_model_exports_model_id"), "model_exports", ["model_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_model_exports_model_id"), table_name="model_exports")
    op.drop_index(op.f("ix_model_exports_project_id"), table_name="model_exports")
    op.drop_table("model_exports")
    with op.batch_alter_table("fine_tuned_models") as batch:
        batch.drop_column("imported_from")
        batch.alter_column("job_id", existing_type=sa.String(length=40), nullable=False)
