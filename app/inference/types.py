"""What the API hands an inference engine, and what an engine hands back.

Plain dataclasses with no torch or FastAPI in them: the local engine, the upstream engine and the
service all speak these, so an engine can be swapped without touching the endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ModelKind = Literal["base", "lora", "full"]
FinishReason = Literal["stop", "length", "tool_calls"]
ToolChoice = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True)
class ModelTarget:
    """A model the caller may use, resolved from its `model` parameter (DB lookup per request).

    ``model_id`` is the name as requested (echoed back in responses); ``base_model`` the
    canonical base; ``path`` the adapter or full-model folder of an `ft:` id.
    """

    model_id: str
    base_model: str
    kind: ModelKind
    context_length: int
    path: Path | None = None
    storage_key: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: up to the end of the context window
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    response_format: ResponseFormat | None = None  # None: free text
    # Log-probabilities of the chosen tokens, with this many most likely alternatives each
    # (0: the chosen token's only); None: none reported.
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output: every choice is decoded under this grammar (`constraints`).

    ``kind`` "json": ``schema`` is the JSON schema as canonical JSON text (hashable; key order
    kept, since the output follows it), or None for `json_object` (any JSON object).
    ``kind`` "tool_call": a forced tool call (``tool_choice`` "required" or named) after its
    prefill; ``schema`` is ``{"tools", "choice", "function"}`` as JSON text.
    """

    schema: str | None = None
    strict: bool = False
    kind: Literal["json", "tool_call"] = "json"


@dataclass(frozen=True)
class Tools:
    """A chat request's tools: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`.

    ``choice`` is "function" when `tool_choice` names one (``function``).
    """

    definitions: list[dict[str, Any]]
    choice: ToolChoice = "auto"
    function: str | None = None
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool["function"]["name"] for tool in self.definitions)

    def openai_choice(self) -> str | dict[str, Any]:
        """`tool_choice` as OpenAI's request spells it."""
        if self.choice == "function":
            return {"type": "function", "function": {"name": self.function}}
        return self.choice


@dataclass(frozen=True)
class Started:
    """The request left the queue and its prompt fits: from here on the answer streams."""

    prompt_tokens: int


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as OpenAI's logprobs show it: its text, UTF-8 bytes, log-probability
    and (``top``) the most likely tokens at that position, itself among them when it is one."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[tuple[str, tuple[int, ...], float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str
    # The tokens this text came from (with `logprobs` asked): text is held back while it could
    # still be a stop string, so a delta may carry tokens emitted earlier, or none.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ChoiceFinished:
    index: int
    finish_reason: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of choice ``index``'s tool call number ``call``, as OpenAI streams it: the first
    delta of a call carries its ``id`` and ``name``, the next ones pieces of ``arguments``."""

    index: int
    call: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


GenerationEvent = Started | TextDelta | ToolCallDelta | ChoiceFinished | Usage


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class ChoiceText:
    index: int
    text: str = ""
    finish_reason: str = "stop"
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with `logprobs` asked


@dataclass
class GenerationResult:
    choices: list[ChoiceText] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))


async def collect(events: AsyncIterator[GenerationEvent]) -> GenerationResult:
    """Fold a stream of events into one result (what the non-streaming endpoints return)."""
    choices: dict[int, ChoiceText] = {}
    result = GenerationResult()
    async for event in events:
        if isinstance(event, TextDelta):
            choice = choices.setdefault(event.index, ChoiceText(event.index))
            choice.text += event.text
            choice.logprobs += event.logprobs
        elif isinstance(event, ToolCallDelta):
            calls = choices.setdefault(event.index, ChoiceText(event.index)).tool_calls
            if event.call >= len(calls):
                calls.append(ToolCall(event.id or "", event.name or ""))
            call = calls[event.call]
            call.id = call.id or event.id or ""
            call.name = call.name or event.name or ""
            call.arguments += event.arguments
        elif isinstance(event, ChoiceFinished):
            choices.setdefault(
                event.index, ChoiceText(event.index)
            ).finish_reason = event.finish_reason
        elif isinstance(event, Usage):
            result.usage = event
    result.choices = [choices[i] for i in sorted(choices)]
    return result
