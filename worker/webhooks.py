"""Post due webhook deliveries, signed the way OpenAI signs its webhooks (Standard Webhooks).

Each delivery is claimed first (`WebhookRepository.claim`: a conditional UPDATE of its lease),
so two workers never post it at the same time; the outcome is written only while the lease is
still held. A 2xx marks it delivered; anything else, or no answer, counts an attempt and sets
the next one after an exponential backoff, until `webhook_max_attempts` marks it failed. The
receiver may see an event more than once (a worker dying between its POST and the write):
`webhook-id` is the event's id, stable across attempts, for it to deduplicate on.

Called from the `tuna.deliver_webhooks` task (sent after each event commits) and from a thread
in every worker that polls for due deliveries, so a lost message or a restart loses nothing.
Those passes also prune, at most once an hour per process (`WebhookDeliverer.prune`):
delivered and failed deliveries older than `webhook_retention_days` go, and so do the events
left without a delivery.

After a secret rotation, the `webhook-signature` header carries two signatures (`v1,<new>
v1,<old>`, Standard Webhooks' space-separated list) until the old secret's grace period ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timedelta

import httpx

from app.config import Settings
from app.db import Database
from app.orm import WebhookEndpoint, WebhookEvent
from app.orm.base import unix, utcnow
from app.webhooks.repository import DELIVERED, FAILED, WebhookRepository

logger = logging.getLogger("tuna.webhooks")

USER_AGENT = "Tuna"
BATCH = 50
PRUNE_EVERY_SECONDS = 3600.0


def event_body(event: WebhookEvent) -> str:
    """OpenAI's event payload, as compact JSON: exactly the bytes that are signed and sent."""
    payload = {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created_at": unix(event.created_at),
        "data": event.data,
    }
    return json.dumps(payload, separators=(",", ":"))


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}`, keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signatures(endpoint: WebhookEndpoint, webhook_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header: the current secret's signature, then the previous
    secret's while its grace period after a rotation lasts."""
    header = sign(endpoint.secret, webhook_id, timestamp, body)
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > utcnow():
        header += " " + sign(endpoint.previous_secret, webhook_id, timestamp, body)
    return header


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: base * 2^(attempts-1), capped."""
    seconds = settings.webhook_retry_base_seconds * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, settings.webhook_retry_max_seconds))


class WebhookDeliverer:
    def __init__(
        self, settings: Settings, database: Database, client: httpx.Client | None = None
    ) -> None:
        self.settings = settings
        self.db = database
        self.client = client or httpx.Client(
            timeout=settings.webhook_timeout_seconds, follow_redirects=False
        )
        # A claim outlives the POST's timeout, so a slow receiver is never posted twice at once.
        self.lease = timedelta(seconds=settings.webhook_timeout_seconds * 3 + 5)
        self._pruned_at: float | None = None

    def prune(self, now: datetime | None = None) -> tuple[int, int]:
        """Delete finished deliveries past the retention and the events left without one;
        (deliveries, events) deleted."""
        cutoff = (now or utcnow()) - timedelta(days=self.settings.webhook_retention_days)
        with self.db.session_scope() as session:
            counts = WebhookRepository(session).prune(cutoff)
        if any(counts):
            logger.info("pruned %d webhook deliveries and %d events", *counts)
        return counts

    def deliver_due(self) -> int:
        """Post every delivery that is due now (pruning first, if an hour has passed since this
        process last did); how many were attempted."""
        clock = time.monotonic()
        if self._pruned_at is None or clock - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = clock
            try:
                self.prune()
            except Exception:
                logger.warning(
                    "pruning webhook deliveries failed; retried in an hour", exc_info=True
                )
        attempted = 0
        while True:
            now = utcnow()
            with self.db.session_scope() as session:
                due = WebhookRepository(session).due_deliveries(now, BATCH)
            if not due:
                return attempted
            for delivery_id in due:
                if self.deliver(delivery_id):
                    attempted += 1
            if len(due) < BATCH:
                return attempted

    def deliver(self, delivery_id: str) -> bool:
        """One attempt of one delivery, if this worker gets its lease; True if attempted."""
        now = utcnow()
        lease_until = now + self.lease
        with self.db.session_scope() as session:
            hooks = WebhookRepository(session)
            if not hooks.claim(delivery_id, now, lease_until):
                return False
            target = hooks.target(delivery_id)
            delivery = hooks.get_delivery(delivery_id)
            attempts = (delivery.attempts if delivery is not None else 0) + 1
        if target is None:
            return False
        event, endpoint = target
        status_code, error = self._post(event, endpoint)
        done = utcnow()
        values: dict[str, object] = {
            "attempts": attempts,
            "last_status_code": status_code,
            "last_error": error,
        }
        if error is None:
            values.update(status=DELIVERED, delivered_at=done, next_attempt_at=None)
        elif attempts >= self.settings.webhook_max_attempts:
            values.update(status=FAILED, next_attempt_at=None)
        else:
            values.update(next_attempt_at=done + backoff(self.settings, attempts))
        with self.db.session_scope() as session:
            if not WebhookRepository(session).record(delivery_id, lease_until, **values):
                logger.warning("lost the lease of webhook delivery %s", delivery_id)
        if error is not None:
            logger.info(
                "webhook %s to %s: attempt %d failed: %s", event.id, endpoint.url, attempts, error
            )
        return True

    def _post(
        self, event: WebhookEvent, endpoint: WebhookEndpoint
    ) -> tuple[int | None, str | None]:
        """(status code, error): error None on a 2xx."""
        body = event_body(event)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures(endpoint, event.id, timestamp, body),
        }
        try:
            response = self.client.post(endpoint.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:1000] or type(exc).__name__
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}: {response.text[:500]}"
