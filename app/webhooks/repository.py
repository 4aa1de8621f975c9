"""Queries for webhook endpoints, events and deliveries: any `Session`, flush, never commit.

A delivery is posted only by the worker that holds its lease: `claim_due` takes it with a
conditional UPDATE (`lease_expires_at` empty or past), so of two workers exactly one gets it.
Deliveries to a disabled endpoint are neither due nor claimable: they wait, pending, until it is
enabled again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from app.ids import new_id
from app.orm import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.pagination import Order, Page, paginate

ENDPOINT_PREFIX = "whep_"
EVENT_PREFIX = "evt_"
DELIVERY_PREFIX = "whdel_"

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def _to_enabled_endpoint() -> Any:
    return WebhookDelivery.endpoint_id.in_(
        select(WebhookEndpoint.id).where(WebhookEndpoint.enabled.is_(True))
    )


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # Endpoints ----------------------------------------------------------------------------

    def add_endpoint(self, project_id: str, **values: Any) -> WebhookEndpoint:
        row = WebhookEndpoint(id=new_id(ENDPOINT_PREFIX), project_id=project_id, **values)
        self.session.add(row)
        self.session.flush()
        return row

    def get_endpoint(self, project_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        return self.session.scalar(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.project_id == project_id
            )
        )

    def list_endpoints(
        self, project_id: str, *, after: WebhookEndpoint | None, limit: int, order: Order
    ) -> Page[WebhookEndpoint]:
        return paginate(
            self.session,
            select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id),
            created_at=WebhookEndpoint.created_at,
            id_column=WebhookEndpoint.id,
            after=after,
            limit=limit,
            order=order,
        )

    def delete_endpoint(self, row: WebhookEndpoint) -> None:
        self.session.delete(row)
        self.session.flush()

    def subscribed_endpoints(self, project_id: str, event_type: str) -> list[WebhookEndpoint]:
        rows = self.session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.project_id == project_id, WebhookEndpoint.enabled.is_(True)
            )
        )
        return [row for row in rows if row.events is None or event_type in row.events]

    # Events and deliveries ----------------------------------------------------------------

    def add_event(
        self, project_id: str, event_type: str, data: dict[str, Any], now: datetime
    ) -> WebhookEvent:
        row = WebhookEvent(
            id=new_id(EVENT_PREFIX),
            project_id=project_id,
            type=event_type,
            data=data,
            created_at=now,
        )
        self.session.add(row)
        return row

    def add_delivery(self, event_id: str, endpoint_id: str, now: datetime) -> None:
        self.session.add(
            WebhookDelivery(
                id=new_id(DELIVERY_PREFIX),
                event_id=event_id,
                endpoint_id=endpoint_id,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )

    def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        return self.session.get(WebhookDelivery, delivery_id)

    def list_deliveries(
        self, endpoint_id: str, *, after: WebhookDelivery | None, limit: int, order: Order
    ) -> Page[tuple[WebhookDelivery, WebhookEvent]]:
        page = paginate(
            self.session,
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id),
            created_at=WebhookDelivery.created_at,
            id_column=WebhookDelivery.id,
            after=after,
            limit=limit,
            order=order,
        )
        events = self._events([row.event_id for row in page.items])
        return Page(
            items=[(row, events[row.event_id]) for row in page.items], has_more=page.has_more
        )

    def _events(self, ids: Sequence[str]) -> dict[str, WebhookEvent]:
        if not ids:
            return {}
        rows = self.session.scalars(select(WebhookEvent).where(WebhookEvent.id.in_(set(ids))))
        return {row.id: row for row in rows}

    def due_deliveries(self, now: datetime, limit: int) -> list[str]:
        """Pending deliveries whose time has come and that no worker holds."""
        return list(
            self.session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.next_attempt_at <= now,
                    or_(
                        WebhookDelivery.lease_expires_at.is_(None),
                        WebhookDelivery.lease_expires_at < now,
                    ),
                    _to_enabled_endpoint(),
                )
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(limit)
            )
        )

    def claim(self, delivery_id: str, now: datetime, lease_until: datetime) -> bool:
        """Take the right to post this delivery until `lease_until`; False if another has it."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.next_attempt_at <= now,
                or_(
                    WebhookDelivery.lease_expires_at.is_(None),
                    WebhookDelivery.lease_expires_at < now,
                ),
                _to_enabled_endpoint(),
            )
            .values(lease_expires_at=lease_until)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def target(self, delivery_id: str) -> tuple[WebhookEvent, WebhookEndpoint] | None:
        row = self.session.execute(
            select(WebhookEvent, WebhookEndpoint)
            .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
            .join(WebhookEndpoint, WebhookDelivery.endpoint_id == WebhookEndpoint.id)
            .where(WebhookDelivery.id == delivery_id)
        ).first()
        return None if row is None else (row[0], row[1])

    def record(self, delivery_id: str, lease_until: datetime, **values: Any) -> bool:
        """Write an attempt's outcome, only while still holding the lease taken for it."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.lease_expires_at == lease_until,
            )
            .values(lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def prune(self, before: datetime) -> tuple[int, int]:
        """Delete delivered and failed deliveries created before `before`, then every event
        that has no delivery left; (deliveries, events) deleted. Pending ones stay."""
        deliveries = self.session.execute(
            delete(WebhookDelivery)
            .where(
                WebhookDelivery.status.in_((DELIVERED, FAILED)),
                WebhookDelivery.created_at < before,
            )
            .execution_options(synchronize_session=False)
        )
        events = self.session.execute(
            delete(WebhookEvent)
            .where(~exists().where(WebhookDelivery.event_id == WebhookEvent.id))
            .execution_options(synchronize_session=False)
        )
        return deliveries.rowcount, events.rowcount  # type: ignore[attr-defined]
