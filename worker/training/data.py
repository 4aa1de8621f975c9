"""Training data: parse JSONL, tokenize with the chat template, mask labels, pack, order.

What must hold:

* Only assistant tokens are trained (label = token id); every other token's label is -100.
  An assistant message with ``"weight": 0`` is context only: its tokens get -100 too.
* Each assistant message's span is found by rendering the conversation prefix by prefix: the text
  of ``messages[:i]`` with the generation prompt is a prefix of the text of ``messages[:i+1]``, and
  what lies between is what the model must produce for message ``i`` (its content and the
  template's end-of-turn marker, e.g. ``Paris.<|im_end|>\\n`` for ChatML).  This works for any
  template that renders prefixes stably, without relying on ``{% generation %}`` markers; a
  template that does not is reported as an invalid example rather than silently mis-masked.
  The full text is tokenized once and each token is labelled by where its characters start.
  ChatML, which renders prefix by prefix by construction, is rendered once with its spans.
* A loaded example is its ids (an int32 array) and its trained token spans, not per-token lists.
* Text that is not valid Unicode (an unpaired surrogate, which JSON can escape) is the example's
  problem, never the whole batch's: the Rust tokenizer refuses a batch holding one.
* Rendering gives ``apply_chat_template``'s text byte for byte without its per-call overhead, as
  every chat is rendered two or more times: the bundled ChatML template in plain Python, any
  other through transformers' compiled jinja template directly (``_ChatRenderer``); tools and
  anything unusual still go through ``apply_chat_template``.
* Legacy ``{"prompt", "completion"}`` examples are plain text: prompt tokens masked, completion
  tokens plus EOS trained.
* A file is read as a stream, ``TOKENIZE_CHUNK`` examples at a time: the chats of a chunk are
  rendered (Python, one core) while the previous chunk is tokenized in one batched call of the
  fast tokenizer (Rust, all cores); results are the same as one example at a time.
* Truncation policy: none.  An example longer than ``max_seq_len`` tokens is an error
  (``ExampleTooLong``, 1-based example number), reported by ``validate_examples`` before training;
  cutting it would silently train on a conversation without its answer.
* Packing puts several whole examples in one row with ``position_ids`` restarting at 0 for each.
  transformers (>= 4.54) turns restarting position ids into a block-diagonal causal mask (sdpa,
  eager) or varlen attention (flash-attention), so no token attends across examples and the loss
  equals unpacked training.  Targets are shifted inside each example before packing, so no
  example is trained to predict the first token of the next one.
* Example order per epoch is a permutation seeded by (seed, epoch); a batch is fully determined
  by (epoch, batch index), which is what a checkpoint stores to resume.

This module needs a tokenizer but not torch.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import json
import random
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.training.base_models import CHATML_DEFAULT_SYSTEM, CHATML_TEMPLATE

IGNORE_INDEX = -100
ROLES = frozenset({"system", "user", "assistant", "tool"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id"})
_REFUSAL_KEYS = frozenset({"refusal", "function_call", "audio"})
_KNOWN_MESSAGE_KEYS = _MESSAGE_KEYS | _REFUSAL_KEYS
# Examples per batched tokenizer call: enough to keep every core busy, few enough to bound memory.
TOKENIZE_CHUNK = 1000


class InvalidExample(ValueError):
    """An example the engine cannot train on; ``code`` is a stable machine-readable reason."""

    code = "invalid_format"

    def __init__(self, example_number: int, message: str) -> None:
        super().__init__(f"Example {example_number}: {message}")
        self.example_number = example_number
        self.reason = message


class ExampleTooLong(InvalidExample):
    code = "example_too_long"


class NoTrainableTokens(InvalidExample):
    code = "no_trainable_tokens"


Span = tuple[int, int]  # [start, stop) token indices


def token_ids(ids: Iterable[int]) -> array[int]:
    """Token ids as a compact array (see TokenizedExample)."""
    return array("i", ids)


@dataclass(frozen=True)
class TokenizedExample:
    """One example as token ids and the spans of them it is trained on.

    ``trained`` holds ascending, disjoint, non-empty ``[start, stop)`` token ranges:
    ``labels[t]`` is ``input_ids[t]`` inside one and -100 elsewhere.  Loaded examples keep their
    ids in an ``array('i')`` (``token_ids``) and their labels as spans: 4 bytes a token, where
    lists of ids and labels took 44 (a pointer each and an int object per id), which for a large
    file was gigabytes, and allocating those ints cost more time than the array does.
    """

    input_ids: Sequence[int]
    trained: tuple[Span, ...]

    @classmethod
    def from_labels(cls, input_ids: Sequence[int], labels: Sequence[int]) -> TokenizedExample:
        """The example whose labels are ``labels`` (each ``input_ids[t]`` or -100)."""
        if len(labels) != len(input_ids):
            raise ValueError("labels and input_ids differ in length")
        spans: list[Span] = []
        for t, label in enumerate(labels):
            if label == IGNORE_INDEX:
                continue
            if label != input_ids[t]:
                raise ValueError(f"label {t} is neither -100 nor the token there")
            if spans and spans[-1][1] == t:
                spans[-1] = (spans[-1][0], t + 1)
            else:
                spans.append((t, t + 1))
        return cls(input_ids, tuple(spans))

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trainable(self) -> int:
        return sum(stop - start for start, stop in self.trained)

    @property
    def labels(self) -> list[int]:
        labels = [IGNORE_INDEX] * len(self.input_ids)
        for start, stop in self.trained:
            labels[start:stop] = self.input_ids[start:stop]
        return labels

    def targets(self) -> list[int]:
        """Next-token targets: position t is trained to predict ``labels[t + 1]``."""
        targets = [IGNORE_INDEX] * len(self.input_ids)
        for start, stop in self.trained:
            first = max(start - 1, 0)  # nothing predicts the first token
            targets[first : stop - 1] = self.input_ids[first + 1 : stop]
        return targets


@dataclass(frozen=True)
class DataProblem:
    example_number: int  # 1-based, counting non-blank lines
    code: str  # invalid_format | example_too_long | no_trainable_tokens
    message: str


@dataclass
class DataReport:
    n_examples: int
    n_tokens: int
    problems: list[DataProblem] = field(default_factory=list)
    # Every example, tokenized, when asked for and the file has no problems: training can start
    # from them instead of tokenizing the file a second time.
    examples: list[TokenizedExample] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------------------------
# Parsing and rendering


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (example number, parsed JSON) for each non-blank line; bad JSON -> InvalidExample."""
    with Path(path).open("rb") as fh:
        number = 0
        for raw in fh:
            if not raw.strip():
                continue
            number += 1
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidExample(number, "is not valid UTF-8") from None
            except json.JSONDecodeError as exc:
                raise InvalidExample(number, f"is not valid JSON ({exc.msg})") from None


