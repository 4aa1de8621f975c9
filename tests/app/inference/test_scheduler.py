"""The worker thread's scheduler, driven turn by turn on the tiny model (no server, no threads).

Each request's output must not depend on what else shares its batch: a request decoded in a
batch (joining late, beside other adapters, the base, other lengths) gives what it gives alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jsonschema_rs
import pytest

from app.inference.engine import Done, Failed, Request
from app.inference.models import ModelCache
from app.inference.scheduler import Scheduler
from app.inference.types import (
    ChoiceFinished,
    ModelTarget,
    ResponseFormat,
    SamplingParams,
    Started,
    TextDelta,
    Usage,
)
from tests.app.inference.conftest import MODEL_CACHE, TINY, ModelFolders

GREEDY = SamplingParams(max_tokens=12, temperature=0)


class Events:
    """What one request was sent, in order."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.items.append(event)

    @property
    def done(self) -> bool:
        return any(isinstance(e, Done) for e in self.items)

    def texts(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for event in self.items:
            if isinstance(event, TextDelta):
                out[event.index] = out.get(event.index, "") + event.text
        return out

    def finishes(self) -> dict[int, str]:
        return {e.index: e.finish_reason for e in self.items if isinstance(e, ChoiceFinished)}

    def usage(self) -> Usage | None:
        return next((e for e in self.items if isinstance(e, Usage)), None)


@pytest.fixture(scope="module")
def cache() -> Iterator[ModelCache]:
    import torch

    with torch.inference_mode():
        yield ModelCache(MODEL_CACHE, None, budget_bytes=1 << 30, device="cpu")


def scheduler(cache: ModelCache, max_batch_size: int = 64) -> Scheduler:
    return Scheduler(
        lambda: cache, max_batch_size, on_admitted=lambda: None, on_finished=lambda _: None
    )


def base() -> ModelTarget:
    return ModelTarget(TINY, TINY, "base", 2048)


def lora(folders: ModelFolders, which: str) -> ModelTarget:
    path = folders.adapter_a if which == "a" else folders.adapter_b
    return ModelTarget(f"ft:{TINY}:test:{which}", TINY, "lora", 2048, path=path)


def full(folders: ModelFolders) -> ModelTarget:
    return ModelTarget(f"ft:{TINY}:test:full", TINY, "full", 2048, path=folders.full)


def request(
    target: ModelTarget, prompt: str, params: SamplingParams = GREEDY
) -> tuple[Request, Events]:
    events = Events()

    def encode(tokenizer: Any) -> list[list[int]]:
        return [tokenizer(prompt)["input_ids"]]

    return Request(target, encode, params, "prompt", params.n, events, threading.Event()), events


def run(sched: Scheduler, turns: int = 10_000) -> None:
    import torch

    with torch.inference_mode():
        for _ in range(turns):
            if not sched.busy:
                return
            sched.turn()


def alone(cache: ModelCache, target: ModelTarget, prompt: str, params: SamplingParams = GREEDY):
    sched = scheduler(cache)
    req, events = request(target, prompt, params)
    sched.waiting.append(req)
    run(sched)
    assert events.done and events.usage() is not None
    return events.texts(), events.finishes()


PROMPTS = [
    "The cat sat on",
    "Numbers: 1 2 3 4 5 6 7",
    "Hello",
    "A much longer prompt, about rivers",
]


def test_requests_joining_a_running_batch_answer_as_alone(cache: ModelCache) -> None:
    expected = [alone(cache, base(), prompt) for prompt in PROMPTS]
    sched = scheduler(cache)
    pairs = [request(base(), prompt) for prompt in PROMPTS]
    sched.waiting.append(pairs[0][0])
    run(sched, turns=3)  # the first one is three tokens in
    for req, _ in pairs[1:]:
        sched.waiting.append(req)
    run(sched, turns=1)
    assert len(sched.batches) == 1
    assert len(next(iter(sched.batches.values())).decode) == len(PROMPTS)  # all decode together
    run(sched)
    for (_, events), (texts, finishes) in zip(pairs, expected, strict=True):
        assert events.texts() == texts
        assert events.finishes() == finishes


def test_mixed_adapters_and_the_base_share_one_batch(
    cache: ModelCache, model_folders: ModelFolders
) -> None:
    """Base, adapter a and adapter b rows in one batch: each row as its model alone; a full
    fine-tune decodes in its own batch beside it."""
    targets = [base(), lora(model_folders, "a"), lora(model_folders, "b"), full(model_folders)]
    expected = [alone(cache, target, "The cat sat on") for target in targets]
    assert len({str(texts) for texts, _ in expected}) == 4  # the models really differ
    sched = scheduler(cache)
    pairs = [request(target, "The cat sat on") for target in targets]
    pairs += [request(lora(model_folders, "a"), "Hello")]  # a second row on adapter a
    for req, _ in pairs:
        sched.waiting.append(req)
    run(sched, turns=1)
    sizes = sorted(len(batch.decode) for batch in sched.batches.values())
    assert sizes == [1, 4]  # the full fine-tune alone; base + a + b + a together
    run(sched)
    for (_, events), (texts, _) in zip(pairs, expected, strict=False):
        assert events.texts() == texts
    assert pairs[-1][1].texts() == alone(cache, lora(model_folders, "a"), "Hello")[0]


def test_seeded_sampling_does_not_depend_on_the_batch(
    cache: ModelCache, model_folders: ModelFolders
) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, n=2, seed=7)
    penalised = SamplingParams(max_tokens=16, temperature=0.8, seed=3, frequency_penalty=1.0)
    expected = alone(cache, base(), "Once upon a time", params)
    expected_penalised = alone(cache, lora(model_folders, "a"), "Hello", penalised)
    sched = scheduler(cache)
    others = [request(lora(model_folders, "b"), p) for p in PROMPTS]
    sampled, events = request(base(), "Once upon a time", params)
    pen, pen_events = request(lora(model_folders, "a"), "Hello", penalised)
    for req, _ in others[:2]:
        sched.waiting.append(req)
    run(sched, turns=2)
    sched.waiting.extend([sampled, pen, *(req for req, _ in others[2:])])
    run(sched)
    assert (events.texts(), events.finishes()) == expected
    assert len(events.texts()) == 2
    assert (pen_events.texts(), pen_events.finishes()) == expected_penalised


