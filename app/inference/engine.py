"""Inference engines: the `InferenceEngine` protocol, the in-process `LocalEngine`, the factory.

`LocalEngine` serves every model from one dedicated worker thread fed by a bounded queue:

* Requests are decoded in continuous batches (`app.inference.scheduler`): a request joins the
  running batch at the next step and leaves it as soon as it is done, requests for a base model
  and for any of its LoRA adapters share one batch (each row with its own adapter), and only the
  worker thread touches models, so adapters never bleed between requests.
* At most `max_batch_size` rows decode at once; beyond that at most `queue_size` requests wait,
  and the next one is refused at once with 429 `rate_limit_exceeded` and a `retry-after`
  estimate, before anything is streamed.
* Nothing heavy happens at construction: torch is imported and models are loaded on the worker
  thread at first use, so the API starts fast and tests that never infer never pay for it.
* A request whose client goes away is dropped if still waiting and leaves the batch at the next
  step if running.

Events travel from the worker thread to the request's event loop through an asyncio queue
(`call_soon_threadsafe`); the async side sees them as an async iterator of `GenerationEvent`s
whose first item is `Started` (errors before it are ordinary JSON errors).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import APIError, InvalidRequest, RateLimited, ServerError
from app.ids import random_token
from app.inference.types import (
    ChoiceFinished,
    GenerationEvent,
    GenerationResult,
    ModelTarget,
    ResponseFormat,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    Tools,
    collect,
)
from tuna_core.chat_template import render_prompt
from tuna_core.devices import DeviceUnavailable
from tuna_core.tool_calls import Content, ToolCallParser, prefill

if TYPE_CHECKING:
    from app.config import Settings
    from app.files.storage import LocalStorage
    from app.inference.generation import Choice
    from app.inference.models import Loaded, ModelCache

# Events, plus the engine's own end/failure markers, from the worker thread to the request.
Emit = Callable[[Any], None]

logger = logging.getLogger("tuna.inference")

DEFAULT_ADAPTER_CACHE_BYTES = 1024**3
DEFAULT_QUEUE_SIZE = 64
DEFAULT_MAX_BATCH_SIZE = 64


class InferenceEngine(Protocol):
    """What the endpoints need from a backend.

    Messages are checked OpenAI chat messages (`tuna_core.dataset.check_request_messages`): a
    local engine renders them as training did (`tuna_core.chat_template.render_prompt`), an
    upstream server with its own template.
    """

    async def chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: Tools | None = None,
    ) -> GenerationResult: ...

    def stream_chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: Tools | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """With ``tools`` (and a `tool_choice` other than "none") the model's calls come as
        `ToolCallDelta`s and a choice that made one finishes with "tool_calls"."""
        ...

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


class Done:
    """The engine's last event for a request: the async side stops reading."""


@dataclass
class Failed:
    error: APIError


DONE = Done()


@dataclass
class Request:
    """One API request as the worker thread sees it."""

    target: ModelTarget
    encode: Callable[[Any], list[list[int]]]  # tokenizer -> token ids of each prompt
    params: SamplingParams
    param: str  # "messages" or "prompt": named in context-length errors
    rows: int  # batch rows it takes: prompts x n
    emit: Emit
    cancel: threading.Event
    # Set once admitted:
    loaded: Loaded | None = None
    choices: list[Choice] = field(default_factory=list)
    prompt_tokens: int = 0
    admitted_at: float = 0.0
    finished: bool = False

    @property
    def running(self) -> bool:
        return not self.finished and any(not choice.finished for choice in self.choices)


@dataclass
class _Control:
    """Work for the worker thread between turns (an eviction); takes no place in the queue."""

    run: Callable[[], None]


