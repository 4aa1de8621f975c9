"""Evals and their runs: create (every check with its exact `param`), read, update, cancel, delete.

The graders and templates are `tuna_core.evals`'s (`check_criterion`, `check_messages`); this
module checks what only the server knows: the project's models and files, and each data item
against the eval's item schema. A run is created `queued` and its id handed to the queue once
the row is committed, exactly as a fine-tuning job is; the worker that executes runs moves it
through `EvalRepository.move_run`.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import jsonschema_rs
from sqlalchemy.orm import Session

from app.catalog.base_models import find_offered_base_model
from app.catalog.repository import ModelRepository
from app.config import Settings
from app.db import send_after_commit
from app.errors import InvalidRequest, NotFound, RateLimited
from app.evals import job_comparison
from app.evals.queue import EvalRunQueue
from app.evals.repository import (
    ACTIVE_RUN_STATUSES,
    CANCELED,
    EVAL_PREFIX,
    QUEUED,
    RUN_PREFIX,
    EvalRepository,
)
from app.evals.schemas import CreateEvalRequest, CreateEvalRunRequest, UpdateEvalRequest
from app.files.repository import FileRepository
from app.files.service import usable_file
from app.files.storage import LocalStorage
from app.ids import new_id
from app.metadata import check_metadata
from app.orm import Eval, EvalOutputItem, EvalRun, Project
from app.orm.base import utcnow
from app.pagination import Order, Page
from app.quotas import hold_project
from app.webhooks import events as webhook_events
from app.webhooks.outbox import emit
from tuna_core.evals import (
    GraderConfigError,
    check_criterion,
    check_item_reference,
    check_messages,
)
from tuna_core.model_ids import is_fine_tuned_model_id

logger = logging.getLogger("tuna.evals")

EVALS_PURPOSE = "evals"
MAX_TESTING_CRITERIA = 32
MAX_ITEMS = 100_000
MAX_NAME = 512
# The `sample` namespace a run fills for each item (`tuna_core.evals.build_sample`).
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "message": {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string", "enum": ["assistant"]},
                            "content": {"type": ["string", "null"]},
                            "tool_calls": {"type": "array", "items": {"type": "object"}},
                        },
                        "required": ["role", "content"],
                    },
                    "finish_reason": {"type": "string"},
                },
                "required": ["index", "message", "finish_reason"],
            },
        },
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["model", "choices"],
}
SAMPLING_PARAMS = ("temperature", "max_completions_tokens", "top_p", "seed")
UNSUPPORTED_CONFIGS = ("logs", "stored_completions")
MAX_SEED = 2_147_483_647


class EvalService:
    def __init__(
        self, session: Session, settings: Settings, storage: LocalStorage, queue: EvalRunQueue
    ) -> None:
        self.session = session
        self.settings = settings
        self.storage = storage
        self.queue = queue
        self.evals = EvalRepository(session)
        self.files = FileRepository(session)
        self.models = ModelRepository(session)

    # Evals --------------------------------------------------------------------------------

    def create(self, project: Project, request: CreateEvalRequest) -> Eval:
        name = _name(request.name, "name")
        metadata = check_metadata(request.metadata)
        config = _data_source_config(request.data_source_config)
        criteria = self._testing_criteria(project, request.testing_criteria)
        now = utcnow()
        return self.evals.add_eval(
            Eval(
                id=new_id(EVAL_PREFIX),
                project_id=project.id,
                name=name,
                metadata_=metadata,
                data_source_config=config,
                testing_criteria=criteria,
                created_at=now,
                updated_at=now,
            )
        )

    def _testing_criteria(
        self, project: Project, criteria: builtins.list[Any]
    ) -> builtins.list[dict[str, Any]]:
        if not criteria:
            raise InvalidRequest(
                "Invalid 'testing_criteria': expected at least one testing criterion.",
                param="testing_criteria",
            )
        if len(criteria) > MAX_TESTING_CRITERIA:
            raise InvalidRequest(
                f"Invalid 'testing_criteria': at most {MAX_TESTING_CRITERIA} are allowed, "
                f"got {len(criteria)}.",
                param="testing_criteria",
            )
        known = self.known_model(project)
        for index, criterion in enumerate(criteria):
            try:
                check_criterion(criterion, f"testing_criteria[{index}]", known_model=known)
            except GraderConfigError as exc:
                raise _config_error(exc) from None
        return [dict(criterion) for criterion in criteria]

    def known_model(self, project: Project) -> Callable[[str], bool]:
        """Whether this project can use a model: an offered base model or one of its `ft:` ids."""
        return lambda model: self._resolve_model(project, model) is not None

    def _resolve_model(self, project: Project, model: str) -> str | None:
        """The model's name as stored on a run (a base model's canonical name), or None."""
        base = find_offered_base_model(self.settings, model)
        if base is not None:
            return base.name
        if is_fine_tuned_model_id(model) and self.models.get(project.id, model) is not None:
            return model
        return None

    def get(self, project: Project, eval_id: str, *, param: str = "eval_id") -> Eval:
        row = self.evals.get_eval(eval_id, project_id=project.id)
        if row is None:
            raise NotFound(f"No such eval: {eval_id}", param=param)
        return row

    def list(
        self, project: Project, *, after: str | None, limit: int, order: Order, order_by: str
    ) -> Page[Eval]:
        cursor = self.get(project, after, param="after") if after is not None else None
        return self.evals.list_evals(
            project.id, after=cursor, limit=limit, order=order, order_by=order_by
        )

    def update(self, project: Project, eval_id: str, request: UpdateEvalRequest) -> Eval:
        row = self.get(project, eval_id)
        values: dict[str, Any] = {}
        if "name" in request.model_fields_set and request.name is not None:
            values["name"] = _name(request.name, "name")
        if "metadata" in request.model_fields_set:
            values["metadata_"] = check_metadata(request.metadata)
        return self.evals.update_eval(row, **values)

    def delete(self, project: Project, eval_id: str) -> str:
        row = self.get(project, eval_id)
        self.evals.delete_eval(row)
        return eval_id

    # Runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        project: Project,
        eval_id: str,
        request: CreateEvalRunRequest,
        *,
        counted: bool = True,
    ) -> EvalRun:
        """A queued run. ``counted=False`` is for the server's own runs (a job's comparison),
        which the project's active-run quota does not limit."""
        row = self.get(project, eval_id)
        name = _name(request.name, "name")
        metadata = check_metadata(request.metadata)
        source = request.data_source
        kind = source.get("type")
        if kind != "completions":
            raise InvalidRequest(
                f"Invalid value for 'data_source.type': {json.dumps(kind)}. Runs with data_source "
                "type 'jsonl' or 'responses' are not supported by this server; use "
                "'completions'.",
                param="data_source.type",
            )
        _only_keys(
            source,
            {"type", "source", "input_messages", "model", "sampling_params"},
            "data_source",
        )
        model = self._run_model(project, source.get("model"))
        input_messages = _input_messages(source.get("input_messages"))
        sampling = _sampling_params(source.get("sampling_params"))
        checked_source, count = self._source(project, source.get("source"), _item_validator(row))
        if counted:
            self._check_active_runs_quota(project)
        data_source: dict[str, Any] = {
            "type": "completions",
            "source": checked_source,
            "input_messages": input_messages,
            "model": model,
            "sampling_params": sampling,
        }
        run = self.evals.add_run(
            EvalRun(
                id=new_id(RUN_PREFIX),
                eval_id=row.id,
                project_id=project.id,
                name=name or model,
                model=model,
                data_source=data_source,
                metadata_=metadata,
                status=QUEUED,
                result_counts={"total": 0, "errored": 0, "failed": 0, "passed": 0},
                per_testing_criteria_results=[],
                per_model_usage=[],
                items_total=count,
                items_done=0,
                created_at=utcnow(),
            )
        )
        self._enqueue_after_commit(run.id)
        return run

    def _check_active_runs_quota(self, project: Project) -> None:
        limit = self.settings.max_active_eval_runs_per_project
        if not limit:
            return
        hold_project(self.session, project.id)  # racing creates count one after the other
        active = self.evals.count_active_runs(project.id)
        if active >= limit:
            raise RateLimited(
                f"This project already has {active} eval runs queued or in progress (the "
                f"limit is {limit}). Wait for one to finish or cancel one.",
                code="quota_exceeded",
            )

    def _run_model(self, project: Project, model: Any) -> str:
        if not isinstance(model, str) or not model:
            raise InvalidRequest(
                "Missing required parameter: 'data_source.model'.", param="data_source.model"
            )
        resolved = self._resolve_model(project, model)
        if resolved is None:
            raise NotFound(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="data_source.model",
                code="model_not_found",
            )
        return resolved

    def _source(self, project: Project, source: Any, validator: Any) -> tuple[dict[str, Any], int]:
        """The checked source as stored, and how many items it holds."""
        param = "data_source.source"
        if not isinstance(source, dict):
            raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
        kind = source.get("type")
        if kind == "file_id":
            _only_keys(source, {"type", "id"}, param)
            file_id = source.get("id")
            if not isinstance(file_id, str) or not file_id:
                raise InvalidRequest(
                    f"Missing required parameter: '{param}.id'.", param=f"{param}.id"
                )
            items = self._read_file(project, file_id)
            for number, item in items:
                _check_item(validator, item, f"Line {number}", f"{param}.id")
            return {"type": "file_id", "id": file_id}, len(items)
        if kind == "file_content":
            _only_keys(source, {"type", "content"}, param)
            content = source.get("content")
            if not isinstance(content, list) or not content:
                raise InvalidRequest(
                    f"Invalid '{param}.content': expected a non-empty array of "
                    '{"item": {...}} objects.',
                    param=f"{param}.content",
                )
            if len(content) > MAX_ITEMS:
                raise InvalidRequest(
                    f"Invalid '{param}.content': at most {MAX_ITEMS} items, got {len(content)}.",
                    param=f"{param}.content",
                )
            rows = []
            for index, entry in enumerate(content):
                where = f"{param}.content[{index}]"
                if not isinstance(entry, dict) or not isinstance(entry.get("item"), dict):
                    raise InvalidRequest(
                        f"Invalid '{where}': expected an object with an 'item' object.",
                        param=f"{where}.item",
                    )
                _only_keys(entry, {"item", "sample"}, where)
                _check_item(validator, entry["item"], f"Invalid '{where}.item'", f"{where}.item")
                rows.append({key: entry[key] for key in ("item", "sample") if key in entry})
            return {"type": "file_content", "content": rows}, len(rows)
        raise InvalidRequest(
            f"Invalid value for '{param}.type': {json.dumps(kind)}. Expected 'file_id' or "
            "'file_content'.",
            param=f"{param}.type",
        )

    def _read_file(
        self, project: Project, file_id: str
    ) -> builtins.list[tuple[int, dict[str, Any]]]:
        """(line number, item) for each non-blank line of the project's `evals` file."""
        param = "data_source.source.id"
        row = usable_file(
            self.files, project.id, file_id, param=param, purpose=EVALS_PURPOSE, use="evals"
        )
        try:
            raw = self.storage.path(row.storage_key).read_bytes()
        except OSError:
            raise InvalidRequest(
                f"Invalid {param}: {file_id}. The file's content is not available.",
                param=param,
                code="file_not_found",
            ) from None
        items: builtins.list[tuple[int, dict[str, Any]]] = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise InvalidRequest(
                    f"Line {number}: not valid JSON.", param=param, code="invalid_file_format"
                ) from None
            if not isinstance(value, dict):
                raise InvalidRequest(
                    f"Line {number}: expected a JSON object, got {type(value).__name__}.",
                    param=param,
                    code="invalid_file_format",
                )
            # `{"item": {...}}`, or (as OpenAI accepts) the bare object taken as the item.
            item = value["item"] if isinstance(value.get("item"), dict) else value
            items.append((number, item))
            if len(items) > MAX_ITEMS:
                raise InvalidRequest(
                    f"Invalid {param}: {file_id}. A run takes at most {MAX_ITEMS} items.",
                    param=param,
                    code="invalid_file_format",
                )
        if not items:
            raise InvalidRequest(
                f"Invalid {param}: {file_id}. The file has no items.",
                param=param,
                code="invalid_file_format",
            )
        return items

    def _enqueue_after_commit(self, run_id: str) -> None:
        queue = self.queue
        send_after_commit(
            self.session,
            run_id,
            lambda: queue.enqueue_eval_run(run_id),
            lambda session: EvalRepository(session).mark_enqueued(run_id, utcnow()),
        )

    def get_run(
        self, project: Project, eval_id: str, run_id: str, *, param: str = "run_id"
    ) -> EvalRun:
        row = self.get(project, eval_id)
        run = self.evals.get_run(run_id, eval_id=row.id, project_id=project.id)
        if run is None:
            raise NotFound(f"No such eval run: {run_id}", param=param)
        return run

    def list_runs(
        self,
        project: Project,
        eval_id: str,
        *,
        after: str | None,
        limit: int,
        order: Order,
        status: str | None,
    ) -> Page[EvalRun]:
        row = self.get(project, eval_id)
        cursor = self.get_run(project, eval_id, after, param="after") if after else None
        return self.evals.list_runs(row.id, status=status, after=cursor, limit=limit, order=order)

    def cancel_run(self, project: Project, eval_id: str, run_id: str) -> EvalRun:
        run = self.get_run(project, eval_id, run_id)
        moved = self.evals.move_run(
            run.id,
            CANCELED,
            only_from=ACTIVE_RUN_STATUSES,
            finished_at=utcnow(),
            lease_expires_at=None,
        )
        reloaded = self.evals.reload_run(run.id)
        assert reloaded is not None
        if moved:
            emit(self.session, run.project_id, webhook_events.EVAL_RUN_CANCELED, run.id)
            # A job's comparison reports when its last run ends, a canceled one included.
            job_comparison.report_if_finished(self.session, run.eval_id)
        if not moved:
            raise InvalidRequest(
                f"Cannot cancel eval run {run.id}: its status is '{reloaded.status}'.",
                param="run_id",
                code="invalid_run_status",
            )
        return reloaded

    def delete_run(self, project: Project, eval_id: str, run_id: str) -> str:
        run = self.get_run(project, eval_id, run_id)
        self.evals.delete_run(run)
        return run_id

    # Output items -------------------------------------------------------------------------

    def list_output_items(
        self,
        project: Project,
        eval_id: str,
        run_id: str,
        *,
        after: str | None,
        limit: int,
        order: Order,
        status: str | None,
    ) -> Page[EvalOutputItem]:
        run = self.get_run(project, eval_id, run_id)
        cursor = None
        if after is not None:
            cursor = self.evals.get_output_item(after, run_id=run.id)
            if cursor is None:
                raise NotFound(f"No such output item: {after}", param="after")
        return self.evals.list_output_items(
            run.id, status=status, after=cursor, limit=limit, order=order
        )

    def get_output_item(
        self, project: Project, eval_id: str, run_id: str, item_id: str
    ) -> EvalOutputItem:
        run = self.get_run(project, eval_id, run_id)
        item = self.evals.get_output_item(item_id, run_id=run.id)
        if item is None:
            raise NotFound(f"No such output item: {item_id}", param="output_item_id")
        return item