def test_a_cancelled_request_leaves_the_batch_and_the_others_go_on(cache: ModelCache) -> None:
    long = SamplingParams(max_tokens=40, temperature=0)
    expected = alone(cache, base(), "Hello", long)
    sched = scheduler(cache)
    kept, kept_events = request(base(), "Hello", long)
    dropped, dropped_events = request(base(), "The cat sat on", long)
    sched.waiting.extend([kept, dropped])
    run(sched, turns=5)
    dropped.cancel.set()  # the client disconnected mid-stream
    run(sched, turns=1)
    batch = next(iter(sched.batches.values()))
    assert [row.owner.request for row in batch.decode.rows] == [kept]
    assert dropped_events.done and dropped_events.usage() is None
    assert not any(isinstance(e, Failed) for e in dropped_events.items)
    run(sched)
    assert (kept_events.texts(), kept_events.finishes()) == expected
    assert sum(isinstance(e, Usage) for e in kept_events.items) == 1


def test_rows_leave_as_they_finish(cache: ModelCache) -> None:
    sched = scheduler(cache)
    short, short_events = request(base(), "Hello", SamplingParams(max_tokens=2, temperature=0))
    long, _ = request(base(), "Hello", SamplingParams(max_tokens=30, temperature=0))
    sched.waiting.extend([short, long])
    run(sched, turns=2)
    assert short_events.done
    usage = short_events.usage()
    assert usage is not None and usage.completion_tokens == 2
    batch = next(iter(sched.batches.values()))
    assert [row.owner.request for row in batch.decode.rows] == [long]


