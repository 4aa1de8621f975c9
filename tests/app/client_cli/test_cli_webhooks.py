"""`tuna webhooks`: create and rotate-secret print the secret once, ls/show read endpoints and
deliveries, update changes only the options given, rm."""

from __future__ import annotations

from app.orm import WebhookEndpoint
from app.webhooks.outbox import emit
from tests.app.client_cli.conftest import Tuna
from tests.conftest import LiveServer


def test_create_ls_show_rm(tuna: Tuna, server: LiveServer) -> None:
    created = tuna(
        "webhooks",
        "create",
        "http://127.0.0.1:9/hook",
        "--event",
        "fine_tuning.job.succeeded",
        "--event",
        "eval.run.failed",
        "--description",
        "ci alerts",
    )
    assert created.exit_code == 0, created.stderr
    webhook_id, secret_line = created.stdout.splitlines()[:2]
    assert webhook_id.startswith("whep_")
    assert secret_line.startswith("secret: whsec_")
    assert "shown only once" in created.stderr
    assert "fine_tuning.job.succeeded, eval.run.failed" in created.stderr

    listed = tuna("webhooks", "ls")
    assert listed.exit_code == 0, listed.stderr
    assert webhook_id in listed.stdout and "http://127.0.0.1:9/hook" in listed.stdout
    assert "ci alerts" in listed.stdout and "whsec_" not in listed.stdout

    shown = tuna("webhooks", "show", webhook_id)
    assert shown.exit_code == 0, shown.stderr
    assert "http://127.0.0.1:9/hook" in shown.stdout and "No deliveries yet." in shown.stdout

    with server.app.state.db.session_scope() as session:
        row = session.get(WebhookEndpoint, webhook_id)
        assert row is not None
        emit(session, row.project_id, "fine_tuning.job.succeeded", "ftjob-abc")
    shown = tuna("webhooks", "show", webhook_id)
    assert shown.exit_code == 0, shown.stderr
    assert "ATTEMPTS" in shown.stdout and "LAST ERROR" in shown.stdout
    # A worker of the suite may already have tried it (the URL answers nothing).
    assert "fine_tuning.job.succeeded" in shown.stdout
    assert any(status in shown.stdout for status in ("pending", "failed"))
    as_json = tuna("webhooks", "show", webhook_id, "--json").json()
    assert as_json["webhook"]["id"] == webhook_id
    [delivery] = as_json["deliveries"]
    assert delivery["status"] in ("pending", "failed")

    removed = tuna("webhooks", "rm", webhook_id)
    assert removed.exit_code == 0 and f"Deleted {webhook_id}" in removed.stdout
    assert webhook_id not in tuna("webhooks", "ls").stdout
    gone = tuna("webhooks", "show", webhook_id)
    assert gone.exit_code == 1 and "Error:" in gone.stderr


def test_create_json_and_empty_list(tuna: Tuna) -> None:
    empty = tuna("webhooks", "ls")
    assert empty.exit_code == 0 and "No webhook endpoints yet" in empty.stdout
    created = tuna("webhooks", "create", "https://example.com/h", "--json")
    assert created.exit_code == 0, created.stderr
    body = created.json()
    assert body["object"] == "webhook_endpoint" and body["secret"].startswith("whsec_")
    assert len(body["events"]) == 8  # none given: every event type
    [listed] = tuna("webhooks", "ls", "--json").json_lines()
    assert listed["id"] == body["id"] and listed["secret"] is None


def test_invalid_event_prints_the_server_error(tuna: Tuna) -> None:
    result = tuna("webhooks", "create", "https://example.com/h", "--event", "job.done")
    assert result.exit_code == 1
    assert "Invalid 'events[0]'" in result.stderr and "job.done" in result.stderr
    bad_url = tuna("webhooks", "create", "ftp://example.com/h")
    assert bad_url.exit_code == 1 and "Invalid 'url'" in bad_url.stderr


def test_update_and_rotate_secret(tuna: Tuna, server: LiveServer) -> None:
    created = tuna("webhooks", "create", "http://127.0.0.1:9/hook", "--json").json()
    webhook_id = created["id"]

    disabled = tuna(
        "webhooks",
        "update",
        webhook_id,
        "--url",
        "http://127.0.0.1:9/moved",
        "--event",
        "eval.run.succeeded",
        "--event",
        "eval.run.canceled",
        "--disable",
        "--description",
        "evals",
    )
    assert disabled.exit_code == 0, disabled.stderr
    assert f"Updated {webhook_id}" in disabled.stdout
    assert "http://127.0.0.1:9/moved" in disabled.stdout and "disabled" in disabled.stdout
    assert "eval.run.succeeded, eval.run.canceled" in disabled.stdout
    listed = tuna("webhooks", "ls")
    assert "disabled" in listed.stdout and "evals" in listed.stdout
    assert "state:   disabled" in tuna("webhooks", "show", webhook_id).stdout

    enabled = tuna(
        "webhooks", "update", webhook_id, "--enable", "--all-events", "--description", "", "--json"
    ).json()
    assert enabled["enabled"] is True and len(enabled["events"]) == 8
    assert enabled["description"] is None and enabled["url"] == "http://127.0.0.1:9/moved"
    assert enabled["secret"] is None

    rotated = tuna("webhooks", "rotate-secret", webhook_id)
    assert rotated.exit_code == 0, rotated.stderr
    secret = rotated.stdout.strip().removeprefix("secret: ")
    assert secret.startswith("whsec_") and secret != created["secret"]
    assert "shown only once" in rotated.stderr
    with server.app.state.db.session_scope() as session:
        row = session.get(WebhookEndpoint, webhook_id)
        assert row is not None and row.secret == secret
    again = tuna("webhooks", "rotate-secret", webhook_id, "--json").json()
    assert again["secret"].startswith("whsec_") and again["secret"] != secret


def test_update_refusals(tuna: Tuna) -> None:
    webhook_id = tuna("webhooks", "create", "https://example.com/h", "--json").json()["id"]
    nothing = tuna("webhooks", "update", webhook_id)
    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
    both = tuna("webhooks", "update", webhook_id, "--all-events", "--event", "eval.run.failed")
    assert both.exit_code == 2 and "not both" in both.stderr
    bad = tuna("webhooks", "update", webhook_id, "--event", "job.done")
    assert bad.exit_code == 1 and "Invalid 'events[0]'" in bad.stderr
    bad_url = tuna("webhooks", "update", webhook_id, "--url", "ftp://x/h")
    assert bad_url.exit_code == 1 and "Invalid 'url'" in bad_url.stderr
    missing = tuna("webhooks", "rotate-secret", "whep_nope")
    assert missing.exit_code == 1 and "Error:" in missing.stderr
