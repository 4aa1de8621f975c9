"""Tuna driven by the client libraries people point at an OpenAI-compatible endpoint:
langchain-openai's `ChatOpenAI` and litellm, on a live server, for the base model and an `ft:`
LoRA model.

Plain and streamed answers and structured output under a strict `json_schema` come from the
real decoder: the random tiny model, held to the schema by the grammar (a schema of enums,
booleans and bounded integers, so it finishes well within `max_tokens`); so do forced calls
(`tool_choice` naming a function), whose arguments are decoded under the tool's grammar.  Left
free, a random model never writes a tool call, so the other tool tests serve `ScriptedEngine`
(test_tools.py): the local engine answering a scripted `<tool_call>` block, everything else
real.

Both libraries stay offline: litellm reads its bundled cost map (the variables below) and
tiktoken files; nothing here counts tokens (langchain-openai would fetch tiktoken's files).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jsonschema_rs
import litellm
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from app.bootstrap import prepare
from app.main import create_app
from app.sync import run_to_completion
from tests.app.inference.conftest import (
    MODEL_CACHE,
    TINY,
    ModelFolders,
    Tenant,
    new_tenant,
    publish,
)
from tests.app.inference.test_tools import ScriptedEngine
from tests.conftest import LiveServer, make_settings, serve_in_thread
from tuna_core.base_models import load_tokenizer, resolve_base_model
from tuna_core.tool_calls import format_tool_call, prefill

# litellm's own TypedDicts, built by pydantic on its first call.
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly. qualifier:UserWarning")

QUESTION = "What's the weather in Paris?"


class Weather(BaseModel):
    """The weather (what the model answers under the schema)."""

    unit: Literal["celsius", "kelvin"]
    raining: bool
    days: int = Field(ge=1, le=7)


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str
    unit: Literal["celsius", "kelvin"] = "celsius"


def get_time(city: str) -> str:
    """The local time in a city."""
    return "12:00"


WEATHER_SCHEMA = Weather.model_json_schema()
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "GetWeather",
            "description": "The current weather in a city.",
            "parameters": GetWeather.model_json_schema(),
        },
    }
]
PARIS = format_tool_call("GetWeather", {"city": "Paris", "unit": "kelvin"})
NOON = format_tool_call("get_time", {"city": "Paris"})


def chat_model(url: str, key: str, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{url}/v1", api_key=key, model=model, max_retries=0, timeout=60, **kwargs
    )


def litellm_args(url: str, key: str, model: str) -> dict[str, Any]:
    return {"model": f"openai/{model}", "api_base": f"{url}/v1", "api_key": key, "timeout": 60}


# -- the real decoder: base and ft: ---------------------------------------------------------


@dataclass
class Target:
    server: LiveServer
    tenant: Tenant
    model: str

    def chat(self, **kwargs: Any) -> ChatOpenAI:
        return chat_model(self.server.url, self.tenant.key, self.model, **kwargs)

    def litellm(self) -> dict[str, Any]:
        return litellm_args(self.server.url, self.tenant.key, self.model)


@pytest.fixture(params=["base", "ft"])
def target(
    request: pytest.FixtureRequest,
    server: LiveServer,
    tenant: Tenant,
    model_folders: ModelFolders,
) -> Target:
    model = TINY if request.param == "base" else publish(server, tenant, model_folders.adapter_a)
    return Target(server, tenant, model)


def test_langchain_invoke_and_stream(target: Target) -> None:
    # stream_usage: langchain-openai asks for usage in streams only at OpenAI's own URL.
    llm = target.chat(temperature=0, max_tokens=6, stream_usage=True)
    reply = llm.invoke([HumanMessage("Hello!")])
    assert isinstance(reply, AIMessage)
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["model_name"] == target.model
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 6
    assert reply.tool_calls == []

    chunks = list(llm.stream("Hello!"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == reply.content  # greedy: the same answer
    joined = chunks[0]
    for chunk in chunks[1:]:
        joined += chunk
    assert joined.response_metadata["finish_reason"] == "length"
    # stream_options.include_usage: the last chunk carries the usage.
    assert joined.usage_metadata is not None and joined.usage_metadata["output_tokens"] == 6


def test_langchain_structured_output_json_schema(target: Target) -> None:
    llm = target.chat(temperature=0.7, max_tokens=60, seed=1)
    structured = llm.with_structured_output(Weather)  # method="json_schema", the default
    answer = structured.invoke(QUESTION)
    assert isinstance(answer, Weather)
    assert answer.unit in ("celsius", "kelvin") and 1 <= answer.days <= 7

    raw = llm.with_structured_output(Weather, include_raw=True).invoke(QUESTION)
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Weather)
    assert raw["raw"].response_metadata["finish_reason"] == "stop"
    assert Weather.model_validate_json(str(raw["raw"].content)) == raw["parsed"]


def test_forced_calls_from_the_real_decoder(target: Target) -> None:
    """A forced call (`tool_choice` naming a function) is decoded under the tool's grammar: the
    random tiny model answers it with one complete, valid call, through both libraries."""
    llm = target.chat(temperature=0.7, max_tokens=100, seed=1)
    by_tool = llm.with_structured_output(Weather, method="function_calling")
    answer = by_tool.invoke(QUESTION)
    assert isinstance(answer, Weather) and 1 <= answer.days <= 7

    tool = {
        "type": "function",
        "function": {"name": "Weather", "parameters": WEATHER_SCHEMA},
    }
    reply = litellm.completion(
        **target.litellm(),
        messages=[{"role": "user", "content": QUESTION}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "Weather"}},
        max_tokens=100,
        temperature=0.7,
        seed=2,
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "Weather"
    assert isinstance(Weather.model_validate_json(call.function.arguments), Weather)


def test_litellm_completion_stream_and_json_schema(target: Target) -> None:
    args = target.litellm()
    messages = [{"role": "user", "content": "Hello!"}]
    reply = litellm.completion(**args, messages=messages, max_tokens=6, temperature=0)
    (choice,) = reply.choices
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 6

    stream = litellm.completion(**args, messages=messages, max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    rebuilt = litellm.stream_chunk_builder(chunks, messages=messages)
    assert rebuilt is not None and rebuilt.choices[0].message.content == text

    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
    }
    schema_reply = litellm.completion(
        **args,
        messages=[{"role": "user", "content": QUESTION}],
        response_format=fmt,
        max_tokens=60,
        temperature=0.7,
        seed=2,
    )
    (structured,) = schema_reply.choices
    assert structured.finish_reason == "stop"
    document = json.loads(structured.message.content)
    assert jsonschema_rs.validator_for(WEATHER_SCHEMA).is_valid(document), document
    assert isinstance(Weather.model_validate(document), Weather)
    # A pydantic class as response_format: litellm turns it into a strict json_schema.
    typed = litellm.completion(
        **args,
        messages=[{"role": "user", "content": QUESTION}],
        response_format=Weather,
        max_tokens=60,
        temperature=0.7,
        seed=3,
    )
    assert isinstance(Weather.model_validate_json(typed.choices[0].message.content), Weather)


# -- tool calls: the scripted engine, base and ft: -----------------------------------------


@dataclass
class ScriptedTarget:
    live: LiveServer
    engine: ScriptedEngine
    key: str
    model: str

    def chat(self, script: str, **kwargs: Any) -> ChatOpenAI:
        self.engine.script = script
        return chat_model(self.live.url, self.key, self.model, **kwargs)

    def litellm(self, script: str) -> dict[str, Any]:
        self.engine.script = script
        return litellm_args(self.live.url, self.key, self.model)


@pytest.fixture(scope="module")
def scripted_server(
    tmp_path_factory: pytest.TempPathFactory, model_folders: ModelFolders
) -> Iterator[tuple[LiveServer, ScriptedEngine, Tenant, str]]:
    settings = make_settings(tmp_path_factory.mktemp("tuna-client-compat"), None)
    prepare(settings)
    app = create_app(settings)
    engine = ScriptedEngine(load_tokenizer(resolve_base_model(TINY, MODEL_CACHE)))
    app.state.inference = engine
    url, stop = serve_in_thread(app)
    live = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    tenant = new_tenant(live)
    yield live, engine, tenant, publish(live, tenant, model_folders.adapter_a)
    stop()


@pytest.fixture(params=["base", "ft"])
def scripted(
    request: pytest.FixtureRequest,
    scripted_server: tuple[LiveServer, ScriptedEngine, Tenant, str],
) -> ScriptedTarget:
    live, engine, tenant, ft_model = scripted_server
    model = TINY if request.param == "base" else ft_model
    return ScriptedTarget(live, engine, tenant.key, model)


def test_langchain_bind_tools(scripted: ScriptedTarget) -> None:
    llm = scripted.chat(f"Let me check.\n{PARIS}\n{NOON}", temperature=0)
    reply = llm.bind_tools([GetWeather, get_time]).invoke(QUESTION)
    assert isinstance(reply, AIMessage)
    assert reply.content == "Let me check."
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("GetWeather", {"city": "Paris", "unit": "kelvin"}),
        ("get_time", {"city": "Paris"}),
    ]
    assert all(c["id"] and c["id"].startswith("call_") for c in reply.tool_calls)
    assert reply.invalid_tool_calls == []
    # The prompt lists both tools as langchain converted them.
    assert '"name": "GetWeather"' in scripted.engine.prompt
    assert '"name": "get_time"' in scripted.engine.prompt

    # The round trip: the AIMessage and a ToolMessage sent back, the answer read as text.
    history = [
        HumanMessage(QUESTION),
        reply,
        ToolMessage("sunny, 21C", tool_call_id=reply.tool_calls[0]["id"]),
        ToolMessage("12:00", tool_call_id=reply.tool_calls[1]["id"]),
    ]
    scripted.engine.script = "Sunny, 21C."
    final = llm.bind_tools([GetWeather, get_time]).invoke(history)
    assert (final.content, final.tool_calls) == ("Sunny, 21C.", [])
    assert "<|im_start|>tool\nsunny, 21C<|im_end|>" in scripted.engine.prompt
    assert PARIS in scripted.engine.prompt

    # tool_choice by name: the prefill, and the rest of the call read with it in front.
    forced = llm.bind_tools([GetWeather, get_time], tool_choice="GetWeather")
    scripted.engine.script = PARIS[len(prefill("function", "GetWeather")) :]
    (call,) = forced.invoke(QUESTION).tool_calls
    assert (call["name"], call["args"]["city"]) == ("GetWeather", "Paris")
    assert scripted.engine.prompt.endswith(prefill("function", "GetWeather"))


def test_langchain_streams_tool_call_chunks(scripted: ScriptedTarget) -> None:
    llm = scripted.chat(f"Let me check.\n{PARIS}\n{NOON}").bind_tools([GetWeather, get_time])
    chunks = list(llm.stream(QUESTION))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    pieces = [piece for c in chunks for piece in c.tool_call_chunks]
    assert {p["index"] for p in pieces} == {0, 1}
    assert [p["name"] for p in pieces if p["name"]] == ["GetWeather", "get_time"]
    joined = chunks[0]
    for chunk in chunks[1:]:
        joined += chunk
    assert joined.content == "Let me check."
    assert [(c["name"], c["args"]) for c in joined.tool_calls] == [
        ("GetWeather", {"city": "Paris", "unit": "kelvin"}),
        ("get_time", {"city": "Paris"}),
    ]
    assert joined.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_structured_output_function_calling(scripted: ScriptedTarget) -> None:
    # langchain sends tool_choice naming the schema's function: the engine prefills the call.
    call = format_tool_call("Weather", {"unit": "kelvin", "raining": True, "days": 3})
    llm = scripted.chat(call[len(prefill("function", "Weather")) :], temperature=0)
    answer = llm.with_structured_output(Weather, method="function_calling").invoke(QUESTION)
    assert answer == Weather(unit="kelvin", raining=True, days=3)
    assert scripted.engine.prompt.endswith(prefill("function", "Weather"))


def test_litellm_tools(scripted: ScriptedTarget) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    args = scripted.litellm(f"Let me check.\n{PARIS}")
    reply = litellm.completion(**args, messages=messages, tools=OPENAI_TOOLS, tool_choice="auto")
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "GetWeather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "kelvin"}

    chunks = list(litellm.completion(**args, messages=messages, tools=OPENAI_TOOLS, stream=True))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=messages)
    assert rebuilt is not None
    (streamed,) = rebuilt.choices
    assert streamed.finish_reason == "tool_calls"
    (again,) = streamed.message.tool_calls
    assert (again.function.name, json.loads(again.function.arguments)) == (
        "GetWeather",
        {"city": "Paris", "unit": "kelvin"},
    )

    # The call and its result sent back.
    history = [
        *messages,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    args = scripted.litellm("Sunny, 21C.")
    final = litellm.completion(**args, messages=history, tools=OPENAI_TOOLS)
    assert final.choices[0].message.content == "Sunny, 21C."
    assert final.choices[0].finish_reason == "stop"
    assert "<|im_start|>tool\nsunny, 21C<|im_end|>" in scripted.engine.prompt


def test_async_clients(target: Target) -> None:
    """`ainvoke` / `astream` and `litellm.acompletion` (litellm's own async transport)."""
    messages = [{"role": "user", "content": "Hello!"}]

    async def run() -> list[str]:
        # langchain-openai caches its default async client per base URL across event loops:
        # one per loop, as an application with several loops (here: one per test) must.
        async with httpx.AsyncClient(timeout=60) as http:
            llm = target.chat(temperature=0, max_tokens=5, http_async_client=http)
            reply = await llm.ainvoke("Hello!")
            streamed = "".join([str(c.content) async for c in llm.astream("Hello!")])
        completion = await litellm.acompletion(
            **target.litellm(), messages=messages, max_tokens=5, temperature=0
        )
        stream = await litellm.acompletion(
            **target.litellm(), messages=messages, max_tokens=5, temperature=0, stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return [
            str(reply.content),
            streamed,
            completion.choices[0].message.content,
            "".join(pieces),
        ]

    answers = run_to_completion(run())  # Playwright may hold a loop on this thread
    assert answers[0] and answers == [answers[0]] * 4  # greedy: one answer
