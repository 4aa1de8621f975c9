"""`/v1/webhooks`: a project's webhook endpoints and their delivery logs (a Tuna extension;
OpenAI configures webhooks in its dashboard, but signs and shapes deliveries the same way)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from app.auth import CurrentProject, SessionDep
from app.webhooks.schemas import (
    CreateWebhookRequest,
    UpdateWebhookRequest,
    WebhookDeliveryList,
    WebhookDeliveryObject,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointObject,
)
from app.webhooks.service import WebhookService, events_of

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

Limit = Annotated[int, Query(ge=1, le=100)]
OrderParam = Literal["asc", "desc"]


def webhook_service(request: Request, session: SessionDep) -> WebhookService:
    settings = request.app.state.settings
    return WebhookService(session, secret_grace_seconds=settings.webhook_secret_grace_seconds)


Webhooks = Annotated[WebhookService, Depends(webhook_service)]


@router.post("", response_model=WebhookEndpointObject)
def create_webhook(
    body: CreateWebhookRequest, project: CurrentProject, hooks: Webhooks
) -> WebhookEndpointObject:
    """The answer carries `secret` (`whsec_...`); no later answer shows it again."""
    row = hooks.create(project, body)
    return WebhookEndpointObject.of(row, events_of(row), with_secret=True)


@router.get("", response_model=WebhookEndpointList)
def list_webhooks(
    project: CurrentProject,
    hooks: Webhooks,
    after: str | None = None,
    limit: Limit = 20,
    order: OrderParam = "desc",
) -> WebhookEndpointList:
    page = hooks.list(project, after=after, limit=limit, order=order)
    data = [WebhookEndpointObject.of(row, events_of(row)) for row in page.items]
    return WebhookEndpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


@router.get("/{webhook_id}", response_model=WebhookEndpointObject)
def retrieve_webhook(
    webhook_id: str, project: CurrentProject, hooks: Webhooks
) -> WebhookEndpointObject:
    row = hooks.get(project, webhook_id)
    return WebhookEndpointObject.of(row, events_of(row))


@router.post("/{webhook_id}", response_model=WebhookEndpointObject)
def update_webhook(
    webhook_id: str, body: UpdateWebhookRequest, project: CurrentProject, hooks: Webhooks
) -> WebhookEndpointObject:
    """Change any of `url`, `events` (null: every type), `description`, `metadata`, `enabled`;
    the fields left out keep their value. A disabled endpoint gets no new deliveries and its
    pending ones wait until it is enabled again."""
    row = hooks.update(project, webhook_id, body)
    return WebhookEndpointObject.of(row, events_of(row))


@router.post("/{webhook_id}/rotate_secret", response_model=WebhookEndpointObject)
def rotate_webhook_secret(
    webhook_id: str, project: CurrentProject, hooks: Webhooks
) -> WebhookEndpointObject:
    """A new `secret` (`whsec_...`), shown only in this answer. Deliveries are signed with it
    and, for `TUNA_WEBHOOK_SECRET_GRACE_SECONDS` (a day), also with the old one."""
    row = hooks.rotate_secret(project, webhook_id)
    return WebhookEndpointObject.of(row, events_of(row), with_secret=True)


@router.delete("/{webhook_id}", response_model=WebhookEndpointDeleted)
def delete_webhook(
    webhook_id: str, project: CurrentProject, hooks: Webhooks
) -> WebhookEndpointDeleted:
    """Deleting an endpoint drops its pending deliveries too."""
    return WebhookEndpointDeleted(id=hooks.delete(project, webhook_id))


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryList)
def list_deliveries(
    webhook_id: str,
    project: CurrentProject,
    hooks: Webhooks,
    after: str | None = None,
    limit: Limit = 20,
    order: OrderParam = "desc",
) -> WebhookDeliveryList:
    page = hooks.deliveries(project, webhook_id, after=after, limit=limit, order=order)
    data = [WebhookDeliveryObject.of(row, event) for row, event in page.items]
    return WebhookDeliveryList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )
