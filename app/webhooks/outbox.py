"""Emit a webhook event inside the transaction of the change it tells of.

`emit` writes the event and one pending delivery per subscribed endpoint (nothing at all when
no enabled endpoint of the project is subscribed); nothing is posted here. Once the caller's
transaction commits, the process's delivery nudge (a Celery message, installed on the
`Database` by `install_nudge`) asks a worker to post them now; a failed nudge is only logged,
since every worker also polls for due deliveries (`worker.webhooks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.db import Database, after_commit
from app.orm.base import utcnow
from app.webhooks.events import EVENT_TYPES
from app.webhooks.repository import WebhookRepository

logger = logging.getLogger("tuna.webhooks")

_NUDGE = "tuna_webhook_nudge"


def install_nudge(database: Database, nudge: Callable[[], None]) -> None:
    """Every session of `database` nudges delivery with `nudge` after committing an event."""
    database.sessions.configure(info={_NUDGE: nudge})


def emit(session: Session, project_id: str, event_type: str, object_id: str) -> str | None:
    """Write the event `{"id": object_id}` of `event_type` and one delivery per enabled endpoint
    subscribed to it; the event's id, or None (and nothing written) when no endpoint is."""
    assert event_type in EVENT_TYPES, event_type
    hooks = WebhookRepository(session)
    endpoints = hooks.subscribed_endpoints(project_id, event_type)
    if not endpoints:
        return None
    now = utcnow()
    event = hooks.add_event(project_id, event_type, {"id": object_id}, now)
    session.flush()  # the event's row before its deliveries' (their foreign key)
    for endpoint in endpoints:
        hooks.add_delivery(event.id, endpoint.id, now)
    session.flush()
    nudge = session.info.get(_NUDGE)
    if nudge is not None:

        def send() -> None:
            try:
                nudge()
            except Exception:
                logger.warning("could not nudge webhook delivery; a worker polls", exc_info=True)

        after_commit(session, send)
    return event.id
