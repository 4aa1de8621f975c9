"""Webhooks end to end: a real worker posts signed events to a local receiver.

The receiver is a plain `http.server` on 127.0.0.1; every body it gets is checked with the
official SDK's `client.webhooks.unwrap`, exactly as a user's receiver would check OpenAI's:
a job's events, an eval run's (completed, and canceled through the API), retries, a rotated
secret (both secrets sign during the grace period), a disabled endpoint, pruning.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select, update

from app.bootstrap import prepare
from app.config import Settings
from app.main import create_app
from app.orm import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.orm.base import utcnow
from app.webhooks.outbox import emit
from app.webhooks.repository import WebhookRepository
from tests.conftest import LiveServer, WorkerProcess, make_settings, serve_in_thread
from tests.datasets import chat_jsonl
from tests.worker.test_eval_runs import ROWS, create_eval, data_source, wait_for_run
from tests.worker.test_eval_runs import upload as upload_items
from tests.worker.test_job_flow import create_job, upload, wait_for
from worker.webhooks import PRUNE_EVERY_SECONDS, WebhookDeliverer, backoff


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    # Status codes to answer, in order; 200 once they are used up.
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When set: the first request waits for it before answering.
    hold_first: threading.Event | None = None

    def wait(self, count: int, timeout: float = 120) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(self.received)} of {count} webhooks")
            time.sleep(0.2)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            target = state["receiver"]
            with target.lock:
                target.received.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = target.answers.pop(0) if target.answers else 200
                hold = target.hold_first if len(target.received) == 1 else None
            if hold is not None:
                hold.wait(60)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def handle_one_request(self) -> None:
            with contextlib.suppress(OSError):  # the sender died mid-request
                super().handle_one_request()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = Receiver(url=f"http://127.0.0.1:{httpd.server_address[1]}/hook")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state["receiver"]
    httpd.shutdown()
    httpd.server_close()


def register(server: LiveServer, api_key: str, url: str, **body: Any) -> dict[str, Any]:
    response = server.http(api_key).post("/v1/webhooks", json={"url": url, **body})
    assert response.status_code == 200, response.text
    return response.json()


def unwrap(client: openai.OpenAI, secret: str, got: Received) -> Any:
    return client.webhooks.unwrap(got.body, got.headers, secret=secret)


def deliveries(server: LiveServer, api_key: str, endpoint_id: str) -> list[dict[str, Any]]:
    response = server.http(api_key).get(f"/v1/webhooks/{endpoint_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_a_job_sends_signed_webhooks(
    server: LiveServer,
    api_key: str,
    client: openai.OpenAI,
    worker: WorkerProcess,
    receiver: Receiver,
) -> None:
    endpoint = register(server, api_key, receiver.url)
    job = create_job(client, upload(client, chat_jsonl(20)), n_epochs=1)
    assert wait_for(client, job.id, {"succeeded", "failed", "cancelled"}).status == "succeeded"
    got = receiver.wait(3)
    time.sleep(2)  # nothing more arrives
    assert len(receiver.received) == 3
    events = [unwrap(client, endpoint["secret"], one) for one in got]
    assert sorted(event.type for event in events) == sorted(
        [
            "fine_tuning.job.running",
            "fine_tuning.job.checkpoint.created",
            "fine_tuning.job.succeeded",
        ]
    )
    for event, one in zip(events, got, strict=True):
        assert event.object == "event"
        assert event.data.id == job.id
        assert one.headers["webhook-id"] == event.id
        assert event.id.startswith("evt_")
        assert one.headers["content-type"] == "application/json"
        assert one.headers["user-agent"] == "Tuna"
        assert json.loads(one.body) == {
            "id": event.id,
            "object": "event",
            "type": event.type,
            "created_at": event.created_at,
            "data": {"id": job.id},
        }
    # A wrong secret fails verification.
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(client, "whsec_" + "A" * 43 + "=", got[0])
    log = deliveries(server, api_key, endpoint["id"])
    assert {(d["status"], d["attempts"], d["last_status_code"]) for d in log} == {
        ("delivered", 1, 200)
    }


def test_a_failed_delivery_is_retried(
    server: LiveServer,
    api_key: str,
    client: openai.OpenAI,
    worker: WorkerProcess,
    receiver: Receiver,
) -> None:
    """500, 500, then 200: the same event (same webhook-id) three times; delivered at attempt 3."""
    receiver.answers = [500, 500]
    endpoint = register(server, api_key, receiver.url, events=["eval.run.failed"])
    with server.app.state.db.session_scope() as session:
        project_id = _project_of(session, endpoint["id"])
        event_id = emit(session, project_id, "eval.run.failed", "evalrun_x")
    got = receiver.wait(3, timeout=90)
    assert [one.headers["webhook-id"] for one in got] == [event_id] * 3
    for one in got:
        assert unwrap(client, endpoint["secret"], one).type == "eval.run.failed"
    deadline = time.monotonic() + 30
    while True:
        [delivery] = deliveries(server, api_key, endpoint["id"])
        if delivery["status"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 3
    assert delivery["last_status_code"] == 200
    assert delivery["last_error"] is None
    assert delivery["event_id"] == event_id


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[LiveServer]:
    """An API on a database and broker of its own: no session worker ever posts its webhooks."""
    settings = make_settings(
        tmp_path / "data", None, training_queue=f"webhooks-test-{uuid.uuid4().hex[:8]}"
    )
    prepare(settings)
    app = create_app(settings)
    url, stop = serve_in_thread(app)
    yield LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    stop()


def test_a_worker_killed_mid_delivery_loses_nothing(
    private_server: LiveServer,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker dies while its POST is in flight: once its lease runs out a restarted worker
    posts the same event again (at least once; the receiver deduplicates on webhook-id)."""
    server = private_server
    api_key = server.new_key()
    client = server.client(api_key)
    monkeypatch.setenv("TUNA_WEBHOOK_TIMEOUT_SECONDS", "3")  # a claim's lease: 3 * 3 + 5 s
    receiver.hold_first = threading.Event()
    first = WorkerProcess(server.settings, tmp_path / "first.log")
    first.start()
    try:
        endpoint = register(server, api_key, receiver.url, events=["fine_tuning.job.failed"])
        with server.app.state.db.session_scope() as session:
            project_id = _project_of(session, endpoint["id"])
            event_id = emit(session, project_id, "fine_tuning.job.failed", "ftjob-x")
        receiver.wait(1, timeout=60)
        first.kill()
    finally:
        first.stop()
        receiver.hold_first.set()
    second = WorkerProcess(server.settings, tmp_path / "second.log")
    second.start()
    try:
        got = receiver.wait(2, timeout=90)
        assert {one.headers["webhook-id"] for one in got} == {event_id}
        unwrap(client, endpoint["secret"], got[-1])
        deadline = time.monotonic() + 30
        while True:
            [delivery] = deliveries(server, api_key, endpoint["id"])
            if delivery["status"] != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert delivery["status"] == "delivered"
        assert delivery["attempts"] == 1  # the killed attempt never recorded an answer
    finally:
        second.stop()


