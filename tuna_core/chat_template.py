"""Chat rendering: the text a model sees for a chat, in training and at inference alike.

A fine-tuned model must see at serving time the text it was trained on, so the worker
(`worker.training.data`, which also locates the trained spans) and the inference engines
(`render_prompt`) render through these functions only.

What must hold:

* Messages reach here checked (`tuna_core.dataset`); `prepare_chat` only shapes them for the
  template: text parts joined, and for templates that know nothing of tools (SmolLM2's), tool
  calls as ``<tool_call>`` text in the assistant content and tool definitions in the system
  message.
* Rendering gives ``apply_chat_template``'s text byte for byte without its per-call overhead, as
  the worker renders every chat two or more times: the bundled ChatML template in plain Python,
  any other through transformers' compiled jinja template directly (``_ChatRenderer``); tools
  and anything unusual still go through ``apply_chat_template``.
* Each trained assistant message's span is found by rendering the conversation prefix by
  prefix: the text of ``messages[:i]`` with the generation prompt is a prefix of the text of
  ``messages[:i+1]``, and what lies between is what the model must produce for message ``i``
  (its content and the template's end-of-turn marker, e.g. ``Paris.<|im_end|>\\n`` for ChatML).
  This works for any template that renders prefixes stably, without ``{% generation %}``
  markers; a template that does not is reported rather than silently mis-masked.  ChatML,
  which renders prefix by prefix by construction, is rendered once with its spans.

Needs a tokenizer object (transformers) to render with, but imports neither torch nor
transformers itself except transformers' template helpers, when first rendering.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuna_core.tool_calls import format_tool_calls

# The system turn SmolLM2's template renders when a chat has none.
CHATML_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's own ChatML template (what its GGUF carries).  Set explicitly when a converted
# tokenizer comes back without one, so training and inference always render the same way.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + CHATML_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give a tokenizer without a chat template SmolLM2's ChatML one (what our bases speak)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _text_content(content: str | list[dict[str, Any]] | None) -> str:
    """Message content as text: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


@functools.lru_cache(maxsize=16)
def _tool_syntax(template: str) -> tuple[bool, bool]:
    """Whether ``template`` renders tool calls and tool definitions itself."""
    return "tool_calls" in template, "tools" in template.replace("tool_calls", "")


def prepare_chat(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    template: str | None = None,
) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]] | None]:
    """Shape checked OpenAI chat messages for ``template``: (messages, weights, tools).

    ``weights[i]`` is 1 where message ``i`` is a trained assistant message.  Templates that know
    nothing of tools (SmolLM2's) get tool calls as ``<tool_call>`` text in the assistant content
    and tool definitions in the system message, so ``tools`` comes back None for them.
    """
    native_tool_calls, native_tools = _tool_syntax(template or "")
    out: list[dict[str, Any]] = []
    weights: list[int] = []
    for message in messages:
        role = message["role"]
        text = _text_content(message.get("content"))
        shaped: dict[str, Any] = {"role": role, "content": text}
        tool_calls = message.get("tool_calls")
        if tool_calls and native_tool_calls:
            shaped["tool_calls"] = tool_calls
        elif tool_calls:
            calls = format_tool_calls(tool_calls)
            shaped["content"] = f"{text}\n{calls}" if text else calls
        for key in ("name", "tool_call_id"):
            if key in message and native_tool_calls:
                shaped[key] = message[key]
        out.append(shaped)
        weights.append(int(message.get("weight", 1)) if role == "assistant" else 0)
    if tools and not native_tools:
        listing = "\n".join(json.dumps(tool) for tool in tools)
        note = f"You have access to the following tools:\n<tools>\n{listing}\n</tools>"
        if out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
            weights.insert(0, 0)
        tools = None
    return out, weights, tools or None