class LocalEngine:
    def __init__(
        self,
        cache_dir: Path,
        local_models: dict[str, Path] | None = None,
        *,
        adapter_cache_bytes: int = DEFAULT_ADAPTER_CACHE_BYTES,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        device: str = "auto",
    ) -> None:
        self.cache_dir = cache_dir
        self.local_models = dict(local_models or {})
        self.adapter_cache_bytes = adapter_cache_bytes
        self.queue_size = max(1, queue_size)
        self.max_batch_size = max(1, max_batch_size)
        self.device = device
        self._jobs: queue.SimpleQueue[Request | _Control | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running_rows = 0
        self._thread: threading.Thread | None = None
        self._cache: ModelCache | None = None
        self._seconds_per_request = 1.0  # moving average, for retry-after

    # -- the protocol --------------------------------------------------------------------------

    async def chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: Tools | None = None,
    ) -> GenerationResult:
        async with aclosing(self.stream_chat(target, messages, params, tools)) as events:
            return await collect(events)

    def stream_chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: Tools | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        # tool_choice "none": the tools are not shown, and nothing is parsed.
        active = tools if tools is not None and tools.choice != "none" else None
        forced = prefill(active.choice, active.function) if active is not None else ""
        if forced and active is not None:
            # The rest of the call is decoded under a grammar: a known name, valid arguments.
            spec: dict[str, Any] = {
                "tools": active.definitions,
                "choice": active.choice,
                "function": active.function,
            }
            params = replace(
                params, response_format=ResponseFormat(json.dumps(spec), kind="tool_call")
            )

        def encode(tokenizer: Any) -> list[list[int]]:
            definitions = active.definitions if active is not None else None
            text = render_prompt(tokenizer, messages, definitions) + forced
            # The template writes any BOS itself; adding special tokens again would double it.
            return [tokenizer(text, add_special_tokens=False)["input_ids"]]

        events = self._stream(target, encode, params, "messages", prompts=1)
        if active is None:
            return events
        return parse_tool_call_events(events, active, forced)

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

        return self._stream(target, encode, params, "prompt", prompts=len(prompts))

    def evict(self, model_id: str) -> None:
        if self._thread is None:
            return  # nothing was ever loaded

        def run() -> None:
            if self._cache is not None and self._cache.evict(model_id):
                logger.info("evicted %s", model_id)

        self._jobs.put(_Control(run))

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        """Which models are in memory (read from another thread: a snapshot, for tests/logs)."""
        base = {
            "waiting": self._waiting,
            "running": self._running_rows,
            "queue_size": self.queue_size,
            "max_batch_size": self.max_batch_size,
        }
        return {**base, **(self._cache.stats() if self._cache is not None else {})}

    # -- the worker thread ---------------------------------------------------------------------

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

        from app.inference.scheduler import Scheduler

        scheduler = Scheduler(
            self._models,
            self.max_batch_size,
            on_admitted=self._admitted,
            on_finished=self._finished,
        )
        with torch.inference_mode():
            while True:
                try:  # wait for work only when there is nothing to decode
                    job = self._jobs.get(block=not scheduler.busy)
                except queue.Empty:
                    job = _Control(lambda: None)
                while job is not None:
                    if isinstance(job, _Control):
                        job.run()
                    else:
                        scheduler.waiting.append(job)
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                if job is None:
                    scheduler.shutdown()
                    return
                scheduler.turn()
                self._running_rows = scheduler.running_rows()

    def _admitted(self) -> None:
        with self._lock:
            self._waiting -= 1

    def _finished(self, seconds: float) -> None:
        self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * seconds

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="tuna-inference", daemon=True
                )
                self._thread.start()

    def _enqueue(self, request: Request) -> None:
        with self._lock:
            if self._waiting >= self.queue_size:
                # The line moves a batch at a time: a whole batch of requests ends about every
                # request-duration.
                turns = math.ceil((self._waiting + 1) / self.max_batch_size)
                retry = max(1, min(60, math.ceil(self._seconds_per_request * turns)))
                raise RateLimited(
                    f"The inference queue is full ({self.queue_size} requests waiting). "
                    f"Please retry after {retry} seconds.",
                    code="rate_limit_exceeded",
                    headers={"retry-after": str(retry)},
                )
            self._waiting += 1
        self._start()
        self._jobs.put(request)

    async def _stream(
        self,
        target: ModelTarget,
        encode: Callable[[Any], list[list[int]]],
        params: SamplingParams,
        param: str,
        *,
        prompts: int,
    ) -> AsyncGenerator[GenerationEvent, None]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        request = Request(target, encode, params, param, prompts * params.n, emit, cancel)
        self._enqueue(request)
        try:
            while True:
                event = await events.get()
                if isinstance(event, Done):
                    return
                if isinstance(event, Failed):
                    raise event.error
                yield event
        finally:
            cancel.set()


async def parse_tool_call_events(
    events: AsyncGenerator[GenerationEvent, None], tools: Tools, prefix: str = ""
) -> AsyncGenerator[GenerationEvent, None]:
    """Generated text as content and tool calls (`tuna_core.tool_calls.ToolCallParser`, one per
    choice): text that may open a ``<tool_call>`` block is held back until the block is judged,
    a complete call goes out as an id-and-name delta then its arguments in one delta, and a
    choice that made a call finishes with "tool_calls".  ``prefix`` is the prefilled text.
    """
    parsers: dict[int, ToolCallParser] = {}
    emitted: dict[int, int] = {}  # calls sent, per choice

    def parser(index: int) -> ToolCallParser:
        if index not in parsers:
            parsers[index] = ToolCallParser(tools.names, parallel=tools.parallel, prefix=prefix)
        return parsers[index]

    def pieces(index: int, found: list[Any]) -> list[GenerationEvent]:
        out: list[GenerationEvent] = []
        for piece in found:
            if isinstance(piece, Content):
                out.append(TextDelta(index, piece.text))
            else:
                call = emitted[index] = emitted.get(index, -1) + 1
                call_id = "call_" + random_token(24)
                out.append(ToolCallDelta(index, call, id=call_id, name=piece.name))
                out.append(ToolCallDelta(index, call, arguments=piece.arguments))
        return out

    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                if event.logprobs:  # the tokens' logprobs go out as they come, text or call
                    yield TextDelta(event.index, "", event.logprobs)
                for out in pieces(event.index, parser(event.index).feed(event.text)):
                    yield out
            elif isinstance(event, ChoiceFinished):
                choice = parser(event.index)
                for out in pieces(event.index, choice.finish()):
                    yield out
                reason = "tool_calls" if choice.called else event.finish_reason
                yield ChoiceFinished(event.index, reason)
            else:
                yield event


def max_new_tokens(target: ModelTarget, prompt_len: int, params: SamplingParams, param: str) -> int:
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
        settings.base_model_folders,
        adapter_cache_bytes=settings.adapter_cache_bytes,
        queue_size=settings.inference_queue_size,
        max_batch_size=settings.inference_max_batch_size,
        device=settings.inference_device,
    )
