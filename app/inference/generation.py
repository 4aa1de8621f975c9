"""The decoding loop: one prompt, `n` sampled continuations, text handed out as it becomes final.

What must hold:

* temperature 0 (or top_p 0) is greedy; otherwise sampling draws only from a `torch.Generator`
  seeded with the request's seed, so the same request (same seed, same n) gives the same text.
* Text is emitted only once it can no longer change: a suffix that could still grow into a stop
  string, or that ends in half a UTF-8 character, is held back.  Concatenating the deltas gives
  exactly the final text, and a stop string never appears in it (OpenAI cuts before the stop).
* finish_reason: "stop" for an end-of-turn token or a stop string, "length" when max tokens ran
  out.  Every generated token counts as a completion token, the end-of-turn token included.

torch is imported lazily by the caller's thread (this module is imported only by the engine's
worker thread, never by the API at start-up).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from app.inference.types import ChoiceFinished, GenerationEvent, SamplingParams, TextDelta


class GenerationCancelled(Exception):
    """The caller went away (client disconnected); the loop stops at the next token."""


class TextAssembler:
    """Turns one choice's token ids into safe-to-emit text deltas, applying stop strings."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (text now safe to emit, whether a stop string was hit)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(
            self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        hit = self._first_stop()
        if hit is not None:
            delta = self.text[self.emitted : hit]
            self.text = self.text[:hit]
            self.emitted = hit
            return delta, True
        safe = len(self.text) - self._held_back()
        if safe <= self.emitted:
            return "", False
        delta = self.text[self.emitted : safe]
        self.emitted = safe
        return delta, False

    def flush(self) -> str:
        """The held-back tail, once the choice has ended without a stop string."""
        text = self.text.rstrip("\ufffd")
        delta = text[self.emitted :]
        self.text = text
        self.emitted = len(text)
        return delta

    def _first_stop(self) -> int | None:
        # Text before `emitted` never ends with a stop prefix (it would have been held back),
        # so a stop string can only start in the unreleased part.
        found = [i for s in self.stops if (i := self.text.find(s, self.emitted)) >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        text = self.text
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens
            return len(text) - len(text.rstrip("\ufffd"))
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        return hold


def _sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> torch.Tensor:
    """Next token per row of ``logits`` [n, vocab] (float32)."""
    if params.temperature == 0 or params.top_p == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1).cpu()
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


def generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    emit: Callable[[GenerationEvent], None],
    cancel: threading.Event,
    index_offset: int = 0,
    model_kwargs: dict[str, Any] | None = None,
) -> int:
    """Decode ``params.n`` continuations of one prompt in a batch; returns completion tokens."""
    n = params.n
    device = next(model.parameters()).device
    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else _random_seed())
    rows = [TextAssembler(tokenizer, params.stop) for _ in range(n)]
    alive = [True] * n
    penalties = params.presence_penalty != 0 or params.frequency_penalty != 0
    counts: torch.Tensor | None = None
    completion_tokens = 0
    current = torch.tensor([prompt_ids] * n, dtype=torch.long, device=device)
    past: Any = None
    extra = dict(model_kwargs or {})

    for step in range(max_new_tokens):
        if cancel.is_set():
            raise GenerationCancelled
        out = model(input_ids=current, past_key_values=past, use_cache=True, **extra)
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        if penalties:
            if counts is None:
                counts = torch.zeros_like(logits)
            logits = (
                logits
                - params.frequency_penalty * counts
                - params.presence_penalty * (counts > 0).to(logits.dtype)
            )
        next_tokens = _sample(logits, params, generator)
        last_step = step == max_new_tokens - 1
        for i, token in enumerate(next_tokens.tolist()):
            if not alive[i]:
                continue
            completion_tokens += 1
            if counts is not None:
                counts[i, token] += 1
            if token in eos_ids:
                finish: str | None = "stop"
                delta = rows[i].flush()
            else:
                delta, hit = rows[i].push(token)
                finish = "stop" if hit else ("length" if last_step else None)
                if finish == "length":
                    delta += rows[i].flush()
            if delta:
                emit(TextDelta(index_offset + i, delta))
            if finish is not None:
                alive[i] = False
                emit(ChoiceFinished(index_offset + i, finish))
        if not any(alive):
            break
        current = next_tokens.unsqueeze(-1)
    return completion_tokens


def _random_seed() -> int:
    return secrets.randbits(62)