def _text_content(content: Any, where: str) -> str:
    """Message content as text: a string, or OpenAI's list of ``{"type":"text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ValueError(f"{where} has a content part that is not text")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ValueError(f"{where} content must be a string")


def unpaired_surrogate(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (``"unpaired surrogate \\ud800 at character 4"``),
    or None.  JSON can escape an unpaired UTF-16 surrogate (``"\\ud800"``) and Python decodes it,
    but it is not a character, has no UTF-8 encoding, and no tokenizer takes it."""
    if text.isascii():  # constant time: CPython marks ASCII strings
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        surrogate = text[exc.start].encode("unicode_escape").decode()
        return f"unpaired surrogate {surrogate} at character {exc.start + 1}"
    return None


def _check_text(text: str, where: str) -> None:
    problem = unpaired_surrogate(text)
    if problem is not None:
        raise ValueError(f"{where} has an {problem}, which is not valid Unicode text")


def _tool_calls_as_text(tool_calls: Any, where: str) -> str:
    """Hermes-style ``<tool_call>`` blocks, for templates that have no tool-call syntax."""
    if not isinstance(tool_calls, list):
        raise ValueError(f"{where} tool_calls must be a list")
    blocks = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or "name" not in function:
            raise ValueError(f"{where} has a tool call without function.name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        call_json = json.dumps({"name": function["name"], "arguments": arguments})
        blocks.append(f"<tool_call>\n{call_json}\n</tool_call>")
    return "\n".join(blocks)


@functools.lru_cache(maxsize=16)
def _tool_syntax(template: str) -> tuple[bool, bool]:
    """Whether ``template`` renders tool calls and tool definitions itself."""
    return "tool_calls" in template, "tools" in template.replace("tool_calls", "")


def prepare_chat(
    messages: Any, tools: Any = None, template: str | None = None
) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]] | None]:
    """Check OpenAI chat messages and shape them for ``template`` (raises ValueError).

    Inference must render prompts through this same function so a fine-tuned model sees the same
    text at serving time as in training.  Templates that know nothing of tools (SmolLM2's) get
    tool calls as ``<tool_call>`` text in the assistant content and tool definitions in the system
    message.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    native_tool_calls, native_tools = _tool_syntax(template or "")
    out: list[dict[str, Any]] = []
    weights: list[int] = []
    for index, message in enumerate(messages, start=1):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise ValueError(f"{where} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where} has unknown role {role!r}")
        if not message.keys() <= _KNOWN_MESSAGE_KEYS:
            unknown = ", ".join(sorted(message.keys() - _KNOWN_MESSAGE_KEYS))
            raise ValueError(f"{where} has unknown key(s) {unknown}")
        weight = message.get("weight", 1)
        if "weight" in message and role != "assistant":
            raise ValueError(f"{where}: only assistant messages may carry a weight")
        if weight not in (0, 1) or isinstance(weight, bool):
            raise ValueError(f"{where} weight must be 0 or 1")
        tool_calls = message.get("tool_calls")
        if tool_calls and role != "assistant":
            raise ValueError(f"{where}: only assistant messages may have tool_calls")
        content = message.get("content")
        if content is None and not tool_calls:
            raise ValueError(f"{where} is missing content")
        text = "" if content is None else _text_content(content, where)
        _check_text(text, f"{where} content")
        shaped: dict[str, Any] = {"role": role, "content": text}
        if tool_calls and native_tool_calls:
            shaped["tool_calls"] = tool_calls
        elif tool_calls:
            calls = _tool_calls_as_text(tool_calls, where)
            shaped["content"] = f"{text}\n{calls}" if text else calls
        for key in ("name", "tool_call_id"):
            if key in message and native_tool_calls:
                shaped[key] = message[key]
        out.append(shaped)
        weights.append(int(weight) if role == "assistant" else 0)
    if tools is not None and not isinstance(tools, list):
        raise ValueError("'tools' must be a list")
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
    """Render one ``{"messages": [...]}`` example and locate its trained spans (ValueError)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("the tokenizer has no chat template")
    messages, weights, tools = prepare_chat(example["messages"], example.get("tools"), template)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("has no assistant message")
    # ChatML reads each message's role and content, which prepare_chat leaves strings.  A chat
    # that opens with a trained answer has no prefix to render: the general path gives
    # transformers' error for it.
    if not tools and isinstance(template, str) and _is_chatml(template) and not weights[0]:
        return _render_chatml_training(messages, weights)
    chat = _ChatRenderer(tokenizer, messages, tools)
    full = chat.render(len(messages))
    _check_text(full, "the rendered chat")  # names and ids not checked above
    return RenderedChat(full, _assistant_char_spans(chat, weights, full))


