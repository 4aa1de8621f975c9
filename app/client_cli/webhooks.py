"""`tuna webhooks`: register, list, inspect, update and remove webhook endpoints.

`create` and `rotate-secret` print the endpoint's signing secret (`whsec_...`) once: the server
never shows it again. `show` adds the endpoint's recent deliveries (status, attempts, last HTTP
status/error). `update` changes only the options given (`--enable`/`--disable` included).
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from app.client_cli.common import Ctx, api_command, when

DELIVERY_STYLES = {"pending": "yellow", "delivered": "green", "failed": "red"}


def _delivery_status(status: str) -> str:
    return f"[{DELIVERY_STYLES.get(status, 'white')}]{status}[/]"


def _events(endpoint: dict[str, Any]) -> str:
    return ", ".join(endpoint.get("events") or []) or "-"


def _state(endpoint: dict[str, Any]) -> str:
    return "[green]enabled[/]" if endpoint.get("enabled", True) else "[red]disabled[/]"


@click.group()
def webhooks() -> None:
    """Get told when jobs and eval runs finish: signed HTTP POSTs to your endpoints."""


@webhooks.command("create")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="TYPE",
    help="Only this event type (e.g. fine_tuning.job.succeeded); repeat. Default: all.",
)
@click.option("--description", default=None, help="A note for yourself.")
@api_command
def webhooks_create(ctx: Ctx, url: str, events: tuple[str, ...], description: str | None) -> None:
    """Register URL; print its id and its signing secret (shown only this once)."""
    body: dict[str, Any] = {"url": url}
    if events:
        body["events"] = list(events)
    if description is not None:
        body["description"] = description
    endpoint = ctx.client.post("/v1/webhooks", body)
    if ctx.json:
        ctx.emit_json(endpoint)
        return
    ctx.out.print(endpoint["id"], highlight=False)
    ctx.out.print(f"secret: {endpoint.get('secret')}", highlight=False)
    ctx.err.print(
        "Store the secret now: it is shown only once (it verifies the webhook-signature header).",
        highlight=False,
    )
    ctx.err.print(f"Events: {escape(_events(endpoint))}", highlight=False)


@webhooks.command("ls")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@api_command
def webhooks_ls(ctx: Ctx, limit: int) -> None:
    """List webhook endpoints, newest first."""
    data = list(ctx.client.get("/v1/webhooks", limit=limit).get("data", []))
    if ctx.json:
        for endpoint in data:
            ctx.emit_json(endpoint)
        return
    if not data:
        ctx.out.print("No webhook endpoints yet. Add one with `tuna webhooks create URL`.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "URL", "STATE", "EVENTS", "DESCRIPTION", "CREATED"):
        table.add_column(column, no_wrap=True)
    for endpoint in data:
        table.add_row(
            endpoint["id"],
            escape(endpoint.get("url") or ""),
            _state(endpoint),
            escape(_events(endpoint)),
            escape(endpoint.get("description") or ""),
            when(endpoint.get("created_at")),
        )
    ctx.out.print(table)


@webhooks.command("show")
@click.argument("webhook_id")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@api_command
def webhooks_show(ctx: Ctx, webhook_id: str, limit: int) -> None:
    """An endpoint and its recent deliveries."""
    endpoint = ctx.client.get(f"/v1/webhooks/{webhook_id}")
    deliveries = list(
        ctx.client.get(f"/v1/webhooks/{webhook_id}/deliveries", limit=limit).get("data", [])
    )
    if ctx.json:
        ctx.emit_json({"webhook": endpoint, "deliveries": deliveries})
        return
    ctx.out.print(f"[bold]{escape(endpoint.get('url') or '')}[/] ({webhook_id})", highlight=False)
    ctx.out.print(f"state:   {_state(endpoint)}", highlight=False)
    ctx.out.print(f"events:  {escape(_events(endpoint))}", highlight=False)
    if endpoint.get("description"):
        ctx.out.print(f"about:   {escape(endpoint['description'])}", highlight=False)
    ctx.out.print(f"created: {when(endpoint.get('created_at'))}", highlight=False)
    if not deliveries:
        ctx.out.print("No deliveries yet.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("DELIVERY", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "NEXT TRY", "DELIVERED"):
        table.add_column(column, no_wrap=True)
    table.add_column("LAST ERROR")
    for delivery in deliveries:
        code = delivery.get("last_status_code")
        table.add_row(
            delivery["id"],
            escape(delivery.get("event_type") or ""),
            _delivery_status(delivery.get("status", "")),
            str(delivery.get("attempts", 0)),
            str(code) if code else "-",
            when(delivery.get("next_attempt_at")),
            when(delivery.get("delivered_at")),
            escape((delivery.get("last_error") or "")[:120]),
        )
    ctx.out.print(table)


@webhooks.command("update")
@click.argument("webhook_id")
@click.option("--url", default=None, help="Post to this URL instead.")
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="TYPE",
    help="Subscribe to exactly these event types (repeat); replaces the current list.",
)
@click.option("--all-events", is_flag=True, help="Subscribe to every event type, later ones too.")
@click.option(
    "--enable/--disable",
    "enabled",
    default=None,
    help="A disabled endpoint gets no new deliveries; its pending ones wait until enabled.",
)
@click.option("--description", default=None, help="A new note ('' clears it).")
@api_command
def webhooks_update(
    ctx: Ctx,
    webhook_id: str,
    url: str | None,
    events: tuple[str, ...],
    all_events: bool,
    enabled: bool | None,
    description: str | None,
) -> None:
    """Change an endpoint: only the options given change."""
    if events and all_events:
        raise click.UsageError("give --event or --all-events, not both")
    body: dict[str, Any] = {}
    if url is not None:
        body["url"] = url
    if events:
        body["events"] = list(events)
    if all_events:
        body["events"] = None
    if enabled is not None:
        body["enabled"] = enabled
    if description is not None:
        body["description"] = description or None
    if not body:
        raise click.UsageError("nothing to change: give at least one option")
    endpoint = ctx.client.post(f"/v1/webhooks/{webhook_id}", body)
    if ctx.json:
        ctx.emit_json(endpoint)
        return
    ctx.out.print(f"Updated {endpoint['id']}", highlight=False)
    ctx.out.print(f"url:     {escape(endpoint.get('url') or '')}", highlight=False)
    ctx.out.print(f"state:   {_state(endpoint)}", highlight=False)
    ctx.out.print(f"events:  {escape(_events(endpoint))}", highlight=False)


@webhooks.command("rotate-secret")
@click.argument("webhook_id")
@api_command
def webhooks_rotate_secret(ctx: Ctx, webhook_id: str) -> None:
    """Give an endpoint a new signing secret; print it (shown only this once)."""
    endpoint = ctx.client.post(f"/v1/webhooks/{webhook_id}/rotate_secret")
    if ctx.json:
        ctx.emit_json(endpoint)
        return
    ctx.out.print(f"secret: {endpoint.get('secret')}", highlight=False)
    ctx.err.print(
        "Store the new secret now: it is shown only once. For a while (a day by default) "
        "deliveries are signed with both the old and the new secret.",
        highlight=False,
    )


@webhooks.command("rm")
@click.argument("webhook_id")
@api_command
def webhooks_rm(ctx: Ctx, webhook_id: str) -> None:
    """Delete an endpoint (its pending deliveries are dropped)."""
    deleted = ctx.client.request("DELETE", f"/v1/webhooks/{webhook_id}")
    if ctx.json:
        ctx.emit_json(deleted)
        return
    ctx.out.print(f"Deleted {deleted.get('id', webhook_id)}", highlight=False)
