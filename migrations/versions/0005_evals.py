"""evals, eval_runs, eval_output_items: the Evals API (items unique per run)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:11:23.568963
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.orm.base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("data_source_config", sa.JSON(), nullable=False),
        sa.Column("testing_criteria", sa.JSON(), nullable=False),
        sa.Column("created_at", app.orm.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.orm.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_evals_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evals")),
    )
    with op.batch_alter_table("evals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_evals_project_created", ["project_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("eval_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=True),
        sa.Column("model", sa.String(length=400), nullable=False),
        sa.Column("data_source", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("result_counts", sa.JSON(), nullable=True),
        sa.Column("per_testing_criteria_results", sa.JSON(), nullable=True),
        sa.Column("per_model_usage", sa.JSON(), nullable=True),
        sa.Column("items_total", sa.Integer(), nullable=False),
        sa.Column("items_done", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", app.orm.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", app.orm.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", app.orm.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", app.orm.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", app.orm.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["eval_id"], ["evals.id"], name=op.f("fk_eval_runs_eval_id_evals"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_eval_runs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_eval_runs_eval_created", ["eval_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_eval_runs_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_runs_status"), ["status"], unique=False)

    op.create_table(
        "eval_output_items",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("eval_id", sa.String(length=40), nullable=False),
        sa.Column("datasource_item_id", sa.Integer(), nullable=False),
        sa.Column("datasource_item", sa.JSON(), nullable=False),
        sa.Column("sample", sa.JSON(), nullable=True),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("created_at", app.orm.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["eval_runs.id"],
            name=op.f("fk_eval_output_items_run_id_eval_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_output_items")),
        sa.UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_item"),
    )
    with op.batch_alter_table("eval_output_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_eval_output_items_run_created", ["run_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_eval_output_items_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("eval_output_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_output_items_status"))
        batch_op.drop_index("ix_eval_output_items_run_created")

    op.drop_table("eval_output_items")
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_runs_status"))
        batch_op.drop_index(batch_op.f("ix_eval_runs_project_id"))
        batch_op.drop_index("ix_eval_runs_eval_created")

    op.drop_table("eval_runs")
    with op.batch_alter_table("evals", schema=None) as batch_op:
        batch_op.drop_index("ix_evals_project_created")

    op.drop_table("evals")
