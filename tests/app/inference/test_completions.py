"""`/v1/completions` (legacy): raw prompts, lists of prompts, echo, streaming, errors."""

from __future__ import annotations

import json

import openai
import pytest

from tests.app.inference.conftest import TINY


def test_text_completion_shape(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=TINY, prompt="Once upon a time", temperature=0)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.model == TINY
    (choice,) = reply.choices
    assert (choice.index, choice.logprobs, choice.finish_reason) == (0, None, "length")
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16  # OpenAI's default max_tokens for this endpoint
    assert reply.usage.prompt_tokens == 4  # raw prompt: no chat template around it


def test_prompt_list_n_and_echo(client: openai.OpenAI) -> None:
    prompts = ["The sky is", "Paris is"]
    reply = client.completions.create(
        model=TINY, prompt=prompts, n=2, max_tokens=3, temperature=1.0, seed=9
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]  # prompt_number * n + sample
    alone = [
        client.completions.create(model=TINY, prompt=p, max_tokens=3, temperature=0).choices[0]
        for p in prompts
    ]
    echoed = client.completions.create(
        model=TINY, prompt=prompts, max_tokens=3, temperature=0, echo=True
    )
    assert [c.text for c in echoed.choices] == [
        p + a.text for p, a in zip(prompts, alone, strict=True)
    ]


def test_streamed_completion_matches(client: openai.OpenAI) -> None:
    full = client.completions.create(
        model=TINY, prompt="One two three", max_tokens=5, temperature=0
    )
    chunks = list(
        client.completions.create(
            model=TINY,
            prompt="One two three",
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    *text_chunks, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert usage_chunk.choices == [] and usage_chunk.usage == full.usage


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 6}, "logprobs"),  # OpenAI's most is 5
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_unsupported_completion_params(
    client: openai.OpenAI, extra: dict[str, object], param: str
) -> None:
    values: dict[str, object] = {"model": TINY, "prompt": "x", "max_tokens": 2, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**values)  # type: ignore[call-overload]
    assert caught.value.body["param"] == param  # type: ignore[index]


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]]])
def test_token_id_prompts_are_refused_by_name(client: openai.OpenAI, prompt: object) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=TINY, prompt=prompt, max_tokens=2)  # type: ignore[arg-type]
    error = caught.value.body
    assert error["param"] == "prompt"  # type: ignore[index]
    assert "token-id prompts" in error["message"]  # type: ignore[index]
    assert "not supported" in error["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("prompt", "param"), [("a \udfff", "prompt"), (["ok", "\ud800"], "prompt[1]")]
)
def test_an_unpaired_surrogate_is_400_not_a_crash(
    server, api_key: str, prompt: str | list[str], param: str
) -> None:
    body = json.dumps({"model": TINY, "max_tokens": 3, "prompt": prompt})  # escapes it
    with server.http(api_key) as http:
        response = http.post(
            "/v1/completions", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert "unpaired surrogate" in error["message"]