def _first_token_from(encoding: Any, char: int) -> int:
    """Index of the first token starting at or after ``char`` (``len`` if none does).

    Asks the Rust encoding which token holds ``char`` (two calls, no offsets copied into
    Python: that copy alone cost a quarter of the tokenizer's time); where no token holds it,
    the end of the text or, for text a normalizer dropped, a binary search over the token
    starts, which never decrease along an encoding.
    """
    token = encoding.char_to_token(char)
    if token is not None:
        return token if encoding.token_to_chars(token)[0] >= char else token + 1
    n_tokens = len(encoding)
    if not n_tokens or encoding.token_to_chars(n_tokens - 1)[1] <= char:
        return n_tokens
    return bisect.bisect_left(range(n_tokens), char, key=lambda t: encoding.token_to_chars(t)[0])


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[Any]:
    """The Rust encodings of ``texts`` that ``tokenizer(texts, add_special_tokens=False)`` makes.

    Calling the fast tokenizer's backend directly skips transformers copying every encoding's
    ids, attention mask and offsets into Python lists, which cost a fifth of the encoding time.
    """
    backend = tokenizer.backend_tokenizer
    # What transformers sets before each call: no truncation or padding (a tokenizer.json may
    # ship with them on) and the tokenizer's choice of splitting special-token text.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    if backend.encode_special_tokens != tokenizer.split_special_tokens:
        backend.encode_special_tokens = tokenizer.split_special_tokens
    # The template writes any BOS itself; adding special tokens again would double it.
    return list(backend.encode_batch(texts, add_special_tokens=False))


def _labelled(encoding: Any, spans: list[tuple[int, int]]) -> TokenizedExample:
    """A chat's tokens, trained where they start inside one of its assistant ``spans``."""
    trained = []
    for start, end in spans:
        first, stop = _first_token_from(encoding, start), _first_token_from(encoding, end)
        if first < stop:
            trained.append((first, stop))
    return TokenizedExample(token_ids(encoding.ids), tuple(trained))


