"""`tuna chat MODEL`: talk to a base or `ft:` model, tokens printed as they stream in."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from app.client_cli.api import APIError
from app.client_cli.common import Ctx, api_command, fail

HELP_TEXT = "Commands: /reset forgets the conversation, /exit (or Ctrl-D) quits."


def _stream_reply(ctx: Ctx, body: dict[str, Any]) -> str:
    """Print the assistant's tokens as they arrive; returns the whole reply."""
    parts: list[str] = []
    for chunk in ctx.client.stream_chat(body):
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                parts.append(delta)
                sys.stdout.write(delta)
                sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


@click.command(short_help="Chat with a model, streaming the answer.")
@click.argument("model")
@click.option("--message", "-m", default=None, help="Ask once, print the answer, exit.")
@click.option("--system", default=None, help="A system message to start the conversation.")
@click.option("--max-tokens", type=click.IntRange(1), default=None)
@click.option("--temperature", type=click.FloatRange(0, 2), default=None)
@api_command
def chat(
    ctx: Ctx,
    model: str,
    message: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    """Chat with MODEL (a base model or an ft: id), streaming the answer.

    Interactive by default; `--message` answers once and exits. With `--json` (needs
    `--message`) the whole `chat.completion` object is printed instead.
    """
    start: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    options: dict[str, Any] = {"model": model}
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if temperature is not None:
        options["temperature"] = temperature

    if message is not None:
        messages = [*start, {"role": "user", "content": message}]
        if ctx.json:
            ctx.emit_json(
                ctx.client.post("/v1/chat/completions", {**options, "messages": messages})
            )
        else:
            _stream_reply(ctx, {**options, "messages": messages})
        return
    if ctx.json:
        fail("--json needs --message (the interactive chat prints plain text).")

    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401 - line editing and history for input()
    ctx.err.print(f"Chatting with [bold]{model}[/]. {HELP_TEXT}", highlight=False)
    history = list(start)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = list(start)
            ctx.err.print("(conversation reset)")
            continue
        if text == "/help":
            ctx.err.print(HELP_TEXT)
            continue
        history.append({"role": "user", "content": text})
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        try:
            reply = _stream_reply(ctx, {**options, "messages": history})
        except APIError as exc:
            # One bad turn does not end the session; forget the unanswered message.
            history.pop()
            sys.stdout.write("\n")
            ctx.err.print(f"[bold red]Error:[/] {exc.message}", highlight=False)
            continue
        except KeyboardInterrupt:
            history.pop()
            sys.stdout.write("\n")
            ctx.err.print("(interrupted)")
            continue
        history.append({"role": "assistant", "content": reply})