def _apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
) -> str:
    """The chat template's text through transformers' public call: the reference rendering."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    text = tokenizer.apply_chat_template(messages, **kwargs)
    if not isinstance(text, str):  # some versions wrap single renders in a list
        text = text[0]
    return text


# Rendering without apply_chat_template.  ``apply_chat_template(..., tokenize=False)`` cleans the
# messages and the tokenizer's special tokens (``bos_token``, ...) and renders its compiled jinja
# template with them; about half of its time goes to that cleaning and to lookups it repeats on
# every call, and the engine renders every chat two or more times (the whole chat, and the
# prefixes that locate each trained message).  The functions below give the same text, byte for
# byte: the messages are cleaned the same way once per chat, and the template is rendered
# directly, or in plain Python for the ChatML template every bundled base uses.  Whatever they do
# not cover (tools, a tokenizer with several templates, unusual messages, an empty prefix, a
# transformers without the helpers) goes through apply_chat_template.

_Render = Callable[[list[dict[str, Any]], bool], str]  # (messages, add_generation_prompt) -> text


@functools.cache
def _template_utils() -> Any:
    """transformers' chat-template helpers, or None in a version without them.

    They are private: ``_compile_jinja_template`` (the compiled template apply_chat_template
    renders, cached by transformers) and ``_plain_template_data`` (how it cleans what the template
    sees).  tests/worker/training/test_render.py checks the direct path against
    apply_chat_template, so a transformers that changes either shows up there.
    """
    try:
        from transformers.utils import chat_template_utils
    except ImportError:
        return None
    needed = ("_compile_jinja_template", "_plain_template_data")
    return chat_template_utils if all(hasattr(chat_template_utils, n) for n in needed) else None


@dataclass(frozen=True)
class _CompiledTemplate:
    """A chat template as transformers compiles it, rendered the way ``Template.render`` does.

    ``Template.render`` merges the environment's globals into every render's variables through a
    ``ChainMap``, a third of a short chat's render; they are flattened once here instead.
    """

    template: Any  # jinja2.Template, compiled in transformers' sandboxed environment
    globals: dict[str, Any]

    def render(self, variables: dict[str, Any]) -> str:
        from jinja2.runtime import new_context

        template, environment = self.template, self.template.environment
        context = new_context(
            environment,
            template.name,
            template.blocks,
            {**self.globals, **variables},  # as Template.new_context: variables win
            shared=True,
            globals=self.globals,
        )
        try:
            return environment.concat(template.root_render_func(context))
        except Exception:
            environment.handle_exception()  # re-raises, as Template.render does
            raise  # not reached


@functools.lru_cache(maxsize=16)
def _compiled_template(template: str) -> _CompiledTemplate | None:
    """``template`` compiled as apply_chat_template compiles it, or None where it cannot be."""
    utils = _template_utils()
    if utils is None:
        return None
    compiled = utils._compile_jinja_template(template)
    if compiled.environment.is_async:
        return None
    return _CompiledTemplate(compiled, dict(compiled.globals))


_CHATML_DEFAULT_SYSTEM = f"<|im_start|>system\n{CHATML_DEFAULT_SYSTEM}<|im_end|>\n"


def _render_chatml(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """``CHATML_TEMPLATE`` (see base_models) in Python, for messages whose role and content are
    strings (``_chatml_renders``); the jinja render costs ten times more, most of it the sandbox
    checking every attribute the template reads.

        {% for message in messages %}
          {% if loop.first and messages[0]['role'] != 'system' %}<default system message>{% endif %}
          {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
        {% endfor %}
        {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
    """
    parts = [] if messages[0]["role"] == "system" else [_CHATML_DEFAULT_SYSTEM]
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _render_chatml_training(messages: list[dict[str, Any]], weights: list[int]) -> RenderedChat:
    """``_render_chatml`` of a whole chat with the spans of its trained assistant messages, in
    one pass: ChatML renders a chat prefix by prefix, so each message's span is where its text
    lands, the same that ``_assistant_char_spans`` finds rendering every prefix again."""
    parts = [] if messages[0]["role"] == "system" else [_CHATML_DEFAULT_SYSTEM]
    end = len(parts[0]) if parts else 0
    spans = []
    for message, weight in zip(messages, weights, strict=True):
        header = f"<|im_start|>{message['role']}\n"
        body = f"{message['content']}<|im_end|>\n"
        start, end = end + len(header), end + len(header) + len(body)
        if weight:  # only assistant messages carry one
            spans.append((start, end))
        parts += (header, body)
    return RenderedChat("".join(parts), spans)


def _chatml_renders(messages: list[dict[str, Any]]) -> bool:
    """Whether ``_render_chatml`` gives the template's text for ``messages`` as they are.

    The template reads nothing but each message's role and content, which apply_chat_template's
    cleaning (``_template_messages``) leaves as they are when they are strings; on anything else
    (a missing content) the jinja render fails, and so is left to give its own error.
    """
    return all(
        type(m) is dict and type(m.get("role")) is str and type(m.get("content")) is str
        for m in messages
    )


@functools.lru_cache(maxsize=16)
def _is_chatml(template: str) -> bool:
    """Whether ``template`` is ``CHATML_TEMPLATE``, however its string literals are written.

    Tokenizer files carry it with real newlines inside the quotes, base_models with ``\\n``; the
    two parse to the same syntax tree (jinja nodes compare by their fields, not positions).
    """
    compiled = _compiled_template(template)
    if compiled is None:
        return False
    parse = compiled.template.environment.parse
    return bool(parse(template) == parse(CHATML_TEMPLATE))


# The message keys ``prepare_chat`` hands a template; a message with any other key (reasoning,
# which apply_chat_template renames) is rendered by apply_chat_template itself.
_TEMPLATE_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


def _template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``messages`` exactly as apply_chat_template hands them to the template, or None if unusual.

    It drops the keys whose value is None and rebuilds every value from plain JSON types
    (``_plain_template_data``); a plain ``str`` comes out as itself, so only the rest (tool
    calls) needs that copy, which was most of its cost.
    """
    utils = _template_utils()
    if utils is None:
        return None
    out = []
    for message in messages:
        if type(message) is not dict or not message.keys() <= _TEMPLATE_MESSAGE_KEYS:
            return None
        out.append(
            {
                key: value if type(value) is str else utils._plain_template_data(value)
                for key, value in message.items()
                if value is not None
            }
        )
    return out


def _jinja_render(tokenizer: Any, template: str) -> _Render | None:
    """How to render cleaned messages with ``template`` directly, or None where it cannot be."""
    compiled = _compiled_template(template)
    if compiled is None:
        return None
    utils = _template_utils()
    variables = {
        "tools": None,
        "documents": None,
        **utils._plain_template_data(tokenizer.special_tokens_map),
    }

    def render(prefix: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return compiled.render(
            {"messages": prefix, "add_generation_prompt": add_generation_prompt, **variables}
        )

    return render


class _ChatRenderer:
    """Renders the prefixes of one prepared chat, byte for byte as ``apply_chat_template``."""

    def __init__(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.tokenizer, self.messages, self.tools = tokenizer, messages, tools
        # With a direct render: the messages as the template sees them, and how to render them.
        self.cleaned: list[dict[str, Any]] = []
        self.direct: _Render | None = None
        template = getattr(tokenizer, "chat_template", None)
        if tools or not isinstance(template, str):
            return
        if _is_chatml(template) and _chatml_renders(messages):
            self.cleaned, self.direct = messages, _render_chatml
            return
        cleaned = _template_messages(messages)
        if cleaned is not None:
            self.cleaned, self.direct = cleaned, _jinja_render(tokenizer, template)

    def render(self, n_messages: int, add_generation_prompt: bool = False) -> str:
        """The text of the first ``n_messages`` messages."""
        if self.direct is None or n_messages == 0:  # an empty chat: transformers' own error
            messages = self.messages[:n_messages]
            return _apply_chat_template(self.tokenizer, messages, self.tools, add_generation_prompt)
        return self.direct(self.cleaned[:n_messages], add_generation_prompt)


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """The chat template's text for prepared ``messages`` (see ``prepare_chat``)."""
    return _ChatRenderer(tokenizer, messages, tools).render(len(messages), add_generation_prompt)


def _assistant_char_spans(
    chat: _ChatRenderer, weights: list[int], full: str
) -> list[tuple[int, int]]:
    """Character spans of ``full`` that trained assistant messages produce."""
    spans = []
    for i, message in enumerate(chat.messages):
        if message["role"] != "assistant" or not weights[i]:
            continue
        before = chat.render(i, add_generation_prompt=True)
        last = i == len(chat.messages) - 1  # then the prefix is the whole chat, rendered already
        through = full if last else chat.render(i + 1)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"message {i + 1}: the chat template does not render this conversation "
                "prefix by prefix, so its assistant tokens cannot be located"
            )
        spans.append((len(before), len(through)))
    return spans


@dataclass(frozen=True)
class RenderedChat:
    """A chat example as the template's text and the character spans of its trained messages."""

    text: str
    spans: list[tuple[int, int]]


def render_training_chat(tokenizer: Any, example: dict[str, Any]) -> RenderedChat:
    """Render one checked ``{"messages": [...]}`` example and locate its trained spans.

    Raises ValueError where the template cannot render the chat, or not prefix by prefix.
    """
    template = _template_of(tokenizer)
    messages, weights, tools = prepare_chat(
        example["messages"], example.get("tools"), str(template)
    )
    # ChatML reads each message's role and content, which prepare_chat leaves strings.  A chat
    # that opens with a trained answer has no prefix to render: the general path gives
    # transformers' error for it.
    if not tools and isinstance(template, str) and _is_chatml(template) and not weights[0]:
        return _render_chatml_training(messages, weights)
    chat = _ChatRenderer(tokenizer, messages, tools)
    full = chat.render(len(messages))
    return RenderedChat(full, _assistant_char_spans(chat, weights, full))


def render_prompt(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> str:
    """The prompt an inference request's checked messages become: the chat as training renders
    it, then the template's generation prompt (``<|im_start|>assistant\\n`` for ChatML)."""
    shaped, _, tools = prepare_chat(messages, tools, str(_template_of(tokenizer)))
    return render_chat(tokenizer, shaped, tools, add_generation_prompt=True)


def _template_of(tokenizer: Any) -> Any:
    """The tokenizer's chat template: a string, or a dict of named ones."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("the tokenizer has no chat template")
    return template