def tokenize_rendered(tokenizer: Any, chats: Sequence[RenderedChat]) -> list[TokenizedExample]:
    """Tokenize rendered chats in one batched call, with assistant-only labels.

    The fast tokenizer encodes the batch on all cores (its Rust threads, unless
    ``TOKENIZERS_PARALLELISM`` is false).
    """
    encodings = _encode_batch(tokenizer, [chat.text for chat in chats])
    return [_labelled(e, chat.spans) for e, chat in zip(encodings, chats, strict=True)]


def tokenize_chat(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    """Tokenize one ``{"messages": [...]}`` example with assistant-only labels (ValueError)."""
    return tokenize_rendered(tokenizer, [render_training_chat(tokenizer, example)])[0]


def tokenize_legacy(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    """``{"prompt", "completion"}``: plain text, prompt masked, completion + EOS trained."""
    prompt, completion = example.get("prompt"), example.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("'prompt' and 'completion' must be strings")
    _check_text(prompt, "'prompt'")
    _check_text(completion, "'completion'")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    n_tokens = len(prompt_ids) + len(completion_ids)
    trained = ((len(prompt_ids), n_tokens),) if completion_ids else ()
    return TokenizedExample(token_ids(prompt_ids + completion_ids), trained)


def _is_chat(example: Any) -> bool:
    """True for a chat example, False for a legacy one; ValueError for neither."""
    if not isinstance(example, dict):
        raise ValueError("is not a JSON object")
    if "messages" in example:
        unknown = set(example) - {"messages", "tools", "parallel_tool_calls", "functions"}
        if unknown:
            raise ValueError(f"has unknown key(s) {', '.join(sorted(unknown))}")
        return True
    if "prompt" in example and "completion" in example:
        return False
    raise ValueError("must have 'messages' (chat) or 'prompt' and 'completion' (legacy)")


def tokenize_example(tokenizer: Any, example: Any) -> TokenizedExample:
    """Dispatch on the example's shape; raises ValueError with a readable reason."""
    if _is_chat(example):
        return tokenize_chat(tokenizer, example)
    return tokenize_legacy(tokenizer, example)


def _problem(number: int, example: TokenizedExample, max_seq_len: int) -> InvalidExample | None:
    if example.n_tokens > max_seq_len:
        return ExampleTooLong(
            number, f"has {example.n_tokens} tokens, more than the context of {max_seq_len}"
        )
    if example.n_trainable == 0:
        return NoTrainableTokens(
            number, "has no trainable tokens (every assistant message has weight 0)"
        )
    return None


# An example on its way through the pipeline: a rendered chat, a legacy example or the reason
# it cannot be trained on; once through the tokenizer, a chat's Rust encoding takes its place
# and a legacy example is a TokenizedExample.
_Pending = RenderedChat | dict[str, Any] | InvalidExample
_Encoded = Any
_Checked = tuple[int, TokenizedExample | InvalidExample]  # (example number, example or problem)


def _rendered_chunks(path: Path, tokenizer: Any) -> Iterator[list[tuple[int, _Pending]]]:
    """The examples of ``path`` in chunks of ``TOKENIZE_CHUNK``, chats rendered.

    An unreadable line ends the last chunk: later lines cannot be trusted.
    """
    chunk: list[tuple[int, _Pending]] = []
    try:
        for number, raw in read_jsonl(path):
            try:
                pending = render_training_chat(tokenizer, raw) if _is_chat(raw) else raw
            except ValueError as exc:
                pending = InvalidExample(number, str(exc))
            chunk.append((number, pending))
            if len(chunk) == TOKENIZE_CHUNK:
                yield chunk
                chunk = []
    except InvalidExample as exc:
        chunk.append((exc.example_number, exc))
    if chunk:
        yield chunk


def _encode_chunk(tokenizer: Any, chunk: list[tuple[int, _Pending]]) -> list[_Encoded]:
    """The tokenizer's share of a chunk: chats in one batched call, legacy examples one by one."""
    chats = [pending.text for _, pending in chunk if isinstance(pending, RenderedChat)]
    encodings = iter(_encode_batch(tokenizer, chats))
    encoded: list[_Encoded] = []
    for number, pending in chunk:
        if isinstance(pending, RenderedChat):
            encoded.append(next(encodings))
        elif isinstance(pending, dict):
            try:
                encoded.append(tokenize_legacy(tokenizer, pending))
            except ValueError as exc:
                encoded.append(InvalidExample(number, str(exc)))
        else:
            encoded.append(pending)
    return encoded


def _checked_chunk(
    chunk: list[tuple[int, _Pending]], encoded: Future[list[_Encoded]], max_seq_len: int
) -> Iterator[_Checked]:
    for (number, pending), result in zip(chunk, encoded.result(), strict=True):
        if isinstance(pending, RenderedChat):
            result = _labelled(result, pending.spans)
        if isinstance(result, TokenizedExample):
            result = _problem(number, result, max_seq_len) or result
        yield number, result


def _checked_examples(path: Path, tokenizer: Any, max_seq_len: int) -> Iterator[_Checked]:
    """Every example of ``path`` in order, tokenized and checked, or its problem.

    The tokenizer works on one chunk on a second thread while this one renders the next chunk
    and labels the previous one: the batched call runs in Rust threads on all cores with the
    GIL released, rendering and labelling are Python, so the two overlap instead of adding up.
    At most three chunks are held at a time.  Every tokenizer call stays on that one thread: a
    Rust tokenizer must not be reconfigured (as transformers does before each call) while
    another thread encodes with it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as tokenizer_thread:
        previous: tuple[list[tuple[int, _Pending]], Future[list[_Encoded]]] | None = None
        for chunk in _rendered_chunks(path, tokenizer):
            encoded = tokenizer_thread.submit(_encode_chunk, tokenizer, chunk)
            if previous is not None:
                yield from _checked_chunk(*previous, max_seq_len)
            previous = chunk, encoded
        if previous is not None:
            yield from _checked_chunk(*previous, max_seq_len)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a file is tokenized.

    Loading allocates a few objects per example (the ids read out of each encoding, spans,
    parsed JSON) and no reference cycles; the collector, triggered by those allocations, would
    walk every live object again and again (a sixth of the tokenizing time when examples were
    lists). Reference counting still frees everything as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_examples(path: Path, tokenizer: Any, max_seq_len: int) -> list[TokenizedExample]:
    """Every example of ``path``, tokenized; the first problem raises (an InvalidExample)."""
    examples = []
    with _collector_paused():
        for _, example in _checked_examples(path, tokenizer, max_seq_len):
            if isinstance(example, InvalidExample):
                raise example
            examples.append(example)
    return examples


def validate_examples(
    path: Path, tokenizer: Any, max_seq_len: int, keep_examples: bool = False
) -> DataReport:
    """Check every example and report all problems (not just the first), for the API to show;
    with ``keep_examples``, a file without problems comes back tokenized too."""
    report = DataReport(n_examples=0, n_tokens=0)
    kept: list[TokenizedExample] = []
    with _collector_paused():
        for number, example in _checked_examples(path, tokenizer, max_seq_len):
            report.n_examples = number
            if isinstance(example, InvalidExample):
                report.problems.append(DataProblem(number, example.code, str(example)))
                kept.clear()  # nothing will be handed over: free them now
            else:
                report.n_tokens += example.n_tokens
                if keep_examples and report.ok:
                    kept.append(example)
    if keep_examples and report.ok:
        report.examples = kept
    return report


# --------------------------------------------------------------------------------------------
# Packing and ordering


@dataclass
class PackedRow:
    """Several whole examples in one sequence; ``position_ids`` restart at 0 for each."""

    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)  # already shifted: -100 = no loss here
    position_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens of each example, in order

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE_INDEX)

    def add(self, example: TokenizedExample) -> None:
        self.input_ids.extend(example.input_ids)
        self.targets.extend(example.targets())
        self.position_ids.extend(range(example.n_tokens))
        self.lengths.append(example.n_tokens)


def pack_examples(
    examples: Sequence[TokenizedExample], max_tokens_per_row: int | None = None
) -> list[PackedRow]:
    """Pack examples, in order, into as few rows of at most ``max_tokens_per_row`` as greedily fit
    (all in one row when it is None).

    Rows are not padded: each row is its own forward pass, so there is no padding at all.  An
    example longer than a row gets a row to itself (examples were checked against the context).
    """
    rows: list[PackedRow] = []
    for example in examples:
        full = (
            max_tokens_per_row is not None
            and rows
            and rows[-1].n_tokens + example.n_tokens > max_tokens_per_row
        )
        if not rows or full:
            rows.append(PackedRow())
        rows[-1].add(example)
    return rows


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of ``epoch``: a shuffle that depends only on (seed, epoch)."""
    order = list(range(n_examples))
    random.Random(f"tuna:{seed}:{epoch}").shuffle(order)
    return order


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each batch of ``epoch``; the last batch may be smaller."""
    order = epoch_order(n_examples, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
