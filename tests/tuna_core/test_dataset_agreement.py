"""The upload and the worker agree on every line: same lines refused, same words for each.

A file the upload accepts (`app.files.validation`) is a file the worker trains on
(`worker.training.data.validate_examples`), and a line the upload refuses is refused by the worker
with the same message: both read lines through `tuna_core.dataset`. Checked on generated files
(valid chat, completion and preference lines, then broken in every way the schema knows:
unknown and missing keys, wrong types, roles, weights, tool calls, content parts, surrogates,
mixed formats, invalid JSON and UTF-8, BOMs, blank lines) and on a fixed corpus of edge cases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.files.validation import DatasetValidator
from worker.training.data import validate_examples

# No example is too long for the context: length is the worker's alone to check (it needs the
# tokenizer), and nothing else may differ.
NO_LIMIT = 10**9

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SURROGATE = st.sampled_from(["\ud800", "x\udfff", "\udc00y"])


def verdicts_of_upload(content: bytes) -> dict[int, str]:
    validator = DatasetValidator(max_errors=10**6)
    validator.feed(content)
    report = validator.finish()
    return {error.line: error.message for error in report.errors if error.line}


def verdicts_of_worker(path: Path, tokenizer: Any) -> dict[int, str]:
    report = validate_examples(path, tokenizer, NO_LIMIT)
    return {problem.line: problem.reason for problem in report.problems}


def assert_agree(content: bytes, tmp_path: Path, tokenizer: Any) -> dict[int, str]:
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    upload = verdicts_of_upload(content)
    assert verdicts_of_worker(path, tokenizer) == upload
    return upload


# --------------------------------------------------------------------------- generated lines


@st.composite
def chat_line(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(TEXT)})
        if draw(st.integers(0, 3)) == 0:
            call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            messages.append({"role": "assistant", "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": "c1", "content": draw(TEXT)})
        answer: dict[str, Any] = {"role": "assistant", "content": draw(TEXT)}
        if draw(st.booleans()):
            answer["weight"] = draw(st.sampled_from([0, 1]))
        messages.append(answer)
    example: dict[str, Any] = {"messages": messages}
    if draw(st.booleans()):
        example["metadata"] = {"source": draw(TEXT)}
    return example


@st.composite
def completion_line(draw: st.DrawFn) -> dict[str, Any]:
    return {"prompt": draw(TEXT), "completion": draw(TEXT.filter(bool))}


@st.composite
def preference_line(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": draw(TEXT)}]},
        "preferred_output": [{"role": "assistant", "content": draw(TEXT)}],
        "non_preferred_output": [{"role": "assistant", "content": draw(TEXT)}],
    }


def _messages(example: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "messages" in example:
        return example["messages"]
    if "input" in example:
        return example["input"]["messages"]
    return None


@st.composite
def broken(draw: st.DrawFn, example: dict[str, Any]) -> dict[str, Any]:
    """``example`` with one thing changed, which may or may not make it invalid."""
    messages = _messages(example)
    key = draw(st.sampled_from(sorted(example)))
    choice = draw(st.integers(0, 13))
    if choice == 0:
        example["extra"] = 1
    elif choice == 1:
        del example[key]
    elif choice == 2:
        example[key] = draw(st.sampled_from([None, 1, "x", [], {}, True]))
    elif choice == 3:
        example["metadata"] = draw(st.sampled_from(["x", 1, None, {"k": "v"}]))
    elif messages is not None:
        message = draw(st.sampled_from(messages))
        field = draw(st.sampled_from(sorted(message)))
        if choice == 4:
            del message[field]
        elif choice == 5:
            message[field] = draw(st.sampled_from([None, 1, 0.5, "", [], {}, False, "robot"]))
        elif choice == 6:
            message["role"] = draw(st.sampled_from(["developer", "tool", "assistant", "user"]))
        elif choice == 7:
            message["weight"] = draw(st.sampled_from([0, 1, 2, True, "1", 1.0]))
        elif choice == 8:
            message["content"] = draw(
                st.sampled_from(
                    [
                        [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                        [{"type": "image_url", "image_url": {"url": "x"}}],
                        [{"type": "text"}],
                        [],
                        ["text"],
                    ]
                )
            )
        elif choice == 9:
            message["tool_calls"] = draw(
                st.sampled_from([[], [{"id": "c"}], "x", [{"id": "c", "type": "function"}]])
            )
        elif choice == 10:
            message["content"] = draw(SURROGATE)
        elif choice == 11:
            message[draw(SURROGATE)] = 1
        elif choice == 12:
            messages.insert(0, {"role": "assistant", "content": "first"})
        else:
            message["tool_call_id"] = draw(st.sampled_from(["c1", 1]))
    return example


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([chat_line, completion_line, preference_line]))
    out: list[bytes] = []
    for _ in range(draw(st.integers(1, 8))):
        # Mostly the file's own format; sometimes another (a mixed file).
        make = (
            kind
            if draw(st.integers(0, 5))
            else draw(st.sampled_from([chat_line, completion_line, preference_line]))
        )
        example = draw(make())
        if draw(st.booleans()):
            example = draw(broken(example))
        line = json.dumps(example, ensure_ascii=draw(st.booleans())).encode(
            "utf-8", "surrogatepass"
        )
        damage = draw(st.integers(0, 12))
        if damage == 0:
            line = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
        elif damage == 1:
            line = draw(st.sampled_from([b"[1, 2]", b"42", b'"text"', b"null", b'{"x": NaN}']))
        elif damage == 2:
            line = line[:5] + b"\xff" + line[5:]
        elif damage == 3:
            line = draw(st.sampled_from([b"", b"   ", b"\t"]))
        elif damage == 4:
            line += b"\r"
        out.append(line)
    content = b"\n".join(out) + draw(st.sampled_from([b"", b"\n"]))
    if draw(st.booleans()):
        content = b"\xef\xbb\xbf" + content
    return content


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=lines())
def test_generated_files_get_the_same_verdict_line_by_line(
    content: bytes, tmp_path: Path, tokenizer: Any
) -> None:
    assert_agree(content, tmp_path, tokenizer)


# --------------------------------------------------------------------------- edge cases

USER = {"role": "user", "content": "Hi"}
ANSWER = {"role": "assistant", "content": "Hello"}
GOOD = {"messages": [USER, ANSWER]}

EDGE_CASES: list[tuple[str, Any]] = [
    ("per-example metadata", {"messages": [USER, ANSWER], "metadata": {"id": 7}}),
    ("metadata not an object", {"messages": [USER, ANSWER], "metadata": "x"}),
    ("tools and parallel_tool_calls", {
        "messages": [USER, ANSWER], "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }),
    ("legacy functions key", {"messages": [USER, ANSWER], "functions": []}),
    ("refusal on an answer", {"messages": [USER, {**ANSWER, "refusal": None}]}),
    ("function_call on an answer", {"messages": [USER, {**ANSWER, "function_call": {}}]}),
    ("every answer weight 0", {"messages": [USER, {**ANSWER, "weight": 0}]}),
    ("weight on a user", {"messages": [{**USER, "weight": 1}, ANSWER]}),
    ("weight true", {"messages": [USER, {**ANSWER, "weight": True}]}),
    ("trained answer first", {"messages": [ANSWER, USER, ANSWER]}),
    ("context-only answer first", {"messages": [{**ANSWER, "weight": 0}, USER, ANSWER]}),
    ("no answer", {"messages": [USER]}),
    ("tool without call id", {"messages": [USER, ANSWER, {"role": "tool", "content": "x"}]}),
    ("null content with tool calls", {"messages": [USER, {"role": "assistant", "content": None,
        "tool_calls": [{"id": "1", "type": "function",
                        "function": {"name": "f", "arguments": "{}"}}]}, USER, ANSWER]}),
    ("image part", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:"}}]}, ANSWER]}),
    ("surrogate in a name", {"messages": [{**USER, "name": "\ud800"}, ANSWER]}),
    ("surrogate in a key", {"messages": [USER, ANSWER], "metadata": {"\udc00": 1}}),
    ("completion with metadata", {"prompt": "a", "completion": "b", "metadata": {}}),
    ("empty completion", {"prompt": "a", "completion": ""}),
    ("preference", {"input": {"messages": [USER]}, "preferred_output": [ANSWER],
                    "non_preferred_output": [ANSWER]}),
]  # fmt: skip


def test_the_edge_case_corpus_gets_the_same_verdict(tmp_path: Path, tokenizer: Any) -> None:
    for name, example in EDGE_CASES:
        content = (json.dumps(GOOD) + "\n" + json.dumps(example) + "\n").encode()
        assert_agree(content, tmp_path, tokenizer), name


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n",  # a BOM
        b"\xef\xbb\xbf\n" + json.dumps(GOOD).encode(),  # a BOM alone on line 1
        (json.dumps(GOOD) + "\r\n\r\n" + json.dumps(GOOD) + "\r\n").encode(),  # CRLF, blanks
        json.dumps(GOOD).encode() + b'\n{"messages": NaN}\n' + json.dumps(GOOD).encode(),
        json.dumps(GOOD).encode() + b"\n\xff\xfe\n" + json.dumps(GOOD).encode(),
        json.dumps(GOOD).encode() + b'\n{"prompt": "a", "completion": "b"}\n',  # mixed
        b'{"prompt": "a", "completion": "b"}\n' + json.dumps(GOOD).encode(),  # mixed
        b"[" * 100_000 + b"\n" + json.dumps(GOOD).encode(),  # nested too deeply
        b'{"a": ' + b"9" * 5000 + b"}\n",  # a number past Python's digit limit
    ],
)
def test_framing_edge_cases_get_the_same_verdict(
    content: bytes, tmp_path: Path, tokenizer: Any
) -> None:
    assert_agree(content, tmp_path, tokenizer)


def test_a_line_both_refuse_is_named_alike(tmp_path: Path, tokenizer: Any) -> None:
    # Not vacuous: the files above do get refusals, with the upload's own words.
    bad = {"messages": [USER, {"role": "assistant"}]}
    content = (json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n").encode()
    assert assert_agree(content, tmp_path, tokenizer) == {3: "messages[1].content: missing"}
