"""Wire shapes of `/v1/chat/completions`, `/v1/completions` and `DELETE /v1/models/{id}`.

Requests keep unknown fields (`extra="allow"`) only so the service can name them in a 400:
a parameter this server does not implement must never be silently ignored. Chat messages are
not modelled here: `tuna_core.dataset` checks them, as it checks training data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from app.wire import OmitWhenNone

MAX_N = 8
MAX_STOP = 4


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list):
        if len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
    return value


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # Checked by `sampling_options.logit_bias_of` (token ids against the model when admitted).
    logit_bias: dict[str, Any] | None = None
    user: str | None = None  # accepted and ignored, as an end-user id for abuse tracking

    _stop = field_validator("stop")(_check_stop)


class ChatCompletionRequest(_SamplingFields):
    # Checked by `tuna_core.dataset.check_request_messages`, the schema training data is checked
    # with, whose errors name the exact field (`messages[1].content[0].type`).
    messages: list[Any] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Checked by the service with `tuna_core.dataset.check_tools` (as training data's `tools`),
    # so that an error names the exact field (`tools[0].function.name`).
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Checked by `sampling_options.response_format_of` (the schema itself by the engine).
    response_format: dict[str, Any] | None = None


def _text_prompt(value: Any) -> Any:
    # OpenAI also takes token ids (`[1, 2]`, `[[1, 2], [3]]`); they belong to one tokenizer and
    # this server does not take them. Said plainly here, for the `prompt` parameter itself.
    if isinstance(value, list) and any(
        isinstance(item, list) or (isinstance(item, int) and not isinstance(item, bool))
        for item in value
    ):
        raise PydanticCustomError(
            "token_ids_not_supported",
            "token-id prompts (arrays of integers) are not supported by this server; "
            "send the prompt as a string or an array of strings",
        )
    return value


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None

    _prompt = field_validator("prompt", mode="before")(_text_prompt)


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(OmitWhenNone):
    omit_when_none = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None  # left out when the model called no tool


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None = None  # `sampling_options.chat_logprobs`, when asked
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    # No `system_fingerprint`: optional and deprecated in OpenAI's schema, never null there,
    # and this server has no backend configuration to fingerprint.


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: dict[str, Any] | None = None  # `sampling_options.completion_logprobs`, when asked
    finish_reason: str


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
