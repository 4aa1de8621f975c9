"""One eval run, start to finish: claim it, answer every item with the model, grade, total up.

What must hold:

* A run is claimed with a conditional UPDATE (queued -> in_progress, attempt + 1, this
  worker's id and lease); a repeat delivery, or a run canceled while it waited, just returns.
* The lease is renewed from a thread (`worker.heartbeat`) while the run executes, so a worker
  that dies is noticed within a lease period and the reconciler puts the run back in the queue.
* Output items are written in small batches, at most one per (run, item): a resumed run skips
  the items an earlier attempt wrote. Between batches the run's status is read again; a run
  that was canceled stops there and stays canceled.
* A problem of one item (a template naming a missing field, a prompt too long for the model, a
  judge that fails) errors that item, never the run. What makes the whole run impossible (its
  model or its file gone) fails it with a clear error.
* Generation goes through the inference engine with all pending items submitted at once (a
  semaphore of `inference_max_batch_size`), so the local engine decodes them in one
  continuous batch. Model graders get a synchronous judge that calls the same engine from the
  grading thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func

from app.config import Settings
from app.db import Database
from app.errors import APIError, RateLimited
from app.evals import job_comparison
from app.evals.repository import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    EvalRepository,
)
from app.files.repository import FileRepository
from app.files.storage import LocalStorage
from app.inference.engine import InferenceEngine
from app.inference.service import InferenceService
from app.inference.types import GenerationResult, ModelTarget, SamplingParams
from app.orm import EvalOutputItem, EvalRun, Project
from app.orm.base import utcnow
from app.sync import run_to_completion
from app.webhooks import events as webhook_events
from app.webhooks.outbox import emit
from tuna_core.dataset import ExampleError, check_request_messages
from tuna_core.evals import (
    GradeResult,
    TemplateError,
    build_sample,
    grade,
    item_status,
    referenced_messages,
    render_messages,
    summarize,
)
from worker.heartbeat import Heartbeat

logger = logging.getLogger("tuna.worker")

# Output items written per transaction; the run's status (canceled?) is read between them.
WRITE_BATCH = 8
# A run's answers and a judge's, when the run or criterion sets no maximum: enough for a
# sentence or a short paragraph, not the whole context window.
DEFAULT_MAX_TOKENS = 256
DEFAULT_JUDGE_MAX_TOKENS = 64
MODEL_GRADERS = ("score_model", "label_model")
# A full engine queue (429) is waited out, not turned into errored items.
_RATE_LIMIT_TRIES = 20


class RunFailure(Exception):
    """What fails the whole run: OpenAI's run `error` {code, message}."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    eval_id: str
    model: str
    target: ModelTarget
    input_messages: dict[str, Any]  # as stored: a template or an item_reference
    sampling: dict[str, Any]
    criteria: list[dict[str, Any]]
    items: list[dict[str, Any]]
    done: frozenset[int]
    judges: dict[str, ModelTarget | str]  # model -> target, or why it cannot be used


@dataclass
class Outcome:
    index: int
    item: dict[str, Any]
    sample: dict[str, Any]
    grades: list[GradeResult] | None


