"""Chat and text completions, and deleting `ft:` models: checks, model resolution, wire shapes.

What must hold:

* A request naming a parameter this server does not implement is a 400 naming that parameter;
  nothing is silently ignored (except `user`, which OpenAI itself only logs).
* `model` resolves to a base model offered by this server (or an alias) or to one of the
  caller's own `ft:` rows, looked up per request so a model trained a second ago answers and a
  deleted one stops answering.  Anything else, another project's id included, is the same 404.
* Errors found before the first byte is streamed (bad params, unknown model, full queue, prompt
  too long) are ordinary JSON errors; once streaming, an error becomes a final `error` event.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.catalog.base_models import find_offered_base_model
from app.catalog.repository import ModelRepository
from app.config import Settings
from app.db import after_commit
from app.errors import APIError, InvalidRequest, NotFound
from app.exports.repository import ExportRepository
from app.files.storage import LocalStorage
from app.fine_tuning.repository import FineTuningRepository
from app.ids import random_token
from app.inference.engine import InferenceEngine
from app.inference.sampling_options import (
    chat_logprobs,
    chat_logprobs_of,
    completion_logprobs,
    logit_bias_of,
    response_format_of,
)
from app.inference.schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    FunctionCallOut,
    ModelDeleted,
    ToolCallOut,
    usage_dict,
)
from app.inference.types import (
    ChoiceFinished,
    ChoiceText,
    GenerationEvent,
    ModelTarget,
    SamplingParams,
    Started,
    TextDelta,
    ToolCallDelta,
    Tools,
    Usage,
)
from app.orm import Project
from tuna_core.base_models import DEFAULT_CONTEXT_LENGTH, UnknownBaseModel, get_base_model_info
from tuna_core.dataset import (
    ExampleError,
    check_request_messages,
    check_tools,
    check_unicode,
    unpaired_surrogate,
)
from tuna_core.model_ids import is_fine_tuned_model_id

# OpenAI parameters this server knows but does not implement: named in a clear 400.
UNSUPPORTED_PARAMS = frozenset(
    {
        "audio",
        "function_call",
        "functions",
        "metadata",
        "modalities",
        "prediction",
        "prompt_cache_key",
        "reasoning_effort",
        "safety_identifier",
        "service_tier",
        "store",
        "verbosity",
        "web_search_options",
    }
)


def model_not_found(model_id: str) -> NotFound:
    return NotFound(
        f"The model `{model_id}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def _reject_extras(extra: dict[str, Any] | None) -> None:
    for name in extra or {}:
        if name in UNSUPPORTED_PARAMS:
            raise _not_supported(name)
        raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)


def _not_supported(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"The '{name}' parameter is not supported by this server yet.", param=name
    )


def _stop_tuple(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sampling(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, **more: Any
) -> SamplingParams:
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        n=body.n or 1,
        stop=_stop_tuple(body.stop),
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=logit_bias_of(body.logit_bias),
        **more,
    )


def _check_text(text: str, param: str) -> None:
    """A 400 for text the tokenizer cannot take (JSON can escape an unpaired surrogate)."""
    problem = unpaired_surrogate(text)
    if problem is not None:
        raise InvalidRequest(
            f"Invalid value for '{param}': {problem} (not valid Unicode text).", param=param
        )


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's messages, checked by the schema training data is checked with."""
    try:
        return check_request_messages(body.messages)
    except ExampleError as exc:
        raise _example_error(exc) from None


def _example_error(exc: ExampleError) -> InvalidRequest:
    if exc.reason == "missing":
        message = f"Missing required parameter: '{exc.path}'."
    else:
        message = f"Invalid value for '{exc.path}': {exc.reason}."
    return InvalidRequest(message, param=exc.param)


MAX_TOOLS = 128  # OpenAI's limit
TOOL_CHOICES = ("none", "auto", "required")