# -- checks that need no database -------------------------------------------------------------


def _config_error(exc: GraderConfigError) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{exc.param}': {exc.message}.", param=exc.param)


def _name(name: str | None, param: str) -> str | None:
    if name is not None and len(name) > MAX_NAME:
        raise InvalidRequest(
            f"Invalid '{param}': at most {MAX_NAME} characters, got {len(name)}.", param=param
        )
    return name


def _only_keys(obj: dict[str, Any], allowed: set[str], param: str) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidRequest(f"Unknown parameter: '{param}.{key}'.", param=f"{param}.{key}")


def _data_source_config(config: dict[str, Any]) -> dict[str, Any]:
    """`{type: custom, item_schema, include_sample_schema}` -> the config as OpenAI returns it."""
    param = "data_source_config"
    kind = config.get("type")
    if kind in UNSUPPORTED_CONFIGS:
        raise InvalidRequest(
            f"Invalid value for '{param}.type': '{kind}' data sources read OpenAI's stored "
            "logs, which are not supported by this server; use 'custom'.",
            param=f"{param}.type",
        )
    if kind != "custom":
        raise InvalidRequest(
            f"Invalid value for '{param}.type': {json.dumps(kind)}. Expected 'custom'.",
            param=f"{param}.type",
        )
    _only_keys(config, {"type", "item_schema", "include_sample_schema"}, param)
    item_schema = config.get("item_schema")
    if not isinstance(item_schema, dict):
        raise InvalidRequest(
            f"Invalid '{param}.item_schema': expected a JSON schema object.",
            param=f"{param}.item_schema",
        )
    try:
        jsonschema_rs.validator_for(item_schema)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid schema"
        raise InvalidRequest(
            f"Invalid '{param}.item_schema': not a valid JSON schema ({first}).",
            param=f"{param}.item_schema",
        ) from None
    include_sample = config.get("include_sample_schema", False)
    if not isinstance(include_sample, bool):
        raise InvalidRequest(
            f"Invalid '{param}.include_sample_schema': expected a boolean.",
            param=f"{param}.include_sample_schema",
        )
    properties: dict[str, Any] = {"item": item_schema}
    required = ["item"]
    if include_sample:
        properties["sample"] = SAMPLE_SCHEMA
        required.append("sample")
    return {
        "type": "custom",
        "schema": {"type": "object", "properties": properties, "required": required},
    }


