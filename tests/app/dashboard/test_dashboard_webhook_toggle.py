"""The dashboard's Webhooks page: an endpoint's Disable/Enable button flips `enabled`."""

from __future__ import annotations

from typing import Any

from tests.app.dashboard.test_dashboard_webhooks import _api, _sign_in
from tests.conftest import LiveServer


def test_the_toggle_disables_and_enables_an_endpoint(
    server: LiveServer, api_key: str, page: Any
) -> None:
    with _api(server, api_key) as http:
        endpoint = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/t"}).json()
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/webhooks")
    row = f"#webhooks-table tr[data-webhook-id='{endpoint['id']}']"
    page.wait_for_selector(f"{row} .toggle-webhook:text('Disable')")
    page.click(f"{row} .toggle-webhook")
    page.wait_for_selector(f"{row} .toggle-webhook:text('Enable')")
    assert "(disabled)" in page.inner_text(row)
    with _api(server, api_key) as http:
        assert http.get(f"/v1/webhooks/{endpoint['id']}").json()["enabled"] is False
    page.click(f"{row} .toggle-webhook")
    page.wait_for_selector(f"{row} .toggle-webhook:text('Disable')")
    assert "(disabled)" not in page.inner_text(row)
    with _api(server, api_key) as http:
        assert http.get(f"/v1/webhooks/{endpoint['id']}").json()["enabled"] is True