@dataclass
class Usage:
    invocations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class UsageBook:
    by_model: dict[str, Usage] = field(default_factory=dict)

    def add(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        usage = self.by_model.setdefault(model, Usage())
        usage.invocations += 1
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens


class _RunLease(Heartbeat):
    """`worker.heartbeat.Heartbeat` renewing an eval run's lease instead of a job's."""

    def renew(self) -> None:
        with self.db.session_scope() as session:
            EvalRepository(session).renew_run_lease(
                self.job_id, self.worker_id, utcnow() + self.lease
            )


class EvalRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        storage: LocalStorage,
        worker_id: str,
        engine: Callable[[], InferenceEngine],
    ) -> None:
        self.settings = settings
        self.db = database
        self.storage = storage
        self.worker_id = worker_id
        self.engine = engine
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        self.concurrency = max(1, settings.inference_max_batch_size)

    def run(self, run_id: str) -> None:
        if not self._claim(run_id):
            return  # canceled, finished, or another worker has it: a harmless repeat
        try:
            with _RunLease(self.db, run_id, self.worker_id, self.lease):
                plan = self._plan(run_id)
                usage = UsageBook()
                if run_to_completion(self._execute(plan, usage)):
                    self._complete(plan, usage)
        except RunFailure as exc:
            self._fail(run_id, exc.code, exc.message)
        except BaseException as exc:  # every failure must surface on the run
            logger.exception("eval run %s failed", run_id)
            detail = str(exc).strip() or type(exc).__name__
            self._fail(run_id, "run_failed", f"The run failed: {detail[:1000]}")
            if not isinstance(exc, Exception):
                raise

    # -- queued -> in_progress ------------------------------------------------------------------

    def _claim(self, run_id: str) -> bool:
        with self.db.session_scope() as session:
            return EvalRepository(session).move_run(
                run_id,
                IN_PROGRESS,
                only_from={QUEUED},
                attempt=EvalRun.attempt + 1,
                worker_id=self.worker_id,
                lease_expires_at=utcnow() + self.lease,
                started_at=func.coalesce(EvalRun.started_at, utcnow()),
            )

    def _plan(self, run_id: str) -> RunPlan:
        """Everything the run needs, read once: its items, model, criteria and judges."""
        with self.db.session_scope() as session:
            evals = EvalRepository(session)
            run = evals.reload_run(run_id)
            assert run is not None
            row = evals.get_eval(run.eval_id)
            project = session.get(Project, run.project_id)
            if row is None or project is None:
                raise RunFailure("eval_not_found", "The run's eval was deleted.")
            inference = InferenceService(session, self.settings, self.storage, self.engine())
            try:
                target = inference.resolve(project, run.model)
            except APIError:
                raise RunFailure(
                    "model_not_found",
                    f"The model '{run.model}' does not exist any more or you do not have "
                    "access to it.",
                ) from None
            judges: dict[str, ModelTarget | str] = {}
            for criterion in row.testing_criteria:
                model = criterion.get("model")
                if criterion.get("type") in MODEL_GRADERS and isinstance(model, str):
                    try:
                        judges[model] = inference.resolve(project, model)
                    except APIError:
                        judges[model] = (
                            f"the model '{model}' does not exist or you do not have access to it"
                        )
            source = run.data_source
            items = self._items(session, run.project_id, source.get("source") or {})
            return RunPlan(
                run_id=run.id,
                eval_id=run.eval_id,
                model=run.model,
                target=target,
                input_messages=dict(source.get("input_messages") or {}),
                sampling=dict(source.get("sampling_params") or {}),
                criteria=[dict(c) for c in row.testing_criteria],
                items=items,
                done=frozenset(evals.done_item_ids(run.id)),
                judges=judges,
            )

    def _items(self, session: Any, project_id: str, source: dict[str, Any]) -> list[dict[str, Any]]:
        if source.get("type") == "file_content":
            return [dict(entry["item"]) for entry in source.get("content") or []]
        file_id = str(source.get("id"))
        row = FileRepository(session).get(project_id, file_id, now=utcnow())
        path = self.storage.path(row.storage_key) if row is not None else None
        if path is None or not path.is_file():
            raise RunFailure(
                "file_not_found", f"The run's data file {file_id} was deleted; it cannot run."
            )
        items = []
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            value = json.loads(line)
            items.append(value["item"] if isinstance(value.get("item"), dict) else value)
        return items

    # -- the items --------------------------------------------------------------------------------

    async def _execute(self, plan: RunPlan, usage: UsageBook) -> bool:
        """Answers and grades every item not written yet; False when the run was canceled (or
        is no longer this worker's)."""
        engine = self.engine()
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.concurrency)
        params = _sampling(plan.sampling, plan.target.context_length)

        async def chat(
            target: ModelTarget,
            messages: list[dict[str, Any]],
            sp: SamplingParams,
            *,
            judging: bool = False,
        ) -> GenerationResult:
            for attempt in range(_RATE_LIMIT_TRIES):
                try:
                    result = await engine.chat(target, messages, sp)
                except RateLimited:
                    if attempt == _RATE_LIMIT_TRIES - 1:
                        raise
                    await asyncio.sleep(0.5)
                    continue
                if judging:  # the run's own calls are counted from its written items
                    usage.add(
                        target.model_id,
                        result.usage.prompt_tokens,
                        result.usage.completion_tokens,
                    )
                return result
            raise AssertionError("unreachable")

        def judge(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
            target = plan.judges.get(model)
            if not isinstance(target, ModelTarget):
                raise ValueError(target or f"the model '{model}' is not available")
            sp = _judge_sampling(sampling)
            future = asyncio.run_coroutine_threadsafe(
                chat(target, check_request_messages(messages), sp, judging=True), loop
            )
            return future.result().choices[0].text

        def grade_all(item: dict[str, Any], sample: dict[str, Any]) -> list[GradeResult]:
            return [grade(criterion, item, sample, judge) for criterion in plan.criteria]

        async def one(index: int, item: dict[str, Any]) -> Outcome:
            async with gate:
                try:
                    messages = check_request_messages(prompt_messages(plan.input_messages, item))
                except (TemplateError, ExampleError) as exc:
                    return Outcome(index, item, _error_sample(plan, params, [], str(exc)), None)
                try:
                    result = await chat(plan.target, messages, params)
                except APIError as exc:
                    return Outcome(
                        index, item, _error_sample(plan, params, messages, exc.message), None
                    )
                choice = result.choices[0]
                namespace = build_sample(choice.text, finish_reason=choice.finish_reason)
                namespace["model"] = plan.model
                grades = await asyncio.to_thread(grade_all, item, namespace)
                sample = _sample(plan, params, messages, choice.text, choice.finish_reason)
                sample["usage"] = _usage(result.usage.prompt_tokens, result.usage.completion_tokens)
                return Outcome(index, item, sample, grades)

        tasks = [
            asyncio.create_task(one(index, item))
            for index, item in enumerate(plan.items)
            if index not in plan.done
        ]
        pending: list[Outcome] = []
        try:
            for next_done in asyncio.as_completed(tasks):
                pending.append(await next_done)
                if len(pending) >= WRITE_BATCH:
                    if not await asyncio.to_thread(self._write, plan, pending):
                        return False
                    pending = []
            return await asyncio.to_thread(self._write, plan, pending)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _write(self, plan: RunPlan, outcomes: Sequence[Outcome]) -> bool:
        """Writes a batch of output items while the run is still this worker's; False (and
        nothing written) when it was canceled or taken over."""
        with self.db.session_scope() as session:
            evals = EvalRepository(session)
            run = evals.reload_run(plan.run_id)
            if run is None or run.status != IN_PROGRESS or run.worker_id != self.worker_id:
                return False
            written = evals.done_item_ids(plan.run_id)
            for outcome in outcomes:
                if outcome.index in written:
                    continue
                evals.add_output_item(
                    run,
                    datasource_item_id=outcome.index,
                    datasource_item=outcome.item,
                    sample=outcome.sample,
                    results=[g.as_result() for g in outcome.grades or ()],
                    status=item_status(outcome.grades),
                )
            evals.set_run_progress(plan.run_id, self.worker_id)
            return True

    # -- in_progress -> completed | failed ---------------------------------------------------------

    def _complete(self, plan: RunPlan, usage: UsageBook) -> None:
        with self.db.session_scope() as session:
            evals = EvalRepository(session)
            rows = evals.run_output_items(plan.run_id)
            names = [str(c.get("name")) for c in plan.criteria]
            totals = summarize(names, (_grades_of(row) for row in rows))
            moved = evals.move_run(
                plan.run_id,
                COMPLETED,
                only_from={IN_PROGRESS},
                result_counts=totals["result_counts"],
                per_testing_criteria_results=totals["per_testing_criteria_results"],
                per_model_usage=_per_model_usage(plan.model, rows, usage),
                items_done=len(rows),
                finished_at=utcnow(),
                lease_expires_at=None,
            )
            run = evals.reload_run(plan.run_id) if moved else None
            if run is not None:
                emit(session, run.project_id, webhook_events.EVAL_RUN_SUCCEEDED, run.id)
            job_comparison.report_if_finished(session, plan.eval_id)

    def _fail(self, run_id: str, code: str, message: str) -> None:
        logger.warning("eval run %s failed: %s", run_id, message)
        with self.db.session_scope() as session:
            evals = EvalRepository(session)
            if evals.move_run(
                run_id,
                FAILED,
                only_from={IN_PROGRESS},
                error_code=code,
                error_message=message,
                finished_at=utcnow(),
                lease_expires_at=None,
            ):
                run = evals.reload_run(run_id)
                if run is not None:
                    emit(session, run.project_id, webhook_events.EVAL_RUN_FAILED, run_id)
                    job_comparison.report_if_finished(session, run.eval_id)


# -- plain helpers ----------------------------------------------------------------------------


def prompt_messages(input_messages: dict[str, Any], item: dict[str, Any]) -> list[dict[str, str]]:
    """One item's prompt: its run's template rendered, or the messages its reference names."""
    if input_messages.get("type") == "item_reference":
        return referenced_messages(str(input_messages.get("item_reference")), item)
    return render_messages(list(input_messages.get("template") or []), item)


def _sampling(given: dict[str, Any], context_length: int) -> SamplingParams:
    max_tokens = given.get("max_completions_tokens") or DEFAULT_MAX_TOKENS
    return SamplingParams(
        max_tokens=min(int(max_tokens), max(1, context_length // 2)),
        temperature=float(given.get("temperature", 1.0)),
        top_p=float(given.get("top_p", 1.0)),
        seed=given.get("seed"),
    )


def _judge_sampling(given: dict[str, Any]) -> SamplingParams:
    return SamplingParams(
        max_tokens=int(given.get("max_completion_tokens") or DEFAULT_JUDGE_MAX_TOKENS),
        temperature=float(given.get("temperature", 0.0)),
        top_p=float(given.get("top_p", 1.0)),
        seed=given.get("seed"),
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cached_tokens": 0,
    }


def _sample(
    plan: RunPlan,
    params: SamplingParams,
    messages: list[dict[str, Any]],
    text: str | None,
    finish_reason: str,
) -> dict[str, Any]:
    """OpenAI's output-item `sample`: what the model was asked and answered."""
    return {
        "input": [{"role": m["role"], "content": str(m.get("content", ""))} for m in messages],
        "output": [] if text is None else [{"role": "assistant", "content": text}],
        "finish_reason": finish_reason,
        "model": plan.model,
        "usage": _usage(0, 0),
        "error": None,
        "temperature": params.temperature,
        "max_completion_tokens": params.max_tokens or 0,
        "top_p": params.top_p,
        "seed": params.seed if params.seed is not None else 0,
    }


def _error_sample(
    plan: RunPlan, params: SamplingParams, messages: list[dict[str, Any]], message: str
) -> dict[str, Any]:
    sample = _sample(plan, params, messages, None, "")
    sample["error"] = {"code": "sample_error", "message": message}
    return sample


def _grades_of(row: EvalOutputItem) -> list[GradeResult] | None:
    """A written item's grades again, for the run's totals (None: no sample was made)."""
    if not row.results:
        return None
    return [
        GradeResult(
            str(r.get("name")),
            str(r.get("type")),
            bool(r.get("passed")),
            float(r.get("score") or 0.0),
            error=r.get("error"),
        )
        for r in row.results
    ]


def _per_model_usage(
    model: str, rows: Sequence[EvalOutputItem], usage: UsageBook
) -> list[dict[str, Any]]:
    """The run model's usage from every written item (earlier attempts' too), plus the judges'
    calls of this attempt (added to the run model's when a judge is the same model)."""
    out: dict[str, Usage] = {model: Usage()}
    for row in rows:
        counted = (row.sample or {}).get("usage") or {}
        if (row.sample or {}).get("output"):
            out[model].invocations += 1
            out[model].prompt_tokens += int(counted.get("prompt_tokens", 0))
            out[model].completion_tokens += int(counted.get("completion_tokens", 0))
    for name, used in usage.by_model.items():
        total = out.setdefault(name, Usage())
        total.invocations += used.invocations
        total.prompt_tokens += used.prompt_tokens
        total.completion_tokens += used.completion_tokens
    return [
        {
            "model_name": name,
            "invocation_count": used.invocations,
            "prompt_tokens": used.prompt_tokens,
            "completion_tokens": used.completion_tokens,
            "total_tokens": used.prompt_tokens + used.completion_tokens,
            "cached_tokens": 0,
        }
        for name, used in out.items()
    ]
