"""Webhooks end to end: a real worker posts signed events to a local receiver.

The receiver is a plain `http.server` on 127.0.0.1; every body it gets is checked with the
official SDK's `client.webhooks.unwrap`, exactly as a user's receiver would check OpenAI's.
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
from sqlalchemy import update

from app.bootstrap import prepare
from app.config import Settings
from app.main import create_app
from app.orm import WebhookDelivery
from app.orm.base import utcnow
from app.webhooks.outbox import emit
from app.webhooks.repository import WebhookRepository
from tests.conftest import LiveServer, WorkerProcess, make_settings, serve_in_thread
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import create_job, upload, wait_for
from worker.webhooks import backoff


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
    from app.orm import WebhookEndpoint

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
