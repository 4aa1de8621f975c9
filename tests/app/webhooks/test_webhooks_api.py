"""`/v1/webhooks`: endpoints per project, the secret shown once (on create and rotate_secret),
updates and their exact error params, enabling/disabling, the outbox, the log."""

from __future__ import annotations

import base64
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from app.orm import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.orm.base import utcnow
from app.webhooks.events import EVENT_TYPES
from app.webhooks.outbox import emit
from app.webhooks.repository import WebhookRepository
from tests.conftest import LiveServer


@pytest.fixture
def http(server: LiveServer, api_key: str) -> httpx.Client:
    return server.http(api_key)


def create(http: httpx.Client, **body: object) -> dict:
    body.setdefault("url", "https://example.com/hook")
    response = http.post("/v1/webhooks", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_create_shows_the_secret_once(http: httpx.Client) -> None:
    created = create(
        http,
        events=["fine_tuning.job.succeeded", "eval.run.failed"],
        description="ci",
        metadata={"team": "ml"},
    )
    assert created["object"] == "webhook_endpoint"
    assert created["id"].startswith("whep_")
    assert created["url"] == "https://example.com/hook"
    assert created["events"] == ["fine_tuning.job.succeeded", "eval.run.failed"]
    assert created["description"] == "ci"
    assert created["metadata"] == {"team": "ml"}
    assert isinstance(created["created_at"], int)
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32

    fetched = http.get(f"/v1/webhooks/{created['id']}").json()
    assert fetched["secret"] is None
    assert {k: v for k, v in fetched.items() if k != "secret"} == {
        k: v for k, v in created.items() if k != "secret"
    }
    listed = http.get("/v1/webhooks").json()
    assert [row["id"] for row in listed["data"]] == [created["id"]]
    assert listed["data"][0]["secret"] is None


def test_events_omitted_means_all(http: httpx.Client) -> None:
    assert create(http)["events"] == list(EVENT_TYPES)


def test_list_pages(http: httpx.Client) -> None:
    ids = [create(http, url=f"http://127.0.0.1:9/{i}")["id"] for i in range(3)]
    first = http.get("/v1/webhooks", params={"limit": 2, "order": "asc"}).json()
    assert first["object"] == "list"
    assert [row["id"] for row in first["data"]] == ids[:2]
    assert first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (ids[0], ids[1])
    rest = http.get(
        "/v1/webhooks", params={"limit": 2, "order": "asc", "after": first["last_id"]}
    ).json()
    assert [row["id"] for row in rest["data"]] == ids[2:]
    assert rest["has_more"] is False
    newest_first = http.get("/v1/webhooks").json()
    assert [row["id"] for row in newest_first["data"]] == ids[::-1]


def test_delete(http: httpx.Client) -> None:
    created = create(http)
    response = http.delete(f"/v1/webhooks/{created['id']}")
    assert response.json() == {
        "id": created["id"],
        "object": "webhook_endpoint.deleted",
        "deleted": True,
    }
    assert error(http.get(f"/v1/webhooks/{created['id']}"), 404)["param"] == "id"
    assert error(http.delete(f"/v1/webhooks/{created['id']}"), 404)["param"] == "id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://"}, "url"),
        (
            {"url": "https://example.com", "events": ["fine_tuning.job.succeeded", "x.y"]},
            "events[1]",
        ),
        ({"url": "https://example.com", "events": [3]}, "events[0]"),
        ({"url": "https://example.com", "events": []}, "events"),
        ({"url": "https://example.com", "metadata": {"k": 1}}, "metadata.k"),
    ],
)
def test_refusals_name_their_param(http: httpx.Client, body: dict, param: str) -> None:
    failure = error(http.post("/v1/webhooks", json=body))
    assert failure["type"] == "invalid_request_error"
    assert failure["param"] == param


def test_projects_are_isolated(server: LiveServer, http: httpx.Client) -> None:
    created = create(http)
    other = server.http(server.new_key())
    assert error(other.get(f"/v1/webhooks/{created['id']}"), 404)["param"] == "id"
    assert error(other.delete(f"/v1/webhooks/{created['id']}"), 404)["param"] == "id"
    assert error(other.get(f"/v1/webhooks/{created['id']}/deliveries"), 404)["param"] == "id"
    assert other.get("/v1/webhooks").json()["data"] == []
    assert http.get(f"/v1/webhooks/{created['id']}").status_code == 200


