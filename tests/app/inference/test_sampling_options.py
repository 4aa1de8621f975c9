"""The checks of `response_format`, `logit_bias` and `logprobs`, and the logprobs wire shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.errors import InvalidRequest
from app.inference.sampling_options import (
    chat_logprobs,
    chat_logprobs_of,
    completion_logprobs,
    logit_bias_of,
    response_format_of,
)
from app.inference.types import ResponseFormat, TokenLogprob

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}


def test_response_formats() -> None:
    assert response_format_of(None) is None
    assert response_format_of({"type": "text"}) is None
    assert response_format_of({"type": "json_object"}) == ResponseFormat(None)
    fmt = response_format_of(
        {"type": "json_schema", "json_schema": {"name": "w-1", "schema": SCHEMA, "strict": True}}
    )
    assert fmt == ResponseFormat(json.dumps(SCHEMA), strict=True)
    assert list(json.loads(fmt.schema or "")["properties"]) == ["b", "a"]  # order kept


JS = "response_format.json_schema"


def schema_format(**spec: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": spec}


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("json", "response_format"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_object", "schema": {}}, "response_format.schema"),
        ({"type": "json_schema"}, JS),
        (schema_format(schema=SCHEMA), f"{JS}.name"),
        (schema_format(name="a b"), f"{JS}.name"),
        (schema_format(name="a", schema=[]), f"{JS}.schema"),
        (schema_format(name="a", strict="yes"), f"{JS}.strict"),
        (schema_format(name="a", x=1), f"{JS}.x"),
    ],
)
def test_bad_response_formats_name_their_param(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        response_format_of(value)
    assert caught.value.param == param


def test_logit_bias() -> None:
    assert logit_bias_of(None) == ()
    assert logit_bias_of({"12": 5, "7": -100}) == ((12, 5.0), (7, -100.0))
    for bad in ([1], {"a": 1}, {"-1": 1}, {"3": 101}, {"3": True}, {"3": "1"}):
        with pytest.raises(InvalidRequest) as caught:
            logit_bias_of(bad)
        assert caught.value.param == "logit_bias"


def test_chat_logprobs_flags() -> None:
    assert chat_logprobs_of(None, None) is None
    assert chat_logprobs_of(True, None) == 0
    assert chat_logprobs_of(True, 4) == 4
    with pytest.raises(InvalidRequest) as caught:
        chat_logprobs_of(False, 2)
    assert caught.value.param == "top_logprobs"


TOKENS = [
    TokenLogprob("Hi", (72, 105), -0.5, (("Hi", (72, 105), -0.5), ("Yo", (89, 111), -1.5))),
    TokenLogprob("!", (33,), -0.1, (("!", (33,), -0.1), (".", (46,), -2.0))),
]


def test_chat_logprobs_shape() -> None:
    assert chat_logprobs(TOKENS) == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                    {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]},
                ],
            },
            {
                "token": "!",
                "logprob": -0.1,
                "bytes": [33],
                "top_logprobs": [
                    {"token": "!", "logprob": -0.1, "bytes": [33]},
                    {"token": ".", "logprob": -2.0, "bytes": [46]},
                ],
            },
        ],
        "refusal": None,
    }


def test_completion_logprobs_shape() -> None:
    assert completion_logprobs(TOKENS, offset=4) == {
        "tokens": ["Hi", "!"],
        "token_logprobs": [-0.5, -0.1],
        "top_logprobs": [{"Hi": -0.5, "Yo": -1.5}, {"!": -0.1, ".": -2.0}],
        "text_offset": [4, 6],
    }
