"""Wire shapes of webhook endpoints and their deliveries (a Tuna extension of the API).

Requests are parsed loosely (`url` a string, `events` a list of anything) and checked in the
service, so every refusal names its exact parameter (`events[1]`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.orm import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.orm.base import unix


class CreateWebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    events: list[Any] | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class UpdateWebhookRequest(BaseModel):
    """Only the fields given change. `events: null` subscribes to every type (later ones too);
    `description: null` and `metadata: null` clear them; `url` and `enabled` cannot be null."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    events: list[Any] | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    enabled: bool | None = None


class WebhookEndpointObject(BaseModel):
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: str
    url: str
    events: list[str]
    description: str | None
    metadata: dict[str, str] | None
    # A disabled endpoint gets no new deliveries; its pending ones wait until it is enabled.
    enabled: bool
    created_at: int
    # Only the answers to the create and to rotate_secret carry the signing secret.
    secret: str | None = None

    @classmethod
    def of(
        cls, row: WebhookEndpoint, events: list[str], *, with_secret: bool = False
    ) -> WebhookEndpointObject:
        return cls(
            id=row.id,
            url=row.url,
            events=events,
            description=row.description,
            metadata=row.metadata_,
            enabled=row.enabled,
            created_at=unix(row.created_at) or 0,
            secret=row.secret if with_secret else None,
        )


class WebhookEndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookDeliveryObject(BaseModel):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: int | None
    delivered_at: int | None
    created_at: int

    @classmethod
    def of(cls, row: WebhookDelivery, event: WebhookEvent) -> WebhookDeliveryObject:
        return cls(
            id=row.id,
            event_id=event.id,
            event_type=event.type,
            status=row.status,  # type: ignore[arg-type]
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            next_attempt_at=unix(row.next_attempt_at) if row.status == "pending" else None,
            delivered_at=unix(row.delivered_at),
            created_at=unix(row.created_at) or 0,
        )


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
