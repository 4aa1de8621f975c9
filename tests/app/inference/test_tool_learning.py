"""A model that really calls tools: a LoRA job on the bundled SmolLM2-135M-Instruct, trained on
OpenAI-format tool-call examples, answers held-out questions through the SDK with `tool_calls`.

Training renders the calls as `<tool_call>` text and the tools into the system message
(`tuna_core.chat_template.prepare_chat`); serving renders the request's `tools` the same way and
parses the same syntax back (`tuna_core.tool_calls`).  The held-out cities never appear in
training, so a model that only memorised its answers fails; one that learned the call copies the
new city into the arguments.
"""

from __future__ import annotations

import io
import json
from typing import Any

import openai
import pytest

from tests.conftest import WorkerProcess
from tests.worker.test_job_flow import TERMINAL, wait_for

BASE = "SmolLM2-135M-Instruct"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]
TRAIN_CITIES = [
    "Paris",
    "London",
    "Berlin",
    "Madrid",
    "Rome",
    "Vienna",
    "Prague",
    "Warsaw",
    "Dublin",
    "Lisbon",
    "Athens",
    "Cairo",
    "Nairobi",
    "Lagos",
    "Tokyo",
    "Seoul",
    "Beijing",
    "Delhi",
    "Mumbai",
    "Bangkok",
    "Jakarta",
    "Manila",
    "Sydney",
    "Auckland",
    "Toronto",
    "Chicago",
    "Boston",
    "Denver",
    "Seattle",
    "Miami",
    "Havana",
    "Lima",
    "Santiago",
    "Bogota",
    "Quito",
    "Caracas",
    "Montreal",
    "Helsinki",
    "Oslo",
    "Stockholm",
]
TEST_CITIES = [
    "Copenhagen",
    "Budapest",
    "Brussels",
    "Amsterdam",
    "Zurich",
    "Istanbul",
    "Dubai",
    "Singapore",
    "Melbourne",
    "Houston",
]


def question(city: str) -> str:
    return f"What's the weather in {city}?"


def example(city: str, i: int) -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    return {
        "messages": [
            {"role": "user", "content": question(city)},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
        "tools": TOOLS,
    }


def arguments(call: Any) -> dict[str, Any]:
    try:
        value = json.loads(call.function.arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def called_with_city(message: Any, city: str) -> bool:
    calls = message.tool_calls or []
    return (
        len(calls) == 1
        and calls[0].function.name == "get_weather"
        and (arguments(calls[0]) == {"city": city})
    )


@pytest.mark.slow
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_a_model_fine_tuned_on_tool_calls_calls_tools(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    assert not set(TRAIN_CITIES) & set(TEST_CITIES)
    data = "".join(json.dumps(example(c, i)) + "\n" for i, c in enumerate(TRAIN_CITIES))
    training_file = client.files.create(
        file=("weather.jsonl", io.BytesIO(data.encode())), purpose="fine-tune"
    ).id
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training_file,
        suffix="tools",
        seed=7,
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5},
    )
    done = wait_for(client, job.id, TERMINAL, timeout=1800)
    assert done.status == "succeeded", done.error
    model = done.fine_tuned_model
    assert model

    def ask(city: str, **kwargs: Any) -> Any:
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question(city)}],
            tools=TOOLS,  # type: ignore[arg-type]
            max_tokens=40,
            temperature=0,
            **kwargs,
        )

    calls = hits = 0
    for city in TEST_CITIES:
        reply = ask(city)
        choice = reply.choices[0]
        ok = called_with_city(choice.message, city)
        print(city, ok, choice.finish_reason, choice.message.content, choice.message.tool_calls)
        if choice.message.tool_calls:
            call = choice.message.tool_calls[0]
            assert choice.finish_reason == "tool_calls"
            assert call.id.startswith("call_") and call.type == "function"
            calls += call.function.name == "get_weather" and "city" in arguments(call)
        hits += ok
    print(f"get_weather(city) calls: {calls}/{len(TEST_CITIES)}, with the right city: {hits}")
    # Measured on CPU (seed 7): 10 calls, 7 with the city copied exactly (the misses are
    # spelling: "Zuraforr" for Zurich, "Belgium" for Brussels).
    assert calls >= 0.9 * len(TEST_CITIES)
    assert hits >= 0.6 * len(TEST_CITIES)

    # Streamed, the SDK rebuilds the same call.
    city = TEST_CITIES[0]
    with client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": question(city)}],
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    plain = ask(city).choices[0]
    streamed = final.choices[0]
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.message.content == plain.message.content
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls or []] == [
        (c.function.name, c.function.arguments) for c in plain.message.tool_calls or []
    ]

    # tool_choice "none": no call, whatever the model writes.
    none = ask(city, tool_choice="none").choices[0]
    assert none.message.tool_calls is None and none.finish_reason != "tool_calls"
    # The base model with a named function: the prefill opens that call (a base never trained
    # on calls may not finish it; then its text, prefill included, is the content).
    forced = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": question(city)}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=40,
        temperature=0,
    ).choices[0]
    print("base, get_time forced:", forced.message.content, forced.message.tool_calls)
    if forced.message.tool_calls:
        assert [c.function.name for c in forced.message.tool_calls] == ["get_time"]
