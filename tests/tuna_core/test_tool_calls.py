"""Tool calls as text: the syntax training renders is the one serving parses, streamed or not."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuna_core.tool_calls import (
    Content,
    ParsedCall,
    ToolCallParser,
    format_tool_call,
    format_tool_calls,
    parse_tool_calls,
    prefill,
)

NAMES = frozenset({"get_weather", "get_time"})
WEATHER = format_tool_call("get_weather", {"city": "Paris"})
TIME = format_tool_call("get_time", {"zone": "CET"})


def test_the_block_syntax() -> None:
    assert (
        WEATHER
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    calls = [
        {
            "id": "a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "not json"}},
    ]
    assert format_tool_calls(calls) == (
        WEATHER + '\n<tool_call>\n{"name": "get_time", "arguments": "not json"}\n</tool_call>'
    )


def test_one_call() -> None:
    parsed = parse_tool_calls(WEATHER, NAMES)
    assert parsed.content is None
    assert parsed.calls == [ParsedCall("get_weather", '{"city": "Paris"}')]


def test_two_calls_and_parallel_false() -> None:
    text = f"{WEATHER}\n{TIME}"
    assert [c.name for c in parse_tool_calls(text, NAMES).calls] == ["get_weather", "get_time"]
    only = parse_tool_calls(text, NAMES, parallel=False)
    assert [c.name for c in only.calls] == ["get_weather"]
    assert only.content is None


def test_text_around_the_calls_is_the_content() -> None:
    parsed = parse_tool_calls(f"  Let me check.\n{WEATHER}\nOne moment.\n", NAMES)
    assert parsed.content == "Let me check.\n\nOne moment."
    assert len(parsed.calls) == 1


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>\n{not json}\n</tool_call>",
        '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>',
        '<tool_call>\n["get_weather"]\n</tool_call>',
        '<tool_call>\n{"arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": 3}\n</tool_call>',
    ],
)
def test_a_block_that_is_no_call_stays_text(block: str) -> None:
    parsed = parse_tool_calls(f"Hi {block}", NAMES)
    assert parsed.calls == []
    assert parsed.content == f"Hi {block}"
    # Judged alone: a good call beside it is still a call.
    mixed = parse_tool_calls(f"{block}\n{WEATHER}", NAMES)
    assert [c.name for c in mixed.calls] == ["get_weather"]
    assert mixed.content == block


def test_no_block_is_plain_text_and_a_lone_tag_prefix_too() -> None:
    assert parse_tool_calls("Sunny <tool", NAMES).content == "Sunny <tool"
    assert parse_tool_calls("", NAMES).content is None
    assert parse_tool_calls("a < b", NAMES).content == "a < b"


def test_an_unterminated_block_is_a_call_only_if_complete() -> None:
    whole = WEATHER[: -len("\n</tool_call>")]
    assert parse_tool_calls(whole, NAMES).calls == [ParsedCall("get_weather", '{"city": "Paris"}')]
    cut = WEATHER[:30]
    assert parse_tool_calls(cut, NAMES).content == cut


def test_arguments_absent_or_a_string() -> None:
    bare = parse_tool_calls('<tool_call>\n{"name": "get_time"}\n</tool_call>', NAMES)
    assert bare.calls == [ParsedCall("get_time", "{}")]
    raw = parse_tool_calls('<tool_call>{"name": "get_time", "arguments": "x"}</tool_call>', NAMES)
    assert raw.calls == [ParsedCall("get_time", "x")]


def test_prefills_force_a_call() -> None:
    required = prefill("required")
    assert required == '<tool_call>\n{"name": "'
    named = prefill("function", "get_weather")
    assert named == '<tool_call>\n{"name": "get_weather", "arguments":'
    assert prefill("auto") == prefill("none") == ""
    assert WEATHER.startswith(required) and WEATHER.startswith(named)
    rest = WEATHER[len(named) :]
    parsed = parse_tool_calls(rest, NAMES, prefix=named)
    assert parsed.calls == [ParsedCall("get_weather", '{"city": "Paris"}')]
    # A model that does not finish the call: its text, prefix included, is the content.
    assert parse_tool_calls(" 42 and more", NAMES, prefix=named).content == named + " 42 and more"


def stream(text: str, sizes: list[int], **kwargs: object) -> tuple[str | None, list[ParsedCall]]:
    parser = ToolCallParser(NAMES, **kwargs)  # type: ignore[arg-type]
    pieces = []
    at = 0
    for size in sizes:
        pieces += parser.feed(text[at : at + size])
        at += size
    pieces += parser.feed(text[at:]) + parser.finish()
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    return content or None, [p for p in pieces if isinstance(p, ParsedCall)]


SAMPLES = [
    "Plain answer.",
    f"Checking. {WEATHER}",
    f"{WEATHER}\n{TIME}\n",
    f"x <tool_call>\n{{bad}}\n</tool_call> y {TIME} z  ",
    f"\n\n  {WEATHER}  tail <tool_",
    f"<tool_call> oops {TIME} <tool_call>\n{{",
]


@pytest.mark.parametrize("text", SAMPLES)
@given(sizes=st.lists(st.integers(min_value=0, max_value=7), max_size=40))
def test_streaming_gives_what_parsing_the_whole_gives(text: str, sizes: list[int]) -> None:
    for parallel in (True, False):
        whole = parse_tool_calls(text, NAMES, parallel=parallel)
        assert stream(text, sizes, parallel=parallel) == (whole.content, whole.calls)


def test_streaming_holds_back_only_a_possible_block_start() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.feed("Sure <tool") == [Content("Sure")]
    assert parser.feed("box> ok") == [Content(" <toolbox> ok")]
    assert parser.feed(" <tool_call>\n{") == []
    assert parser.feed(json.dumps({"name": "get_time", "arguments": {}})[1:]) == []
    assert parser.feed("\n</tool_call>") == [ParsedCall("get_time", "{}")]
    assert parser.finish() == []
    assert parser.called


def test_a_tag_that_opens_no_call_is_text() -> None:
    parsed = parse_tool_calls(f"Hi <tool_call> is a tag.\n{WEATHER}", NAMES)
    assert parsed.content == "Hi <tool_call> is a tag."
    assert [c.name for c in parsed.calls] == ["get_weather"]