def test_deliveries_log(server: LiveServer, http: httpx.Client, api_key: str) -> None:
    """An emitted event gets one pending delivery per subscribed endpoint of its project only."""
    everything = create(http, url="http://127.0.0.1:9/all")
    evals_only = create(http, url="http://127.0.0.1:9/evals", events=["eval.run.failed"])
    elsewhere = server.http(server.new_key())
    foreign = create(elsewhere, url="http://127.0.0.1:9/other")
    project_id = _project_of(server, http)
    with server.app.state.db.session_scope() as session:
        event_id = emit(session, project_id, "fine_tuning.job.succeeded", "ftjob-abc")
    log = http.get(f"/v1/webhooks/{everything['id']}/deliveries").json()
    assert log["object"] == "list"
    [delivery] = log["data"]
    assert delivery["object"] == "webhook_delivery"
    assert delivery["event_id"] == event_id
    assert delivery["event_type"] == "fine_tuning.job.succeeded"
    assert delivery["status"] == "pending"
    assert delivery["attempts"] == 0
    assert delivery["last_status_code"] is None and delivery["last_error"] is None
    assert isinstance(delivery["next_attempt_at"], int)
    assert delivery["delivered_at"] is None
    assert http.get(f"/v1/webhooks/{evals_only['id']}/deliveries").json()["data"] == []
    assert elsewhere.get(f"/v1/webhooks/{foreign['id']}/deliveries").json()["data"] == []
    with server.app.state.db.session_scope() as session:
        event = session.get(WebhookEvent, event_id)
        assert event is not None
        assert (event.type, event.data, event.project_id) == (
            "fine_tuning.job.succeeded",
            {"id": "ftjob-abc"},
            project_id,
        )
    # Deleting the endpoint drops its log.
    http.delete(f"/v1/webhooks/{everything['id']}")
    with server.app.state.db.session_scope() as session:
        left = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)
        ).all()
        assert left == []


def test_deliveries_unknown_cursor(http: httpx.Client) -> None:
    created = create(http)
    response = http.get(f"/v1/webhooks/{created['id']}/deliveries", params={"after": "whdel_x"})
    assert error(response, 404)["param"] == "after"


def _project_of(server: LiveServer, http: httpx.Client) -> str:
    """The caller's project id, read from an endpoint it owns."""
    endpoint_id = http.get("/v1/webhooks").json()["data"][0]["id"]
    with server.app.state.db.session_scope() as session:
        row = session.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        return row.project_id


def test_update_changes_only_the_fields_given(http: httpx.Client) -> None:
    created = create(http, events=["eval.run.failed"], description="ci", metadata={"team": "ml"})
    assert created["enabled"] is True
    path = f"/v1/webhooks/{created['id']}"
    response = http.post(path, json={"url": "http://127.0.0.1:9/new", "enabled": False})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["url"] == "http://127.0.0.1:9/new"
    assert updated["enabled"] is False
    assert updated["secret"] is None
    assert (updated["events"], updated["description"], updated["metadata"]) == (
        ["eval.run.failed"],
        "ci",
        {"team": "ml"},
    )
    updated = http.post(
        path,
        json={
            "events": ["fine_tuning.job.failed", "fine_tuning.job.failed", "eval.run.canceled"],
            "description": None,
            "metadata": {"team": "infra"},
            "enabled": True,
        },
    ).json()
    assert updated["events"] == ["fine_tuning.job.failed", "eval.run.canceled"]
    assert updated["description"] is None and updated["metadata"] == {"team": "infra"}
    assert updated["enabled"] is True
    # events: null subscribes to every type again; metadata: null clears it.
    updated = http.post(path, json={"events": None, "metadata": None}).json()
    assert updated["events"] == list(EVENT_TYPES) and updated["metadata"] is None
    assert http.get(path).json() == updated
    # An empty body changes nothing.
    assert http.post(path, json={}).json() == updated


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": None}, "url"),
        ({"events": ["fine_tuning.job.succeeded", "x.y"]}, "events[1]"),
        ({"events": []}, "events"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"description": "d" * 513}, "description"),
        ({"enabled": None}, "enabled"),
    ],
)
def test_update_refusals_name_their_param(http: httpx.Client, body: dict, param: str) -> None:
    created = create(http, description="keep")
    failure = error(http.post(f"/v1/webhooks/{created['id']}", json=body))
    assert failure["type"] == "invalid_request_error"
    assert failure["param"] == param
    # All or nothing: nothing changed.
    assert http.get(f"/v1/webhooks/{created['id']}").json()["description"] == "keep"