def _project_of(session: Any, endpoint_id: str) -> str:
    row = session.get(WebhookEndpoint, endpoint_id)
    assert row is not None
    return str(row.project_id)


def test_backoff_doubles_up_to_the_cap() -> None:
    settings = Settings(webhook_retry_base_seconds=5, webhook_retry_max_seconds=3600)
    waits = [backoff(settings, n).total_seconds() for n in (1, 2, 3, 4, 10, 20)]
    assert waits == [5, 10, 20, 40, 2560, 3600]


def test_a_delivery_is_claimed_by_one_worker_at_a_time(server: LiveServer, api_key: str) -> None:
    endpoint = register(server, api_key, "http://127.0.0.1:9/never", events=["eval.run.failed"])
    db = server.app.state.db
    # Due only in an hour, so that no running worker's poll takes it before this test does.
    now = utcnow() + timedelta(hours=1)
    with db.session_scope() as session:
        event_id = emit(session, _project_of(session, endpoint["id"]), "eval.run.failed", "y")
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.event_id == event_id)
            .values(next_attempt_at=now)
        )
    [delivery] = deliveries(server, api_key, endpoint["id"])
    with db.session_scope() as session:
        assert WebhookRepository(session).claim(delivery["id"], now, now + timedelta(seconds=30))
    with db.session_scope() as session:
        hooks = WebhookRepository(session)
        assert not hooks.claim(delivery["id"], now, now + timedelta(seconds=30))
        assert delivery["id"] not in hooks.due_deliveries(now, 100)
        # Once the lease has run out, the next claim wins.
        later = now + timedelta(seconds=31)
        assert hooks.claim(delivery["id"], later, later + timedelta(seconds=30))
        # The loser of the lease cannot record an outcome.
        assert not hooks.record(delivery["id"], now + timedelta(seconds=30), status="delivered")


