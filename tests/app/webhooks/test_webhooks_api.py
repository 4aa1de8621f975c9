"""`/v1/webhooks`: endpoints per project, the secret shown once, exact error params, the log."""

from __future__ import annotations

import base64

import httpx
import pytest
from sqlalchemy import select

from app.orm import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.webhooks.events import EVENT_TYPES
from app.webhooks.outbox import emit
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
