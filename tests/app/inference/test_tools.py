"""Tools in `/v1/chat/completions`: request checks, the prompt, the parsed calls, the stream.

A random tiny model does not write tool calls, so most tests here serve `ScriptedEngine`: the
local engine with its decoding replaced by a scripted answer (streamed a few characters at a
time), everything else real: the prompt is rendered by the engine (and recorded), and the text
goes through the engine's tool-call parsing, the service and the wire.  The tiny model itself
checks that the prefill and the grammar completing a forced call reach the real decoder; a
model that really learned to call tools is tests/app/inference/test_tool_learning.py (slow).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from app.bootstrap import prepare
from app.inference.engine import LocalEngine
from app.inference.types import (
    ChoiceFinished,
    GenerationEvent,
    ModelTarget,
    SamplingParams,
    Started,
    TextDelta,
    Usage,
)
from app.inference.upstream import UpstreamEngine
from app.main import create_app
from app.sync import run_to_completion
from tests.app.inference.conftest import MODEL_CACHE, TINY
from tests.conftest import LiveServer, make_settings, serve_in_thread
from tuna_core.base_models import load_tokenizer, resolve_base_model
from tuna_core.chat_template import render_prompt, render_training_chat
from tuna_core.tool_calls import format_tool_call, prefill

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]
PARIS = format_tool_call("get_weather", {"city": "Paris"})
NOON = format_tool_call("get_time", {"city": "Paris"})


class _Recorder:
    """A tokenizer that remembers the texts it encoded (the engine's prompts)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.texts: list[str] = []

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.texts.append(text)
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


class ScriptedEngine(LocalEngine):
    """The local engine answering `script` (per choice) instead of decoding."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(MODEL_CACHE)
        self.tokenizer = _Recorder(tokenizer)
        self.script = ""

    @property
    def prompt(self) -> str:
        return self.tokenizer.texts[-1]

    async def _stream(
        self,
        target: ModelTarget,
        encode: Callable[[Any], list[list[int]]],
        params: SamplingParams,
        param: str,
        *,
        prompts: int,
    ) -> AsyncGenerator[GenerationEvent, None]:
        (ids,) = encode(self.tokenizer)
        yield Started(len(ids))
        for index in range(params.n):
            for at in range(0, len(self.script), 3):
                yield TextDelta(index, self.script[at : at + 3])
            yield ChoiceFinished(index, "stop")
        yield Usage(len(ids), params.n * len(self.script))


@dataclass
class Scripted:
    live: LiveServer
    engine: ScriptedEngine
    client: openai.OpenAI
    key: str

    def ask(self, script: str, **kwargs: Any) -> Any:
        self.engine.script = script
        values: dict[str, Any] = {"model": TINY, "messages": QUESTION, "tools": TOOLS}
        values.update(kwargs)
        return self.client.chat.completions.create(**values)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(resolve_base_model(TINY, MODEL_CACHE))


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Iterator[Scripted]:
    settings = make_settings(tmp_path_factory.mktemp("tuna-scripted"), None)
    prepare(settings)
    app = create_app(settings)
    engine = ScriptedEngine(tokenizer)
    app.state.inference = engine
    url, stop = serve_in_thread(app)
    live = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    key = live.new_key()
    yield Scripted(live, engine, live.client(key), key)
    stop()


# -- request checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": []}, "tools", "empty"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "Missing"),
        (
            {"tools": [WEATHER_TOOL, {"type": "function", "function": {"name": ""}}]},
            "tools[1].function.name",
            "must not be empty",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "tools[0].function.parameters",
            "expected an object",
        ),
        (
            {"tools": [{"type": "custom", "custom": {"name": "f"}}]},
            "tools[0].custom",
            "unknown key",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            "tools[0].function.strict",
            "expected a boolean",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "expected one of"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "'nope' is not one of the 'tools'",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice", "expected"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}},
            "tool_choice.type",
            "not supported",
        ),
        ({"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools' are specified"),
        (
            {"parallel_tool_calls": False},
            "parallel_tool_calls",
            "only allowed when 'tools' are specified",
        ),
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": ["x"]}}},
            "tool_choice",
            "expected",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": ["function"]}}, "tool_choice.type", "expected"),
        ({"tools": TOOLS, "tool_choice": ["auto"]}, "tool_choice", ""),
        ({"tools": {"type": "function"}}, "tools", ""),
        ({"tools": TOOLS, "parallel_tool_calls": "sometimes"}, "parallel_tool_calls", ""),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": "\ud800"}}]},
            "tools[0].function.description",
            "surrogate",
        ),
    ],
)
def test_tool_params_are_checked_by_name(
    scripted: Scripted, extra: dict[str, Any], param: str, words: str
) -> None:
    values: dict[str, Any] = {"model": TINY, "messages": QUESTION, "max_tokens": 2, **extra}
    with scripted.live.http(scripted.key) as http:
        response = http.post(  # json.dumps escapes a lone surrogate, as curl can send it
            "/v1/chat/completions",
            content=json.dumps(values),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
    assert words in error["message"], error


# -- the prompt ----------------------------------------------------------------------------


def test_the_prompt_shows_the_tools_as_training_does(scripted: Scripted, tokenizer: Any) -> None:
    scripted.ask("Sunny.")
    assert scripted.engine.prompt == render_prompt(tokenizer, QUESTION, TOOLS)
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n" in scripted.engine.prompt

    # Training on the same question answered with a call: the prompt is the text before it,
    # token for token (the prefills end on a token boundary of the trained text).
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    trained = render_training_chat(
        tokenizer,
        {
            "messages": [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]}],
            "tools": TOOLS,
        },
    )
    prompt = trained.text[: trained.spans[-1][0]]
    assert scripted.engine.prompt == prompt
    trained_ids = tokenizer(trained.text, add_special_tokens=False)["input_ids"]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        scripted.ask("", tool_choice=choice)
        ids = tokenizer(scripted.engine.prompt, add_special_tokens=False)["input_ids"]
        assert trained_ids[: len(ids)] == ids


def test_tool_choice_none_required_and_named_prompts(scripted: Scripted, tokenizer: Any) -> None:
    shown = render_prompt(tokenizer, QUESTION, TOOLS)
    scripted.ask("Sunny.", tool_choice="none")
    assert scripted.engine.prompt == render_prompt(tokenizer, QUESTION)
    scripted.ask("Sunny.", tool_choice="auto")
    assert scripted.engine.prompt == shown
    scripted.ask("Sunny.", tool_choice="required")
    assert scripted.engine.prompt == shown + '<tool_call>\n{"name": "'
    named = {"type": "function", "function": {"name": "get_weather"}}
    scripted.ask("Sunny.", tool_choice=named)
    assert scripted.engine.prompt == shown + '<tool_call>\n{"name": "get_weather", "arguments":'

    # The answer is read with the prefill in front of it.
    rest = PARIS[len(prefill("function", "get_weather")) :]
    reply = scripted.ask(rest, tool_choice=named).choices[0]
    assert reply.finish_reason == "tool_calls"
    assert reply.message.content is None
    (call,) = reply.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    reply = scripted.ask(PARIS[len(prefill("required")) :], tool_choice="required").choices[0]
    assert [c.function.name for c in reply.message.tool_calls] == ["get_weather"]
    # With tool_choice "none" a call is not parsed: it is text.
    none = scripted.ask(PARIS, tool_choice="none").choices[0]
    assert (none.message.content, none.message.tool_calls, none.finish_reason) == (
        PARIS,
        None,
        "stop",
    )


def test_a_tool_round_trip_is_prompted_as_training_rendered_it(
    scripted: Scripted, tokenizer: Any
) -> None:
    first = scripted.ask(f"Let me check.\n{PARIS}").choices[0].message
    assert first.tool_calls
    history = [
        *QUESTION,
        first.model_dump(exclude_none=True),  # the SDK's message, sent back as it is
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21C"},
    ]
    answer = scripted.ask("It is sunny.", messages=history).choices[0]
    assert (answer.message.content, answer.finish_reason) == ("It is sunny.", "stop")

    trained = render_training_chat(
        tokenizer,
        {
            "messages": [
                *[{k: v for k, v in m.items() if k != "refusal"} for m in history],
                {"role": "assistant", "content": "It is sunny."},
            ],
            "tools": TOOLS,
        },
    )
    assert scripted.engine.prompt == trained.text[: trained.spans[-1][0]]
    assert f"Let me check.\n{PARIS}<|im_end|>" in scripted.engine.prompt
    assert "<|im_start|>tool\nsunny, 21C<|im_end|>" in scripted.engine.prompt


# -- parsing -------------------------------------------------------------------------------


def test_calls_become_tool_calls(scripted: Scripted) -> None:
    scripted.engine.script = f"Checking.\n{PARIS}\n{NOON}"
    raw = scripted.client.chat.completions.with_raw_response.create(
        model=TINY,
        messages=QUESTION,
        tools=TOOLS,  # type: ignore[arg-type]
    )
    body = raw.http_response.json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert set(message) == {"role", "content", "refusal", "tool_calls"}
    assert message["content"] == "Checking."
    first, second = message["tool_calls"]
    assert first["id"].startswith("call_") and len(first["id"]) == 29
    assert first["id"] != second["id"]
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert second["function"]["name"] == "get_time"

    only = scripted.ask(f"{PARIS}\n{NOON}", parallel_tool_calls=False).choices[0]
    assert [c.function.name for c in only.message.tool_calls] == ["get_weather"]
    assert only.message.content is None


@pytest.mark.parametrize(
    "script",
    [
        "<tool_call>\n{not json}\n</tool_call>",
        format_tool_call("launch_rockets", {}),
        "No tools needed: 2 < 3.",
    ],
)
def test_text_that_is_no_call_stays_content(scripted: Scripted, script: str) -> None:
    choice = scripted.ask(script).choices[0]
    assert (choice.message.content, choice.message.tool_calls) == (script, None)
    assert choice.finish_reason == "stop"


def test_n_choices_are_parsed_each(scripted: Scripted) -> None:
    reply = scripted.ask(PARIS, n=2)
    assert [c.finish_reason for c in reply.choices] == ["tool_calls", "tool_calls"]
    ids = {c.message.tool_calls[0].id for c in reply.choices}
    assert len(ids) == 2


# -- streaming -----------------------------------------------------------------------------


def test_the_sdk_rebuilds_streamed_calls(scripted: Scripted) -> None:
    script = f"Checking.\n{PARIS}\n{NOON}"
    plain = scripted.ask(script).choices[0]
    scripted.engine.script = script
    with scripted.client.chat.completions.stream(
        model=TINY,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.name for e in done] == ["get_weather", "get_time"]
    assert json.loads(done[0].arguments) == {"city": "Paris"}
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert [(c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        (c.type, c.function.name, c.function.arguments) for c in plain.message.tool_calls
    ]
    assert all(c.id.startswith("call_") for c in choice.message.tool_calls)


def test_stream_chunks_in_openai_shape(scripted: Scripted) -> None:
    scripted.engine.script = f"Hi <tool_call> is a tag.\n{PARIS}"
    chunks = list(
        scripted.client.chat.completions.create(
            model=TINY,
            messages=QUESTION,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant" and deltas[0].content is None
    text = "".join(d.content or "" for d in deltas)
    assert text == "Hi <tool_call> is a tag."  # a tag that opens no call is text
    calls = [d.tool_calls for d in deltas if d.tool_calls]
    assert len(calls) == 2
    (head,), (arguments,) = calls
    assert (head.index, head.type, head.function.name, head.function.arguments) == (
        0,
        "function",
        "get_weather",
        "",
    )
    assert head.id and head.id.startswith("call_")
    assert (arguments.index, arguments.id, arguments.function.name) == (0, None, None)
    assert arguments.function.arguments == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Without tools nothing is held back or parsed.
    scripted.engine.script = PARIS
    plain = list(
        scripted.client.chat.completions.create(model=TINY, messages=QUESTION, stream=True)  # type: ignore[arg-type]
    )
    assert plain[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in plain) == PARIS


# -- the upstream engine -------------------------------------------------------------------


@pytest.fixture
def via_upstream(tmp_path_factory: pytest.TempPathFactory, scripted: Scripted) -> Iterator[Any]:
    settings = make_settings(tmp_path_factory.mktemp("tuna-tools-proxy"), None)
    prepare(settings)
    app = create_app(settings)
    app.state.inference = UpstreamEngine(f"{scripted.live.url}/v1", api_key=scripted.key)
    url, stop = serve_in_thread(app)
    proxy = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    yield proxy.client(proxy.new_key())
    stop()


def test_the_upstream_engine_forwards_tools_and_maps_calls_back(
    scripted: Scripted, via_upstream: openai.OpenAI, tokenizer: Any
) -> None:
    scripted.engine.script = f"Checking.\n{PARIS}\n{NOON}"
    kwargs: dict[str, Any] = {
        "model": TINY,
        "messages": QUESTION,
        "tools": TOOLS,
        "parallel_tool_calls": False,
    }
    reply = via_upstream.chat.completions.create(**kwargs).choices[0]
    assert reply.finish_reason == "tool_calls"
    assert reply.message.content == "Checking."
    assert [c.function.name for c in reply.message.tool_calls] == ["get_weather"]
    assert scripted.engine.prompt == render_prompt(tokenizer, QUESTION, TOOLS)

    with via_upstream.chat.completions.stream(**kwargs) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert [c.function.arguments for c in final.message.tool_calls] == ['{"city": "Paris"}']

    named = {"type": "function", "function": {"name": "get_time"}}
    via_upstream.chat.completions.create(**{**kwargs, "tool_choice": named})
    assert scripted.engine.prompt.endswith(prefill("function", "get_time"))


# -- the real decoder ----------------------------------------------------------------------


UNIT_TOOL = {
    "type": "function",
    "function": {
        "name": "set_unit",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["celsius", "kelvin"]}, "days": {"type": "boolean"}},
            "required": ["unit", "days"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
@pytest.mark.parametrize("choice", ["required", "set_unit", "get_time"])
def test_a_forced_call_is_decoded_complete_and_valid(
    client: openai.OpenAI, tokenizer: Any, choice: str
) -> None:
    """The prefill opens the call; a grammar makes the random tiny model finish it: a known
    name, arguments valid under the tool's parameters, the block closed."""
    tools = [UNIT_TOOL, TIME_TOOL]
    tool_choice: Any = choice
    forced = prefill("required")
    if choice != "required":
        tool_choice = {"type": "function", "function": {"name": choice}}
        forced = prefill("function", choice)
    reply = client.chat.completions.create(
        model=TINY,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        tool_choice=tool_choice,
        max_tokens=60,
        temperature=0.8,
        seed=3,
    )
    prompt = render_prompt(tokenizer, QUESTION, tools) + forced
    expected = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert reply.usage is not None and reply.usage.prompt_tokens == expected
    (answer,) = reply.choices
    assert answer.finish_reason == "tool_calls"
    (call,) = answer.message.tool_calls or []
    if choice != "required":
        assert call.function.name == choice
    arguments = json.loads(call.function.arguments)
    if call.function.name == "set_unit":
        assert arguments["unit"] in ("celsius", "kelvin") and isinstance(arguments["days"], bool)
        assert set(arguments) == {"unit", "days"}
    else:
        assert call.function.name == "get_time" and isinstance(arguments, dict)


def test_vllm_style_fragments_are_collected() -> None:
    from app.inference.types import collect
    from app.inference.upstream import _events

    def delta(**values: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": values, "finish_reason": None}]}

    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    chunks = [
        delta(role="assistant", content=None),
        delta(tool_calls=[head]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        delta(tool_calls=[{"index": 1, "id": "call_2", "function": {"name": "get_time"}}]),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]

    async def events() -> AsyncGenerator[GenerationEvent, None]:
        for chunk in chunks:
            for event in _events(chunk):
                yield event

    (choice,) = run_to_completion(collect(events())).choices
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in choice.tool_calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}'),
        ("call_2", "get_time", ""),
    ]