def _item_validator(row: Eval) -> Any:
    schema = row.data_source_config.get("schema", {})
    return jsonschema_rs.validator_for(schema.get("properties", {}).get("item", {}))


def _check_item(validator: Any, item: Any, prefix: str, param: str) -> None:
    for error in validator.iter_errors(item):
        path = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.instance_path
        )
        where = f" at item{path}" if path else ""
        raise InvalidRequest(
            f"{prefix}: the item does not match the eval's item_schema{where}: {error.message}",
            param=param,
            code="invalid_item",
        )


def _input_messages(value: Any) -> dict[str, Any]:
    """The run's `input_messages` as stored: a template, or a reference to each item's own."""
    param = "data_source.input_messages"
    if not isinstance(value, dict):
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    kind = value.get("type")
    if kind == "item_reference":
        _only_keys(value, {"type", "item_reference"}, param)
        reference = value.get("item_reference")
        try:
            check_item_reference(reference, f"{param}.item_reference")
        except GraderConfigError as exc:
            raise _config_error(exc) from None
        return {"type": "item_reference", "item_reference": str(reference).strip()}
    if kind != "template":
        raise InvalidRequest(
            f"Invalid value for '{param}.type': {json.dumps(kind)}. Expected 'template' or "
            "'item_reference'.",
            param=f"{param}.type",
        )
    _only_keys(value, {"type", "template"}, param)
    template = value.get("template")
    try:
        check_messages(template, f"{param}.template")
    except GraderConfigError as exc:
        raise _config_error(exc) from None
    assert isinstance(template, list)
    return {"type": "template", "template": template}