def test_update_and_rotate_an_unknown_endpoint(http: httpx.Client) -> None:
    assert error(http.post("/v1/webhooks/whep_nope", json={"enabled": False}), 404)["param"] == "id"
    assert error(http.post("/v1/webhooks/whep_nope/rotate_secret"), 404)["param"] == "id"


def test_rotate_secret_shows_the_new_secret_once(server: LiveServer, http: httpx.Client) -> None:
    created = create(http)
    response = http.post(f"/v1/webhooks/{created['id']}/rotate_secret")
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["object"] == "webhook_endpoint" and rotated["id"] == created["id"]
    secret = rotated["secret"]
    assert secret.startswith("whsec_") and secret != created["secret"]
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert http.get(f"/v1/webhooks/{created['id']}").json()["secret"] is None
    with server.app.state.db.session_scope() as session:
        row = session.get(WebhookEndpoint, created["id"])
        assert row is not None
        assert row.secret == secret
        # The old secret keeps signing (a second signature) for the grace period.
        assert row.previous_secret == created["secret"]
        assert row.previous_secret_expires_at is not None
        grace = server.settings.webhook_secret_grace_seconds
        left = (row.previous_secret_expires_at - utcnow()).total_seconds()
        assert grace - 60 < left <= grace
    # Rotating again: the secret it replaces is the one kept; the first is gone for good.
    again = http.post(f"/v1/webhooks/{created['id']}/rotate_secret").json()
    with server.app.state.db.session_scope() as session:
        row = session.get(WebhookEndpoint, created["id"])
        assert row is not None
        assert (row.secret, row.previous_secret) == (again["secret"], secret)


def test_emit_writes_nothing_without_a_subscribed_enabled_endpoint(
    server: LiveServer, http: httpx.Client
) -> None:
    evals_only = create(http, url="http://127.0.0.1:9/evals", events=["eval.run.failed"])
    project_id = _project_of(server, http)
    db = server.app.state.db

    def events() -> list[str]:
        with db.session_scope() as session:
            return list(
                session.scalars(
                    select(WebhookEvent.id).where(WebhookEvent.project_id == project_id)
                )
            )

    with db.session_scope() as session:
        assert emit(session, project_id, "fine_tuning.job.succeeded", "ftjob-abc") is None
    assert events() == []
    http.post(f"/v1/webhooks/{evals_only['id']}", json={"enabled": False})
    with db.session_scope() as session:
        assert emit(session, project_id, "eval.run.failed", "evalrun_abc") is None
    assert events() == []
    http.post(f"/v1/webhooks/{evals_only['id']}", json={"enabled": True})
    with db.session_scope() as session:
        event_id = emit(session, project_id, "eval.run.failed", "evalrun_abc")
    assert event_id is not None and events() == [event_id]


def test_a_disabled_endpoint_s_pending_deliveries_wait(
    server: LiveServer, http: httpx.Client
) -> None:
    endpoint = create(http, url="http://127.0.0.1:9/never", events=["eval.run.failed"])
    path = f"/v1/webhooks/{endpoint['id']}"
    db = server.app.state.db
    # Due only in an hour, so that no running worker's poll takes it before this test does.
    later = utcnow() + timedelta(hours=1)
    with db.session_scope() as session:
        event_id = emit(session, _project_of(server, http), "eval.run.failed", "evalrun_x")
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.event_id == event_id)
            .values(next_attempt_at=later)
        )
    [delivery] = http.get(f"{path}/deliveries").json()["data"]
    http.post(path, json={"enabled": False})
    with db.session_scope() as session:
        hooks = WebhookRepository(session)
        assert delivery["id"] not in hooks.due_deliveries(later, 1000)
        assert not hooks.claim(delivery["id"], later, later + timedelta(seconds=30))
    assert http.get(f"{path}/deliveries").json()["data"][0]["status"] == "pending"
    http.post(path, json={"enabled": True})
    with db.session_scope() as session:
        hooks = WebhookRepository(session)
        assert delivery["id"] in hooks.due_deliveries(later, 1000)
        assert hooks.claim(delivery["id"], later, later + timedelta(seconds=30))
