"""The dashboard for DPO jobs and continued training: the form, the job page, the model picker."""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import openai
import pytest

from tests.app.client_cli.jobs_data import (
    TINY,
    add_checkpoint,
    add_fine_tuned_model,
    add_metrics,
    dpo_steps,
)
from tests.conftest import REPO_ROOT, LiveServer, WorkerProcess
from tests.datasets import chat_jsonl, preference_jsonl
from tuna_core.metrics import METHOD_METRICS, SPLITS, metric_names

FINE_TUNED_GROUP = "Your fine-tuned models (train further)"
DOCS_IMG = REPO_ROOT / "docs" / "img"


def _docs_shot(page: Any, name: str) -> None:
    """With TUNA_DOCS_SCREENSHOTS=1, refresh the image docs/dashboard.md shows."""
    if os.environ.get("TUNA_DOCS_SCREENSHOTS"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"dashboard-{name}.png"), full_page=True)


def test_metric_names_are_served_from_tuna_core(server: LiveServer) -> None:
    with server.http() as http:
        assert '<script src="/dashboard/metrics.js">' in http.get("/").text
        script = http.get("/dashboard/metrics.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "/dashboard/metrics.js" not in http.get("/openapi.json").json()["paths"]
    prefix = "window.TUNA_METRICS = "
    assert script.text.startswith(prefix)
    served = json.loads(script.text[len(prefix) :].rstrip().rstrip(";"))
    assert set(served) == set(METHOD_METRICS)
    for method, names in METHOD_METRICS.items():
        assert served[method]["metrics"] == list(names)
        for split in SPLITS:
            assert served[method][split] == list(metric_names(method, split))


def _sign_in(page: Any, api_key: str) -> None:
    page.add_init_script(f"localStorage.setItem('tuna.apiKey', {json.dumps(api_key)})")


def _creating_a_job(request: Any) -> bool:
    return request.method == "POST" and request.url.endswith("/v1/fine_tuning/jobs")


def _upload(client: openai.OpenAI, data: bytes, name: str) -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id


def test_a_dpo_job_from_the_form_to_its_charts(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any
) -> None:
    pairs = _upload(client, preference_jsonl(12), "pairs.jsonl")
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/new?file={pairs}")
    page.wait_for_selector(f"#job-training-file option[value='{pairs}']", state="attached")
    page.wait_for_selector(f"#job-model option[value='{TINY}']", state="attached")
    assert page.input_value("#job-training-file") == pairs

    # Beta only shows for DPO, with the format DPO trains on.
    assert page.input_value("#job-method") == "supervised"
    assert not page.is_visible("#job-beta")
    page.select_option("#job-method", "dpo")
    assert page.is_visible("#job-beta")
    assert "preferred_output" in page.inner_text("#job-method-hint")
    page.select_option("#job-model", TINY)
    page.fill("#job-beta", "0.3")
    page.fill("#job-epochs", "2")
    _docs_shot(page, "09-new-dpo-job")
    with page.expect_request(_creating_a_job) as sent:
        page.click("#create-job")
    assert sent.value.post_data_json["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.3}},
    }

    # The job page names the method and beta.
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    client.fine_tuning.jobs.cancel(job_id)  # no worker trains it: its metrics are written below
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.3
    tag = page.wait_for_selector("#view h1 [data-method=dpo]")
    assert tag.inner_text() == "DPO \u00b7 \u03b2 0.3"
    page.wait_for_selector("#view dd[data-field=method]")
    assert page.inner_text("#view dd[data-field=method]") == "DPO"
    assert page.inner_text("#view dd[data-field=beta]") == "0.3"

    # Its metrics: reward accuracy and margin charted beside loss, in the summary, per checkpoint.
    add_metrics(server, job_id, dpo_steps())
    checkpoint = add_checkpoint(server, job_id, 3, {"train_loss": 0.65})
    page.reload()
    page.wait_for_selector("#loss-chart[data-points-train='3']")
    for chart in ("#reward-accuracy-chart", "#reward-margin-chart"):
        assert page.get_attribute(chart, "data-points-train") == "3"
        assert page.get_attribute(chart, "data-points-valid") == "1"
    assert page.is_visible("#method-charts")
    assert page.inner_text("#stat-reward-accuracy") == "75.0%"
    assert page.inner_text("#stat-reward-margin") == "0.2500"
    drawn = page.text_content("#reward-accuracy-chart") or ""
    assert "60%" in drawn and "at step 3: 75.0%" in drawn  # a percent axis and tooltips
    row = page.wait_for_selector(f"#checkpoints tr[data-step='3']:has(code:text('{checkpoint}'))")
    assert "Reward accuracy" in page.inner_text("#checkpoints thead")
    assert row.query_selector("[data-metric=reward_accuracy]").inner_text() == "75.0%"
    assert row.query_selector("[data-metric=reward_margin]").inner_text() == "0.2500"
    assert "beta" in page.inner_text("#view .grid")  # among the hyperparameters

    # The jobs list marks it too.
    page.click("nav a[data-nav=jobs]")
    cell = page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}'] [data-method=dpo]")
    assert cell.inner_text().startswith("DPO")


