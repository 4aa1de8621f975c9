"""Every response a test server sends, checked against OpenAI's published response schemas.

`serve_in_thread` (tests/conftest.py) wraps each app it serves in `WireCheck`, an ASGI
middleware that reads what the app sends: a JSON body whose method and path map to one of
OpenAI's objects is validated against that object's schema (`tests/openai_schemas/`), every
`data:` event of a stream against the chunk schema, and every JSON error against
`ErrorResponse`. So the whole suite, through whatever client it uses (the `openai` SDK, httpx,
the CLI, a browser), checks the wire shapes, not only the tests written for them.

A violation is recorded in `WIRE` (the server runs in another thread, where an exception would
only turn into a 500); a hook in tests/conftest.py fails the test that caused it, naming the
request, the schema and the JSON path of the bad value.  A response is checked before its last
byte is sent, so the client never sees a response whose check has not been recorded yet.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SCHEMA_DIR = Path(__file__).resolve().parent / "openai_schemas"
ERROR_SCHEMA = "ErrorResponse"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # a regular expression for the whole path
    schema: str  # for a JSON body
    stream_schema: str | None = None  # for each `data:` event of a `text/event-stream` body

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.path, path) is not None


_ID = r"[^/]+"
# The order matters where two patterns overlap: the first match wins.
ROUTES: tuple[Route, ...] = (
    Route("POST", r"/v1/files", "OpenAIFile"),
    Route("GET", r"/v1/files", "ListFilesResponse"),
    Route("GET", rf"/v1/files/{_ID}", "OpenAIFile"),
    Route("DELETE", rf"/v1/files/{_ID}", "DeleteFileResponse"),
    Route("POST", r"/v1/fine_tuning/jobs", "FineTuningJob"),
    Route("GET", r"/v1/fine_tuning/jobs", "ListPaginatedFineTuningJobsResponse"),
    Route("GET", rf"/v1/fine_tuning/jobs/{_ID}", "FineTuningJob"),
    Route("POST", rf"/v1/fine_tuning/jobs/{_ID}/(cancel|pause|resume)", "FineTuningJob"),
    Route("GET", rf"/v1/fine_tuning/jobs/{_ID}/events", "ListFineTuningJobEventsResponse"),
    Route(
        "GET", rf"/v1/fine_tuning/jobs/{_ID}/checkpoints", "ListFineTuningJobCheckpointsResponse"
    ),
    Route("POST", r"/v1/evals", "Eval"),
    Route("GET", r"/v1/evals", "EvalList"),
    Route("POST", rf"/v1/evals/{_ID}/runs", "EvalRun"),
    Route("GET", rf"/v1/evals/{_ID}/runs", "EvalRunList"),
    Route("GET", rf"/v1/evals/{_ID}/runs/{_ID}/output_items", "EvalRunOutputItemList"),
    Route("GET", rf"/v1/evals/{_ID}/runs/{_ID}/output_items/{_ID}", "EvalRunOutputItem"),
    Route("GET", rf"/v1/evals/{_ID}/runs/{_ID}", "EvalRun"),
    Route("POST", rf"/v1/evals/{_ID}/runs/{_ID}(/cancel)?", "EvalRun"),  # cancel
    Route("DELETE", rf"/v1/evals/{_ID}/runs/{_ID}", "DeleteEvalRunResponse"),
    Route("GET", rf"/v1/evals/{_ID}", "Eval"),
    Route("POST", rf"/v1/evals/{_ID}", "Eval"),  # update
    Route("DELETE", rf"/v1/evals/{_ID}", "DeleteEvalResponse"),
    Route("GET", r"/v1/models", "ListModelsResponse"),
    Route("POST", r"/v1/models", "Model"),  # Tuna's import answers OpenAI's model object
    Route("GET", r"/v1/models/.+", "Model"),  # model ids may hold `/` and `:`
    Route("DELETE", r"/v1/models/.+", "DeleteModelResponse"),
    Route(
        "POST",
        r"/v1/chat/completions",
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
    ),
    Route("POST", r"/v1/completions", "CreateCompletionResponse", "CreateCompletionStreamResponse"),
)


# Tuna's own routes, with no OpenAI counterpart to check them against (docs/webhooks.md,
# docs/export.md).
EXTENSIONS: tuple[str, ...] = (
    r"/v1/webhooks(/.*)?",
    r"/v1/models/.+/(content|exports)",  # downloads of a model (docs/export.md)
)


def route_for(method: str, path: str) -> Route | None:
    if any(re.fullmatch(pattern, path) for pattern in EXTENSIONS):
        return None  # `/v1/models/{id}/content` is Tuna's, though `/v1/models/.+` would match
    return next((route for route in ROUTES if route.matches(method, path)), None)


@functools.cache
def validator(name: str) -> Any:
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    return jsonschema_rs.validator_for(schema)


def schema_errors(name: str, instance: Any) -> list[str]:
    """`/json/pointer: message` for each way `instance` breaks schema `name` (empty: valid)."""
    return [
        "/" + "/".join(str(part) for part in error.instance_path) + f": {error.message}"
        for error in validator(name).iter_errors(instance)
    ]


@dataclass
class WireLog:
    """What the wrapped servers checked: documents per schema, and the violations found."""

    checked: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self.checked.clear()
            self.violations.clear()

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.checked)

    def take_violations(self) -> list[str]:
        with self._lock:
            found, self.violations = self.violations, []
            return found

    def check(self, request: str, schema: str, document: Any) -> None:
        errors = schema_errors(schema, document)
        with self._lock:
            self.checked[schema] += 1
            self.violations += [f"{request}: {schema} at {error}" for error in errors]

    def violation(self, request: str, problem: str) -> None:
        with self._lock:
            self.violations.append(f"{request}: {problem}")


WIRE = WireLog()


def sse_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete `data:` payloads in `buffer`, and the incomplete rest."""
    *complete, rest = re.split(rb"\r?\n\r?\n", buffer)
    payloads = []
    for event in complete:
        lines = [line for line in event.splitlines() if line.startswith(b"data:")]
        if lines:
            payloads.append(b"\n".join(line[5:].removeprefix(b" ") for line in lines))
    return payloads, rest