def test_a_rotated_secret_signs_with_both_secrets_during_the_grace_period(
    server: LiveServer,
    api_key: str,
    client: openai.OpenAI,
    worker: WorkerProcess,
    receiver: Receiver,
) -> None:
    """After rotate_secret a delivery carries `v1,<new> v1,<old>`: the SDK verifies it with
    either secret. Once the grace period is over only the new secret signs."""
    endpoint = register(server, api_key, receiver.url, events=["eval.run.failed"])
    http = server.http(api_key)
    rotated = http.post(f"/v1/webhooks/{endpoint['id']}/rotate_secret").json()
    old, new = endpoint["secret"], rotated["secret"]
    assert new != old
    with server.app.state.db.session_scope() as session:
        project_id = _project_of(session, endpoint["id"])
        first = emit(session, project_id, "eval.run.failed", "evalrun_rot1")
    [got] = receiver.wait(1)
    assert got.headers["webhook-id"] == first
    assert len(got.headers["webhook-signature"].split()) == 2
    assert unwrap(client, new, got).data.id == "evalrun_rot1"
    assert unwrap(client, old, got).data.id == "evalrun_rot1"
    # The grace period ends: the old secret no longer verifies, the new one does.
    with server.app.state.db.session_scope() as session:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint["id"])
            .values(previous_secret_expires_at=utcnow() - timedelta(seconds=1))
        )
        second = emit(session, project_id, "eval.run.failed", "evalrun_rot2")
    got = receiver.wait(2)[1]
    assert got.headers["webhook-id"] == second
    assert len(got.headers["webhook-signature"].split()) == 1
    assert unwrap(client, new, got).data.id == "evalrun_rot2"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(client, old, got)


def test_a_disabled_endpoint_is_posted_to_again_once_enabled(
    server: LiveServer,
    api_key: str,
    client: openai.OpenAI,
    worker: WorkerProcess,
    receiver: Receiver,
) -> None:
    """The first attempt fails; the endpoint is disabled before the retry is due: nothing is
    posted while it is disabled, and the pending delivery goes out once it is enabled."""
    receiver.answers = [500]
    endpoint = register(server, api_key, receiver.url, events=["eval.run.failed"])
    path = f"/v1/webhooks/{endpoint['id']}"
    http = server.http(api_key)
    with server.app.state.db.session_scope() as session:
        event_id = emit(session, _project_of(session, endpoint["id"]), "eval.run.failed", "r")
    receiver.wait(1)
    assert http.post(path, json={"enabled": False}).json()["enabled"] is False
    # The retry was due 5 s after the failure (TUNA_WEBHOOK_RETRY_BASE_SECONDS).
    time.sleep(settings_retry_base(server) + 3)
    assert len(receiver.received) == 1
    [delivery] = deliveries(server, api_key, endpoint["id"])
    assert (delivery["status"], delivery["attempts"]) == ("pending", 1)
    http.post(path, json={"enabled": True})
    got = receiver.wait(2, timeout=30)
    assert [one.headers["webhook-id"] for one in got] == [event_id] * 2
    unwrap(client, endpoint["secret"], got[1])


def settings_retry_base(server: LiveServer) -> float:
    return server.settings.webhook_retry_base_seconds


