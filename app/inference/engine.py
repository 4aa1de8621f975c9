"""Inference engines: the `InferenceEngine` protocol, the in-process `LocalEngine`, the factory.

`LocalEngine` serves every model from one dedicated worker thread fed by a bounded queue:

* Requests run one at a time, whole (load/select adapter -> prefill -> decode), so one request's
  adapter selection can never leak into another's forward passes.  On a CPU box the cores are
  busy with one request anyway; on a GPU this trades throughput for simplicity (use the upstream
  engine with vLLM for batched serving).
* At most `queue_size` requests wait; the next one is refused at once with 429
  `rate_limit_exceeded` and a `retry-after` estimate, before anything is streamed.
* Nothing heavy happens at construction: torch is imported and models are loaded on the worker
  thread at first use, so the API starts fast and tests that never infer never pay for it.
* A request whose client goes away is skipped if still waiting and stopped at the next token
  if running.

Events travel from the worker thread to the request's event loop through an asyncio queue
(`call_soon_threadsafe`); the async side sees them as an async iterator of `GenerationEvent`s
whose first item is `Started` (errors before it are ordinary JSON errors).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import APIError, InvalidRequest, RateLimited, ServerError
from app.inference.types import (
    GenerationEvent,
    GenerationResult,
    ModelTarget,
    SamplingParams,
    Started,
    Usage,
    collect,
)
from tuna_core.chat_template import render_prompt
from tuna_core.devices import DeviceUnavailable

if TYPE_CHECKING:
    from app.config import Settings
    from app.files.storage import LocalStorage
    from app.inference.models import ModelCache

logger = logging.getLogger("tuna.inference")

DEFAULT_ADAPTER_CACHE_BYTES = 1024**3
DEFAULT_QUEUE_SIZE = 64

# Events, plus the engine's own end/failure markers, from the worker thread to the request.
Emit = Callable[[Any], None]
Work = Callable[[Emit, threading.Event], None]


class InferenceEngine(Protocol):
    """What the endpoints need from a backend.

    Messages are checked OpenAI chat messages (`tuna_core.dataset.check_request_messages`): a
    local engine renders them as training did (`tuna_core.chat_template.render_prompt`), an
    upstream server with its own template.
    """

    async def chat(
        self, target: ModelTarget, messages: list[dict[str, Any]], params: SamplingParams
    ) -> GenerationResult: ...

    def stream_chat(
        self, target: ModelTarget, messages: list[dict[str, Any]], params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]: ...

    async def complete(
        self, target: ModelTarget, prompts: list[str], params: SamplingParams
    ) -> GenerationResult: ...

    def stream_complete(
        self, target: ModelTarget, prompts: list[str], params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]: ...

    def evict(self, model_id: str) -> None:
        """Forget a model (it was deleted); returns at once, the unload may happen later."""
        ...

    def close(self) -> None: ...


@dataclass
class _Job:
    work: Work
    emit: Emit
    cancel: threading.Event
    counted: bool = True  # control jobs (evictions) do not take a queue place


class _Done:
    pass


@dataclass
class _Failed:
    error: APIError


_DONE = _Done()


class LocalEngine:
    def __init__(
        self,
        cache_dir: Path,
        local_models: dict[str, Path] | None = None,
        *,
        adapter_cache_bytes: int = DEFAULT_ADAPTER_CACHE_BYTES,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        device: str = "auto",
    ) -> None:
        self.cache_dir = cache_dir
        self.local_models = dict(local_models or {})
        self.adapter_cache_bytes = adapter_cache_bytes
        self.queue_size = max(1, queue_size)
        self.device = device
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self._cache: ModelCache | None = None
        self._seconds_per_job = 1.0  # moving average, for retry-after

    # -- the protocol --------------------------------------------------------------------------

    async def chat(
        self, target: ModelTarget, messages: list[dict[str, Any]], params: SamplingParams
    ) -> GenerationResult:
        async with aclosing(self.stream_chat(target, messages, params)) as events:
            return await collect(events)

    def stream_chat(
        self, target: ModelTarget, messages: list[dict[str, Any]], params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        def prompts(tokenizer: Any) -> list[list[int]]:
            text = render_prompt(tokenizer, messages)
            # The template writes any BOS itself; adding special tokens again would double it.
            return [tokenizer(text, add_special_tokens=False)["input_ids"]]

        return self._stream(self._generation(target, prompts, params, "messages"))

    async def complete(
        self, target: ModelTarget, prompts: list[str], params: SamplingParams
    ) -> GenerationResult:
        async with aclosing(self.stream_complete(target, prompts, params)) as events:
            return await collect(events)

    def stream_complete(
        self, target: ModelTarget, prompts: list[str], params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        def encode(tokenizer: Any) -> list[list[int]]:
            out = []
            for prompt in prompts:
                ids = tokenizer(prompt)["input_ids"]
                if not ids:  # an empty prompt starts from BOS (or EOS) as OpenAI's models do
                    start = tokenizer.bos_token_id
                    ids = [start if start is not None else tokenizer.eos_token_id]
                out.append(ids)
            return out

        return self._stream(self._generation(target, encode, params, "prompt"))

    def evict(self, model_id: str) -> None:
        if self._thread is None:
            return  # nothing was ever loaded

        def work(_: Emit, __: threading.Event) -> None:
            if self._cache is not None and self._cache.evict(model_id):
                logger.info("evicted %s", model_id)

        self._jobs.put(_Job(work, lambda _: None, threading.Event(), counted=False))

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        """Which models are in memory (read from another thread: a snapshot, for tests/logs)."""
        base = {"waiting": self._waiting, "queue_size": self.queue_size}
        return {**base, **(self._cache.stats() if self._cache is not None else {})}

    # -- the worker thread ---------------------------------------------------------------------

    def _generation(
        self,
        target: ModelTarget,
        encode: Callable[[Any], list[list[int]]],
        params: SamplingParams,
        param: str,
    ) -> Work:
        def work(emit: Emit, cancel: threading.Event) -> None:
            from app.inference.generation import generate

            loaded = self._models().acquire(target)
            prompts = encode(loaded.tokenizer)
            budgets = [_max_new_tokens(target, len(ids), params, param) for ids in prompts]
            prompt_tokens = sum(len(ids) for ids in prompts)
            emit(Started(prompt_tokens))
            completion_tokens = 0
            with loaded.context():
                for number, (ids, budget) in enumerate(zip(prompts, budgets, strict=True)):
                    completion_tokens += generate(
                        loaded.model,
                        loaded.tokenizer,
                        ids,
                        params,
                        max_new_tokens=budget,
                        eos_ids=loaded.eos_ids,
                        emit=emit,
                        cancel=cancel,
                        index_offset=number * params.n,
                        model_kwargs=loaded.model_kwargs,
                    )
            emit(Usage(prompt_tokens, completion_tokens))

        return work

    def _models(self) -> ModelCache:
        if self._cache is None:
            from app.inference.models import ModelCache

            try:
                self._cache = ModelCache(
                    self.cache_dir, self.local_models, self.adapter_cache_bytes, self.device
                )
            except DeviceUnavailable as exc:  # TUNA_INFERENCE_DEVICE names a missing GPU
                raise ServerError(f"The inference engine cannot start: {exc}.") from exc
        return self._cache

    def _serve(self) -> None:
        import torch

        from app.inference.generation import GenerationCancelled

        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.counted:
                with self._lock:
                    self._waiting -= 1
            if job.cancel.is_set():
                job.emit(_DONE)
                continue
            started = time.monotonic()
            try:
                with torch.inference_mode():
                    job.work(job.emit, job.cancel)
            except GenerationCancelled:
                pass
            except APIError as exc:
                job.emit(_Failed(exc))
            except Exception:
                logger.exception("inference failed")
                job.emit(
                    _Failed(ServerError("The server had an error while generating the answer."))
                )
            finally:
                job.emit(_DONE)
            if job.counted:
                elapsed = time.monotonic() - started
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="tuna-inference", daemon=True
                )
                self._thread.start()

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._waiting >= self.queue_size:
                retry = max(1, min(60, math.ceil(self._seconds_per_job * (self._waiting + 1))))
                raise RateLimited(
                    f"The inference queue is full ({self.queue_size} requests waiting). "
                    f"Please retry after {retry} seconds.",
                    code="rate_limit_exceeded",
                    headers={"retry-after": str(retry)},
                )
            self._waiting += 1
        self._start()
        self._jobs.put(job)

    async def _stream(self, work: Work) -> AsyncGenerator[GenerationEvent, None]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        self._enqueue(_Job(work, emit, cancel))
        try:
            while True:
                event = await events.get()
                if event is _DONE:
                    return
                if isinstance(event, _Failed):
                    raise event.error
                yield event
        finally:
            cancel.set()


def _max_new_tokens(
    target: ModelTarget, prompt_len: int, params: SamplingParams, param: str
) -> int:
    room = target.context_length - prompt_len
    what = "messages" if param == "messages" else "prompt"
    if params.max_tokens is None:
        if room < 1:
            raise InvalidRequest(
                f"This model's maximum context length is {target.context_length} tokens. "
                f"However, your {what} resulted in {prompt_len} tokens. "
                f"Please reduce the length of the {what}.",
                param=param,
                code="context_length_exceeded",
            )
        return room
    if params.max_tokens > room:
        raise InvalidRequest(
            f"This model's maximum context length is {target.context_length} tokens. "
            f"However, you requested {prompt_len + params.max_tokens} tokens ({prompt_len} in "
            f"the {what}, {params.max_tokens} in the completion). Please reduce the length of "
            f"the {what} or completion.",
            param=param,
            code="context_length_exceeded",
        )
    return params.max_tokens


def create_engine(settings: Settings, storage: LocalStorage | None = None) -> InferenceEngine:
    """The engine the settings ask for: the local one, or an OpenAI-compatible upstream."""
    backend = settings.inference_backend
    if backend == "upstream":
        from app.inference.upstream import UpstreamEngine

        return UpstreamEngine.from_settings(settings)
    if backend != "local":
        raise ValueError(f"inference_backend must be 'local' or 'upstream', not {backend!r}")
    return LocalEngine(
        settings.resolved_model_cache_dir,
        dict(settings.local_models or {}),
        adapter_cache_bytes=settings.adapter_cache_bytes,
        queue_size=settings.inference_queue_size,
        device=settings.inference_device,
    )
