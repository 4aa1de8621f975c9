"""The batched tokenization pipeline gives exactly what tokenizing example by example gave.

The reference below is the per-example algorithm the engine used before batching: render every
conversation prefix with ``apply_chat_template``, tokenize the full text with offsets, and train
each token whose characters start inside an assistant span.  Ids, labels and reported problems
must match it exactly, on both bundled tokenizers and on one with a template that has native tool
calls (rendered by the engine's direct jinja path rather than its Python ChatML one), with chunk
boundaries falling anywhere.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.tuna_core.test_chat_template import TOOLS_TEMPLATE, via_apply
from tests.worker.training.helpers import EDGE_CASE_TEXTS, chat, write_jsonl
from tuna_core.base_models import resolve_base_model
from tuna_core.chat_template import prepare_chat
from tuna_core.dataset import DatasetFormat, ExampleError, LineChecker
from worker.training import data
from worker.training.data import (
    IGNORE_INDEX,
    ExampleTooLong,
    InvalidExample,
    NoTrainableTokens,
    TokenizedExample,
    load_examples,
    tokenize_example,
    tokenize_legacy,
    validate_examples,
)

MAX_SEQ_LEN = 160


# --- the reference: one example at a time, as before batching ---------------------------------


def reference_tokenize_chat(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    template = tokenizer.chat_template
    messages, weights, tools = prepare_chat(example["messages"], example.get("tools"), template)
    full = via_apply(tokenizer, messages, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not weights[i]:
            continue
        before = via_apply(tokenizer, messages[:i], tools, add_generation_prompt=True)
        through = via_apply(tokenizer, messages[: i + 1], tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"message {i + 1}: the chat template does not render this conversation "
                "prefix by prefix, so its assistant tokens cannot be located"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for t, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(lo <= start < hi for lo, hi in spans):
            labels[t] = input_ids[t]
    return TokenizedExample.from_labels(input_ids, labels)


def reference_tokenize(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    if "messages" in example:
        return reference_tokenize_chat(tokenizer, example)
    return tokenize_legacy(tokenizer, example)


def reference_check(
    tokenizer: Any, number: int, line: int, raw: dict[str, Any], max_seq_len: int
) -> TokenizedExample | InvalidExample:
    try:
        example = reference_tokenize(tokenizer, raw)
    except ValueError as exc:
        return InvalidExample(number, str(exc), line=line)
    if example.n_tokens > max_seq_len:
        return ExampleTooLong(
            number,
            f"has {example.n_tokens} tokens, more than the context of {max_seq_len}",
            line=line,
        )
    if sum(1 for label in example.labels if label != IGNORE_INDEX) == 0:
        return NoTrainableTokens(number, "has no trainable tokens", line=line)
    return example


def reference_results(path: Path, tokenizer: Any, max_seq_len: int) -> list[Summary]:
    """The summary of each example: lines checked by the schema, then tokenized one by one."""
    out: list[Summary] = []
    lines = LineChecker()
    for line, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            example = lines.check(line, raw)
        except ExampleError as exc:
            number = lines.example_count
            out.append(summary(InvalidExample(number, str(exc), line=line, code=exc.code)))
            continue
        if example is not None:
            assert example.format is not DatasetFormat.PREFERENCE
            out.append(
                summary(
                    reference_check(tokenizer, lines.example_count, line, example.data, max_seq_len)
                )
            )
    return out


Summary = tuple[Any, ...]  # ("tokens", ids, labels) or ("problem", number, code, message)


def summary(result: TokenizedExample | InvalidExample) -> Summary:
    if isinstance(result, InvalidExample):
        return ("problem", result.example_number, result.code, str(result))
    return ("tokens", list(result.input_ids), result.labels)


def problems(results: list[Summary]) -> list[Summary]:
    return [r[1:] for r in results if r[0] == "problem"]


# --- the data ----------------------------------------------------------------------------------


def random_chat(rng: random.Random) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(EDGE_CASE_TEXTS)})
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": rng.choice(EDGE_CASE_TEXTS)})
        answer: dict[str, Any] = {"role": "assistant", "content": rng.choice(EDGE_CASE_TEXTS)}
        if rng.random() < 0.3:
            answer["weight"] = rng.choice([0, 1])
        messages.append(answer)
    if rng.random() < 0.15:  # a trailing user turn: nothing to learn after it
        messages.append({"role": "user", "content": rng.choice(EDGE_CASE_TEXTS)})
    return {"messages": messages}


def special_cases() -> list[Any]:
    weather_call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    }
    return [
        chat("What is the capital of France?", "Paris."),
        chat("Hi", "Hello", weight=0),  # no trainable tokens
        chat("Tell me a long story", "Once upon a time " * 60),  # too long
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "parts"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ]
        },
        {
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [weather_call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "assistant", "content": "It is sunny."},
            ],
        },
        {"messages": [{"role": "assistant", "content": "I speak first."}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "robot", "content": "beep"}]},
        {"messages": []},
        {"messages": [{"role": "user", "content": "x"}], "extra": 1},
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": "Unicode 東京 🦙", "completion": ""},
        {"prompt": "", "completion": "only a completion"},
        {"prompt": 1, "completion": "not a string"},
        {"neither": "chat nor legacy"},
        ["not", "an", "object"],
        42,
    ]


def varied_rows(n_random: int, seed: int = 0) -> list[Any]:
    rng = random.Random(seed)
    rows = [random_chat(rng) for _ in range(n_random)]
    for case in special_cases():
        rows.insert(rng.randrange(len(rows) + 1), case)
    return rows


@pytest.fixture(
    scope="module", params=["tuna-tiny-test", "SmolLM2-135M-Instruct", "tools-template"]
)
def any_tokenizer(request: pytest.FixtureRequest, model_cache: Path) -> Any:
    from transformers import AutoTokenizer

    if request.param == "tools-template":  # the tiny tokenizer with another template
        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("tuna-tiny-test", model_cache))
        tokenizer.chat_template = TOOLS_TEMPLATE
        return tokenizer
    return AutoTokenizer.from_pretrained(resolve_base_model(request.param, model_cache))


# --- the tests ---------------------------------------------------------------------------------


def batched_results(path: Path, tokenizer: Any, max_seq_len: int) -> list[Summary]:
    checked = data._checked_examples(data._Lines(path), tokenizer, max_seq_len)
    return [summary(result) for _, _, result in checked if result is not None]


def test_a_file_larger_than_a_chunk_matches_the_reference(
    any_tokenizer: Any, tmp_path: Path
) -> None:
    rows = varied_rows(data.TOKENIZE_CHUNK + 200)
    path = write_jsonl(tmp_path / "varied.jsonl", rows)
    expected = reference_results(path, any_tokenizer, MAX_SEQ_LEN)
    assert len(expected) == len(rows)
    assert {p[1] for p in problems(expected)} == {
        "invalid_format",
        "example_too_long",
        "no_trainable_tokens",
    }
    assert batched_results(path, any_tokenizer, MAX_SEQ_LEN) == expected

    report = validate_examples(path, any_tokenizer, MAX_SEQ_LEN)
    reported = [(p.example_number, p.code, p.message) for p in report.problems]
    assert reported == problems(expected)
    assert report.n_examples == len(rows)
    assert report.n_tokens == sum(len(r[1]) for r in expected if r[0] == "tokens")

    with pytest.raises(InvalidExample) as raised:
        load_examples(path, any_tokenizer, MAX_SEQ_LEN)
    assert summary(raised.value)[1:] == problems(expected)[0]

    # One example at a time, the public entry point agrees too.
    for raw, want in zip(rows[:300], expected[:300], strict=True):
        if want[0] == "tokens":
            assert summary(tokenize_example(any_tokenizer, raw)) == want


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunk_boundaries_anywhere_match_the_reference(
    any_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(data, "TOKENIZE_CHUNK", chunk)
    rows = varied_rows(20, seed=chunk)
    path = write_jsonl(tmp_path / "varied.jsonl", rows)
    expected = reference_results(path, any_tokenizer, MAX_SEQ_LEN)
    assert batched_results(path, any_tokenizer, MAX_SEQ_LEN) == expected

    good = [row for row, result in zip(rows, expected, strict=True) if result[0] == "tokens"]
    loaded = load_examples(write_jsonl(tmp_path / "good.jsonl", good), any_tokenizer, MAX_SEQ_LEN)
    assert [summary(e) for e in loaded] == [r for r in expected if r[0] == "tokens"]


@pytest.mark.parametrize("chunk", [2, 1000])
def test_an_unreadable_line_is_one_problem_and_the_lines_after_it_are_read(
    any_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    # As the upload does: each line is judged on its own, so a job reports what the upload did.
    monkeypatch.setattr(data, "TOKENIZE_CHUNK", chunk)
    lines = [
        json.dumps(chat("a", "b")),
        json.dumps(chat("Hi", "Hello", weight=0)),
        "",
        json.dumps({"prompt": "p", "completion": "c"}),
        "{not json",
        json.dumps(chat("still", "read")),
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    expected = reference_results(path, any_tokenizer, MAX_SEQ_LEN)
    assert [p[:2] for p in problems(expected)] == [
        (2, "no_trainable_tokens"),
        (3, "invalid_format"),  # a completion in a chat file
        (4, "invalid_format"),
    ]
    assert expected[-1][0] == "tokens"
    assert batched_results(path, any_tokenizer, MAX_SEQ_LEN) == expected

    report = validate_examples(path, any_tokenizer, MAX_SEQ_LEN)
    assert report.n_examples == 5
    assert [(p.example_number, p.code, p.message) for p in report.problems] == problems(expected)
    assert [p.line for p in report.problems] == [2, 4, 5]


def test_a_tokenizer_shipped_with_truncation_on_is_not_truncated(
    tiny_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    rows = [chat("Tell me a long story", "Once upon a time " * 20) for _ in range(3)]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    truncating = AutoTokenizer.from_pretrained(tiny_dir)
    truncating.backend_tokenizer.enable_truncation(max_length=8)  # as a tokenizer.json may say
    loaded = load_examples(path, truncating, MAX_SEQ_LEN)
    expected = reference_results(path, AutoTokenizer.from_pretrained(tiny_dir), MAX_SEQ_LEN)
    assert [summary(e) for e in loaded] == expected
    assert all(len(r[1]) > 8 for r in expected)
