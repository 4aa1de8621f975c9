"""The local engine's worker thread: requests join continuous batches and leave when done.

Each turn of the loop (`Scheduler.turn`):

1. **Admit** waiting requests, first come first served, while the running rows leave room
   (`max_batch_size` rows; a request takes one row per prompt and choice; a request bigger than
   the limit runs when the engine is otherwise idle).  Admitting loads the model if needed, holds
   it, encodes the prompts and checks the context window; a request that fails here gets its
   error before anything streamed.
2. **Prefill** each batch's newcomers together (left-padded, in chunks of `PREFILL_TOKENS`), pick
   their first tokens and merge them into the running batch.
3. **Decode** one token for every running row of every batch, pick the next tokens, stream the
   text that became final.  Rows that finished, and every row of a request whose client went
   away, leave the batch before the next step.

Requests that share a batch key (a base model and its LoRA adapters; one full fine-tune) share
one `DecodeBatch`; each batch steps in turn.  Everything here runs on the engine's one worker
thread, so loading, eviction and forward passes never overlap.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from app.errors import APIError, InvalidRequest, ServerError
from app.inference.batching import DecodeBatch, Row
from app.inference.constraints import (
    CompiledGrammar,
    ConstraintError,
    RowConstraint,
    apply_constraints,
    compile_response_format,
)
from app.inference.engine import DONE, Failed, Request, max_new_tokens
from app.inference.generation import Choice, PromptChoices, token_logprobs
from app.inference.types import Started, TokenLogprob, Usage

if TYPE_CHECKING:
    from app.inference.models import ModelCache

logger = logging.getLogger("tuna.inference")

# Padded prompt tokens one prefill forward pass may take (rows x longest prompt): bounds the
# activations of a burst of long prompts; more newcomers prefill in several passes.
PREFILL_TOKENS = 8192


@dataclass
class _Owner:
    """What a batch row belongs to."""

    request: Request
    prompt: PromptChoices
    position: int  # of the choice within its prompt's choices
    constraint: RowConstraint | None = None  # structured output: the row's grammar state
    # logit_bias as (token ids, values) on the logits' device: built at the row's first token.
    bias: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def choice(self) -> Choice:
        return self.prompt.choices[self.position]


@dataclass
class _Batch:
    decode: DecodeBatch
    newcomers: list[Row] = field(default_factory=list)

    def requests(self) -> Iterator[Request]:
        seen: set[int] = set()
        for row in [*self.decode.rows, *self.newcomers]:
            request = row.owner.request
            if id(request) not in seen:
                seen.add(id(request))
                yield request


class Scheduler:
    def __init__(
        self,
        models: Callable[[], ModelCache],
        max_batch_size: int,
        *,
        on_admitted: Callable[[], None],
        on_finished: Callable[[float], None],
    ) -> None:
        self.models = models
        self.max_batch_size = max(1, max_batch_size)
        self.on_admitted = on_admitted  # a request left the waiting line
        self.on_finished = on_finished  # a request ended normally, after this many seconds
        self.waiting: deque[Request] = deque()
        self.batches: dict[str, _Batch] = {}

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.batches)

    def running_rows(self) -> int:
        return sum(len(b.decode) + len(b.newcomers) for b in self.batches.values())

    def turn(self) -> None:
        self._admit()
        for key, batch in list(self.batches.items()):
            try:
                self._advance(batch)
            except Exception:
                logger.exception("inference failed")
                error = ServerError("The server had an error while generating the answer.")
                for request in batch.requests():
                    self._end(request, Failed(error))
                del self.batches[key]
                continue
            if not batch.decode.rows and not batch.newcomers:
                del self.batches[key]

    def shutdown(self) -> None:
        """Stop: every request still here ends (its stream closes)."""
        for request in self.waiting:
            request.emit(DONE)
        self.waiting.clear()
        for batch in self.batches.values():
            for request in batch.requests():
                self._end(request)
        self.batches.clear()

    # -- admission -----------------------------------------------------------------------------

    def _admit(self) -> None:
        while self.waiting:
            request = self.waiting[0]
            if request.cancel.is_set():  # the client left while it waited
                self.waiting.popleft()
                self.on_admitted()
                request.emit(DONE)
                continue
            running = self.running_rows()
            if running and running + request.rows > self.max_batch_size:
                return  # first come, first served: nobody overtakes the head of the line
            self.waiting.popleft()
            self.on_admitted()
            try:
                self._start(request)
            except Exception:  # a bug or a broken model folder: this request fails, not the engine
                logger.exception("could not start a request")
                error = ServerError("The server had an error while generating the answer.")
                self._end(request, Failed(error))

    def _start(self, request: Request) -> None:
        try:
            loaded = self.models().acquire(request.target)
        except APIError as exc:
            request.emit(Failed(exc))
            request.emit(DONE)
            return
        request.loaded = loaded
        request.admitted_at = time.monotonic()
        try:
            prompts = request.encode(loaded.tokenizer)
            budgets = [
                max_new_tokens(request.target, len(ids), request.params, request.param)
                for ids in prompts
            ]
            grammar = self._grammar(request)
            _check_logit_bias(request)
        except APIError as exc:
            self._end(request, Failed(exc))
            return
        request.prompt_tokens = sum(len(ids) for ids in prompts)
        request.emit(Started(request.prompt_tokens))
        batch = self.batches.get(loaded.batch_key)
        if batch is None:
            pad = loaded.tokenizer.pad_token_id
            pad = pad if pad is not None else next(iter(loaded.eos_ids), 0)
            batch = self.batches[loaded.batch_key] = _Batch(
                DecodeBatch(loaded.model, loaded.model_kwargs, pad)
            )
        n = request.params.n
        for number, (ids, budget) in enumerate(zip(prompts, budgets, strict=True)):
            choices = [
                Choice(
                    number * n + i,
                    loaded.tokenizer,
                    request.params,
                    budget=budget,
                    eos_ids=loaded.eos_ids,
                    emit=request.emit,
                )
                for i in range(n)
            ]
            prompt = PromptChoices(ids, request.params, choices)
            request.choices += choices
            batch.newcomers += [
                Row(
                    ids,
                    loaded.adapter,
                    _Owner(request, prompt, i, grammar.constraint() if grammar else None),
                )
                for i in range(n)
            ]

    def _grammar(self, request: Request) -> CompiledGrammar | None:
        """The request's `response_format` compiled for its model (a 400 if it cannot be)."""
        if request.params.response_format is None:
            return None
        loaded = request.loaded
        assert loaded is not None
        try:
            return compile_response_format(
                loaded.tokenizer,
                request.params.response_format,
                vocab_size=int(loaded.model.config.vocab_size),
                eos_ids=loaded.eos_ids,
            )
        except ConstraintError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None

    # -- decoding ------------------------------------------------------------------------------

    def _advance(self, batch: _Batch) -> None:
        decode = batch.decode
        for row in batch.newcomers:
            if row.owner.request.cancel.is_set():
                self._end(row.owner.request)  # the client left before its first token
        batch.newcomers = [row for row in batch.newcomers if not row.owner.request.finished]
        for chunk in list(_prefill_chunks(batch.newcomers)):
            logits = decode.prefill(chunk)  # on failure the chunk's rows are still newcomers
            joined = {id(row) for row in chunk}
            batch.newcomers = [row for row in batch.newcomers if id(row) not in joined]
            self._choose(chunk, logits)
        self._drop_finished(decode)
        if decode.rows:
            self._choose(decode.rows, decode.step())
            self._drop_finished(decode)

    def _choose(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Pick each row's next token (per prompt: its sampling, penalties and generator); a
        row under a grammar picks only among the tokens it allows."""
        for i, row in enumerate(rows):
            if row.owner.request.params.logit_bias:
                ids, values = row.owner.bias or _bias_tensors(row.owner, logits)
                logits[i].index_add_(0, ids, values)
        constraints = [row.owner.constraint for row in rows]
        if any(constraint is not None for constraint in constraints):
            apply_constraints(logits, constraints)
        # Each reporting row's log-probabilities, by its position in `rows`.
        reported = [
            i for i, row in enumerate(rows) if row.owner.request.params.logprobs is not None
        ]
        logprobs: dict[int, torch.Tensor] = {}
        if reported:
            values = torch.log_softmax(logits[reported].float(), dim=-1)
            logprobs = dict(zip(reported, values, strict=True))
        greedy: list[int] | None = None
        by_prompt: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_prompt.setdefault(id(row.owner.prompt), []).append(i)
        for indices in by_prompt.values():
            prompt = rows[indices[0]].owner.prompt
            if prompt.greedy:
                if greedy is None:
                    greedy = logits.argmax(dim=-1).tolist()
                tokens = [greedy[i] for i in indices]
            else:
                index = torch.tensor(indices, device=logits.device)
                positions = [rows[i].owner.position for i in indices]
                tokens = prompt.choose(logits.index_select(0, index), positions)
            for i, token in zip(indices, tokens, strict=True):
                rows[i].next_token = token
                rows[i].owner.choice.accept(token, self._logprob(rows[i], token, logprobs.get(i)))
                constraint = rows[i].owner.constraint
                if constraint is not None:
                    constraint.accept(token)

    @staticmethod
    def _logprob(row: Row, token: int, logprobs: torch.Tensor | None) -> TokenLogprob | None:
        top = row.owner.request.params.logprobs
        if top is None or logprobs is None:
            return None
        loaded = row.owner.request.loaded
        assert loaded is not None
        return token_logprobs(loaded.tokenizer, logprobs, token, top)

    def _drop_finished(self, decode: DecodeBatch) -> None:
        keep = []
        for row in decode.rows:
            request = row.owner.request
            if request.cancel.is_set() and not request.finished:
                self._end(request)  # the client went away: no usage, just close
            if request.finished or row.owner.choice.finished:
                if not request.finished and not request.running:
                    self._finish(request)
                continue
            keep.append(row)
        decode.keep(keep)

    def _finish(self, request: Request) -> None:
        completion = sum(choice.generated for choice in request.choices)
        request.emit(Usage(request.prompt_tokens, completion))
        self._end(request)
        self.on_finished(time.monotonic() - request.admitted_at)

    def _end(self, request: Request, failure: Failed | None = None) -> None:
        if request.finished:
            return
        request.finished = True
        if request.loaded is not None:
            self.models().release(request.loaded.model_id)
        if failure is not None:
            request.emit(failure)
        request.emit(DONE)


def _bias_tensors(owner: _Owner, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row's logit_bias as tensors, built once (not at every token)."""
    bias = owner.request.params.logit_bias
    ids = torch.tensor([token for token, _ in bias], device=logits.device)
    values = torch.tensor([value for _, value in bias], dtype=logits.dtype, device=logits.device)
    owner.bias = (ids, values)
    return owner.bias


def _check_logit_bias(request: Request) -> None:
    """Token ids belong to one tokenizer: an id past this model's vocabulary is a 400."""
    loaded = request.loaded
    assert loaded is not None
    size = int(loaded.model.config.vocab_size)
    for token, _ in request.params.logit_bias:
        if not 0 <= token < size:
            raise InvalidRequest(
                f"Invalid value for 'logit_bias': token id {token} is not in this model's "
                f"vocabulary (0 to {size - 1}).",
                param="logit_bias",
            )


def _prefill_chunks(rows: list[Row]) -> Iterator[list[Row]]:
    """Newcomers in passes of at most PREFILL_TOKENS padded tokens, similar lengths together."""
    chunk: list[Row] = []
    for row in sorted(rows, key=lambda row: len(row.prompt_ids)):
        if chunk and (len(chunk) + 1) * len(row.prompt_ids) > PREFILL_TOKENS:
            yield chunk
            chunk = []
        chunk.append(row)
    if chunk:
        yield chunk
