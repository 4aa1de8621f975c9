"""The web dashboard: served beside the API, and a whole run in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import REPO_ROOT, LiveServer, WorkerProcess
from tests.datasets import chat_jsonl

TINY = "tuna-tiny-test"
DOCS_IMG = REPO_ROOT / "docs" / "img"


def test_dashboard_is_served_outside_the_api(server: LiveServer) -> None:
    with server.http() as http:
        index = http.get("/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assert "/dashboard/static/app.js" in index.text
        for asset, kind in [
            ("app.js", "javascript"),
            ("api.js", "javascript"),
            ("chart.js", "javascript"),
            ("app.css", "text/css"),
        ]:
            response = http.get(f"/dashboard/static/{asset}")
            assert response.status_code == 200 and kind in response.headers["content-type"]
        assert http.get("/dashboard", follow_redirects=False).headers["location"] == "/"

        paths = http.get("/openapi.json").json()["paths"]
        assert paths and all(path.startswith("/v1/") for path in paths)

        # The API answers as before: unauthenticated /v1 calls get OpenAI's error envelope.
        refused = http.get("/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def _shot(page: Any, directory: Path, name: str) -> None:
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def _points(page: Any, series: str = "train") -> int:
    value = page.get_attribute("#loss-chart", f"data-points-{series}")
    return int(value or 0)


def _wait_for_points_above(page: Any, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (points := _points(page)) <= count:
        status = page.get_attribute("#view h1 .badge", "data-status")
        assert status in (None, "validating_files", "queued", "running"), (
            f"job ended ({status}) before the chart showed more than {count} points"
        )
        assert time.monotonic() < deadline, f"the chart stayed at {points} points"
        page.wait_for_timeout(250)
    return points


def _has_chat_route(server: LiveServer) -> bool:
    return "/v1/chat/completions" in server.app.openapi()["paths"]


@pytest.mark.timeout(900)
def test_a_whole_run_in_the_browser(
    server: LiveServer, api_key: str, worker: WorkerProcess, page: Any, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    good = tmp_path / "train.jsonl"
    good.write_bytes(chat_jsonl(40))
    valid = tmp_path / "valid.jsonl"
    valid.write_bytes(chat_jsonl(10))
    bad = tmp_path / "broken.jsonl"
    lines = chat_jsonl(6).decode().splitlines()
    lines[2] = "{oops"
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    bad.write_text("\n".join(lines) + "\n")

    # Sign in: a wrong key is refused with the API's message; the right one is kept.
    page.goto(server.url + "/")
    page.fill("#api-key", "sk-tuna-wrong")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-form .alert.error")
    _shot(page, shots, "01-sign-in")
    page.fill("#api-key", api_key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#jobs-table td.empty")
    assert page.evaluate("localStorage.getItem('tuna.apiKey')") == api_key

    # Files: a broken dataset shows the server's line-numbered report; good ones upload.
    page.click("nav a[data-nav=files]")
    page.set_input_files("#upload-file", str(bad))
    page.click("#upload-button")
    report = page.wait_for_selector("#upload-result .alert.error")
    items = [li.inner_text() for li in report.query_selector_all("li")]
    assert [item.split(":")[0] for item in items] == ["Line 3", "Line 5"], items
    _shot(page, shots, "02-upload-errors")
    page.set_input_files("#upload-file", str(valid))
    page.click("#upload-button")
    page.wait_for_selector("#upload-result .alert.ok")
    page.set_input_files("#upload-file", str(good))
    page.click("#upload-button")
    page.wait_for_selector("#upload-result .alert.ok")
    train_id = page.inner_text("#upload-result .alert.ok code")
    page.wait_for_selector(f"#files-table tr[data-file-id='{train_id}']")
    assert page.locator("#files-table tbody tr").count() == 2
    _shot(page, shots, "03-files")

    # New job, from the link under the upload; the training file is preselected.
    page.click("#upload-result a")
    page.wait_for_selector(f"#job-training-file option[value='{train_id}']", state="attached")
    page.wait_for_selector(f"#job-model option[value='{TINY}']", state="attached")
    assert page.input_value("#job-training-file") == train_id
    page.select_option("#job-model", TINY)
    valid_id = page.eval_on_selector(
        "#job-validation-file",
        f"s => [...s.options].map(o => o.value).find(v => v && v !== '{train_id}')",
    )
    page.select_option("#job-validation-file", valid_id)
    page.fill("#job-suffix", "browser")
    # Long enough (400 steps) for the page's 2-second polls to see the curve grow mid-run: the
    # tiny model trains in a few milliseconds a step, so a 120-step job could end between polls.
    page.fill("#job-epochs", "10")
    page.fill("#job-batch-size", "1")
    page.fill("#job-seed", "3")
    _shot(page, shots, "04-new-job")
    page.click("#create-job")

    # The job page: the loss curve grows while the job runs, then it succeeds.
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    first = _wait_for_points_above(page, 0, timeout=240)
    grown = _wait_for_points_above(page, first, timeout=120)
    assert grown > first
    _shot(page, shots, "05-job-running")
    page.wait_for_selector("#view h1 .badge[data-status=succeeded]", timeout=300_000)
    page.wait_for_selector("#ft-model")
    model = page.inner_text("#ft-model")
    assert model.startswith(f"ft:{TINY}:") and ":browser:" in model
    page.wait_for_function("document.querySelectorAll('#checkpoints tbody code').length >= 1")
    assert _points(page) == 400  # 40 examples / batch 1 x 10 epochs: every step plotted
    assert _points(page, "valid") >= 1
    assert page.locator("#events li", has_text="The job has successfully completed").count() == 1
    assert page.inner_text("#progress-steps") == "400 / 400"
    assert page.locator("#cancel-job").count() == 0
    _shot(page, shots, "06-job-succeeded")

    # It had a validation file: the worker compares its models on it, and the page (still
    # polling after the job succeeded) fills the table in until the last run has ended.
    page.wait_for_selector("#comparison-note[data-status=completed]", timeout=300_000)
    rows = page.query_selector_all("#comparison-table tbody tr")
    roles = [row.get_attribute("data-role") for row in rows]
    assert roles[0] == "base" and roles[-1] == "final", roles
    assert set(roles[1:-1]) == {"checkpoint"}  # the checkpoints kept before the last step
    final_row = rows[-1]
    assert final_row.query_selector("[data-field=model]").inner_text() == model
    assert final_row.query_selector("[data-field=status]").inner_text() == "completed"
    assert final_row.query_selector("[data-field=exact-match]").inner_text().endswith("%")
    assert page.locator("#comparison-table .badge.best").count() <= 1

    # The jobs table shows it, with progress and the model id.
    page.click("nav a[data-nav=jobs]")
    row = page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}'] .steps")
    text = row.inner_text()
    assert "succeeded" in text and model in text and "400/400" in text
    _shot(page, shots, "07-jobs")

    # The playground, opened from the job, talks to the new model (streaming).
    if _has_chat_route(server):
        page.goto(f"{server.url}/#/jobs/{job_id}")
        page.click("#open-playground")
        page.wait_for_selector(f"#pg-model option[value='{model}']", state="attached")
        assert page.input_value("#pg-model") == model
        page.fill("#pg-max-tokens", "12")
        page.fill("#pg-input", "What is 3 plus 3?")
        page.click("#pg-send")
        reply = page.wait_for_selector(".msg.assistant[data-done=true]", timeout=120_000)
        assert "error" not in (reply.get_attribute("class") or ""), reply.inner_text()
        assert reply.get_attribute("data-finish-reason") in ("stop", "length")
        _shot(page, shots, "08-playground")

    if os.environ.get("TUNA_DOCS_SCREENSHOTS"):  # refresh the images the docs show
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, DOCS_IMG / f"dashboard-{shot.name}")


def test_cancel_from_the_job_page(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any
) -> None:
    training_file = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
    ).id
    job = client.fine_tuning.jobs.create(model=TINY, training_file=training_file)
    page.add_init_script(f"localStorage.setItem('tuna.apiKey', {json.dumps(api_key)})")
    page.goto(f"{server.url}/#/jobs/{job.id}")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    page.wait_for_selector("#view h1 .badge[data-status=cancelled]")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert page.locator("#cancel-job").count() == 0


def test_a_refused_key_signs_out(server: LiveServer, page: Any) -> None:
    page.add_init_script("localStorage.setItem('tuna.apiKey', 'sk-tuna-revoked')")
    page.goto(server.url + "/#/files")
    page.wait_for_selector("#signin-form")
    assert page.evaluate("localStorage.getItem('tuna.apiKey')") is None
    with httpx.Client(base_url=server.url) as http:  # and the API itself is untouched
        assert http.get("/health").json() == {"status": "ok"}
