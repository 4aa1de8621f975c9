"""Webhook endpoints of a project: checks, creation with a fresh secret, the delivery log."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from app.errors import InvalidRequest, NotFound
from app.metadata import check_metadata
from app.orm import Project, WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.orm.base import utcnow
from app.pagination import Order, Page
from app.webhooks.events import EVENT_TYPES
from app.webhooks.repository import WebhookRepository
from app.webhooks.schemas import CreateWebhookRequest, UpdateWebhookRequest

MAX_URL = 2048
MAX_DESCRIPTION = 512


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: the Standard Webhooks key format the SDK decodes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def events_of(row: WebhookEndpoint) -> list[str]:
    return list(EVENT_TYPES) if row.events is None else list(row.events)


class WebhookService:
    def __init__(self, session: Session, *, secret_grace_seconds: float = 0.0) -> None:
        self.session = session
        self.hooks = WebhookRepository(session)
        self.secret_grace = timedelta(seconds=secret_grace_seconds)

    def create(self, project: Project, body: CreateWebhookRequest) -> WebhookEndpoint:
        url = _check_url(body.url)
        events = _check_events(body.events)
        return self.hooks.add_endpoint(
            project.id,
            url=url,
            events=events,
            description=_check_description(body.description),
            metadata_=check_metadata(body.metadata),
            secret=new_secret(),
            enabled=True,
        )

    def get(self, project: Project, endpoint_id: str, *, param: str = "id") -> WebhookEndpoint:
        row = self.hooks.get_endpoint(project.id, endpoint_id)
        if row is None:
            raise NotFound(f"No such webhook endpoint: {endpoint_id}", param=param)
        return row

    def list(
        self, project: Project, *, after: str | None, limit: int, order: Order
    ) -> Page[WebhookEndpoint]:
        cursor = self.get(project, after, param="after") if after is not None else None
        return self.hooks.list_endpoints(project.id, after=cursor, limit=limit, order=order)

    def update(
        self, project: Project, endpoint_id: str, body: UpdateWebhookRequest
    ) -> WebhookEndpoint:
        """Change only the fields given, each checked as on create, all or nothing."""
        row = self.get(project, endpoint_id)
        given = body.model_fields_set
        values: dict[str, Any] = {}
        if "url" in given:
            if body.url is None:
                raise InvalidRequest("Invalid 'url': cannot be null.", param="url")
            values["url"] = _check_url(body.url)
        if "events" in given:
            values["events"] = _check_events(body.events)
        if "description" in given:
            values["description"] = _check_description(body.description)
        if "metadata" in given:
            values["metadata_"] = check_metadata(body.metadata)
        if "enabled" in given:
            if body.enabled is None:
                raise InvalidRequest("Invalid 'enabled': expected true or false.", param="enabled")
            values["enabled"] = body.enabled
        for name, value in values.items():
            setattr(row, name, value)
        self.session.flush()
        return row

    def rotate_secret(self, project: Project, endpoint_id: str) -> WebhookEndpoint:
        """A fresh secret signs from now on; the one it replaces signs too (a second signature)
        for the grace period, so receivers can switch over. Rotating again within it drops the
        older one: at most two secrets sign."""
        row = self.get(project, endpoint_id)
        if self.secret_grace.total_seconds() > 0:
            row.previous_secret = row.secret
            row.previous_secret_expires_at = utcnow() + self.secret_grace
        else:
            row.previous_secret = None
            row.previous_secret_expires_at = None
        row.secret = new_secret()
        self.session.flush()
        return row

    def delete(self, project: Project, endpoint_id: str) -> str:
        self.hooks.delete_endpoint(self.get(project, endpoint_id))
        return endpoint_id

    def deliveries(
        self, project: Project, endpoint_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page[tuple[WebhookDelivery, WebhookEvent]]:
        endpoint = self.get(project, endpoint_id)
        cursor = None
        if after is not None:
            cursor = self.hooks.get_delivery(after)
            if cursor is None or cursor.endpoint_id != endpoint.id:
                raise NotFound(f"No such webhook delivery: {after}", param="after")
        return self.hooks.list_deliveries(endpoint.id, after=cursor, limit=limit, order=order)


def _check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL:
        raise InvalidRequest(
            "Invalid 'url': expected an http or https URL with a host.", param="url"
        )
    return url.strip()


def _check_description(description: str | None) -> str | None:
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"Invalid 'description': at most {MAX_DESCRIPTION} characters.", param="description"
        )
    return description


def _check_events(events: list[object] | None) -> list[str] | None:
    """None (every type, later ones included) or the distinct types asked for, in order."""
    if events is None:
        return None
    if not events:
        raise InvalidRequest("Invalid 'events': give at least one event type.", param="events")
    for index, value in enumerate(events):
        if not isinstance(value, str) or value not in EVENT_TYPES:
            raise InvalidRequest(
                f"Invalid 'events[{index}]': {value!r} is not an event type; expected one of "
                + ", ".join(EVENT_TYPES)
                + ".",
                param=f"events[{index}]",
            )
    return list(dict.fromkeys(str(e) for e in events))
