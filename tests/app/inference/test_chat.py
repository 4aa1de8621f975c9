"""`/v1/chat/completions` through the official SDK: shapes, sampling, streaming, stops, errors."""

from __future__ import annotations

import json

import openai
import pytest

from tests.app.inference.conftest import TINY

MESSAGES = [{"role": "user", "content": "Tell me a story about a fish."}]


def ask(client: openai.OpenAI, **kwargs: object):
    values: dict[str, object] = {"model": TINY, "messages": MESSAGES, "max_tokens": 6}
    values.update(kwargs)
    return client.chat.completions.create(**values)  # type: ignore[call-overload]


def test_response_shape_and_usage(client: openai.OpenAI) -> None:
    reply = ask(client, max_tokens=3, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == TINY
    assert reply.created > 0
    (choice,) = reply.choices
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert choice.logprobs is None
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.message.refusal is None
    usage = reply.usage
    assert usage is not None
    assert usage.completion_tokens == 3
    assert usage.prompt_tokens > 5  # the chat template adds the system turn and markers
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    raw = client.chat.completions.with_raw_response.create(
        model=TINY,
        messages=MESSAGES,
        max_tokens=2,
        temperature=0,  # type: ignore[arg-type]
    )
    body = raw.http_response.json()
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert set(body["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": body["choices"][0]["message"]["content"],
        "refusal": None,
    }


def test_max_completion_tokens_and_n(client: openai.OpenAI) -> None:
    reply = ask(client, max_tokens=None, max_completion_tokens=4, n=3, temperature=1.0, seed=5)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert len({c.message.content for c in reply.choices}) > 1  # independent samples


def test_greedy_is_deterministic(client: openai.OpenAI) -> None:
    first = ask(client, temperature=0, max_tokens=8).choices[0].message.content
    again = [ask(client, temperature=0, max_tokens=8).choices[0].message.content for _ in range(2)]
    assert again == [first, first]


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    a = ask(client, temperature=1.0, seed=123, max_tokens=10).choices[0].message.content
    b = ask(client, temperature=1.0, seed=123, max_tokens=10).choices[0].message.content
    c = ask(client, temperature=1.0, seed=124, max_tokens=10).choices[0].message.content
    assert a == b
    assert a != c
    nucleus = ask(client, temperature=0.8, top_p=0.9, seed=7, max_tokens=10)
    assert nucleus.choices[0].message.content == (
        ask(client, temperature=0.8, top_p=0.9, seed=7, max_tokens=10).choices[0].message.content
    )


def test_stream_chunks_in_order_with_usage(client: openai.OpenAI) -> None:
    full = ask(client, temperature=0, max_tokens=6)
    chunks = list(
        ask(
            client, temperature=0, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    first, *middle, last_choice, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert first.choices[0].finish_reason is None and first.usage is None
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in middle)
    assert last_choice.choices[0].finish_reason == "length"
    assert not last_choice.choices[0].delta.content and last_choice.usage is None
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == (
        full.usage.model_dump(include={"prompt_tokens", "completion_tokens"})  # type: ignore[union-attr]
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in middle)
    assert streamed == full.choices[0].message.content


def test_stream_without_usage_and_raw_sse(server, api_key: str) -> None:
    with server.http(api_key) as http:
        body = {"model": TINY, "messages": MESSAGES, "max_tokens": 3, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            text = "".join(response.iter_text())
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in text  # only with stream_options.include_usage


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    free = ask(client, temperature=1.0, seed=11, max_tokens=12).choices[0].message.content
    assert free and len(free) > 6
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    expected = free[: free.index(stop)]

    cut = ask(client, temperature=1.0, seed=11, max_tokens=12, stop=[stop, "\x00never"])
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"

    chunks = list(ask(client, temperature=1.0, seed=11, max_tokens=12, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_content_parts_and_roles(client: openai.OpenAI) -> None:
    parts = ask(
        client,
        temperature=0,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
            },
            {"role": "assistant", "content": "Hello", "refusal": None},
            {"role": "user", "content": "Again"},
        ],
    )
    plain = ask(
        client,
        temperature=0,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Again"},
        ],
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage == plain.usage


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"response_format": {"type": "json_object", "x": 1}}, "response_format.x"),
        ({"logit_bias": {"1": 500}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"n": 99}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "1"}]}]},
            "messages[0].tool_calls",
        ),
    ],
)
def test_unsupported_or_invalid_params_are_400(
    client: openai.OpenAI, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **extra)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_prompt_plus_max_tokens_beyond_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, max_tokens=5000)
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in caught.value.message


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    for name in ("no-such-model", "ft:tuna-tiny-test:org:x:abc"):
        with pytest.raises(openai.NotFoundError) as caught:
            ask(client, model=name)
        assert caught.value.code == "model_not_found"
        assert caught.value.body["param"] == "model"  # type: ignore[index]
        assert f"The model `{name}` does not exist or you do not have access to it." in (
            caught.value.message
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model",
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("stream", [False, True])
def test_an_unpaired_surrogate_is_400_not_a_crash(server, api_key: str, stream: bool) -> None:
    # JSON can escape one (the SDK cannot even encode it; curl can send it), but it is no text.
    messages = [{"role": "user", "content": "hi \ud800"}]
    body = json.dumps({"model": TINY, "max_tokens": 3, "stream": stream, "messages": messages})
    assert "\\ud800" in body  # ensure_ascii escapes it
    with server.http(api_key) as http:
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content"
    assert "surrogate" in error["message"]
