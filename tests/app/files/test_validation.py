"""Tests for the upload-time JSONL dataset validator (app/files/validation.py)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.files.validation import (
    DatasetFormat,
    DatasetValidator,
    LineError,
    ValidationReport,
    validate_file,
)

BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- helpers


def jl(*objs: Any) -> bytes:
    """JSONL bytes, one line per object (raw bytes/str are taken as the line itself)."""
    out = []
    for obj in objs:
        if isinstance(obj, bytes):
            out.append(obj)
        elif isinstance(obj, str):
            out.append(obj.encode())
        else:
            out.append(json.dumps(obj).encode())
    return b"".join(line + b"\n" for line in out)


def check(data: bytes, chunks: list[int] | None = None, **kwargs: Any) -> ValidationReport:
    v = DatasetValidator(**kwargs)
    if chunks is None:
        v.feed(data)
    else:
        pos = 0
        for size in chunks:
            v.feed(data[pos : pos + size])
            pos += size
        v.feed(data[pos:])
    return v.finish()


def chunked(data: bytes, cuts: list[int], **kwargs: Any) -> ValidationReport:
    v = DatasetValidator(**kwargs)
    points = [0, *sorted(cuts), len(data)]
    for a, b in pairwise(points):
        v.feed(data[a:b])
    return v.finish()


def only_error(data: bytes, **kwargs: Any) -> LineError:
    report = check(data, **kwargs)
    assert report.error_count == 1, report.errors
    assert len(report.errors) == 1
    return report.errors[0]


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    if not messages:
        messages = (
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        )
    return {"messages": list(messages), **extra}


USER = {"role": "user", "content": "What is 2+2?"}
ASSISTANT = {"role": "assistant", "content": "4"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
COMPLETION = {"prompt": "2+2=", "completion": " 4"}
PREFERENCE = {
    "input": {"messages": [USER]},
    "preferred_output": [{"role": "assistant", "content": "4"}],
    "non_preferred_output": [{"role": "assistant", "content": "5"}],
}


# --------------------------------------------------------------------------- valid files


def test_valid_chat_file() -> None:
    context_only = {**ASSISTANT, "weight": 0}
    report = check(jl(chat(), chat(USER, ASSISTANT), chat(USER, context_only, USER, ASSISTANT)))
    assert report.ok
    assert report.format is DatasetFormat.CHAT
    assert report.example_count == 3
    assert report.errors == [] and report.error_count == 0
    assert report.summary() == "Training file is valid: 3 chat example(s)."


def test_valid_chat_with_tools_parts_and_metadata() -> None:
    example = chat(
        {"role": "system", "content": [{"type": "text", "text": "Be exact."}]},
        {"role": "user", "content": "add 2 and 2", "name": "alice"},
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "weight": 0},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "assistant", "content": "4", "refusal": None, "weight": 1},
        tools=[TOOL, {"type": "function", "function": {"name": "sub", "description": "x"}}],
        parallel_tool_calls=False,
        metadata={"source": "unit"},
    )
    report = check(jl(example))
    assert report.ok, report.errors


def test_valid_completion_file() -> None:
    report = check(jl(COMPLETION, {"prompt": "", "completion": "x", "metadata": {}}))
    assert report.ok, report.errors
    assert report.format is DatasetFormat.COMPLETION
    assert report.example_count == 2


def test_valid_preference_file() -> None:
    with_tools = {**PREFERENCE, "input": {"messages": [USER], "tools": [TOOL]}}
    report = check(jl(PREFERENCE, with_tools))
    assert report.ok, report.errors
    assert report.format is DatasetFormat.PREFERENCE
    assert report.example_count == 2


def test_last_line_without_newline_is_an_example() -> None:
    data = jl(chat()) + json.dumps(chat()).encode()
    report = check(data)
    assert report.ok and report.example_count == 2
    bad = jl(chat()) + b"[1]"
    assert check(bad).errors == [LineError(2, "expected a JSON object, got array")]


# --------------------------------------------------------------------------- framing


def test_blank_lines_are_skipped_but_numbered() -> None:
    data = b"\n   \n" + jl(chat()) + b"\t\n\n" + b"[]\n" + b"\r\n"
    report = check(data)
    assert report.example_count == 2
    assert report.errors == [LineError(6, "expected a JSON object, got array")]


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n  \n\t\r\n", BOM, BOM + b"\n", BOM + b"  \r\n"])
def test_empty_file(data: bytes) -> None:
    report = check(data)
    assert not report.ok
    assert report.example_count == 0
    assert report.format is None
    assert report.errors == [LineError(0, "file is empty")]
    assert report.error_count == 1
    assert report.summary() == "Invalid training file: file is empty."


def test_crlf_file() -> None:
    data = jl(chat(), COMPLETION).replace(b"\n", b"\r\n")
    report = check(jl(chat(), chat()).replace(b"\n", b"\r\n"))
    assert report.ok and report.example_count == 2
    # line numbers still right with CRLF
    assert check(data).errors[0].line == 2


def test_bom_at_start_is_skipped() -> None:
    report = check(BOM + jl(chat(), chat()))
    assert report.ok and report.example_count == 2
    # ... also when it arrives one byte at a time
    assert check(BOM + jl(chat()), chunks=[1, 1, 1, 1]).ok


def test_bom_elsewhere_is_an_error() -> None:
    err = only_error(jl(chat()) + BOM + jl(chat()))
    assert err.line == 2
    assert err.message.startswith("invalid JSON (")


def test_bom_before_blank_first_line_does_not_carry_over() -> None:
    err = only_error(BOM + b"\n" + BOM + jl(chat()))
    assert err.line == 2


def test_accepts_bytearray_and_memoryview_chunks() -> None:
    data = jl(chat(), chat())
    v = DatasetValidator()
    v.feed(bytearray(data[:10]))
    v.feed(memoryview(data)[10:])
    assert v.finish().ok


def test_finish_is_idempotent_and_feed_after_finish_fails() -> None:
    v = DatasetValidator()
    v.feed(jl(chat()))
    first = v.finish()
    assert v.finish() == first
    with pytest.raises(RuntimeError):
        v.feed(b"{}")


# --------------------------------------------------------------------------- per-line errors


def test_invalid_utf8() -> None:
    err = only_error(jl(chat()) + b'{"messages": "\xff"}\n')
    assert err == LineError(2, "invalid UTF-8 at byte 15")


def test_invalid_utf8_after_bom_counts_raw_bytes() -> None:
    assert only_error(BOM + b"\xc3(\n") == LineError(1, "invalid UTF-8 at byte 4")


def test_truncated_utf8_at_end_of_file() -> None:
    assert only_error(b'{"prompt": "\xc3') == LineError(1, "invalid UTF-8 at byte 13")


def test_utf8_char_split_across_chunks() -> None:
    data = jl(chat(USER, {"role": "assistant", "content": "héllo €𝄞"}))
    for cut in range(len(data)):
        assert chunked(data, [cut]).ok


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (
            chat(USER, {"role": "assistant", "content": "ok \ud800"}),
            "messages[1].content: unpaired surrogate \\ud800 at character 4 "
            "(not valid Unicode text)",
        ),
        (
            chat(USER, ASSISTANT, metadata={"tag": ["x", "\udfff"]}),
            "metadata.tag[1]: unpaired surrogate \\udfff at character 1 (not valid Unicode text)",
        ),
        (
            {**COMPLETION, "metadata": {"\udc80": 1}},
            "a key of metadata: unpaired surrogate \\udc80 at character 1 (not valid Unicode text)",
        ),
    ],
)
def test_unpaired_surrogates_are_refused_where_they_are(
    example: dict[str, Any], message: str
) -> None:
    # json.dumps escapes them (ensure_ascii), so the line is valid UTF-8 and valid JSON.
    valid_first_line = COMPLETION if "prompt" in example else chat()
    assert only_error(jl(valid_first_line, example)) == LineError(2, message)


def test_escaped_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    pair = chat(USER, {"role": "assistant", "content": "\U0001d11e"})  # escaped as \ud834\udd1e
    backslash = chat(USER, {"role": "assistant", "content": "\\ud800 is a JSON escape"})
    assert b"\\ud834\\udd1e" in jl(pair)
    assert check(jl(pair, backslash)).ok


def test_invalid_json_message() -> None:
    data = jl(chat()) + b'{"messages": [] "x": 1}\n'
    assert only_error(data) == LineError(2, "invalid JSON (Expecting ',' delimiter at column 17)")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{", "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (
            b"{'a': 1}",
            "invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        ),
        (b'{"a": 1} x', "invalid JSON (Extra data at column 10)"),
        (b'{"a": tru}', "invalid JSON (Expecting value at column 7)"),
        (b'{"a": "x\ty"}', "invalid JSON (Invalid control character at at column 9)"),
        (b'{"weight": NaN}', "invalid JSON (NaN is not a JSON value)"),
        (b'{"weight": -Infinity}', "invalid JSON (-Infinity is not a JSON value)"),
        (b'{"n": ' + b"9" * 5000 + b"}", "invalid JSON (number too large)"),
    ],
)
def test_invalid_json_variants(line: bytes, message: str) -> None:
    assert only_error(line + b"\n") == LineError(1, message)


@pytest.mark.parametrize("opening", [b"[", b'{"a":', b'{"messages":[{"content":'])
def test_deeply_nested_json_does_not_crash(opening: bytes) -> None:
    data = opening * 200_000 + b"\n" + jl(chat())
    report = check(data)
    assert report.errors == [LineError(1, "invalid JSON (nested too deeply)")]
    assert report.example_count == 2


def test_moderately_nested_values_are_reported_not_crashing() -> None:
    deep: Any = "user"
    for _ in range(900):
        deep = [deep]
    err = only_error(jl(chat({"role": deep, "content": "x"}, ASSISTANT)))
    assert err.message == (
        "messages[0]: unknown role [...] (expected system, user, assistant or tool)"
    )


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"[]", "array"),
        (b'[{"messages": []}]', "array"),
        (b'"text"', "string"),
        (b"12", "number"),
        (b"-1.5e3", "number"),
        (b"true", "boolean"),
        (b"null", "null"),
    ],
)
def test_not_an_object(line: bytes, kind: str) -> None:
    assert only_error(line + b"\n") == LineError(1, f"expected a JSON object, got {kind}")


def test_no_format_keys() -> None:
    err = only_error(jl({"msgs": []}))
    assert err == LineError(
        1,
        "missing 'messages' (expected a chat example {\"messages\": [...]}, a prompt/completion "
        "pair, or a preference example)",
    )
    assert only_error(jl({})).message.startswith("missing 'messages'")


# --------------------------------------------------------------------------- formats


def test_mixed_formats() -> None:
    report = check(jl(chat(), chat(), COMPLETION, PREFERENCE, chat()))
    assert report.format is DatasetFormat.CHAT
    assert report.errors == [
        LineError(3, "mixed formats: line is completion but the file started as chat (line 1)"),
        LineError(4, "mixed formats: line is preference but the file started as chat (line 1)"),
    ]


def test_file_format_is_that_of_the_first_valid_line() -> None:
    bad_chat = chat(USER)  # no assistant message
    report = check(b"\n" + jl("oops", bad_chat, COMPLETION, chat(), COMPLETION))
    assert report.format is DatasetFormat.COMPLETION
    assert [e.line for e in report.errors] == [2, 3, 5]
    assert report.errors[2].message == (
        "mixed formats: line is chat but the file started as completion (line 4)"
    )
    assert report.example_count == 5


def test_format_falls_back_to_first_detected_when_nothing_is_valid() -> None:
    report = check(jl("[]", chat(USER), COMPLETION | {"completion": ""}))
    assert not report.ok
    assert report.format is DatasetFormat.CHAT


def test_mixed_format_error_wins_over_other_errors_on_the_line() -> None:
    err = only_error(jl(chat(), {"prompt": 1}))
    assert err.message.startswith("mixed formats: line is completion")


# --------------------------------------------------------------------------- chat rules

ROLE_HINT = "(expected system, user, assistant or tool)"


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ({"messages": []}, "messages: expected a non-empty array, got an empty one"),
        ({"messages": {"role": "user"}}, "messages: expected a non-empty array, got object"),
        ({"messages": None}, "messages: expected a non-empty array, got null"),
        (chat(USER, "hi"), "messages[1]: expected a message object, got string"),
        (chat(USER, {"content": "x"}), "messages[1].role: missing"),
        (
            chat(USER, {"role": "bot", "content": "x"}),
            f"messages[1]: unknown role 'bot' {ROLE_HINT}",
        ),
        (chat({"role": 3, "content": "x"}), f"messages[0]: unknown role 3 {ROLE_HINT}"),
        (chat({"role": None, "content": "x"}), f"messages[0]: unknown role null {ROLE_HINT}"),
        (chat({"role": "User", "content": "x"}), f"messages[0]: unknown role 'User' {ROLE_HINT}"),
        (chat(USER, {"role": "assistant"}), "messages[1].content: missing"),
        (chat({"role": "user"}, ASSISTANT), "messages[0].content: missing"),
        (
            chat(USER, {"role": "assistant", "content": None}),
            "messages[1].content: may be null only on an assistant message with tool_calls",
        ),
        (
            chat({"role": "user", "content": None}, ASSISTANT),
            "messages[0].content: expected a string or an array of text parts, got null",
        ),
        (
            chat({"role": "user", "content": 5}, ASSISTANT),
            "messages[0].content: expected a string or an array of text parts, got number",
        ),
        (
            chat({"role": "user", "content": []}, ASSISTANT),
            "messages[0].content: expected a string or a non-empty array of text parts",
        ),
        (
            chat({"role": "user", "content": ["hi"]}, ASSISTANT),
            "messages[0].content[0]: expected a content part object, got string",
        ),
        (
            chat({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, ASSISTANT),
            "messages[0].content[0].type: unsupported content part type 'image_url' "
            "(only 'text' is supported)",
        ),
        (
            chat({"role": "user", "content": [{"type": "image", "text": "x"}]}, ASSISTANT),
            "messages[0].content[0].type: unsupported content part type 'image' "
            "(only 'text' is supported)",
        ),
        (
            chat({"role": "user", "content": [{"type": "text"}]}, ASSISTANT),
            "messages[0].content[0].text: missing",
        ),
        (
            chat({"role": "user", "content": [{"type": "text", "text": 1}]}, ASSISTANT),
            "messages[0].content[0].text: expected a string, got number",
        ),
        (chat(USER, {**ASSISTANT, "weight": 2}), "messages[1].weight: must be 0 or 1, got 2"),
        (chat(USER, {**ASSISTANT, "weight": True}), "messages[1].weight: must be 0 or 1, got true"),
        (chat(USER, {**ASSISTANT, "weight": "1"}), "messages[1].weight: must be 0 or 1, got '1'"),
        (chat(USER, {**ASSISTANT, "weight": 0.5}), "messages[1].weight: must be 0 or 1, got 0.5"),
        (
            chat({**USER, "weight": 1}, ASSISTANT),
            "messages[0].weight: only allowed on assistant messages",
        ),
        (
            chat({**USER, "tool_calls": [CALL]}, ASSISTANT),
            "messages[0].tool_calls: only allowed on assistant messages",
        ),
        (
            chat({**USER, "refusal": "no"}, ASSISTANT),
            "messages[0].refusal: only allowed on assistant messages",
        ),
        (
            chat(USER, {**ASSISTANT, "refusal": 1}),
            "messages[1].refusal: expected a string or null, got number",
        ),
        (
            chat({**USER, "tool_call_id": "c"}, ASSISTANT),
            "messages[0].tool_call_id: only allowed on tool messages",
        ),
        (chat(USER, {**ASSISTANT, "name": 7}), "messages[1].name: expected a string, got number"),
        (
            chat(USER, {**ASSISTANT, "foo": 1}),
            "messages[1]: unknown key 'foo' (allowed: content, name, refusal, role, "
            "tool_call_id, tool_calls, weight)",
        ),
        (
            chat(USER, {**ASSISTANT, "a": 1, "b": 2, "c": 3, "d": 4}),
            "messages[1]: unknown keys 'a', 'b', 'c' and 1 more (allowed: content, name, "
            "refusal, role, tool_call_id, tool_calls, weight)",
        ),
        (
            chat(USER, ASSISTANT, {"role": "tool", "content": "4"}),
            "messages[2].tool_call_id: missing",
        ),
        (
            chat(USER, ASSISTANT, {"role": "tool", "content": "4", "tool_call_id": 1}),
            "messages[2].tool_call_id: expected a string, got number",
        ),
        (
            chat(USER, ASSISTANT, {"role": "tool", "tool_call_id": "c"}),
            "messages[2].content: missing",
        ),
        (chat(USER), "messages: no assistant message (at least one is needed to train on)"),
        (
            chat({"role": "system", "content": "x"}, USER),
            "messages: no assistant message (at least one is needed to train on)",
        ),
        (
            chat(USER, {**ASSISTANT, "weight": 0}),
            "messages: every assistant message has weight 0 (at least one is needed to train on)",
        ),
    ],
)
def test_chat_rules(example: dict[str, Any], message: str) -> None:
    assert only_error(jl(chat(), example)) == LineError(2, message)


@pytest.mark.parametrize(
    ("tool_calls", "message"),
    [
        ([], "messages[1].tool_calls: expected a non-empty array, got an empty one"),
        ({}, "messages[1].tool_calls: expected a non-empty array, got object"),
        (["x"], "messages[1].tool_calls[0]: expected an object, got string"),
        ([{**CALL, "id": None}], "messages[1].tool_calls[0].id: expected a string, got null"),
        (
            [{k: v for k, v in CALL.items() if k != "id"}],
            "messages[1].tool_calls[0].id: missing",
        ),
        (
            [{**CALL, "type": "code"}],
            "messages[1].tool_calls[0].type: expected 'function', got 'code'",
        ),
        ([{"id": "c", "type": "function"}], "messages[1].tool_calls[0].function: missing"),
        (
            [{**CALL, "function": {"name": "f"}}],
            "messages[1].tool_calls[0].function.arguments: missing",
        ),
        (
            [CALL, {**CALL, "function": {"name": "f", "arguments": {"a": 1}}}],
            "messages[1].tool_calls[1].function.arguments: expected a string "
            "(JSON-encoded arguments), got object",
        ),
        (
            [{**CALL, "function": {"name": "", "arguments": "{}"}}],
            "messages[1].tool_calls[0].function.name: must not be empty",
        ),
        (
            [{**CALL, "extra": 1}],
            "messages[1].tool_calls[0]: unknown key 'extra' (allowed: function, id, type)",
        ),
    ],
)
def test_tool_call_rules(tool_calls: Any, message: str) -> None:
    example = chat(USER, {"role": "assistant", "tool_calls": tool_calls})
    assert only_error(jl(example)) == LineError(1, message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": []}, "tools: expected a non-empty array, got an empty one"),
        ({"tools": [1]}, "tools[0]: expected an object, got number"),
        ({"tools": [{"type": "function"}]}, "tools[0].function: missing"),
        (
            {"tools": [{**TOOL, "type": "retrieval"}]},
            "tools[0].type: expected 'function', got 'retrieval'",
        ),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name: missing"),
        (
            {"tools": [TOOL, {"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[1].function.parameters: expected an object, got array",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
            "tools[0].function.description: expected a string, got number",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            "tools[0].function.strict: expected a boolean, got string",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]},
            "tools[0].function: unknown key 'x' (allowed: description, name, parameters, strict)",
        ),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls: expected a boolean, got number"),
        ({"metadata": "x"}, "metadata: expected an object, got string"),
        (
            {"prompt": "x"},
            "unknown key 'prompt' (allowed: messages, metadata, parallel_tool_calls, tools)",
        ),
        (
            {"functions": []},
            "unknown key 'functions' (allowed: messages, metadata, parallel_tool_calls, tools)",
        ),
    ],
)
def test_chat_top_level_rules(extra: dict[str, Any], message: str) -> None:
    assert only_error(jl(chat(**extra))) == LineError(1, message)


def test_long_unknown_key_is_truncated_in_message() -> None:
    err = only_error(jl(chat(**{"k" * 10_000: 1})))
    assert len(err.message) < 200
    assert "'kkkk" in err.message and "...'" in err.message


# --------------------------------------------------------------------------- completion rules


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ({"completion": "x"}, "prompt: missing"),
        ({"prompt": "x"}, "completion: missing"),
        ({"prompt": 1, "completion": "x"}, "prompt: expected a string, got number"),
        ({"prompt": "x", "completion": None}, "completion: expected a string, got null"),
        ({"prompt": "x", "completion": ""}, "completion: must not be empty"),
        ({"prompt": "x", "completion": ["y"]}, "completion: expected a string, got array"),
        (
            {"prompt": "x", "completion": "y", "weight": 1},
            "unknown key 'weight' (allowed: completion, metadata, prompt)",
        ),
        (
            {"prompt": "x", "completion": "y", "metadata": []},
            "metadata: expected an object, got array",
        ),
    ],
)
def test_completion_rules(example: dict[str, Any], message: str) -> None:
    assert only_error(jl(COMPLETION, example)) == LineError(2, message)


# --------------------------------------------------------------------------- preference rules


def pref(**changes: Any) -> dict[str, Any]:
    out = dict(PREFERENCE)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (pref(input=None), "input: missing"),
        (pref(input=[USER]), "input: expected an object, got array"),
        (pref(input={}), "input.messages: missing"),
        (
            pref(input={"messages": []}),
            "input.messages: expected a non-empty array, got an empty one",
        ),
        (
            pref(input={"messages": [{"role": "human", "content": "x"}]}),
            f"input.messages[0]: unknown role 'human' {ROLE_HINT}",
        ),
        (pref(input={"messages": [{"role": "user"}]}), "input.messages[0].content: missing"),
        (
            pref(input={"messages": [USER], "foo": 1}),
            "input: unknown key 'foo' (allowed: messages, parallel_tool_calls, tools)",
        ),
        (
            pref(input={"messages": [USER], "tools": {}}),
            "input.tools: expected a non-empty array, got object",
        ),
        (pref(preferred_output=None), "preferred_output: missing"),
        (pref(non_preferred_output=None), "non_preferred_output: missing"),
        (
            pref(preferred_output={"role": "assistant", "content": "4"}),
            "preferred_output: expected an array with one assistant message, got object",
        ),
        (
            pref(preferred_output=[]),
            "preferred_output: expected exactly one assistant message, got 0",
        ),
        (
            pref(non_preferred_output=[ASSISTANT, ASSISTANT]),
            "non_preferred_output: expected exactly one assistant message, got 2",
        ),
        (
            pref(preferred_output=[USER]),
            "preferred_output[0].role: expected 'assistant', got 'user'",
        ),
        (
            pref(
                preferred_output=[{"role": "assistant", "content": [{"type": "text", "text": "4"}]}]
            ),
            "preferred_output[0].content: expected a string, got array",
        ),
        (
            pref(non_preferred_output=[{"role": "assistant", "tool_calls": [CALL]}]),
            "non_preferred_output[0].content: expected a string, got null",
        ),
        (
            pref(preferred_output=[{**ASSISTANT, "weight": 1}]),
            "preferred_output[0].weight: not allowed in a preference output",
        ),
        (
            pref(preferred_output=["4"]),
            "preferred_output[0]: expected a message object, got string",
        ),
        (
            pref(extra=1),
            "unknown key 'extra' "
            "(allowed: input, metadata, non_preferred_output, preferred_output)",
        ),
        (pref(metadata=1), "metadata: expected an object, got number"),
    ],
)
def test_preference_rules(example: dict[str, Any], message: str) -> None:
    assert only_error(jl(PREFERENCE, example)) == LineError(2, message)


def test_preference_input_needs_no_assistant_but_may_have_one() -> None:
    multi_turn = pref(input={"messages": [USER, ASSISTANT, USER]})
    assert check(jl(PREFERENCE, multi_turn)).ok


# --------------------------------------------------------------------------- cap and summary


def test_error_cap_counts_beyond_it() -> None:
    data = jl(chat()) + b"[]\n" * 50
    report = check(data, max_errors=5)
    assert report.error_count == 50
    assert [e.line for e in report.errors] == [2, 3, 4, 5, 6]
    assert report.example_count == 51
    assert not report.ok
    assert check(data, max_errors=0).errors == []
    assert check(data, max_errors=0).error_count == 50


def test_validate_file_default_cap_is_20(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"x\n" * 30)
    report = validate_file(path)
    assert len(report.errors) == 20 and report.error_count == 30


def test_summary_of_errors() -> None:
    data = jl(chat()) + b'{"messages": [] "x": 1}\n' + jl(chat(), chat(), chat(USER))
    report = check(data)
    assert report.summary() == (
        "Invalid training file: 2 line(s) have errors. "
        "Line 2: invalid JSON (Expecting ',' delimiter at column 17). "
        "Line 5: messages: no assistant message (at least one is needed to train on)."
    )


def test_summary_mentions_the_rest() -> None:
    report = check(b"[]\n" * 12, max_errors=3)
    text = report.summary()
    assert text.startswith("Invalid training file: 12 line(s) have errors. Line 1: ")
    assert text.count("Line ") == 3
    assert text.endswith("(and 9 more)")
    long = check(b"[]\n" * 12).summary()  # 12 stored, 5 shown
    assert long.count("Line ") == 5 and long.endswith("(and 7 more)")


# --------------------------------------------------------------------------- long lines


def test_line_too_long_is_refused_without_buffering() -> None:
    limit = 100
    long_line = json.dumps(chat(USER, {"role": "assistant", "content": "x" * 200})).encode()
    data = jl(chat(USER, ASSISTANT)) + long_line + b"\n" + jl(chat(USER, ASSISTANT))
    expected = [LineError(2, f"line too long ({len(long_line)} bytes; the limit is {limit})")]
    for chunks in (None, [1] * len(data), [70, 3, 150]):
        v = DatasetValidator(max_line_bytes=limit)
        if chunks is None:
            v.feed(data)
        else:
            pos = 0
            for size in chunks:
                v.feed(data[pos : pos + size])
                assert v._pending_len <= limit or not v._pending  # nothing beyond the limit kept
                pos += size
            v.feed(data[pos:])
        report = v.finish()
        assert report.errors == expected
        assert report.example_count == 3


def test_too_long_blank_line_does_not_depend_on_chunking() -> None:
    data = b" " * 30 + b"\n[]\n"
    expected = [
        LineError(1, "line too long (30 bytes; the limit is 20)"),
        LineError(2, "expected a JSON object, got array"),
    ]
    assert check(data, max_line_bytes=20).errors == expected
    assert check(data, chunks=[10, 10, 10], max_line_bytes=20).errors == expected


def test_too_long_last_line_without_newline() -> None:
    report = check(b"x" * 50, chunks=[10, 10, 10], max_line_bytes=20)
    assert report.errors == [LineError(1, "line too long (50 bytes; the limit is 20)")]


def test_20_mb_single_line_file(tmp_path: Path) -> None:
    content = "word " * (4 * 1024 * 1024)  # 20 MiB of text
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(chat(USER, {"role": "assistant", "content": content})) + "\n")
    assert path.stat().st_size > 20 * 1024 * 1024
    report = validate_file(path, chunk_size=1 << 20)
    assert report.ok, report.errors
    assert report.example_count == 1
    # and a broken one reports a column far into the line
    path.write_text(json.dumps(chat(USER, {"role": "assistant", "content": content}))[:-1] + "\n")
    err = validate_file(path).errors
    assert len(err) == 1 and err[0].message.startswith("invalid JSON (")


def test_validate_file_matches_feed(tmp_path: Path) -> None:
    data = BOM + jl(chat(), "[]", chat(USER), "", chat()).replace(b"\n", b"\r\n")
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    expected = check(data)
    for size in (1, 2, 3, 7, 64, 1 << 20):
        assert validate_file(path, chunk_size=size) == expected


# --------------------------------------------------------------------------- properties

_FRAGMENTS = [
    jl(chat()),
    jl(chat(USER, {"role": "assistant", "content": "ünïcødé € 𝄞 日本"})),
    jl(COMPLETION),
    jl(PREFERENCE),
    jl(chat(USER)),
    jl(chat(**{"x" * 80: 1})),  # longer than the small max_line_bytes used below
    b'{"messages": [\n',
    b"[]\n",
    b"not json\n",
    b"\xff\xfe\n",
    b"\xe2\x82",  # a truncated character, joined with whatever follows
    b"\n",
    b"   \n",
    b" " * 100 + b"\n",  # blank, but longer than the small max_line_bytes
    b"\r\n",
    b"\r",
    BOM,
    b"[" * 3000 + b"\n",
]


@st.composite
def byte_streams(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from(_FRAGMENTS), max_size=12))
    prefix = draw(st.sampled_from([b"", BOM]))
    return prefix + b"".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=byte_streams(), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_chunk_boundaries_do_not_matter(data: bytes, cuts: list[int]) -> None:
    points = [c % (len(data) + 1) for c in cuts]
    for max_line_bytes in (64, 1 << 20):
        whole = check(data, max_line_bytes=max_line_bytes, max_errors=5)
        assert chunked(data, points, max_line_bytes=max_line_bytes, max_errors=5) == whole


@settings(max_examples=50, deadline=None)
@given(data=byte_streams())
def test_byte_at_a_time_matches_one_chunk(data: bytes) -> None:
    assert check(data, chunks=[1] * len(data)) == check(data)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0), max_size=4))
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    points = [c % (len(data) + 1) for c in cuts]
    report = chunked(data, points, max_errors=3)
    assert isinstance(report, ValidationReport)
    assert len(report.errors) <= 3
    assert report.error_count >= len(report.errors)
    assert report.ok == (report.error_count == 0)
    assert isinstance(report.summary(), str)
    for err in report.errors:
        assert err.line >= 0 and err.message
    assert report == check(data, max_errors=3)


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.one_of(
            st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b"\n", b"\r\n", b" "]),
            st.sampled_from([b'"messages"', b'"role"', b'"content"', b'"user"', b'"assistant"']),
            st.sampled_from([b'"prompt"', b'"completion"', b'"input"', b'"preferred_output"']),
            st.sampled_from([b"null", b"1", b"true", b"NaN", b'"tool_calls"', b'"weight"']),
            st.binary(max_size=3),
        ),
        max_size=60,
    ).map(b"".join)
)
def test_json_ish_bytes_never_raise(data: bytes) -> None:
    report = check(data)
    assert report.error_count >= len(report.errors)


_text = st.text(max_size=30)
_user = st.builds(lambda t: {"role": "user", "content": t}, _text)
_system = st.builds(lambda t: {"role": "system", "content": t}, _text)
_parts = st.lists(st.builds(lambda t: {"type": "text", "text": t}, _text), min_size=1, max_size=3)
_assistant = st.builds(
    lambda content, weight, name: {
        "role": "assistant",
        "content": content,
        **({"weight": weight} if weight is not None else {}),
        **({"name": name} if name is not None else {}),
    },
    st.one_of(_text, _parts),
    st.sampled_from([None, 0, 1]),
    st.one_of(st.none(), st.text(max_size=5)),
)
_tool_turn = st.builds(
    lambda call_id, name, args, result: [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ],
    st.text(min_size=1, max_size=8),
    st.text(min_size=1, max_size=8),
    st.text(max_size=10),
    _text,
)


@st.composite
def chat_examples(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = draw(st.lists(_system, max_size=1))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        messages.append(draw(_user))
        if draw(st.booleans()):
            messages.extend(draw(_tool_turn))
        messages.append(draw(_assistant))
    if all(m.get("weight", 1) == 0 for m in messages if m["role"] == "assistant"):
        del messages[-1]["weight"]  # a valid chat trains on at least one answer
    example: dict[str, Any] = {"messages": messages}
    if draw(st.booleans()):
        example["tools"] = [TOOL]
    if draw(st.booleans()):
        example["parallel_tool_calls"] = draw(st.booleans())
    return example


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    examples=st.lists(chat_examples(), min_size=1, max_size=15),
    ensure_ascii=st.booleans(),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    bom=st.booleans(),
    trailing_newline=st.booleans(),
    blank_every=st.integers(min_value=0, max_value=4),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
)
def test_generated_valid_chat_datasets_are_accepted(
    examples: list[dict[str, Any]],
    ensure_ascii: bool,
    newline: bytes,
    bom: bool,
    trailing_newline: bool,
    blank_every: int,
    cuts: list[int],
) -> None:
    lines = []
    for i, example in enumerate(examples):
        lines.append(json.dumps(example, ensure_ascii=ensure_ascii).encode())
        if blank_every and i % blank_every == 0:
            lines.append(b"  ")
    data = (BOM if bom else b"") + newline.join(lines) + (newline if trailing_newline else b"")
    report = chunked(data, [c % (len(data) + 1) for c in cuts])
    assert report.ok, report.errors
    assert report.format is DatasetFormat.CHAT
    assert report.example_count == len(examples)