def _sampling_params(value: Any) -> dict[str, Any]:
    param = "data_source.sampling_params"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid '{param}': expected an object.", param=param)
    out: dict[str, Any] = {}
    for key, given in value.items():
        where = f"{param}.{key}"
        if key not in SAMPLING_PARAMS:
            raise InvalidRequest(
                f"Unknown parameter: '{where}'. This server takes {', '.join(SAMPLING_PARAMS)}.",
                param=where,
            )
        if given is None:
            continue
        number = isinstance(given, int | float) and not isinstance(given, bool)
        if key == "temperature" and not (number and math.isfinite(given) and 0 <= given <= 2):
            raise InvalidRequest(f"Invalid '{where}': expected a number from 0 to 2.", param=where)
        if key == "top_p" and not (number and math.isfinite(given) and 0 < given <= 1):
            raise InvalidRequest(
                f"Invalid '{where}': expected a number above 0, at most 1.", param=where
            )
        if key == "max_completions_tokens" and not (
            isinstance(given, int) and not isinstance(given, bool) and given >= 1
        ):
            raise InvalidRequest(
                f"Invalid '{where}': expected an integer of at least 1.", param=where
            )
        if key == "seed" and not (
            isinstance(given, int) and not isinstance(given, bool) and 0 <= given <= MAX_SEED
        ):
            raise InvalidRequest(
                f"Invalid '{where}': expected an integer from 0 to {MAX_SEED}.", param=where
            )
        out[key] = given
    return out
