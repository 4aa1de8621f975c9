"""The Evals API through the official SDK: evals, runs and output items, on SQLite and Postgres.

Runs are not executed yet (the worker comes later): a run is created `queued` and sent to the
queue once committed; output items are written here through the repository, as the worker will.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from app.evals.repository import EvalRepository
from tests.app.evals.conftest import (
    CONTENT,
    CRITERION,
    ITEM_SCHEMA,
    MODEL,
    ROWS,
    RecordingQueue,
    completions,
    create_eval,
    items_jsonl,
    upload,
)
from tests.app.fine_tuning.conftest import add_fine_tuned_model
from tests.conftest import LiveServer

SIMILARITY = {
    "type": "text_similarity",
    "name": "sim",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.5,
}
SAMPLE_TEMPLATE = [{"role": "user", "content": "{{ sample.output_text }}"}]


# An output item's `sample` as OpenAI's schema requires it (what the run worker must write).
SAMPLE = {
    "input": [{"role": "user", "content": "Capital of France?"}],
    "output": [{"role": "assistant", "content": "Paris"}],
    "finish_reason": "stop",
    "model": MODEL,
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "cached_tokens": 0},
    "error": None,
    "temperature": 1.0,
    "max_completion_tokens": 16,
    "top_p": 1.0,
    "seed": 7,
}


def error_of(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = exc.value.body
    assert isinstance(body, dict)
    return body.get("error", body)  # the SDK hands over the inner object


# Evals --------------------------------------------------------------------------------------


def test_create_retrieve_update_delete(client: openai.OpenAI) -> None:
    created = create_eval(client, metadata={"team": "geo"})
    assert created.object == "eval"
    assert created.id.startswith("eval_")
    assert created.name == "capitals"
    assert created.metadata == {"team": "geo"}
    config = created.data_source_config.model_dump(by_alias=True)
    assert config == {
        "type": "custom",
        "schema": {"type": "object", "properties": {"item": ITEM_SCHEMA}, "required": ["item"]},
    }
    assert created.testing_criteria[0].model_dump(exclude_none=True) == CRITERION

    fetched = client.evals.retrieve(created.id)
    assert fetched.id == created.id and fetched.created_at == created.created_at

    updated = client.evals.update(created.id, name="renamed", metadata={"v": "2"})
    assert (updated.name, updated.metadata) == ("renamed", {"v": "2"})
    assert client.evals.retrieve(created.id).name == "renamed"

    deleted = client.evals.delete(created.id)
    assert (deleted.object, deleted.deleted, deleted.eval_id) == ("eval.deleted", True, created.id)
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(created.id)


def test_sample_schema_is_included_when_asked(client: openai.OpenAI) -> None:
    created = create_eval(
        client,
        data_source_config={
            "type": "custom",
            "item_schema": ITEM_SCHEMA,
            "include_sample_schema": True,
        },
    )
    schema = created.data_source_config.model_dump(by_alias=True)["schema"]
    assert schema["required"] == ["item", "sample"]
    assert set(schema["properties"]) == {"item", "sample"}


@pytest.mark.parametrize(
    ("criteria", "param"),
    [
        (
            [CRITERION, {**SIMILARITY, "evaluation_metric": "nope"}],
            "testing_criteria[1].evaluation_metric",
        ),
        ([{**CRITERION, "operation": "like!"}], "testing_criteria[0].operation"),
        ([{"type": "python", "name": "p", "source": "x"}], "testing_criteria[0].type"),
        ([], "testing_criteria"),
    ],
)  # fmt: skip
def test_bad_criterion_names_its_param(
    client: openai.OpenAI, criteria: list[dict[str, Any]], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        create_eval(client, testing_criteria=criteria)
    assert error_of(exc)["param"] == param


def test_model_grader_must_be_usable_by_the_project(
    server: LiveServer, client: openai.OpenAI
) -> None:
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": MODEL,
        "input": [{"role": "user", "content": "Rate {{ sample.output_text }}"}],
        "range": [0, 1],
    }
    assert create_eval(client, testing_criteria=[grader]).testing_criteria[0].type == "score_model"
    foreign = add_fine_tuned_model(server, "someone-else-evals")
    with pytest.raises(openai.BadRequestError) as exc:
        create_eval(client, testing_criteria=[CRITERION, {**grader, "model": foreign}])
    assert error_of(exc)["param"] == "testing_criteria[1].model"


@pytest.mark.parametrize(
    ("config", "param"),
    [
        ({"type": "logs"}, "data_source_config.type"),
        ({"type": "stored_completions"}, "data_source_config.type"),
        ({"type": "custom"}, "data_source_config.item_schema"),
        ({"type": "custom", "item_schema": {"type": 12}}, "data_source_config.item_schema"),
    ],
)
def test_unsupported_data_source_configs(
    client: openai.OpenAI, config: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        create_eval(client, data_source_config=config)
    assert error_of(exc)["param"] == param
    if config["type"] != "custom":
        assert "not supported by this server" in error_of(exc)["message"]


def test_list_pages_and_orders(client: openai.OpenAI) -> None:
    ids = [create_eval(client, name=f"e{i}").id for i in range(3)]
    first = client.evals.list(limit=2)
    assert [e.id for e in first.data] == ids[:2]
    assert first.has_more and first.first_id == ids[0] and first.last_id == ids[1]
    rest = client.evals.list(limit=2, after=first.last_id)
    assert [e.id for e in rest.data] == ids[2:] and not rest.has_more
    newest = client.evals.list(order="desc", limit=1)
    assert newest.data[0].id == ids[-1]
    client.evals.update(ids[0], name="touched")
    by_update = client.evals.list(order="desc", order_by="updated_at", limit=1)
    assert by_update.data[0].id == ids[0]
    assert [e.id for e in client.evals.list(limit=1)] == ids


def test_empty_list(client: openai.OpenAI) -> None:
    page = client.evals.list()
    assert page.data == [] and not page.has_more


def test_isolation(server: LiveServer, client: openai.OpenAI, run_queue: RecordingQueue) -> None:
    mine = create_eval(client)
    run = client.evals.runs.create(
        mine.id, data_source=completions({"type": "file_content", "content": CONTENT[:1]})
    )
    other = server.client(server.new_key())
    assert other.evals.list().data == []
    for call in (
        lambda: other.evals.retrieve(mine.id),
        lambda: other.evals.update(mine.id, name="x"),
        lambda: other.evals.delete(mine.id),
        lambda: other.evals.runs.retrieve(run.id, eval_id=mine.id),
        lambda: other.evals.runs.list(mine.id),
        lambda: other.evals.runs.cancel(run.id, eval_id=mine.id),
        lambda: other.evals.runs.output_items.list(run.id, eval_id=mine.id),
    ):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert error_of(exc)["type"] == "invalid_request_error"
    assert client.evals.retrieve(mine.id).name == "capitals"


# Runs ---------------------------------------------------------------------------------------


def test_run_over_a_file_is_queued_and_sent_after_commit(
    server: LiveServer, client: openai.OpenAI, run_queue: RecordingQueue
) -> None:
    evaluation = create_eval(client)
    file_id = upload(client, items_jsonl(ROWS))
    run = client.evals.runs.create(
        evaluation.id,
        name="base",
        data_source=completions(
            {"type": "file_id", "id": file_id},
            sampling_params={"temperature": 0, "max_completions_tokens": 16, "seed": 7},
        ),
    )
    assert run.object == "eval.run" and run.id.startswith("evalrun_")
    assert (run.status, run.model, run.name, run.eval_id) == (
        "queued",
        MODEL,
        "base",
        evaluation.id,
    )
    assert run.error is None
    assert run.result_counts.total == 0
    assert run.report_url == f"{server.url}/dashboard/evals/{evaluation.id}/runs/{run.id}"
    source = run.data_source.model_dump(exclude_none=True)
    assert source["source"] == {"type": "file_id", "id": file_id}
    assert source["sampling_params"] == {"temperature": 0, "max_completions_tokens": 16, "seed": 7}
    assert run_queue.runs == [(run.id, "queued")]
    with server.app.state.db.session_scope() as session:
        row = EvalRepository(session).get_run(run.id)
        assert row is not None
        assert (row.items_total, row.items_done, row.attempt) == (3, 0, 0)
        assert row.enqueued_at is not None


def test_run_on_a_fine_tuned_model_and_its_checkpoint(
    server: LiveServer, run_queue: RecordingQueue
) -> None:
    name = "evals-ft-owner"
    client = server.client(server.new_key(name))
    final = add_fine_tuned_model(server, name)
    checkpoint = add_fine_tuned_model(server, name, checkpoint_step=2)
    evaluation = create_eval(client)
    content = {"type": "file_content", "content": CONTENT[:1]}
    for model in (final, checkpoint):
        run = client.evals.runs.create(evaluation.id, data_source=completions(content, model))
        assert run.model == model


def test_foreign_or_unknown_model_is_404(
    server: LiveServer, client: openai.OpenAI, run_queue: RecordingQueue
) -> None:
    evaluation = create_eval(client)
    foreign = add_fine_tuned_model(server, "evals-other-project")
    content = {"type": "file_content", "content": CONTENT[:1]}
    for model in (foreign, "no-such-model"):
        with pytest.raises(openai.NotFoundError) as exc:
            client.evals.runs.create(evaluation.id, data_source=completions(content, model))
        assert error_of(exc)["param"] == "data_source.model"
        assert error_of(exc)["code"] == "model_not_found"
    assert run_queue.runs == []


def test_file_errors(server: LiveServer, client: openai.OpenAI, run_queue: RecordingQueue) -> None:
    evaluation = create_eval(client)

    def refused(file_id: str) -> dict[str, Any]:
        with pytest.raises(openai.BadRequestError) as exc:
            client.evals.runs.create(
                evaluation.id, data_source=completions({"type": "file_id", "id": file_id})
            )
        error = error_of(exc)
        assert error["param"] == "data_source.source.id"
        return error

    assert refused("file-nope")["code"] == "file_not_found"
    foreign = upload(server.client(server.new_key()), items_jsonl(ROWS))
    assert refused(foreign)["code"] == "file_not_found"
    from tests.datasets import chat_jsonl

    wrong = upload(client, chat_jsonl(12), purpose="fine-tune")
    assert refused(wrong)["code"] == "invalid_file_purpose"
    bad_line = items_jsonl([ROWS[0], ROWS[1], {"item": {"question": "no answer"}}])
    assert refused(upload(client, bad_line))["message"].startswith("Line 3: ")
    not_json = items_jsonl(ROWS[:1]) + b"{oops\n"
    assert refused(upload(client, not_json))["message"].startswith("Line 2: ")
    assert run_queue.runs == []


@pytest.mark.parametrize(
    ("data_source", "param"),
    [
        (
            completions({"type": "file_content", "content": [{"item": {"question": "q"}}]}),
            "data_source.source.content[0].item",
        ),
        (
            {**completions({"type": "file_content", "content": CONTENT[:1]}),
             "input_messages": {"type": "template", "template": []}},
            "data_source.input_messages.template",
        ),
        (
            {**completions({"type": "file_content", "content": CONTENT[:1]}),
             "input_messages": {"type": "template", "template": SAMPLE_TEMPLATE}},
            "data_source.input_messages.template[0].content",
        ),
        (
            completions({"type": "file_content", "content": CONTENT[:1]},
                        sampling_params={"temperature": 5}),
            "data_source.sampling_params.temperature",
        ),
        ({"type": "jsonl", "source": {"type": "file_content", "content": CONTENT[:1]}},
         "data_source.type"),
        (completions({"type": "stored_completions"}), "data_source.source.type"),
        (
            {**completions({"type": "file_content", "content": CONTENT[:1]}),
             "input_messages": {"type": "item_reference", "item_reference": "sample.output"}},
            "data_source.input_messages.item_reference",
        ),
        (
            {**completions({"type": "file_content", "content": CONTENT[:1]}),
             "input_messages": {"type": "item_reference"}},
            "data_source.input_messages.item_reference",
        ),
        (
            {**completions({"type": "file_content", "content": CONTENT[:1]}),
             "input_messages": {"type": "item_reference", "item_reference": "item.x", "x": 1}},
            "data_source.input_messages.x",
        ),
        (
            {**completions({"type": "file_content", "content": CONTENT[:1]}),
             "input_messages": {"type": "messages"}},
            "data_source.input_messages.type",
        ),
    ],
)  # fmt: skip
def test_run_errors_name_their_param(
    client: openai.OpenAI, run_queue: RecordingQueue, data_source: dict[str, Any], param: str
) -> None:
    evaluation = create_eval(client)
    with pytest.raises(openai.BadRequestError) as exc:
        client.evals.runs.create(evaluation.id, data_source=data_source)  # type: ignore[arg-type]
    assert error_of(exc)["param"] == param


def test_a_run_may_prompt_with_each_items_own_messages(
    client: openai.OpenAI, run_queue: RecordingQueue
) -> None:
    evaluation = create_eval(client)
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            **completions({"type": "file_content", "content": CONTENT[:1]}),
            "input_messages": {"type": "item_reference", "item_reference": " item.turns "},
        },  # type: ignore[arg-type]
    )
    source = run.data_source.model_dump(exclude_none=True)
    assert source["input_messages"] == {"type": "item_reference", "item_reference": "item.turns"}


def test_active_runs_quota(server: LiveServer, run_queue: RecordingQueue) -> None:
    client = server.client(server.new_key())
    evaluation = create_eval(client)
    content = {"type": "file_content", "content": CONTENT[:1]}
    server.app.state.settings.max_active_eval_runs_per_project = 2
    try:
        first = client.evals.runs.create(evaluation.id, data_source=completions(content))
        client.evals.runs.create(evaluation.id, data_source=completions(content))
        with pytest.raises(openai.RateLimitError) as exc:
            client.evals.runs.create(evaluation.id, data_source=completions(content))
        assert error_of(exc)["code"] == "quota_exceeded"
        assert "2 eval runs queued or in progress" in error_of(exc)["message"]
        # A finished (here: canceled) run no longer counts.
        client.evals.runs.cancel(first.id, eval_id=evaluation.id)
        client.evals.runs.create(evaluation.id, data_source=completions(content))
    finally:
        server.app.state.settings.max_active_eval_runs_per_project = None


def test_run_on_unknown_eval_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.create(
            "eval_nope", data_source=completions({"type": "file_content", "content": CONTENT})
        )


def test_list_cancel_delete_runs(
    server: LiveServer, client: openai.OpenAI, run_queue: RecordingQueue
) -> None:
    evaluation = create_eval(client)
    content = {"type": "file_content", "content": CONTENT}
    runs = [
        client.evals.runs.create(evaluation.id, data_source=completions(content)).id
        for _ in range(3)
    ]
    page = client.evals.runs.list(evaluation.id, limit=2)
    assert [r.id for r in page.data] == runs[:2] and page.has_more
    assert [r.id for r in client.evals.runs.list(evaluation.id, after=runs[1]).data] == runs[2:]
    assert client.evals.runs.list(evaluation.id, order="desc", limit=1).data[0].id == runs[2]

    canceled = client.evals.runs.cancel(runs[0], eval_id=evaluation.id)
    assert canceled.status == "canceled"
    with pytest.raises(openai.BadRequestError) as exc:
        client.evals.runs.cancel(runs[0], eval_id=evaluation.id)
    assert "'canceled'" in error_of(exc)["message"]
    listed = client.evals.runs.list(evaluation.id, status="canceled")
    assert [r.id for r in listed.data] == [runs[0]]
    assert len(client.evals.runs.list(evaluation.id, status="queued").data) == 2

    deleted = client.evals.runs.delete(runs[1], eval_id=evaluation.id)
    assert (deleted.object, deleted.deleted, deleted.run_id) == ("eval.run.deleted", True, runs[1])
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(runs[1], eval_id=evaluation.id)
    client.evals.delete(evaluation.id)
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(runs[2], eval_id=evaluation.id)


# Output items -------------------------------------------------------------------------------


def test_output_items_list_and_filter(
    server: LiveServer, client: openai.OpenAI, run_queue: RecordingQueue
) -> None:
    evaluation = create_eval(client)
    run = client.evals.runs.create(
        evaluation.id, data_source=completions({"type": "file_content", "content": CONTENT})
    )
    result = {"name": "exact", "type": "string_check", "score": 1.0, "passed": True, "sample": None}
    statuses = ["pass", "fail", "pass"]
    with server.app.state.db.session_scope() as session:
        repo = EvalRepository(session)
        row = repo.get_run(run.id)
        assert row is not None
        for index, status in enumerate(statuses):
            repo.add_output_item(
                row,
                datasource_item_id=index,
                datasource_item=ROWS[0]["item"],
                sample=SAMPLE,
                results=[{**result, "passed": status == "pass"}],
                status=status,
            )  # fmt: skip
        assert repo.done_item_ids(run.id) == {0, 1, 2}
    items = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id)
    assert [i.datasource_item_id for i in items.data] == [0, 1, 2]
    assert items.data[0].object == "eval.run.output_item"
    assert items.data[0].results[0].name == "exact"
    passed = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, status="pass")
    assert [i.datasource_item_id for i in passed.data] == [0, 2]
    page = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=1, order="desc")
    assert page.data[0].datasource_item_id == 2 and page.has_more
    one = client.evals.runs.output_items.retrieve(
        items.data[1].id, eval_id=evaluation.id, run_id=run.id
    )
    assert (one.id, one.status) == (items.data[1].id, "fail")
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.output_items.retrieve(
            "outputitem_x", eval_id=evaluation.id, run_id=run.id
        )