@dataclass
class _Response:
    """One response as the middleware sees it go out."""

    request: str
    route: Route | None
    status: int = 0
    kind: str = ""  # "json", "sse", or "" for a body that is not checked
    body: bytearray = field(default_factory=bytearray)

    def schema(self) -> str | None:
        if self.status >= 400:
            return ERROR_SCHEMA
        return self.route.schema if self.route and 200 <= self.status < 300 else None


class WireCheck:
    """ASGI middleware: check each JSON body and SSE event against OpenAI's schema for it."""

    def __init__(self, app: ASGIApp, log: WireLog = WIRE) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        response = _Response(f"{method} {path}", route_for(method, path))

        async def checked_send(message: Message) -> None:
            for problem in self._inspect(response, message, method, path):
                self.log.violation(response.request, problem)
            await send(message)

        await self.app(scope, receive, checked_send)

    def _inspect(
        self, response: _Response, message: Message, method: str, path: str
    ) -> Iterator[str]:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            headers = dict(message.get("headers", []))
            content_type = headers.get(b"content-type", b"").decode().split(";")[0].strip()
            if content_type == "application/json" and method != "HEAD":
                response.kind = "json"
            elif content_type == "text/event-stream":
                response.kind = "sse"
            if response.kind and response.schema() is None and self._is_api(path, response):
                yield "no OpenAI schema is mapped for this route (tests/openai_wire.py ROUTES)"
            return
        if message["type"] != "http.response.body" or not response.kind:
            return
        response.body += message.get("body", b"")
        more = message.get("more_body", False)
        if response.kind == "json" and not more:
            yield from self._check_json(response, bytes(response.body))
        elif response.kind == "sse":
            payloads, rest = sse_events(bytes(response.body))
            response.body = bytearray(rest)
            for payload in payloads:
                yield from self._check_event(response, payload)

    @staticmethod
    def _is_api(path: str, response: _Response) -> bool:
        return (
            path.startswith("/v1/")
            and 200 <= response.status < 300
            and not any(re.fullmatch(pattern, path) for pattern in EXTENSIONS)
        )

    def _check_json(self, response: _Response, body: bytes) -> Iterator[str]:
        schema = response.schema()
        if schema is None:
            return
        try:
            document = json.loads(body)
        except ValueError:
            yield f"the body is not JSON: {body[:200]!r}"
            return
        self.log.check(response.request, schema, document)

    def _check_event(self, response: _Response, payload: bytes) -> Iterator[str]:
        if payload == b"[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            yield f"a stream event is not JSON: {payload[:200]!r}"
            return
        if isinstance(event, dict) and "error" in event:
            self.log.check(response.request + " (stream)", ERROR_SCHEMA, event)
        elif response.route is None or response.route.stream_schema is None:
            yield "a stream on a route without a chunk schema (tests/openai_wire.py ROUTES)"
        else:
            self.log.check(response.request + " (stream)", response.route.stream_schema, event)
