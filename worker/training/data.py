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
* Legacy ``{"prompt", "completion"}`` examples are plain text: prompt tokens masked, completion
  tokens plus EOS trained.
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

import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
ROLES = frozenset({"system", "user", "assistant", "tool"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id"})
_REFUSAL_KEYS = frozenset({"refusal", "function_call", "audio"})


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


@dataclass(frozen=True)
class TokenizedExample:
    """One example as token ids and aligned labels (``labels[t]`` is ``input_ids[t]`` or -100)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def targets(self) -> list[int]:
        """Next-token targets: position t is trained to predict ``labels[t + 1]``."""
        return [*self.labels[1:], IGNORE_INDEX]


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
    template = template or ""
    native_tool_calls = "tool_calls" in template
    native_tools = "tools" in template.replace("tool_calls", "")
    out: list[dict[str, Any]] = []
    weights: list[int] = []
    for index, message in enumerate(messages, start=1):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise ValueError(f"{where} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where} has unknown role {role!r}")
        unknown = set(message) - _MESSAGE_KEYS - _REFUSAL_KEYS
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}")
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


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """The chat template's text for prepared ``messages`` (see ``prepare_chat``)."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    text = tokenizer.apply_chat_template(messages, **kwargs)
    if not isinstance(text, str):  # some versions wrap single renders in a list
        text = text[0]
    return text


def _assistant_char_spans(
    tokenizer: Any, messages: list[dict[str, Any]], weights: list[int], tools: Any, full: str
) -> list[tuple[int, int]]:
    """Character spans of ``full`` that trained assistant messages produce."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not weights[i]:
            continue
        before = render_chat(tokenizer, messages[:i], tools, add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: i + 1], tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"message {i + 1}: the chat template does not render this conversation "
                "prefix by prefix, so its assistant tokens cannot be located"
            )
        spans.append((len(before), len(through)))
    return spans


def tokenize_chat(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    """Tokenize one ``{"messages": [...]}`` example with assistant-only labels (ValueError)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("the tokenizer has no chat template")
    messages, weights, tools = prepare_chat(example["messages"], example.get("tools"), template)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("has no assistant message")
    full = render_chat(tokenizer, messages, tools)
    spans = _assistant_char_spans(tokenizer, messages, weights, tools, full)
    # The template writes any BOS itself; adding special tokens again would double it.
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for t, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(lo <= start < hi for lo, hi in spans):
            labels[t] = input_ids[t]
    return TokenizedExample(input_ids, labels)


def tokenize_legacy(tokenizer: Any, example: dict[str, Any]) -> TokenizedExample:
    """``{"prompt", "completion"}``: plain text, prompt masked, completion + EOS trained."""
    prompt, completion = example.get("prompt"), example.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("'prompt' and 'completion' must be strings")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    return TokenizedExample(
        prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    )


def tokenize_example(tokenizer: Any, example: Any) -> TokenizedExample:
    """Dispatch on the example's shape; raises ValueError with a readable reason."""
    if not isinstance(example, dict):
        raise ValueError("is not a JSON object")
    if "messages" in example:
        unknown = set(example) - {"messages", "tools", "parallel_tool_calls", "functions"}
        if unknown:
            raise ValueError(f"has unknown key(s) {', '.join(sorted(unknown))}")
        return tokenize_chat(tokenizer, example)
    if "prompt" in example and "completion" in example:
        return tokenize_legacy(tokenizer, example)
    raise ValueError("must have 'messages' (chat) or 'prompt' and 'completion' (legacy)")


def _checked(tokenizer: Any, number: int, raw: Any, max_seq_len: int) -> TokenizedExample:
    try:
        example = tokenize_example(tokenizer, raw)
    except ValueError as exc:
        raise InvalidExample(number, str(exc)) from None
    if example.n_tokens > max_seq_len:
        raise ExampleTooLong(
            number, f"has {example.n_tokens} tokens, more than the context of {max_seq_len}"
        )
    if example.n_trainable == 0:
        raise NoTrainableTokens(
            number, "has no trainable tokens (every assistant message has weight 0)"
        )
    return example


def load_examples(path: Path, tokenizer: Any, max_seq_len: int) -> list[TokenizedExample]:
    """Every example of ``path``, tokenized; the first problem raises (an InvalidExample)."""
    return [_checked(tokenizer, n, raw, max_seq_len) for n, raw in read_jsonl(path)]


def validate_examples(path: Path, tokenizer: Any, max_seq_len: int) -> DataReport:
    """Check every example and report all problems (not just the first), for the API to show."""
    report = DataReport(n_examples=0, n_tokens=0)
    try:
        for number, raw in read_jsonl(path):
            report.n_examples += 1
            try:
                example = _checked(tokenizer, number, raw, max_seq_len)
            except InvalidExample as exc:
                report.problems.append(DataProblem(number, exc.code, str(exc)))
            else:
                report.n_tokens += example.n_tokens
    except InvalidExample as exc:  # unreadable line: later lines cannot be trusted
        report.n_examples = exc.example_number
        report.problems.append(DataProblem(exc.example_number, exc.code, str(exc)))
    return report


# --------------------------------------------------------------------------------------------
# Packing and ordering


@dataclass
class PackedRow:
    """Several whole examples in one sequence; ``position_ids`` restart at 0 for each."""

    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)  # already shifted: -100 = no loss here
    position_ids: list[int] = field(default_factory=list)

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


def pack_examples(examples: Sequence[TokenizedExample], max_tokens_per_row: int) -> list[PackedRow]:
    """Pack examples, in order, into as few rows of at most ``max_tokens_per_row`` as greedily fit.

    Rows are not padded: each row is its own forward pass, so there is no padding at all.  An
    example longer than a row gets a row to itself (examples were checked against the context).
    """
    rows: list[PackedRow] = []
    for example in examples:
        if not rows or rows[-1].n_tokens + example.n_tokens > max_tokens_per_row:
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
