"""A chat request's messages are checked by the schema training data is checked with, and
rendered as training rendered them: a fine-tuned model sees the text it learned from."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.app.inference.conftest import MODEL_CACHE, TINY
from tests.conftest import LiveServer
from tuna_core.base_models import load_tokenizer, resolve_base_model
from tuna_core.chat_template import render_training_chat

CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
TOOL_HISTORY = [
    {"role": "developer", "content": "Use tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]


def chat(server: LiveServer, key: str, messages: list[Any]) -> httpx.Response:
    with server.http(key) as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": TINY, "messages": messages, "max_tokens": 1, "temperature": 0},
        )


def test_a_tool_history_is_prompted_as_training_rendered_it(
    server: LiveServer, api_key: str
) -> None:
    response = chat(server, api_key, TOOL_HISTORY)
    assert response.status_code == 200, response.text

    # Training on the same chat plus an answer: the tokens before the answer's span are the
    # prompt (`developer` trains as `system`, the tool call as SmolLM2's <tool_call> text).
    tokenizer = load_tokenizer(resolve_base_model(TINY, MODEL_CACHE))
    trained = [{**m, "role": "system"} if m["role"] == "developer" else m for m in TOOL_HISTORY]
    trained = [{k: v for k, v in m.items() if v is not None} for m in trained]
    rendered = render_training_chat(
        tokenizer, {"messages": [*trained, {"role": "assistant", "content": "Sunny."}]}
    )
    prompt = rendered.text[: rendered.spans[-1][0]]
    assert "<tool_call>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    expected = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert response.json()["usage"]["prompt_tokens"] == expected


@pytest.mark.parametrize(
    ("message", "param", "words"),
    [
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "messages[0].content[0].type",
            "unsupported content part type 'image_url' (only 'text' is supported)",
        ),
        (
            {"role": "user", "content": "hi", "audio": {"id": "a"}},
            "messages[0].audio",
            "not supported by this server yet",
        ),
        ({"role": "user", "content": "hi", "weight": 1}, "messages[0].weight", "unknown key"),
        ({"role": "robot", "content": "beep"}, "messages[0]", "unknown role 'robot'"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id", "Missing required"),
        ("hello", "messages[0]", "expected a message object, got string"),
    ],
)
def test_a_message_the_schema_refuses_is_a_400_naming_it(
    server: LiveServer, api_key: str, message: Any, param: str, words: str
) -> None:
    response = chat(server, api_key, [message])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert words in error["message"]
