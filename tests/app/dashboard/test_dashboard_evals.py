"""The dashboard's Evals page: the list, the "New eval" form, runs side by side, disagreements.

Runs are not executed here: they are sent to a queue that only records them, and what a
finished run leaves (its output items, its counts) is written through the repository.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import openai

from app.evals.repository import EvalRepository
from tests.app.client_cli.jobs_data import TINY, add_fine_tuned_model
from tests.app.evals.conftest import (
    CONTENT,
    RecordingQueue,
    completions,
    create_eval,
    items_jsonl,
)
from tests.app.evals.test_evals_api import SAMPLE
from tests.conftest import LiveServer
from tuna_core.evals import expected_answer_criteria


def _sign_in(page: Any, api_key: str) -> None:
    page.add_init_script(f"localStorage.setItem('tuna.apiKey', {json.dumps(api_key)})")


def _output_item(index: int, answer: str, passed: list[bool]) -> dict[str, Any]:
    names = ["exact", "similar"]
    return {
        "datasource_item_id": index,
        "datasource_item": CONTENT[index]["item"],
        "sample": {**SAMPLE, "output": [{"role": "assistant", "content": answer}]},
        "results": [
            {"name": n, "type": "string_check", "score": float(p), "passed": p, "sample": None}
            for n, p in zip(names, passed, strict=True)
        ],
        "status": "pass" if all(passed) else "fail",
    }


def _finish(server: LiveServer, run_id: str, items: list[dict[str, Any]]) -> None:
    """What the run worker leaves: the graded items, then the run completed with its counts."""
    with server.app.state.db.session_scope() as session:
        repo = EvalRepository(session)
        run = repo.get_run(run_id)
        assert run is not None
        for item in items:
            repo.add_output_item(run, **item)
        assert repo.move_run(run_id, "in_progress", only_from=["queued"])
        per_criterion = [
            {
                "testing_criteria": name,
                "passed": sum(1 for i in items if i["results"][k]["passed"]),
                "failed": sum(1 for i in items if not i["results"][k]["passed"]),
            }
            for k, name in enumerate(["exact", "similar"])
        ]
        passed = sum(1 for i in items if i["status"] == "pass")
        counts = {
            "total": len(items),
            "passed": passed,
            "failed": len(items) - passed,
            "errored": 0,
        }
        assert repo.move_run(
            run_id,
            "completed",
            only_from=["in_progress"],
            result_counts=counts,
            per_testing_criteria_results=per_criterion,
        )


def test_the_criteria_script_is_the_cli_one(server: LiveServer) -> None:
    with server.http() as http:
        assert '<script src="/dashboard/evals.js">' in http.get("/").text
        script = http.get("/dashboard/evals.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "/dashboard/evals.js" not in http.get("/openapi.json").json()["paths"]
    prefix = "window.TUNA_EVALS = "
    assert script.text.startswith(prefix)
    served = json.loads(script.text[len(prefix) :].rstrip().rstrip(";"))
    placeholder = served["field_placeholder"]
    filled = json.loads(json.dumps(served["expect_criteria"]).replace(placeholder, "answer"))
    assert filled == expected_answer_criteria("answer")


def test_the_list_shows_an_eval(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any
) -> None:
    evaluation = create_eval(client, name="capitals-list")
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/evals")
    row = page.wait_for_selector(f"#evals-table tr[data-eval-id='{evaluation.id}']")
    text = row.inner_text()
    assert "capitals-list" in text and "exact" in text and evaluation.id in text
    assert page.get_attribute("[data-nav=evals]", "class") == "active"
    row.query_selector("a").click()
    page.wait_for_url(f"**/#/evals/{evaluation.id}")
    page.wait_for_selector("#runs-table td.empty")  # no runs yet


def test_the_form_creates_an_eval_with_a_run_per_model(
    server: LiveServer, page: Any, run_queue: RecordingQueue
) -> None:
    project = f"p-{uuid.uuid4().hex[:12]}"
    key = server.new_key(project)
    final, _checkpoint = add_fine_tuned_model(server, project)
    client = server.client(key)
    _sign_in(page, key)
    page.goto(f"{server.url}/#/evals")
    page.wait_for_selector(f"#eval-models input[value='{TINY}']", state="attached")
    page.wait_for_selector(f"#eval-models input[value='{final}']", state="attached")

    # Upload the items from the form: the new file is picked.
    page.set_input_files(
        "#eval-upload",
        {"name": "capitals.jsonl", "mimeType": "text/plain", "buffer": items_jsonl(CONTENT)},
    )
    page.wait_for_selector("#eval-upload-result .alert.ok")
    file_id = page.input_value("#eval-file")
    assert file_id.startswith("file-")
    assert client.files.retrieve(file_id).purpose == "evals"

    page.fill("#eval-name", "capitals-form")
    page.fill("#eval-system", "Answer with one word.")
    page.fill("#eval-prompt", "{{ item.question }}")
    page.fill("#eval-expect", "answer")
    page.check(f"#eval-models input[value='{TINY}']")
    page.check(f"#eval-models input[value='{final}']")
    page.click("#create-eval")
    page.wait_for_url("**/#/evals/eval_*")
    eval_id = page.url.rsplit("/", 1)[1]

    evaluation = client.evals.retrieve(eval_id)
    assert evaluation.name == "capitals-form"
    criteria = [c.model_dump(exclude_none=True) for c in evaluation.testing_criteria]
    assert criteria == expected_answer_criteria("answer")
    runs = client.evals.runs.list(eval_id).data
    assert sorted(r.model for r in runs) == sorted([TINY, final])
    assert {r.id for r in runs} == {run_id for run_id, _ in run_queue.runs}
    source = runs[0].data_source.model_dump(exclude_none=True)
    assert source["source"] == {"type": "file_id", "id": file_id}
    template = source["input_messages"]["template"]
    assert [(m["role"], m["content"]) for m in template] == [
        ("system", "Answer with one word."),
        ("user", "{{ item.question }}"),
    ]

    # The eval's page shows both runs, queued.
    for run in runs:
        row = page.wait_for_selector(f"#runs-table tr[data-run-id='{run.id}']")
        assert row.query_selector(".badge").get_attribute("data-status") == "queued"


def test_the_form_shows_the_api_error(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any
) -> None:
    file_id = client.files.create(
        file=("items.jsonl", io.BytesIO(items_jsonl(CONTENT))), purpose="evals"
    ).id
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/evals")
    page.wait_for_selector(f"#eval-file option[value='{file_id}']", state="attached")
    page.select_option("#eval-file", file_id)
    page.fill("#eval-name", "no-models")
    page.click("#create-eval")
    assert (
        "at least one model" in page.wait_for_selector("#new-eval-form .alert.error").inner_text()
    )
    page.check(f"#eval-models input[value='{TINY}']")
    page.fill("#eval-prompt", "{{ sample.output_text }}")  # not available in a run's messages
    page.click("#create-eval")
    alert = page.wait_for_selector("#new-eval-form .alert.error")
    assert "sample" in alert.inner_text()
    assert "open it" in page.inner_text("#new-eval-form")  # the eval exists; its runs did not start


def test_the_eval_page_compares_runs_and_lists_disagreements(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any, run_queue: RecordingQueue
) -> None:
    evaluation = create_eval(client, testing_criteria=expected_answer_criteria("answer"))
    source = {"type": "file_content", "content": CONTENT}
    run_a = client.evals.runs.create(evaluation.id, data_source=completions(source, TINY))
    run_b = client.evals.runs.create(evaluation.id, data_source=completions(source, TINY))
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/evals/{evaluation.id}")
    for run in (run_a, run_b):
        page.wait_for_selector(f"#runs-table tr[data-run-id='{run.id}'] [data-status=queued]")
    assert "updates every 2 s" in page.inner_text("#runs-refresh")

    # The runs finish while the page is open: A passes item 1, B fails it; both pass 0, fail 2.
    _finish(
        server,
        run_a.id,
        [
            _output_item(0, "Paris", [True, True]),
            _output_item(1, "Rome", [True, True]),
            _output_item(2, "Lisbon", [False, False]),
        ],
    )
    _finish(
        server,
        run_b.id,
        [
            _output_item(0, "Paris", [True, True]),
            _output_item(1, "Milan", [False, False]),
            _output_item(2, "Porto", [False, False]),
        ],
    )
    row_a = page.wait_for_selector(f"tr[data-run-id='{run_a.id}']:has([data-status=completed])")
    row_b = page.wait_for_selector(f"tr[data-run-id='{run_b.id}']:has([data-status=completed])")
    assert row_a.query_selector("[data-field=pass-rate]").inner_text() == "66.7%"
    assert row_b.query_selector("[data-field=pass-rate]").inner_text() == "33.3%"
    assert row_a.query_selector("[data-field=items]").inner_text() == "3"
    assert row_a.query_selector("[data-criterion=exact]").inner_text() == "2/3"
    assert row_b.query_selector("[data-criterion=similar]").inner_text() == "1/3"
    page.wait_for_selector("#runs-refresh:text('All runs finished.')")

    # Only item 1 gets different grades: each run's answer and grade beside it.
    disagreement = page.wait_for_selector("#disagreements tr[data-item-id='1']")
    rows = page.query_selector_all("#disagreements tbody tr")
    assert [r.get_attribute("data-item-id") for r in rows] == ["1"]
    assert "Capital of Italy?" in disagreement.inner_text()
    cell_a = disagreement.query_selector(f"td[data-run-id='{run_a.id}']")
    cell_b = disagreement.query_selector(f"td[data-run-id='{run_b.id}']")
    assert (cell_a.get_attribute("data-grade"), cell_a.query_selector(".answer").inner_text()) == (
        "pass",
        "Rome",
    )
    assert (cell_b.get_attribute("data-grade"), cell_b.query_selector(".answer").inner_text()) == (
        "fail",
        "Milan",
    )
    assert "1 of 3 items" in page.inner_text("#disagreements-note")
    for run in (run_a, run_b):  # both on one model: the columns name their run
        assert run.id in page.inner_text(f"#disagreements th[data-run-id='{run.id}']")

    # A run's failures: its failed items, with the answer and each grade.
    page.click(f"a[data-failures='{run_b.id}']")
    page.wait_for_url(f"**/#/evals/{evaluation.id}/runs/{run_b.id}?status=fail")
    page.wait_for_selector("#run-items tr[data-item-id='2']")
    rows = page.query_selector_all("#run-items tbody tr")
    assert [r.get_attribute("data-item-id") for r in rows] == ["1", "2"]
    assert "Milan" in rows[0].inner_text() and "exact: fail" in rows[0].inner_text()


def test_report_url_opens_the_eval_page(
    server: LiveServer, api_key: str, client: openai.OpenAI, page: Any, run_queue: RecordingQueue
) -> None:
    evaluation = create_eval(client)
    run = client.evals.runs.create(
        evaluation.id, data_source=completions({"type": "file_content", "content": CONTENT})
    )
    assert run.report_url == f"{server.url}/dashboard/evals/{evaluation.id}/runs/{run.id}"
    with server.http() as http:
        response = http.get(run.report_url, follow_redirects=False)
        assert response.status_code in (302, 303, 307)
        assert response.headers["location"] == f"/#/evals/{evaluation.id}?run={run.id}"
        paths = http.get("/openapi.json").json()["paths"]
        assert all(path.startswith("/v1/") for path in paths)
    _sign_in(page, api_key)
    page.goto(run.report_url)
    page.wait_for_selector(f"#runs-table tr.picked[data-run-id='{run.id}']")
    assert page.url.endswith(f"/#/evals/{evaluation.id}?run={run.id}")


def test_an_unknown_eval_shows_the_api_error(server: LiveServer, api_key: str, page: Any) -> None:
    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/evals/eval_nope")
    alert = page.wait_for_selector("#view .alert.error")
    assert "eval_nope" in alert.inner_text()
