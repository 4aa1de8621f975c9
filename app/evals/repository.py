"""Queries and inserts for evals, eval runs and output items.

Shared by the API and (later) the run worker: plain values in, any `Session`, flush, never
commit. A run's status moves only by `move_run`'s conditional UPDATE, so of a cancel racing the
worker exactly one wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.ids import new_id
from app.orm import Eval, EvalOutputItem, EvalRun
from app.orm.base import utcnow
from app.pagination import Order, Page, paginate

EVAL_PREFIX = "eval_"
RUN_PREFIX = "evalrun_"
OUTPUT_ITEM_PREFIX = "outputitem_"

# Run statuses (OpenAI's words) and the moves between them.
QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELED = (
    "queued",
    "in_progress",
    "completed",
    "failed",
    "canceled",
)
RUN_STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELED)
ACTIVE_RUN_STATUSES = frozenset({QUEUED, IN_PROGRESS})
RUN_MOVES: dict[str, frozenset[str]] = {
    IN_PROGRESS: frozenset({QUEUED}),
    QUEUED: frozenset({IN_PROGRESS}),  # a lost worker's run goes back to the queue
    COMPLETED: frozenset({IN_PROGRESS}),
    FAILED: frozenset({QUEUED, IN_PROGRESS}),
    CANCELED: frozenset({QUEUED, IN_PROGRESS}),
}
ITEM_STATUSES = ("pass", "fail", "error")


class EvalRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # Evals --------------------------------------------------------------------------------

    def add_eval(self, row: Eval) -> Eval:
        self.session.add(row)
        self.session.flush()
        return row

    def get_eval(self, eval_id: str, *, project_id: str | None = None) -> Eval | None:
        stmt = select(Eval).where(Eval.id == eval_id)
        if project_id is not None:
            stmt = stmt.where(Eval.project_id == project_id)
        return self.session.scalar(stmt)

    def list_evals(
        self,
        project_id: str,
        *,
        after: Eval | None,
        limit: int,
        order: Order,
        order_by: str = "created_at",
    ) -> Page[Eval]:
        stmt = select(Eval).where(Eval.project_id == project_id)
        return paginate(
            self.session,
            stmt,
            created_at=Eval.updated_at if order_by == "updated_at" else Eval.created_at,
            id_column=Eval.id,
            after=after,
            limit=limit,
            order=order,
        )

    def update_eval(self, row: Eval, **values: Any) -> Eval:
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        self.session.flush()
        return row

    def delete_eval(self, row: Eval) -> None:
        # Explicit deletes: SQLite enforces the foreign keys' cascade only when asked to.
        run_ids = select(EvalRun.id).where(EvalRun.eval_id == row.id)
        self.session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id.in_(run_ids)))
        self.session.execute(delete(EvalRun).where(EvalRun.eval_id == row.id))
        self.session.delete(row)
        self.session.flush()

    # Runs ---------------------------------------------------------------------------------

    def add_run(self, row: EvalRun) -> EvalRun:
        self.session.add(row)
        self.session.flush()
        return row

    def get_run(
        self, run_id: str, *, eval_id: str | None = None, project_id: str | None = None
    ) -> EvalRun | None:
        stmt = select(EvalRun).where(EvalRun.id == run_id)
        if eval_id is not None:
            stmt = stmt.where(EvalRun.eval_id == eval_id)
        if project_id is not None:
            stmt = stmt.where(EvalRun.project_id == project_id)
        return self.session.scalar(stmt)

    def reload_run(self, run_id: str) -> EvalRun | None:
        return self.session.get(EvalRun, run_id, populate_existing=True)

    def list_runs(
        self,
        eval_id: str,
        *,
        status: str | None,
        after: EvalRun | None,
        limit: int,
        order: Order,
    ) -> Page[EvalRun]:
        stmt = select(EvalRun).where(EvalRun.eval_id == eval_id)
        if status is not None:
            stmt = stmt.where(EvalRun.status == status)
        return paginate(
            self.session,
            stmt,
            created_at=EvalRun.created_at,
            id_column=EvalRun.id,
            after=after,
            limit=limit,
            order=order,
        )

    def move_run(
        self, run_id: str, target: str, *, only_from: Iterable[str], **values: Any
    ) -> bool:
        """status -> `target` if it is still one of `only_from` (and the move is allowed);
        True when this call moved it."""
        sources = RUN_MOVES[target] & frozenset(only_from)
        result = self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.status.in_(sorted(sources)))
            .values(status=target, **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def count_active_runs(self, project_id: str) -> int:
        """The project's runs that are queued or in progress (the active-run quota counts them)."""
        return int(
            self.session.scalar(
                select(func.count())
                .select_from(EvalRun)
                .where(
                    EvalRun.project_id == project_id,
                    EvalRun.status.in_(sorted(ACTIVE_RUN_STATUSES)),
                )
            )
            or 0
        )

    def runs_of_evals(self, eval_ids: Iterable[str]) -> dict[str, list[EvalRun]]:
        """Each eval's runs, oldest first, in one query (a page of jobs shows their comparisons)."""
        wanted = sorted(set(eval_ids))
        found: dict[str, list[EvalRun]] = {eval_id: [] for eval_id in wanted}
        if not wanted:
            return found
        stmt = (
            select(EvalRun)
            .where(EvalRun.eval_id.in_(wanted))
            .order_by(EvalRun.created_at, EvalRun.id)
            .execution_options(populate_existing=True)  # statuses move by UPDATEs
        )
        for run in self.session.scalars(stmt):
            found[run.eval_id].append(run)
        return found

    def mark_enqueued(self, run_id: str, at: datetime) -> bool:
        """Record that the run's message was sent (the API marks after its send)."""
        result = self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.status == QUEUED)
            .values(enqueued_at=at)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def delete_run(self, row: EvalRun) -> None:
        self.session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id == row.id))
        self.session.delete(row)
        self.session.flush()

    # Output items -------------------------------------------------------------------------

    def add_output_item(
        self,
        run: EvalRun,
        *,
        datasource_item_id: int,
        datasource_item: dict[str, Any],
        sample: dict[str, Any] | None,
        results: list[dict[str, Any]],
        status: str,
        created_at: datetime | None = None,
    ) -> EvalOutputItem:
        row = EvalOutputItem(
            id=new_id(OUTPUT_ITEM_PREFIX),
            run_id=run.id,
            eval_id=run.eval_id,
            datasource_item_id=datasource_item_id,
            datasource_item=datasource_item,
            sample=sample,
            results=results,
            status=status,
            created_at=created_at or utcnow(),
        )
        self.session.add(row)
        self.session.flush()
        return row

    def done_item_ids(self, run_id: str) -> set[int]:
        """The items a run has written already: a resumed run skips them."""
        return set(
            self.session.scalars(
                select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run_id)
            )
        )

    def get_output_item(self, item_id: str, *, run_id: str) -> EvalOutputItem | None:
        return self.session.scalar(
            select(EvalOutputItem).where(
                EvalOutputItem.id == item_id, EvalOutputItem.run_id == run_id
            )
        )

    def list_output_items(
        self,
        run_id: str,
        *,
        status: str | None,
        after: EvalOutputItem | None,
        limit: int,
        order: Order,
    ) -> Page[EvalOutputItem]:
        stmt = select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)
        if status is not None:
            stmt = stmt.where(EvalOutputItem.status == status)
        return paginate(
            self.session,
            stmt,
            created_at=EvalOutputItem.created_at,
            id_column=EvalOutputItem.id,
            after=after,
            limit=limit,
            order=order,
        )

    # The run worker and the reconciler (`worker/eval_runs.py`, `worker/reconciler.py`) ------

    def renew_run_lease(self, run_id: str, worker_id: str, until: datetime) -> None:
        """Only while this worker still runs it: a lost attempt must not keep the run alive."""
        self.session.execute(
            update(EvalRun)
            .where(
                EvalRun.id == run_id, EvalRun.worker_id == worker_id, EvalRun.status == IN_PROGRESS
            )
            .values(lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )

    def set_run_progress(self, run_id: str, worker_id: str) -> None:
        """`items_done` = the items written so far, while this worker runs it."""
        written = (
            select(func.count())
            .select_from(EvalOutputItem)
            .where(EvalOutputItem.run_id == run_id)
            .scalar_subquery()
        )
        self.session.execute(
            update(EvalRun)
            .where(
                EvalRun.id == run_id, EvalRun.worker_id == worker_id, EvalRun.status == IN_PROGRESS
            )
            .values(items_done=written)
            .execution_options(synchronize_session=False)
        )

    def run_output_items(self, run_id: str) -> list[EvalOutputItem]:
        """Every item a run has written, in item order (for its totals)."""
        return list(
            self.session.scalars(
                select(EvalOutputItem)
                .where(EvalOutputItem.run_id == run_id)
                .order_by(EvalOutputItem.datasource_item_id)
            )
        )

    def expired_run_leases(self, now: datetime) -> list[str]:
        """Runs in progress whose worker stopped renewing the lease: it died."""
        return list(
            self.session.scalars(
                select(EvalRun.id).where(
                    EvalRun.status == IN_PROGRESS, EvalRun.lease_expires_at < now
                )
            )
        )

    def requeue_lost_run(self, run_id: str) -> bool:
        """in_progress -> queued (its worker died); the reconciler sends it again."""
        return self.move_run(
            run_id, QUEUED, only_from={IN_PROGRESS}, enqueued_at=None, lease_expires_at=None
        )

    def waiting_runs(self, *, unsent_before: datetime | None) -> list[str]:
        """Queued runs that need a message: all, or (with `unsent_before`) those created before
        it with no message known to be sent."""
        query = select(EvalRun.id).where(EvalRun.status == QUEUED)
        if unsent_before is not None:
            query = query.where(EvalRun.enqueued_at.is_(None), EvalRun.created_at < unsent_before)
        return list(self.session.scalars(query.order_by(EvalRun.created_at)))

    def claim_run_send(self, run_id: str, at: datetime, *, only_if_unsent: bool) -> bool:
        """A reconciler's right to send a queued run's message: true for exactly one of several
        reconcilers when `only_if_unsent`."""
        query = update(EvalRun).where(EvalRun.id == run_id, EvalRun.status == QUEUED)
        if only_if_unsent:
            query = query.where(EvalRun.enqueued_at.is_(None))
        result = self.session.execute(
            query.values(enqueued_at=at).execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def unmark_run_enqueued(self, run_id: str, at: datetime) -> None:
        """Undo `claim_run_send` when the send failed: the next pass tries again."""
        self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.enqueued_at == at)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
