"""`response_format`, `logprobs` and `logit_bias` through the official SDK on a live server.

The tiny test model has random weights: whatever it answers under a schema is valid only
because the engine decoded it under the schema's grammar.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel, Field

from tests.app.inference.conftest import TINY

MESSAGES = [{"role": "user", "content": "What is the weather?"}]


class Weather(BaseModel):
    unit: Literal["celsius", "kelvin"]
    raining: bool
    days: int = Field(ge=1, le=7)


def error_of(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    return caught.value.body  # type: ignore[return-value]


def test_the_sdk_parses_a_strict_schema_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.parse(
        model=TINY, messages=MESSAGES, response_format=Weather, max_tokens=60, temperature=0.7
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Weather)
    assert 1 <= choice.message.parsed.days <= 7


def test_a_json_schema_holds_for_every_choice_streamed_or_not(client: openai.OpenAI) -> None:
    schema = Weather.model_json_schema()
    spec = {"name": "weather", "schema": schema, "strict": True}
    fmt = {"type": "json_schema", "json_schema": spec}
    validator = jsonschema_rs.validator_for(schema)
    reply = client.chat.completions.create(
        model=TINY,
        messages=MESSAGES,
        response_format=fmt,
        max_tokens=60,
        n=3,
        seed=1,  # type: ignore[arg-type]
    )
    for choice in reply.choices:
        assert validator.is_valid(json.loads(choice.message.content or "")), choice
    stream = client.chat.completions.create(
        model=TINY,
        messages=MESSAGES,
        response_format=fmt,
        max_tokens=60,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert validator.is_valid(json.loads(text))


def test_json_object_starts_an_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY, messages=MESSAGES, response_format={"type": "json_object"}, max_tokens=30
    )
    content = reply.choices[0].message.content or ""
    assert content.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "yaml"}, "response_format.type"),
        (
            {"type": "json_schema", "json_schema": {"name": "bad name"}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": {
                "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}},
            "response_format.json_schema.schema",
        ),
    ],
)  # fmt: skip
def test_bad_response_formats_are_400s(
    client: openai.OpenAI, response_format: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=TINY,
            messages=MESSAGES,
            response_format=response_format,  # type: ignore[arg-type]
        )
    assert error_of(caught)["param"] == param


def test_chat_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TINY, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert len(tokens) == 5  # max_tokens ran out: no end-of-turn token among them
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
        assert token.top_logprobs[0].token == token.token  # greedy
    stream = client.chat.completions.create(
        model=TINY,
        messages=MESSAGES,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    streamed = [
        t
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for t in chunk.choices[0].logprobs.content or []
    ]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in tokens]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY, messages=MESSAGES, top_logprobs=2)
    assert error_of(caught)["param"] == "top_logprobs"


def test_completion_logprobs_with_echo(client: openai.OpenAI) -> None:
    prompt = "Once upon a time"
    reply = client.completions.create(
        model=TINY, prompt=prompt, max_tokens=4, temperature=0, logprobs=2, echo=True
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert len(logprobs.tokens) == 4
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == len(prompt)
    assert reply.choices[0].text == prompt + "".join(logprobs.tokens)
    assert logprobs.top_logprobs is not None and all(len(t) <= 2 for t in logprobs.top_logprobs)


def test_logit_bias(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=TINY, prompt="Hello", max_tokens=1, temperature=0)
    first = client.completions.create(
        model=TINY, prompt="Hello", max_tokens=1, temperature=0, logprobs=0
    )
    assert first.choices[0].text == plain.choices[0].text
    # Token 1000 pushed to the top: it is what greedy decoding picks.
    forced = client.completions.create(
        model=TINY, prompt="Hello", max_tokens=1, temperature=0, logit_bias={"1000": 100}
    )
    again = client.completions.create(
        model=TINY, prompt="Hi there", max_tokens=1, temperature=0, logit_bias={"1000": 100}
    )
    assert forced.choices[0].text == again.choices[0].text != plain.choices[0].text
    for bias in ({"99999999": 1}, {"abc": 1}, {"5": 500}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=TINY, prompt="Hello", max_tokens=1, logit_bias=bias)
        assert error_of(caught)["param"] == "logit_bias"
