"""What the API hands an inference engine, and what an engine hands back.

Plain dataclasses with no torch or FastAPI in them: the local engine, the upstream engine and the
service all speak these, so an engine can be swapped without touching the endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ModelKind = Literal["base", "lora", "full"]
FinishReason = Literal["stop", "length"]


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


@dataclass(frozen=True)
class Started:
    """The request left the queue and its prompt fits: from here on the answer streams."""

    prompt_tokens: int


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str


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


GenerationEvent = Started | TextDelta | ChoiceFinished | Usage


@dataclass
class ChoiceText:
    index: int
    text: str = ""
    finish_reason: str = "stop"


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
            choices.setdefault(event.index, ChoiceText(event.index)).text += event.text
        elif isinstance(event, ChoiceFinished):
            choices.setdefault(
                event.index, ChoiceText(event.index)
            ).finish_reason = event.finish_reason
        elif isinstance(event, Usage):
            result.usage = event
    result.choices = [choices[i] for i in sorted(choices)]
    return result
