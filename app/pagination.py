"""Cursor pages in OpenAI's style: `after=<id>` continues from that object, newest first by default.

Rows are ordered by (created_at, id) so that objects created in the same instant still have one
stable order; the cursor object's own key becomes the bound of the next page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass
class Page(Generic[T]):
    items: Sequence[T]
    has_more: bool


def paginate(
    session: Session,
    stmt: Select[Any],
    *,
    created_at: InstrumentedAttribute[Any],
    id_column: InstrumentedAttribute[Any],
    after: Any | None,
    limit: int,
    order: Order = "desc",
) -> Page[Any]:
    """`after` is the cursor row (already looked up and checked to belong to the caller) or None."""
    key = tuple_(created_at, id_column)
    if after is not None:
        bound = tuple_(getattr(after, created_at.key), getattr(after, id_column.key))
        stmt = stmt.where(key < bound if order == "desc" else key > bound)
    if order == "desc":
        stmt = stmt.order_by(created_at.desc(), id_column.desc())
    else:
        stmt = stmt.order_by(created_at.asc(), id_column.asc())
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return Page(items=rows[:limit], has_more=len(rows) > limit)