def test_old_finished_deliveries_and_their_events_are_pruned(
    server: LiveServer, api_key: str
) -> None:
    """Back-dated rows: delivered and failed deliveries past the retention go, with the events
    left without a delivery; pending and recent ones stay; an event whose endpoint was
    deleted goes too."""
    keep = register(server, api_key, "http://127.0.0.1:9/keep", events=["eval.run.failed"])
    gone = register(server, api_key, "http://127.0.0.1:9/gone", events=["eval.run.canceled"])
    db = server.app.state.db
    now = utcnow()
    old = now - timedelta(days=server.settings.webhook_retention_days, hours=1)
    recent = now - timedelta(days=server.settings.webhook_retention_days - 1)
    # (status, created_at) of each event's one delivery; never due, so no worker posts it.
    rows = {
        "old_delivered": ("delivered", old),
        "old_failed": ("failed", old),
        "old_pending": ("pending", old),
        "recent_delivered": ("delivered", recent),
    }
    ids: dict[str, str] = {}
    with db.session_scope() as session:
        project_id = _project_of(session, keep["id"])
        for name, (status, created_at) in rows.items():
            event_id = emit(session, project_id, "eval.run.failed", name)
            assert event_id is not None
            ids[name] = event_id
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.event_id == event_id)
                .values(
                    status=status,
                    created_at=created_at,
                    next_attempt_at=now + timedelta(days=1) if status == "pending" else None,
                )
            )
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event_id)
                .values(created_at=created_at)
            )
        orphan = emit(session, project_id, "eval.run.canceled", "orphan")
        assert orphan is not None
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.event_id == orphan)
            .values(next_attempt_at=now + timedelta(days=1))
        )
    server.http(api_key).delete(f"/v1/webhooks/{gone['id']}")

    # (A worker of the suite may prune some of them first: the outcome is the same.)
    WebhookDeliverer(server.settings, db).prune()
    with db.session_scope() as session:
        left = set(
            session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.id.in_([*ids.values(), orphan]))
            )
        )
        statuses = set(
            session.scalars(
                select(WebhookDelivery.status).where(
                    WebhookDelivery.event_id.in_(list(ids.values()))
                )
            )
        )
    assert left == {ids["old_pending"], ids["recent_delivered"]}
    assert statuses == {"pending", "delivered"}
    assert [d["event_id"] for d in deliveries(server, api_key, keep["id"])] == [
        ids["recent_delivered"],
        ids["old_pending"],
    ]


def test_deliver_due_prunes_at_most_hourly(server: LiveServer) -> None:
    deliverer = WebhookDeliverer(server.settings, server.app.state.db)
    calls: list[object] = []
    deliverer.prune = lambda now=None: calls.append(now) or (0, 0)  # type: ignore[method-assign]
    deliverer.deliver_due()
    deliverer.deliver_due()
    assert len(calls) == 1
    assert deliverer._pruned_at is not None
    deliverer._pruned_at -= PRUNE_EVERY_SECONDS
    deliverer.deliver_due()
    assert len(calls) == 2


@pytest.mark.slow
def test_a_completed_eval_run_posts_eval_run_succeeded(
    server: LiveServer,
    api_key: str,
    client: openai.OpenAI,
    worker: WorkerProcess,
    receiver: Receiver,
) -> None:
    endpoint = register(
        server, api_key, receiver.url, events=["eval.run.succeeded", "eval.run.canceled"]
    )
    evaluation = create_eval(client)
    run = client.evals.runs.create(
        evaluation.id,
        name="hooked",
        data_source=data_source({"type": "file_id", "id": upload_items(client, ROWS)}),  # type: ignore[arg-type]
    )
    assert wait_for_run(client, evaluation.id, run.id).status == "completed"
    [got] = receiver.wait(1)
    time.sleep(2)  # nothing more arrives
    assert len(receiver.received) == 1
    event = unwrap(client, endpoint["secret"], got)
    assert (event.type, event.data.id, event.object) == ("eval.run.succeeded", run.id, "event")
    assert got.headers["webhook-id"] == event.id
    [delivery] = deliveries(server, api_key, endpoint["id"])
    assert (delivery["status"], delivery["event_type"]) == ("delivered", "eval.run.succeeded")


@pytest.mark.slow
def test_an_eval_run_canceled_through_the_api_posts_eval_run_canceled(
    server: LiveServer,
    api_key: str,
    client: openai.OpenAI,
    worker: WorkerProcess,
    receiver: Receiver,
) -> None:
    endpoint = register(
        server, api_key, receiver.url, events=["eval.run.succeeded", "eval.run.canceled"]
    )
    evaluation = create_eval(client)
    content = [{"item": {"question": f"Q {n}?", "answer": "x", "hint": "y"}} for n in range(48)]
    run = client.evals.runs.create(
        evaluation.id,
        data_source=data_source({"type": "file_content", "content": content}, tokens=64),  # type: ignore[arg-type]
    )
    assert client.evals.runs.cancel(run.id, eval_id=evaluation.id).status == "canceled"
    [got] = receiver.wait(1)
    time.sleep(3)  # a worker that had started stops at its next batch: nothing more is sent
    assert len(receiver.received) == 1
    event = unwrap(client, endpoint["secret"], got)
    assert (event.type, event.data.id) == ("eval.run.canceled", run.id)
    assert client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "canceled"
