"""The dashboard's Webhooks page: the form adds an endpoint and shows its secret once, the list,
an endpoint's deliveries, and deleting it (after a confirm)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from app.orm import WebhookEndpoint
from app.webhooks.events import EVENT_TYPES
from app.webhooks.outbox import emit
from tests.conftest import LiveServer


def _sign_in(page: Any, api_key: str) -> None:
    page.add_init_script(f"localStorage.setItem('tuna.apiKey', {json.dumps(api_key)})")


def _api(server: LiveServer, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"})


def test_the_event_checkboxes_are_the_server_types(
    server: LiveServer, api_key: str, page: Any
) -> None:
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/webhooks")
    page.wait_for_selector("#webhooks-table td.empty")
    shown = page.eval_on_selector_all("#webhook-events input", "els => els.map(e => e.value)")
    assert shown == list(EVENT_TYPES)  # the JS copy of app/webhooks/events.py is in step
    assert page.locator(".nav a[data-nav=webhooks].active").count() == 1


def test_the_form_adds_an_endpoint_shows_the_secret_once_and_deletes_it(
    server: LiveServer, api_key: str, page: Any
) -> None:
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/webhooks")
    page.wait_for_selector("#webhooks-table td.empty")
    page.fill("#webhook-url", "http://127.0.0.1:9/hook")
    page.fill("#webhook-description", "ci alerts")
    page.check("#webhook-events input[value='fine_tuning.job.succeeded']")
    page.check("#webhook-events input[value='eval.run.failed']")
    page.click("#create-webhook")

    secret = page.wait_for_selector("#webhook-secret-value").inner_text()
    assert secret.startswith("whsec_")
    assert "shown only once" in page.inner_text("#webhook-secret")
    assert page.locator("#webhook-secret button.copy").get_attribute("data-copy") == secret
    with _api(server, api_key) as http:
        [endpoint] = http.get("/v1/webhooks").json()["data"]
    assert endpoint["url"] == "http://127.0.0.1:9/hook"
    assert endpoint["events"] == ["fine_tuning.job.succeeded", "eval.run.failed"]
    assert endpoint["description"] == "ci alerts" and endpoint["secret"] is None
    row = page.wait_for_selector(f"#webhooks-table tr[data-webhook-id='{endpoint['id']}']")
    assert "fine_tuning.job.succeeded, eval.run.failed" in row.inner_text()
    assert page.input_value("#webhook-url") == ""  # the form is reset

    page.reload()  # the secret is never shown again
    page.wait_for_selector(f"#webhooks-table tr[data-webhook-id='{endpoint['id']}']")
    assert page.locator("#webhook-secret").count() == 0
    assert secret not in page.content()

    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.click(f"#webhooks-table tr[data-webhook-id='{endpoint['id']}'] .delete-webhook")
    page.wait_for_selector("#webhooks-table td.empty")
    assert endpoint["id"] in dialogs[0]
    with _api(server, api_key) as http:
        assert http.get("/v1/webhooks").json()["data"] == []


def test_the_form_shows_the_api_error(server: LiveServer, api_key: str, page: Any) -> None:
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/webhooks")
    page.wait_for_selector("#webhooks-table td.empty")
    page.fill("#webhook-url", "ftp://example.com/hook")  # a URL, but not http(s)
    page.click("#create-webhook")
    error = page.wait_for_selector("#new-webhook-form .alert.error").inner_text()
    assert "Invalid 'url'" in error
    assert page.locator("#webhook-secret").count() == 0


def test_an_endpoint_page_shows_its_deliveries(server: LiveServer, api_key: str, page: Any) -> None:
    with _api(server, api_key) as http:
        endpoint = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/all"}).json()
    with server.app.state.db.session_scope() as session:
        row = session.get(WebhookEndpoint, endpoint["id"])
        assert row is not None
        emit(session, row.project_id, "fine_tuning.job.succeeded", "ftjob-abc")
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/webhooks")
    page.click(f"#webhooks-table tr[data-webhook-id='{endpoint['id']}'] a:text('Deliveries')")
    page.wait_for_url(f"**/#/webhooks/{endpoint['id']}")
    delivery = page.wait_for_selector("#deliveries-table tr[data-delivery-id]")
    text = delivery.inner_text()
    assert "fine_tuning.job.succeeded" in text
    assert delivery.query_selector(".badge[data-status=pending]") is not None

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#delete-webhook")
    page.wait_for_url("**/#/webhooks")
    page.wait_for_selector("#webhooks-table td.empty")
