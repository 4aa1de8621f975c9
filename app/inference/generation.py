"""Choosing tokens and turning them into text: what each row of a batch does after a forward pass.

What must hold:

* temperature 0 (or top_p 0) is greedy; otherwise sampling draws only from a `torch.Generator`
  seeded with the request's seed (one per prompt), so the same request (same seed, same n) gives
  the same text, whatever other requests share the batch.
* Text is emitted only once it can no longer change: a suffix that could still grow into a stop
  string, or that ends in half a UTF-8 character, is held back.  Concatenating the deltas gives
  exactly the final text, and a stop string never appears in it (OpenAI cuts before the stop).
* finish_reason: "stop" for an end-of-turn token or a stop string, "length" when max tokens ran
  out.  Every generated token counts as a completion token, the end-of-turn token included.
* logprobs (when asked): each generated token's log-probability under the distribution it was
  picked from (the logits after `logit_bias` and any grammar mask, before temperature, as
  OpenAI reports them), with its ``k`` most likely alternatives; the end-of-turn token is not
  listed.  They ride on the text delta that releases the token's text.

torch is imported lazily by the caller's thread (this module is imported only by the engine's
worker thread, never by the API at start-up).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import torch

from app.inference.types import (
    ChoiceFinished,
    GenerationEvent,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)


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


class Choice:
    """One continuation (one row of a batch): its text so far, its budget, how it ended."""

    def __init__(
        self,
        index: int,
        tokenizer: Any,
        params: SamplingParams,
        *,
        budget: int,
        eos_ids: set[int],
        emit: Callable[[GenerationEvent], None],
    ) -> None:
        self.index = index
        self.budget = budget
        self.eos_ids = eos_ids
        self.emit = emit
        self.text = TextAssembler(tokenizer, params.stop)
        self.generated = 0
        self.finished = False
        self.pending: list[TokenLogprob] = []  # logprobs of tokens whose text is held back

    def accept(self, token: int, logprob: TokenLogprob | None = None) -> None:
        """Take the next token: emit what text became final, and the finish reason if it ended."""
        self.generated += 1
        if token in self.eos_ids:
            finish: str | None = "stop"
            delta = self.text.flush()
        else:
            if logprob is not None:
                self.pending.append(logprob)
            delta, hit = self.text.push(token)
            finish = "stop" if hit else ("length" if self.generated >= self.budget else None)
            if finish == "length":
                delta += self.text.flush()
        if delta or (finish is not None and self.pending):
            self.emit(TextDelta(self.index, delta, tuple(self.pending)))
            self.pending = []
        if finish is not None:
            self.finished = True
            self.emit(ChoiceFinished(self.index, finish))


class PromptChoices:
    """The ``n`` continuations of one prompt, sampled together from one generator.

    The generator is seeded with the request's seed and draws only for this prompt's rows that
    are still running, so a seeded request gives the same text whatever else shares the batch.
    """

    def __init__(self, prompt_ids: list[int], params: SamplingParams, choices: list[Choice]):
        self.prompt_ids = prompt_ids
        self.params = params
        self.choices = choices
        self.generator = torch.Generator()
        self.generator.manual_seed(params.seed if params.seed is not None else _random_seed())
        self.penalised = params.presence_penalty != 0 or params.frequency_penalty != 0
        self.counts: torch.Tensor | None = None  # [n, vocab] tokens generated, for penalties

    @property
    def greedy(self) -> bool:
        return not self.penalised and (self.params.temperature == 0 or self.params.top_p == 0)

    def choose(self, logits: torch.Tensor, rows: list[int]) -> list[int]:
        """Next token for choices ``rows`` (positions in ``choices``), from their float logits."""
        params = self.params
        if self.penalised:
            if self.counts is None:
                self.counts = torch.zeros(
                    len(self.choices), logits.shape[-1], dtype=logits.dtype, device=logits.device
                )
            counts = self.counts[rows]
            logits = (
                logits
                - params.frequency_penalty * counts
                - params.presence_penalty * (counts > 0).to(logits.dtype)
            )
        tokens: list[int] = _sample(logits, params, self.generator).tolist()
        if self.counts is not None:
            for row, token in zip(rows, tokens, strict=True):
                self.counts[row, token] += 1
        return tokens


def token_logprobs(tokenizer: Any, logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s entry from one row's log-probabilities (``[vocab]``), with ``top``
    alternatives."""

    def shown(token_id: int) -> tuple[str, tuple[int, ...]]:
        text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        return text, tuple(text.encode("utf-8", errors="replace"))

    text, raw = shown(token)
    alternatives: tuple[tuple[str, tuple[int, ...], float], ...] = ()
    if top > 0:
        values, ids = logprobs.topk(top)
        alternatives = tuple(
            (*shown(int(i)), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        )
    return TokenLogprob(text, raw, float(logprobs[token]), alternatives)


def _random_seed() -> int:
    return secrets.randbits(62)
