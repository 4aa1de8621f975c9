"""OpenAI's wire shapes for evals, runs and output items (`openai.types.eval_*`, `evals/*`).

Requests are parsed loosely here (objects as dicts) and checked in the service, so that every
refusal names its exact parameter (`testing_criteria[1].evaluation_metric`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.orm import Eval, EvalOutputItem, EvalRun
from app.orm.base import unix


class CreateEvalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    metadata: dict[str, Any] | None = None
    data_source_config: dict[str, Any]
    testing_criteria: list[Any]


class UpdateEvalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    metadata: dict[str, Any] | None = None


class CreateEvalRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    metadata: dict[str, Any] | None = None
    data_source: dict[str, Any]


class EvalObject(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, row: Eval) -> EvalObject:
        return cls(
            id=row.id,
            name=row.name or "",
            data_source_config=row.data_source_config,
            testing_criteria=row.testing_criteria,
            created_at=unix(row.created_at) or 0,
            metadata=row.metadata_,
        )


class EvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class ResultCounts(BaseModel):
    total: int = 0
    errored: int = 0
    failed: int = 0
    passed: int = 0


class EvalRunError(BaseModel):
    code: str
    message: str


class EvalRunObject(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    status: str
    model: str
    name: str
    created_at: int
    report_url: str
    result_counts: ResultCounts
    per_model_usage: list[dict[str, Any]]
    per_testing_criteria_results: list[dict[str, Any]]
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    error: EvalRunError | None

    @classmethod
    def of(cls, row: EvalRun, base_url: str) -> EvalRunObject:
        error = None
        if row.error_code is not None or row.error_message is not None:
            error = EvalRunError(code=row.error_code or "", message=row.error_message or "")
        return cls(
            id=row.id,
            eval_id=row.eval_id,
            status=row.status,
            model=row.model,
            name=row.name or "",
            created_at=unix(row.created_at) or 0,
            report_url=f"{base_url.rstrip('/')}/dashboard/evals/{row.eval_id}/runs/{row.id}",
            result_counts=ResultCounts(**(row.result_counts or {})),
            per_model_usage=row.per_model_usage or [],
            per_testing_criteria_results=row.per_testing_criteria_results or [],
            data_source=row.data_source,
            metadata=row.metadata_,
            error=error,
        )


class EvalRunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalRunObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EvalRunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class OutputItemObject(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]

    @classmethod
    def of(cls, row: EvalOutputItem) -> OutputItemObject:
        return cls(
            id=row.id,
            run_id=row.run_id,
            eval_id=row.eval_id,
            created_at=unix(row.created_at) or 0,
            status=row.status,
            datasource_item_id=row.datasource_item_id,
            datasource_item=row.datasource_item,
            results=row.results,
            sample=row.sample or {},
        )


class OutputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OutputItemObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