def test_the_batch_size_bounds_running_rows_first_come_first_served(cache: ModelCache) -> None:
    sched = scheduler(cache, max_batch_size=3)
    params = SamplingParams(max_tokens=6, temperature=0, n=2)
    first, first_events = request(base(), "Hello", params)
    second, second_events = request(base(), "The cat sat on", params)
    single, _ = request(base(), "Hi", GREEDY)
    sched.waiting.extend([first, second, single])
    run(sched, turns=1)
    assert sched.running_rows() == 2  # the second (2 rows) does not fit beside the first
    assert list(sched.waiting) == [second, single]  # and nobody overtakes it
    run(sched)
    assert first_events.done and second_events.done
    assert second_events.texts() == alone(cache, base(), "The cat sat on", params)[0]


def test_a_request_bigger_than_the_batch_runs_alone(cache: ModelCache) -> None:
    sched = scheduler(cache, max_batch_size=1)
    big, events = request(base(), "Hello", SamplingParams(max_tokens=3, temperature=0, n=3))
    sched.waiting.append(big)
    run(sched)
    assert len(events.texts()) == 3 and events.done


def test_errors_before_the_first_token_reach_only_their_request(cache: ModelCache) -> None:
    sched = scheduler(cache)
    ok, ok_events = request(base(), "Hello")
    too_long, too_long_events = request(
        base(), "Hello", SamplingParams(max_tokens=5000, temperature=0)
    )
    missing = ModelTarget(f"ft:{TINY}:test:gone", TINY, "lora", 2048, path=MODEL_CACHE / "gone")
    gone, gone_events = request(missing, "Hello")
    sched.waiting.extend([ok, too_long, gone])
    run(sched)
    assert ok_events.done and ok_events.texts()
    for events, code in (
        (too_long_events, "context_length_exceeded"),
        (gone_events, "model_files_missing"),
    ):
        failure = next(e for e in events.items if isinstance(e, Failed))
        assert failure.error.code == code
        assert not any(isinstance(e, Started) for e in events.items)  # a plain JSON error
        assert events.done


def test_a_model_in_use_is_not_evicted_under_its_rows(model_folders: ModelFolders) -> None:
    """An LRU that fits one adapter, two adapters decoding together: both stay until done;
    a deletion while decoding waits for the last row."""
    import torch

    with torch.inference_mode():
        small = ModelCache(
            MODEL_CACHE, None, budget_bytes=model_folders.adapter_bytes, device="cpu"
        )
    sched = scheduler(small)
    a, a_events = request(lora(model_folders, "a"), "Hello")
    b, b_events = request(lora(model_folders, "b"), "Hello")
    sched.waiting.extend([a, b])
    run(sched, turns=1)
    assert sorted(small.stats()["cached"]) == sorted([a.target.model_id, b.target.model_id])
    small.evict(a.target.model_id)  # deleted while it decodes
    assert a.target.model_id in small.stats()["cached"]
    run(sched)
    assert a.target.model_id not in small.stats()["cached"]  # gone with its last row
    assert b_events.done
    assert a_events.texts() == alone(small, lora(model_folders, "a"), "Hello")[0]


# -- structured output ------------------------------------------------------------------------

