"""The dashboard and a job's automatic comparison on its validation set: the table on the job
page (from the job's `eval`), its links to the Evals page, and the new-job form's `auto_eval`.

No worker trains or evaluates here: the succeeded job, its eval and the eval's runs are written
into the database as the worker leaves them (`tests.app.client_cli.jobs_data`).
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import openai

from tests.app.client_cli.jobs_data import (
    TINY,
    add_job_comparison,
    comparison_run,
    finish_comparison_run,
)
from tests.conftest import LiveServer
from tests.datasets import chat_jsonl

FIELDS = ["label", "model", "status", "exact-match", "similarity", "valid-loss"]


def _sign_in(page: Any, api_key: str) -> None:
    page.add_init_script(f"localStorage.setItem('tuna.apiKey', {json.dumps(api_key)})")


def _project(server: LiveServer, page: Any) -> str:
    project = f"p-{uuid.uuid4().hex[:12]}"
    _sign_in(page, server.new_key(project))
    return project


def _cells(row: Any) -> list[str]:
    return [row.query_selector(f"td[data-field={f}]").inner_text().strip() for f in FIELDS]


def _row(page: Any, run_id: str) -> Any:
    return page.wait_for_selector(f"#comparison-table tr[data-run-id='{run_id}']")


def test_the_job_page_shows_the_comparison_and_links_to_the_runs(
    server: LiveServer, page: Any
) -> None:
    project = _project(server, page)
    job_id, eval_id, runs = add_job_comparison(
        server,
        project,
        [
            comparison_run("base", 0, valid_loss="2.34", exact=(1, 3), similar=(2, 2, 0.6)),
            comparison_run("checkpoint", 5, valid_loss="1.23", exact=(3, 1), similar=(3, 1, 0.8)),
            comparison_run("final", 10, exact=(2, 2), similar=(3, 1, 0.7)),
        ],
    )
    page.goto(f"{server.url}/#/jobs/{job_id}")
    base = _row(page, runs["base"])
    final_model = page.inner_text("#ft-model")
    assert page.is_visible("#comparison")
    assert page.inner_text("#comparison h2") == "Comparison on the validation set"

    rows = page.query_selector_all("#comparison-table tbody tr")
    assert [r.get_attribute("data-run-id") for r in rows] == [
        runs["base"],
        runs["step 5"],
        runs["final"],
    ]
    assert _cells(base) == ["base", TINY, "completed", "25.0%", "0.60", "2.3400"]
    assert _cells(rows[1]) == [
        "step 5 best",
        f"{final_model}:ckpt-step-5",
        "completed",
        "75.0%",
        "0.80",
        "1.2300",
    ]
    assert _cells(rows[2]) == ["final", final_model, "completed", "50.0%", "0.70", "\u2013"]

    # The best row, and only it, carries the badge.
    assert [r.get_attribute("data-best") for r in rows] == [None, "true", None]
    badges = page.query_selector_all("#comparison-table .badge.best")
    assert len(badges) == 1 and badges[0].inner_text() == "best"
    assert "best" in (rows[1].get_attribute("class") or "")
    note = page.inner_text("#comparison-note")
    assert note.startswith("4 validation examples") and "Best fine-tuned model: step 5" in note
    assert page.inner_text("#view dd[data-field=comparison]") == f"{eval_id} (completed)"

    # The eval's id opens the eval; a row's label opens the eval with its run picked, and
    # "Answers" the run's graded items.
    link = page.query_selector("#comparison-eval-link")
    assert link.inner_text() == eval_id and link.get_attribute("href") == f"#/evals/{eval_id}"
    answers = rows[0].query_selector("a[data-answers]")
    assert answers.get_attribute("href") == f"#/evals/{eval_id}/runs/{runs['base']}"
    page.click(f"#comparison-table a[data-run-link='{runs['step 5']}']")
    page.wait_for_url(f"**/#/evals/{eval_id}?run={runs['step 5']}")
    page.wait_for_selector(f"#runs-table tr.picked[data-run-id='{runs['step 5']}']")
    assert page.locator("#runs-table tbody tr").count() == 3
    assert "validation set" in page.inner_text("#view h1")

    page.goto(f"{server.url}/#/jobs/{job_id}")
    page.click("#comparison-eval-link")
    page.wait_for_url(f"**/#/evals/{eval_id}")
    page.wait_for_selector(f"#runs-table tr[data-run-id='{runs['final']}']")


def test_the_comparison_fills_in_as_its_runs_finish(server: LiveServer, page: Any) -> None:
    project = _project(server, page)
    job_id, eval_id, runs = add_job_comparison(
        server,
        project,
        [
            comparison_run("base", 0, valid_loss="2.5", exact=(0, 4), similar=(1, 3, 0.3)),
            comparison_run("checkpoint", 3, valid_loss="1.75"),
            comparison_run("final", 6, valid_loss="1.5"),
        ],
    )
    page.goto(f"{server.url}/#/jobs/{job_id}")
    pending = _row(page, runs["step 3"])
    assert _cells(pending)[2:] == ["queued", "\u2013", "\u2013", "1.7500"]
    assert page.query_selector("#comparison-table .badge.best") is None
    assert page.inner_text("#comparison-note").startswith("Comparing models\u2026")
    assert page.get_attribute("#comparison-note", "data-status") == "in_progress"

    # The job has succeeded, but the page keeps polling while the comparison runs.
    finish_comparison_run(server, runs["step 3"], exact=(1, 3), similar=(2, 2, 0.5))
    finish_comparison_run(server, runs["final"], exact=(3, 1), similar=(3, 1, 0.75))
    best = page.wait_for_selector(
        f"#comparison-table tr[data-run-id='{runs['final']}'][data-best=true]"
    )
    assert _cells(best)[2:] == ["completed", "75.0%", "0.75", "1.5000"]
    assert _cells(_row(page, runs["step 3"]))[2:] == ["completed", "25.0%", "0.50", "1.7500"]
    assert page.get_attribute("#comparison-note", "data-status") == "completed"
    assert "Comparing" not in page.inner_text("#comparison-note")
    assert page.inner_text("#view dd[data-field=comparison]") == f"{eval_id} (completed)"


def test_no_table_without_a_comparison(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any
) -> None:
    file_id = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
    ).id
    off = client.fine_tuning.jobs.create(
        model=TINY, training_file=file_id, validation_file=file_id, extra_body={"auto_eval": False}
    )
    on = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=file_id,
        validation_file=file_id,
        extra_body={"auto_eval": {"max_items": 12}},
    )
    _sign_in(page, api_key)
    expected = {
        off.id: "Off",
        on.id: "On: once the job succeeds, on up to 12 validation examples",
    }
    for job_id, setting in expected.items():
        page.goto(f"{server.url}/#/jobs/{job_id}")
        page.wait_for_selector("#view dd[data-field=comparison]")
        assert page.inner_text("#view dd[data-field=comparison]") == setting
        assert not page.is_visible("#comparison")
        assert page.locator("#comparison-table tbody tr").count() == 0
    client.fine_tuning.jobs.cancel(on.id)
    page.goto(f"{server.url}/#/jobs/{on.id}")
    page.wait_for_selector("#view h1 .badge[data-status=cancelled]")
    assert page.inner_text("#view dd[data-field=comparison]") == "Off: the job did not succeed"


def _creating_a_job(request: Any) -> bool:
    return request.method == "POST" and request.url.endswith("/v1/fine_tuning/jobs")


def test_the_form_sends_auto_eval(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any
) -> None:
    file_id = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
    ).id
    _sign_in(page, api_key)

    def open_form() -> None:
        page.goto(f"{server.url}/#/new?file={file_id}")
        page.wait_for_selector(f"#job-validation-file option[value='{file_id}']", state="attached")
        page.wait_for_selector(f"#job-model option[value='{TINY}']", state="attached")
        page.select_option("#job-model", TINY)

    def submit() -> tuple[dict[str, Any], dict[str, Any]]:
        with page.expect_request(_creating_a_job) as sent:
            page.click("#create-job")
        page.wait_for_url("**/#/jobs/ftjob-*")
        job_id = page.url.rsplit("/", 1)[1]
        job = client.fine_tuning.jobs.retrieve(job_id).to_dict()
        client.fine_tuning.jobs.cancel(job_id)
        return sent.value.post_data_json, job

    # Without a validation file there is nothing to compare on: the controls are disabled.
    open_form()
    assert page.is_checked("#job-auto-eval")  # on by default
    assert page.is_disabled("#job-auto-eval") and page.is_disabled("#job-eval-items")
    assert "Needs a validation file" in page.inner_text("#job-auto-eval-hint")
    body, job = submit()
    assert "auto_eval" not in body and job["auto_eval"] == {"enabled": False, "max_items": 100}

    # With one: on by default (nothing sent), a cap on the items, or off.
    open_form()
    page.select_option("#job-validation-file", file_id)
    assert page.is_enabled("#job-auto-eval") and page.is_enabled("#job-eval-items")
    body, job = submit()
    assert "auto_eval" not in body and job["auto_eval"] == {"enabled": True, "max_items": 100}

    open_form()
    page.select_option("#job-validation-file", file_id)
    page.fill("#job-eval-items", "7")
    body, job = submit()
    assert body["auto_eval"] == {"max_items": 7}
    assert job["auto_eval"] == {"enabled": True, "max_items": 7}

    open_form()
    page.select_option("#job-validation-file", file_id)
    page.uncheck("#job-auto-eval")
    assert page.is_disabled("#job-eval-items")
    body, job = submit()
    assert body["auto_eval"] is False
    assert job["auto_eval"] == {"enabled": False, "max_items": 100}