def test_a_supervised_job_page_is_unchanged(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any
) -> None:
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=_upload(client, chat_jsonl(12), "train.jsonl")
    )
    client.fine_tuning.jobs.cancel(job.id)
    steps = [{"step": s, "total_steps": 2, "train_loss": 2.0 / s} for s in (1, 2)]
    add_metrics(server, job.id, steps)
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/jobs/{job.id}")
    page.wait_for_selector("#loss-chart[data-points-train='2']")
    page.wait_for_selector("#checkpoints td.empty")
    assert page.inner_text("#view dd[data-field=method]") == "Supervised"
    assert page.locator("#view h1 [data-method]").count() == 0
    assert not page.is_visible("#method-charts")
    assert page.locator("[id^=stat-reward]").count() == 0
    headers = page.locator("#checkpoints thead th").all_inner_texts()
    assert headers == ["Step", "Model", "Train loss", "Valid loss", "Created"]

    # And the form sends no beta for a supervised job, even one typed in before switching back.
    page.goto(f"{server.url}/#/new")
    page.wait_for_selector(f"#job-model option[value='{TINY}']", state="attached")
    page.select_option("#job-method", "dpo")
    page.fill("#job-beta", "0.5")
    page.select_option("#job-method", "supervised")
    assert not page.is_visible("#job-beta")
    page.fill("#job-epochs", "1")
    with page.expect_request(_creating_a_job) as sent:
        page.click("#create-job")
    assert sent.value.post_data_json["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 1}},
    }
    page.wait_for_url("**/#/jobs/ftjob-*")
    client.fine_tuning.jobs.cancel(page.url.rsplit("/", 1)[1])


def test_fine_tuned_models_are_offered_for_continued_training(
    server: LiveServer, client: openai.OpenAI, page: Any
) -> None:
    project = f"p-{uuid.uuid4().hex[:12]}"
    key = server.new_key(project)
    final, ckpt = add_fine_tuned_model(server, project)
    own = server.client(key)
    training = _upload(own, chat_jsonl(12), "train.jsonl")
    _upload(client, chat_jsonl(12), "other.jsonl")  # another project's file and models stay out
    _sign_in(page, key)

    # The finished job's page offers to train its model further.
    source = own.fine_tuning.jobs.list().data[0]
    page.goto(f"{server.url}/#/jobs/{source.id}")
    page.click("#continue-training")
    page.wait_for_url("**/#/new?model=*")
    page.wait_for_selector(f"#job-model option[value='{final}']", state="attached")
    assert page.input_value("#job-model") == final
    groups = page.eval_on_selector(
        "#job-model",
        "s => [...s.querySelectorAll('optgroup')].map(g => "
        "[g.label, [...g.querySelectorAll('option')].map(o => o.value)])",
    )
    by_label = dict(groups)
    assert TINY in by_label["Base models"] and final not in by_label["Base models"]
    assert sorted(by_label[FINE_TUNED_GROUP]) == sorted([final, ckpt])

    # A checkpoint works too: the job starts from it and its page says so.
    page.select_option("#job-model", ckpt)
    page.select_option("#job-training-file", training)
    page.click("#create-job")
    page.wait_for_url("**/#/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    try:  # nothing to train: the checkpoint has no files, and a worker may fail it first
        own.fine_tuning.jobs.cancel(job_id)
    except openai.BadRequestError:
        assert own.fine_tuning.jobs.retrieve(job_id).status == "failed"
    assert own.fine_tuning.jobs.retrieve(job_id).model == ckpt
    page.wait_for_selector("#view dd[data-field=trained-from]")
    assert page.inner_text("#view dd[data-field=trained-from]") == ckpt


@pytest.mark.timeout(600)
def test_a_dpo_run_in_the_browser_then_train_further(
    server: LiveServer, api_key: str, client: openai.OpenAI, worker: WorkerProcess, page: Any
) -> None:
    pairs = _upload(client, preference_jsonl(16), "pairs.jsonl")
    valid = _upload(client, preference_jsonl(10), "valid_pairs.jsonl")
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/new?file={pairs}")
    page.wait_for_selector(f"#job-validation-file option[value='{valid}']", state="attached")
    page.select_option("#job-model", TINY)
    page.select_option("#job-validation-file", valid)
    page.select_option("#job-method", "dpo")
    page.fill("#job-beta", "0.2")
    page.fill("#job-epochs", "2")
    page.fill("#job-batch-size", "2")
    page.fill("#job-suffix", "prefs")
    page.click("#create-job")

    page.wait_for_url("**/#/jobs/ftjob-*")
    page.wait_for_selector("#view h1 .badge[data-status=succeeded]", timeout=300_000)
    page.wait_for_selector("#ft-model")
    page.wait_for_function("document.querySelectorAll('#checkpoints tbody code').length >= 1")
    steps = 16 // 2 * 2  # 16 pairs, batch 2, 2 epochs
    for chart in ("#loss-chart", "#reward-accuracy-chart", "#reward-margin-chart"):
        assert page.get_attribute(chart, "data-points-train") == str(steps), chart
        assert int(page.get_attribute(chart, "data-points-valid") or 0) >= 1, chart
    assert page.inner_text("#progress-steps") == f"{steps} / {steps}"
    assert page.inner_text("#stat-reward-accuracy").endswith("%")
    assert page.inner_text("#view h1 [data-method=dpo]") == "DPO \u00b7 \u03b2 0.2"
    model = page.inner_text("#ft-model")
    assert model.startswith(f"ft:{TINY}:") and ":prefs:" in model
    _docs_shot(page, "10-job-dpo")

    # Its model is offered for a continued training, preselected.
    page.click("#continue-training")
    page.wait_for_selector(
        f"#job-model optgroup[label='{FINE_TUNED_GROUP}'] option[value='{model}']", state="attached"
    )
    assert page.input_value("#job-model") == model
