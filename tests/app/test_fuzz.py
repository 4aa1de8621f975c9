"""Property-based fuzzing of the whole /v1 API from its own OpenAPI schema (schemathesis).

Every operation gets `FUZZ_EXAMPLES` generated requests (valid and schema-breaking ones) sent to
the live server of each backend with a valid key; no answer may be a 5xx. Generated model names
are never real ones, so inference endpoints answer 404 without generating anything.
`test_hostile_inputs` adds the inputs random generation rarely hits: NUL bytes (PostgreSQL
refuses them in text), integers beyond 64 bits, lone surrogates, very long ids.
`TUNA_FUZZ_EXAMPLES` raises the count for a longer run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.conftest import LiveServer

FUZZ_EXAMPLES = int(os.environ.get("TUNA_FUZZ_EXAMPLES", "60"))


class _NoQueue:
    def enqueue(self, job_id: str) -> None:
        pass


@pytest.fixture
def quiet_queue(server: LiveServer) -> Iterator[None]:
    """Nothing the fuzzer manages to create may reach a broker (and a later test's worker)."""
    real = server.app.state.job_queue
    server.app.state.job_queue = _NoQueue()
    try:
        yield
    finally:
        server.app.state.job_queue = real


def test_schema_fuzz_has_no_server_errors(
    server: LiveServer, api_key: str, quiet_queue: None
) -> None:
    schema = schemathesis.openapi.from_dict(server.app.openapi())
    headers = {"Authorization": f"Bearer {api_key}"}
    session = requests.Session()
    cases = 0
    errors: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            nonlocal cases
            cases += 1
            response = case.call(base_url=server.url, headers=headers, session=session, timeout=60)
            if response.status_code >= 500:
                errors.append(f"{response.status_code} {case.as_curl_command(headers)}")

        with contextlib.suppress(Unsatisfiable):
            run()

    print(f"\nfuzz[{server.backend}]: {len(operations)} operations, {cases} cases, "
          f"{len(errors)} 5xx")  # fmt: skip
    assert not errors, "\n".join(errors[:20])


# -- targeted hostile inputs ----------------------------------------------------------------

NUL = "file-ab\x00cd"
HOSTILE_IDS = [NUL, "\x00", "ftjob-\udcff", "ft:x:\u202e\u0000", "x" * 5000, "%00", "..%2f..%2f"]
HUGE = str(2**70)


def _hostile_requests() -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for raw in HOSTILE_IDS:
        quoted = quote(raw, safe=":", errors="surrogatepass")
        for method, template in [
            ("GET", "/v1/files/{}"),
            ("DELETE", "/v1/files/{}"),
            ("GET", "/v1/files/{}/content"),
            ("GET", "/v1/fine_tuning/jobs/{}"),
            ("POST", "/v1/fine_tuning/jobs/{}/cancel"),
            ("POST", "/v1/fine_tuning/jobs/{}/pause"),
            ("POST", "/v1/fine_tuning/jobs/{}/resume"),
            ("GET", "/v1/fine_tuning/jobs/{}/events"),
            ("GET", "/v1/fine_tuning/jobs/{}/checkpoints"),
            ("GET", "/v1/models/{}"),
            ("DELETE", "/v1/models/{}"),
        ]:
            out.append((method, template.format(quoted), {}))
        for path in ("/v1/files", "/v1/fine_tuning/jobs"):
            out.append(("GET", path, {"params": {"after": raw}}))
        out.append(("GET", "/v1/files", {"params": {"purpose": raw}}))
        out.append(("GET", "/v1/fine_tuning/jobs", {"params": {f"metadata[{raw}]": raw}}))
        for body in (
            {"model": raw, "training_file": raw},
            {"model": "tuna-tiny-test", "training_file": raw, "suffix": raw},
            {"model": "tuna-tiny-test", "training_file": "file-x", "validation_file": raw},
            {"model": "tuna-tiny-test", "training_file": "file-x", "metadata": {raw: raw}},
        ):
            out.append(("POST", "/v1/fine_tuning/jobs", {"json": body}))
        for path, body in (
            (
                "/v1/chat/completions",
                {"model": raw, "messages": [{"role": "user", "content": raw}]},
            ),
            ("/v1/completions", {"model": raw, "prompt": raw}),
        ):
            out.append(("POST", path, {"json": body}))
        out.append(
            ("POST", "/v1/files", {"data": {"purpose": raw}, "files": {"file": (raw, b"{}\n")}})
        )
    for name in ("limit", "after"):
        for path in ("/v1/files", "/v1/fine_tuning/jobs"):
            out.append(("GET", path, {"params": {name: HUGE}}))
            out.append(("GET", path, {"params": {name: "-" + HUGE}}))
    big = 2**70
    for extra in (
        {"seed": big},
        {"seed": -big},
        {"hyperparameters": {"n_epochs": big}},
        {"hyperparameters": {"batch_size": big, "learning_rate_multiplier": 1e308}},
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": big}}}},
        {"suffix": "\x00"},
        {"metadata": {"k": "\x00"}},
    ):
        body = {"model": "tuna-tiny-test", "training_file": "file-x", **extra}
        out.append(("POST", "/v1/fine_tuning/jobs", {"json": body}))
    for extra in ({"max_tokens": big}, {"seed": big}, {"n": big}, {"temperature": 1e308}):
        body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}], **extra}
        out.append(("POST", "/v1/chat/completions", {"json": body}))
        out.append(("POST", "/v1/completions", {"json": {"model": "nope", "prompt": "x", **extra}}))
    out.append(
        (
            "POST",
            "/v1/files",
            {"data": {"purpose": "fine-tune", "expires_after[anchor]": "created_at",
                      "expires_after[seconds]": HUGE}, "files": {"file": ("a.jsonl", b"{}\n")}},
        )
    )  # fmt: skip
    return out


HOSTILE = _hostile_requests()


def test_hostile_inputs(server: LiveServer, api_key: str, quiet_queue: None) -> None:
    errors = []
    with server.http(api_key) as http:
        for method, path, kwargs in HOSTILE:
            try:
                response = http.request(method, path, **kwargs)
            except (UnicodeEncodeError, httpx.InvalidURL):
                continue  # the client itself refuses to send it
            if response.status_code >= 500:
                errors.append(f"{response.status_code} {method} {path} {kwargs!r}"[:300])
    print(f"\nhostile[{server.backend}]: {len(HOSTILE)} requests, {len(errors)} 5xx")
    assert not errors, "\n".join(errors)
