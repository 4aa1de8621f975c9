"""Rendering without apply_chat_template gives apply_chat_template's text, byte for byte.

The engine renders each chat two or more times (the whole chat, and the prefixes that locate
each trained assistant message), so it skips ``apply_chat_template``: the bundled ChatML template
is rendered in Python, any other template through transformers' compiled jinja template directly.
Every render here is compared with ``tokenizer.apply_chat_template`` itself, for every prefix of
varied chats, on the ChatML template as the tokenizer files and base_models write it and on a
template with native tool calls, special tokens and filters; other tests check that the direct
paths are really the ones taken, so a fallback to apply_chat_template cannot hide a broken one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.worker.training.helpers import EDGE_CASE_TEXTS
from tuna_core import chat_template
from tuna_core.chat_template import (
    CHATML_TEMPLATE,
    RenderedChat,
    prepare_chat,
    render_chat,
    render_training_chat,
)

# Native tool calls, the tokenizer's special tokens, filters, ``is defined`` on optional keys,
# loop variables, a namespace and raise_exception: what a Hub template typically uses.
TOOLS_TEMPLATE = """{{- bos_token -}}
{%- if messages[0].role == 'tool' -%}
{{ raise_exception('A conversation cannot start with a tool result.') }}
{%- endif -%}
{%- if tools %}<|im_start|>system
# Tools
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}<|im_end|>
{% endif -%}
{%- set ns = namespace(turns=0) -%}
{%- for message in messages -%}
{%- if message.role == 'user' %}{% set ns.turns = ns.turns + 1 %}{% endif -%}
{%- if message.role == 'assistant' -%}
<|im_start|>assistant (turn {{ ns.turns }})
{% if message.content is defined %}{{ message.content | trim }}{% endif -%}
{%- if message.tool_calls is defined -%}
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor -%}
{%- endif %}{{ eos_token }}
{% elif message.role == 'tool' -%}
<|im_start|>tool
{% if message.tool_call_id is defined %}[{{ message.tool_call_id }}] {% endif -%}
{{ message.content }}<|im_end|>
{% else -%}
<|im_start|>{{ message.role }}{% if message.name is defined %} ({{ message.name }}){% endif %}
{{ message.content | trim }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant (turn {{ ns.turns }})
{% endif -%}"""


def tool_call(rng: random.Random, n: int) -> dict[str, Any]:
    arguments: Any = {"city": rng.choice(["Paris", "東京", "São Paulo"]), "days": n}
    if rng.random() < 0.5:  # OpenAI sends a JSON string; some datasets an object
        arguments = '{"city": "Paris", "unit": "°C"}'
    return {
        "id": f"c{n}",
        "type": "function",
        "function": {"name": "weather", "arguments": arguments},
    }


def random_messages(rng: random.Random) -> list[dict[str, Any]]:
    """OpenAI chat messages: optional system, turns with weights, tool calls and results."""
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(EDGE_CASE_TEXTS)})
    for turn in range(rng.randint(1, 4)):
        user: dict[str, Any] = {"role": "user", "content": rng.choice(EDGE_CASE_TEXTS)}
        if rng.random() < 0.2:
            user["name"] = rng.choice(["alice", None])  # null keys are dropped, as OpenAI sends
        if rng.random() < 0.2:
            user["content"] = [{"type": "text", "text": t} for t in rng.sample(EDGE_CASE_TEXTS, 2)]
        messages.append(user)
        if rng.random() < 0.3:
            content = rng.choice([None, rng.choice(EDGE_CASE_TEXTS)])
            calls = [tool_call(rng, turn * 10 + k) for k in range(rng.randint(1, 2))]
            messages.append({"role": "assistant", "content": content, "tool_calls": calls})
            for call in calls:
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": "sunny"})
        answer: dict[str, Any] = {"role": "assistant", "content": rng.choice(EDGE_CASE_TEXTS)}
        if rng.random() < 0.4:
            answer["weight"] = rng.choice([0, 1])
        messages.append(answer)
    if rng.random() < 0.15:
        messages.append({"role": "user", "content": rng.choice(EDGE_CASE_TEXTS)})
    return messages


def random_chats(n: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    return [random_messages(rng) for _ in range(n)]


def via_apply(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """The reference: transformers' own public call."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    text = tokenizer.apply_chat_template(messages, **kwargs)
    assert isinstance(text, str)
    return text


def reference_training_chat(tokenizer: Any, example: dict[str, Any]) -> RenderedChat:
    """``render_training_chat`` with every render done by apply_chat_template."""
    messages, weights, tools = prepare_chat(
        example["messages"], example.get("tools"), tokenizer.chat_template
    )
    full = via_apply(tokenizer, messages, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and weights[i]:
            before = via_apply(tokenizer, messages[:i], tools, add_generation_prompt=True)
            through = via_apply(tokenizer, messages[: i + 1], tools)
            assert through.startswith(before) and full.startswith(through)
            spans.append((len(before), len(through)))
    return RenderedChat(full, spans)


def load_tokenizer(folder: Path, template: str | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


TEMPLATES = {
    "chatml-as-shipped": None,  # the tokenizer file's own: real newlines inside the quotes
    "chatml-as-base-models": CHATML_TEMPLATE,  # the same template with \\n escapes
    "tools": TOOLS_TEMPLATE,
}


@pytest.fixture(scope="module", params=list(TEMPLATES))
def templated(request: pytest.FixtureRequest, tiny_dir: Path) -> Any:
    return load_tokenizer(tiny_dir, TEMPLATES[request.param])


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_dir: Path) -> Any:
    return load_tokenizer(tiny_dir, None)


@pytest.fixture(scope="module")
def tools_tokenizer(tiny_dir: Path) -> Any:
    return load_tokenizer(tiny_dir, TOOLS_TEMPLATE)


def prepared_chats(tokenizer: Any, n: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    return [prepare_chat(m, None, tokenizer.chat_template)[0] for m in random_chats(n, seed)]


# --- the text ----------------------------------------------------------------------------------


def test_every_prefix_renders_as_apply_chat_template(templated: Any) -> None:
    for messages in prepared_chats(templated, 150):
        for n in range(1, len(messages) + 1):
            for add_generation_prompt in (False, True):
                want = via_apply(templated, messages[:n], None, add_generation_prompt)
                got = render_chat(templated, messages[:n], None, add_generation_prompt)
                assert got == want, (messages[:n], add_generation_prompt)


def test_training_chats_render_and_locate_spans_as_apply_chat_template(templated: Any) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    examples: list[dict[str, Any]] = [{"messages": m} for m in random_chats(150, seed=1)]
    examples += [{"messages": m, "tools": tools} for m in random_chats(20, seed=2)]
    checked = 0
    for example in examples:
        messages, _, _ = prepare_chat(example["messages"], None, templated.chat_template)
        if not any(m["role"] == "assistant" for m in messages):
            continue
        assert render_training_chat(templated, example) == reference_training_chat(
            templated, example
        )
        checked += 1
    assert checked > 100


def test_the_shipped_chatml_templates_are_rendered_in_python(templated: Any) -> None:
    messages = prepared_chats(templated, 1)[0]
    renderer = chat_template._ChatRenderer(templated, messages)
    if templated.chat_template == TOOLS_TEMPLATE:
        assert renderer.direct is not None and renderer.direct is not chat_template._render_chatml
    else:
        assert renderer.direct is chat_template._render_chatml


def test_the_direct_paths_do_not_call_apply_chat_template(
    templated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = [{"messages": m} for m in random_chats(40, seed=3)]
    examples = [e for e in examples if e["messages"][-1]["role"] == "assistant"]
    expected = [reference_training_chat(templated, e) for e in examples]

    def not_called(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("apply_chat_template was called")

    monkeypatch.setattr(templated, "apply_chat_template", not_called)
    assert [render_training_chat(templated, e) for e in examples] == expected


def test_special_tokens_and_templates_are_read_at_each_render(tools_tokenizer: Any) -> None:
    messages = prepare_chat(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        None,
        TOOLS_TEMPLATE,
    )[0]
    before = render_chat(tools_tokenizer, messages)
    original = tools_tokenizer.eos_token
    try:
        tools_tokenizer.eos_token = "<|endoftext|>"
        changed = render_chat(tools_tokenizer, messages)
        assert changed == via_apply(tools_tokenizer, messages) != before
        assert "<|endoftext|>" in changed
    finally:
        tools_tokenizer.eos_token = original
    assert render_chat(tools_tokenizer, messages) == before

    other = TOOLS_TEMPLATE.replace("# Tools", "# Functions").replace("(turn {{", "(reply {{")
    tools_tokenizer.chat_template = other
    try:
        prompt = render_chat(tools_tokenizer, messages, add_generation_prompt=True)
        assert prompt == via_apply(tools_tokenizer, messages, add_generation_prompt=True)
        assert "(reply 1)" in prompt
    finally:
        tools_tokenizer.chat_template = TOOLS_TEMPLATE


# --- what falls back, and errors --------------------------------------------------------------


def test_tools_go_through_apply_chat_template(
    tools_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    example = {"tools": tools, "messages": random_chats(1, seed=4)[0]}
    example["messages"].append({"role": "assistant", "content": "Done."})
    expected = reference_training_chat(tools_tokenizer, example)
    assert "# Tools" in expected.text
    calls = []
    apply = tools_tokenizer.apply_chat_template

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("tools"))
        return apply(*args, **kwargs)

    monkeypatch.setattr(tools_tokenizer, "apply_chat_template", spy)
    assert render_training_chat(tools_tokenizer, example) == expected
    assert calls and all(call == tools for call in calls)


def same_error(call: Any, reference: Any) -> None:
    with pytest.raises(Exception) as want:
        reference()
    with pytest.raises(type(want.value)) as got:
        call()
    assert str(got.value) == str(want.value)


def test_errors_are_those_of_apply_chat_template(
    chatml_tokenizer: Any, tools_tokenizer: Any
) -> None:
    # An assistant speaking first: its prefix is empty, which transformers refuses.
    first = [{"role": "assistant", "content": "I speak first."}]
    messages = prepare_chat(first, None, CHATML_TEMPLATE)[0]
    same_error(
        lambda: render_chat(chatml_tokenizer, messages[:0], add_generation_prompt=True),
        lambda: via_apply(chatml_tokenizer, messages[:0], add_generation_prompt=True),
    )
    with pytest.raises(ValueError, match="empty conversation"):
        render_training_chat(chatml_tokenizer, {"messages": first})

    # The template's own raise_exception, from the direct jinja render.
    tool_first = [{"role": "tool", "content": "sunny"}]
    same_error(
        lambda: render_chat(tools_tokenizer, tool_first),
        lambda: via_apply(tools_tokenizer, tool_first),
    )

    # A message the ChatML template cannot render (no content): jinja's own error.
    no_content = [{"role": "user"}]
    same_error(
        lambda: render_chat(chatml_tokenizer, no_content),
        lambda: via_apply(chatml_tokenizer, no_content),
    )


def test_unusual_messages_render_as_apply_chat_template(
    chatml_tokenizer: Any, tools_tokenizer: Any
) -> None:
    """Messages ``prepare_chat`` would not make still render the same through render_chat."""
    odd = [
        [{"role": "user", "content": "Hi", "reasoning_content": "thinking"}],
        [{"role": "user", "content": "Hi", "name": None, "extra": {"k": [1, 2.5, None]}}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "name": "bot"}],
    ]
    for tokenizer in (chatml_tokenizer, tools_tokenizer):
        for messages in odd:
            for add_generation_prompt in (False, True):
                want = via_apply(tokenizer, messages, None, add_generation_prompt)
                assert render_chat(tokenizer, messages, None, add_generation_prompt) == want


def test_a_template_that_does_not_render_prefix_by_prefix_is_still_reported(
    tiny_dir: Path,
) -> None:
    unstable = (
        "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
        "{% if loop.last %} (end){% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tokenizer = load_tokenizer(tiny_dir, unstable)
    chat = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    messages = prepare_chat(chat, None, unstable)[0]
    for n in range(1, len(messages) + 1):
        assert render_chat(tokenizer, messages[:n]) == via_apply(tokenizer, messages[:n])
    with pytest.raises(ValueError, match="message 2: the chat template does not render"):
        render_training_chat(tokenizer, {"messages": chat})