WEATHER = {
    "type": "object",
    "properties": {
        "unit": {"enum": ["celsius", "kelvin"]},
        "ok": {"type": "boolean"},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["unit", "ok", "days"],
    "additionalProperties": False,
}


def structured(schema: dict[str, Any] | None, **changes: Any) -> SamplingParams:
    fmt = ResponseFormat(json.dumps(schema) if schema is not None else None, strict=True)
    return replace(SamplingParams(max_tokens=60, temperature=0), response_format=fmt, **changes)


def test_a_response_format_holds_every_choice_to_its_schema(cache: ModelCache) -> None:
    validator = jsonschema_rs.validator_for(WEATHER)
    sched = scheduler(cache)
    greedy, greedy_events = request(base(), "Weather?", structured(WEATHER))
    sampled, sampled_events = request(
        base(), "Weather, twice?", structured(WEATHER, temperature=1.0, n=2, seed=5)
    )
    anything, anything_events = request(base(), "Any object", structured(None))
    free, free_events = request(base(), "Weather?")
    sched.waiting.extend([greedy, sampled, anything, free])
    run(sched)
    # The random tiny model would never write this JSON by itself: the grammar makes it.
    for events, n in ((greedy_events, 1), (sampled_events, 2)):
        assert events.finishes() == dict.fromkeys(range(n), "stop")
        for text in events.texts().values():
            assert validator.is_valid(json.loads(text)), text
    # Any object: its free strings may outrun max_tokens ("length", cut JSON, as OpenAI's).
    text = anything_events.texts()[0]
    if anything_events.finishes()[0] == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{") and anything_events.finishes()[0] == "length"
    # A free row beside them answers as it does alone.
    assert (free_events.texts(), free_events.finishes()) == alone(cache, base(), "Weather?")


def test_a_schema_the_grammar_cannot_enforce_fails_before_the_first_token(
    cache: ModelCache,
) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    req, events = request(base(), "Numbers", structured(schema))
    sched = scheduler(cache)
    sched.waiting.append(req)
    run(sched)
    assert not any(isinstance(e, Started) for e in events.items)
    (failed,) = [e for e in events.items if isinstance(e, Failed)]
    assert failed.error.param == "response_format.json_schema.schema"
    assert "uniqueItems" in failed.error.message


# -- logprobs and logit_bias -------------------------------------------------------------------


def test_logprobs_report_each_generated_token_with_its_alternatives(cache: ModelCache) -> None:
    params = SamplingParams(max_tokens=6, temperature=0, logprobs=3)
    req, events = request(base(), "The cat sat on", params)
    sched = scheduler(cache)
    sched.waiting.append(req)
    run(sched)
    deltas = [e for e in events.items if isinstance(e, TextDelta)]
    tokens = [lp for delta in deltas for lp in delta.logprobs]
    usage = events.usage()
    assert usage is not None
    eos = 1 if events.finishes()[0] == "stop" else 0
    assert len(tokens) == usage.completion_tokens - eos
    assert "".join(t.token for t in tokens) == events.texts()[0]
    for token in tokens:
        assert token.logprob <= 0.0
        assert len(token.top) == 3
        assert [lp for *_, lp in token.top] == sorted((lp for *_, lp in token.top), reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert (token.token, token.logprob) == (token.top[0][0], token.top[0][2])
        assert bytes(token.bytes).decode() == token.token
    # The same request without logprobs gives the same text.
    assert (
        events.texts() == alone(cache, base(), "The cat sat on", replace(params, logprobs=None))[0]
    )


def test_logit_bias_steers_the_choice_and_a_bad_id_is_refused(cache: ModelCache) -> None:
    first = alone(cache, base(), "Hello", SamplingParams(max_tokens=1, temperature=0))[0][0]
    tokenizer = cache.acquire(base()).tokenizer
    cache.release(TINY)
    banned = tokenizer(first, add_special_tokens=False)["input_ids"][0]
    forced = tokenizer(" zebra", add_special_tokens=False)["input_ids"][0]
    params = SamplingParams(max_tokens=3, temperature=0, logit_bias=((forced, 100.0),))
    texts, _ = alone(cache, base(), "Hello", params)
    assert texts[0].startswith(tokenizer.decode([forced]))
    params = SamplingParams(max_tokens=1, temperature=0, logit_bias=((banned, -100.0),))
    assert alone(cache, base(), "Hello", params)[0][0] != first

    req, events = request(base(), "Hello", SamplingParams(logit_bias=((10**9, 1.0),)))
    sched = scheduler(cache)
    sched.waiting.append(req)
    run(sched)
    (failed,) = [e for e in events.items if isinstance(e, Failed)]
    assert failed.error.param == "logit_bias"