def _bad_value(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {reason}.", param=param)


def chat_tools(body: ChatCompletionRequest) -> Tools | None:
    """`tools`, `tool_choice` and `parallel_tool_calls`, checked as OpenAI checks them: tools as
    training data's `tools` are (`tuna_core.dataset.check_tools`), a choice only with tools."""
    if body.tools is None:
        for param in ("tool_choice", "parallel_tool_calls"):
            if getattr(body, param) is not None:
                raise _bad_value(param, f"'{param}' is only allowed when 'tools' are specified")
        return None
    try:
        check_tools(body.tools, "tools")
        check_unicode(body.tools, "tools")
    except ExampleError as exc:
        raise _example_error(exc) from None
    if len(body.tools) > MAX_TOOLS:
        raise _bad_value("tools", f"at most {MAX_TOOLS} tools are allowed, got {len(body.tools)}")
    definitions: list[dict[str, Any]] = body.tools
    names = {tool["function"]["name"] for tool in definitions}
    parallel = body.parallel_tool_calls is not False
    choice = body.tool_choice
    if choice is None:
        return Tools(definitions, "auto", parallel=parallel)
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise _bad_value(
                "tool_choice", f"expected one of 'none', 'auto' or 'required', got {choice!r}"
            )
        return Tools(definitions, choice, parallel=parallel)  # type: ignore[arg-type]
    kind = choice.get("type")
    if kind != "function":
        if kind in ("allowed_tools", "custom"):
            raise InvalidRequest(
                f"A 'tool_choice' of type '{kind}' is not supported by this server yet.",
                param="tool_choice.type",
            )
        raise _bad_value("tool_choice.type", f"expected 'function', got {kind!r}")
    function = choice.get("function")
    if (
        set(choice) != {"type", "function"}
        or not isinstance(function, dict)
        or set(function) != {"name"}
        or not isinstance(function["name"], str)
    ):
        raise _bad_value(
            "tool_choice",
            'expected {"type": "function", "function": {"name": "<a tool\'s name>"}}',
        )
    name = str(function["name"])
    if name not in names:
        raise _bad_value("tool_choice", f"the function {name!r} is not one of the 'tools'")
    return Tools(definitions, "function", function=name, parallel=parallel)


def chat_params(body: ChatCompletionRequest) -> SamplingParams:
    _reject_extras(body.model_extra)
    return _sampling(
        body,
        body.max_completion_tokens or body.max_tokens,
        logprobs=chat_logprobs_of(body.logprobs, body.top_logprobs),
        response_format=response_format_of(body.response_format),
    )


def completion_params(body: CompletionRequest) -> SamplingParams:
    _reject_extras(body.model_extra)
    if body.suffix is not None:
        raise _not_supported("suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise _not_supported("best_of")
    if isinstance(body.prompt, list) and not body.prompt:
        raise InvalidRequest("'prompt' must not be an empty list.", param="prompt")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    for i, prompt in enumerate(prompts):
        _check_text(prompt, "prompt" if isinstance(body.prompt, str) else f"prompt[{i}]")
    return _sampling(body, body.max_tokens, logprobs=body.logprobs)


def _sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


class InferenceService:
    def __init__(
        self,
        session: Session,
        settings: Settings,
        storage: LocalStorage,
        engine: InferenceEngine,
    ) -> None:
        self.session = session
        self.settings = settings
        self.storage = storage
        self.engine = engine
        self.models = ModelRepository(session)

    # -- model resolution ----------------------------------------------------------------------

    def resolve(self, project: Project, model_id: str) -> ModelTarget:
        base = find_offered_base_model(self.settings, model_id)
        if base is not None:
            return ModelTarget(model_id, base.name, "base", base.context_length)
        row = self.models.get(project.id, model_id) if is_fine_tuned_model_id(model_id) else None
        if row is None:
            raise model_not_found(model_id)
        try:
            context = get_base_model_info(row.base_model, self.settings.base_model_folders)
            context_length = context.context_length
        except UnknownBaseModel:
            context_length = DEFAULT_CONTEXT_LENGTH
        return ModelTarget(
            model_id=row.id,
            base_model=row.base_model,
            kind="full" if row.training_type == "full" else "lora",
            context_length=context_length,
            path=self.storage.path(row.storage_key),
            storage_key=row.storage_key,
        )

    # -- chat ----------------------------------------------------------------------------------

    async def chat(
        self, project: Project, body: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[str]:
        params = chat_params(body)
        messages = chat_messages(body)
        tools = chat_tools(body)
        target = await run_in_threadpool(self.resolve, project, body.model)
        completion_id = "chatcmpl-" + random_token(29)
        created = int(time.time())
        if body.stream:
            events = self.engine.stream_chat(target, messages, params, tools)
            first = await _first(events)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            calling = tools is not None and tools.choice != "none"
            return _chat_stream(
                first,
                events,
                completion_id,
                created,
                body.model,
                params.n,
                include_usage,
                calling,
            )
        result = await self.engine.chat(target, messages, params, tools)
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                ChatChoice(
                    index=c.index,
                    message=_message(c),
                    logprobs=chat_logprobs(c.logprobs) if params.logprobs is not None else None,
                    finish_reason=c.finish_reason,
                )
                for c in result.choices
            ],
            usage=CompletionUsage(
                **usage_dict(result.usage.prompt_tokens, result.usage.completion_tokens)
            ),
        )

    # -- text completions ----------------------------------------------------------------------

    async def complete(
        self, project: Project, body: CompletionRequest
    ) -> Completion | AsyncIterator[str]:
        params = completion_params(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        target = await run_in_threadpool(self.resolve, project, body.model)
        completion_id = "cmpl-" + random_token(29)
        created = int(time.time())
        echo = bool(body.echo)
        if body.stream:
            events = self.engine.stream_complete(target, prompts, params)
            first = await _first(events)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _completion_stream(
                first,
                events,
                completion_id,
                created,
                body.model,
                prompts if echo else None,
                params.n,
                include_usage,
            )
        result = await self.engine.complete(target, prompts, params)
        return Completion(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                CompletionChoice(
                    text=(prompts[c.index // params.n] if echo else "") + c.text,
                    index=c.index,
                    logprobs=(
                        completion_logprobs(
                            c.logprobs, len(prompts[c.index // params.n]) if echo else 0
                        )
                        if params.logprobs is not None
                        else None
                    ),
                    finish_reason=c.finish_reason,
                )
                for c in result.choices
            ],
            usage=CompletionUsage(
                **usage_dict(result.usage.prompt_tokens, result.usage.completion_tokens)
            ),
        )

    # -- deleting a fine-tuned model -----------------------------------------------------------

    def delete_model(self, project: Project, model_id: str) -> ModelDeleted:
        """Delete the caller's `ft:` row; the engine forgets it and its folder goes after commit.

        A checkpoint id deletes that checkpoint: the job no longer lists a model it cannot
        serve (its events still tell it was made). A final model's job keeps its checkpoints.
        """
        if find_offered_base_model(self.settings, model_id) is not None:
            raise APIError(
                f"The model `{model_id}` is a base model and cannot be deleted.",
                param="model",
                code="model_not_deletable",
                status_code=403,
            )
        row = self.models.get(project.id, model_id)
        if row is None:
            raise model_not_found(model_id)
        # Its built downloads go with it (their rows by the foreign key's cascade).
        keys = [row.storage_key, *ExportRepository(self.session).storage_keys(row.id)]
        if row.checkpoint_step is not None and row.job_id is not None:
            FineTuningRepository(self.session).remove_checkpoint(row.job_id, row.checkpoint_step)
        else:
            self.models.delete(row)
        engine, storage = self.engine, self.storage

        def forget() -> None:
            engine.evict(model_id)
            for key in keys:
                _remove_folder(storage, key)

        after_commit(self.session, forget)
        return ModelDeleted(id=model_id)


def _remove_folder(storage: LocalStorage, key: str) -> None:
    path = storage.path(key)  # refuses keys that escape the storage root
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def _message(choice: ChoiceText) -> ChatMessageOut:
    if not choice.tool_calls:
        return ChatMessageOut(content=choice.text)
    calls = [
        ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
        for c in choice.tool_calls
    ]
    return ChatMessageOut(content=choice.text or None, tool_calls=calls)


async def _first(events: AsyncGenerator[GenerationEvent, None]) -> Started:
    """Wait until the request is running: queue-full, model and length errors raise here."""
    try:
        first = await anext(events)
    except BaseException:
        await _close(events)
        raise
    assert isinstance(first, Started), first
    return first


async def _close(events: AsyncGenerator[GenerationEvent, None]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with suppress(Exception):
            await aclose()


def _error_event(exc: Exception) -> str:
    if isinstance(exc, APIError):
        return _sse(exc.body())
    return _sse(
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    )


async def _chat_stream(
    first: Started,
    events: AsyncGenerator[GenerationEvent, None],
    completion_id: str,
    created: int,
    model: str,
    n: int,
    include_usage: bool,
    calling: bool = False,
) -> AsyncIterator[str]:
    """`chat.completion.chunk`s: role delta per choice, content and tool-call deltas, finish,
    usage, [DONE].  While the model may call a tool (``calling``) the role delta's content is
    null, as OpenAI's is: the answer may have no content at all."""
    # No `system_fingerprint`, as in `ChatCompletion`. `usage: null` on every chunk but the
    # usage one is what OpenAI documents for `stream_options.include_usage`.
    head: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    if include_usage:
        head["usage"] = None

    def chunk(
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _sse({**head, "choices": [choice]})

    try:
        for index in range(n):
            content = None if calling else ""
            yield chunk(index, {"role": "assistant", "content": content, "refusal": None})
        async for event in events:
            if isinstance(event, TextDelta):
                shown = chat_logprobs(event.logprobs) if event.logprobs else None
                yield chunk(event.index, {"content": event.text}, logprobs=shown)
            elif isinstance(event, ToolCallDelta):
                call: dict[str, Any] = {"index": event.call}
                if event.id is not None:
                    call.update(id=event.id, type="function")
                function = {} if event.name is None else {"name": event.name}
                call["function"] = {**function, "arguments": event.arguments}
                yield chunk(event.index, {"tool_calls": [call]})
            elif isinstance(event, ChoiceFinished):
                yield chunk(event.index, {}, event.finish_reason)
            elif isinstance(event, Usage) and include_usage:
                usage = usage_dict(event.prompt_tokens, event.completion_tokens)
                yield _sse({**head, "choices": [], "usage": usage})
        yield _sse("[DONE]")
    except Exception as exc:  # mid-stream: the SDK raises on an `error` event
        yield _error_event(exc)
    finally:
        await _close(events)
    del first


async def _completion_stream(
    first: Started,
    events: AsyncGenerator[GenerationEvent, None],
    completion_id: str,
    created: int,
    model: str,
    echo_prompts: list[str] | None,
    n: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    head: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
    }
    if include_usage:
        head["usage"] = None

    def chunk(
        index: int, text: str, finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> str:
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
        return _sse({**head, "choices": [choice]})

    shown: dict[int, int] = {}  # characters each choice has shown, for `text_offset`
    try:
        if echo_prompts is not None:
            for index in range(len(echo_prompts) * n):
                shown[index] = len(echo_prompts[index // n])
                yield chunk(index, echo_prompts[index // n])
        async for event in events:
            if isinstance(event, TextDelta):
                offset = shown.get(event.index, 0)
                shown[event.index] = offset + len(event.text)
                logprobs = completion_logprobs(event.logprobs, offset) if event.logprobs else None
                yield chunk(event.index, event.text, logprobs=logprobs)
            elif isinstance(event, ChoiceFinished):
                yield chunk(event.index, "", event.finish_reason)
            elif isinstance(event, Usage) and include_usage:
                usage = usage_dict(event.prompt_tokens, event.completion_tokens)
                yield _sse({**head, "choices": [], "usage": usage})
        yield _sse("[DONE]")
    except Exception as exc:
        yield _error_event(exc)
    finally:
        await _close(events)
    del first
