"""Tool calls as text: how a model writes them, for training and serving alike.

SmolLM2's chat template (and any template that knows nothing of tools) has no syntax for tool
calls, so Tuna writes them the Hermes way, which Qwen2.5's and Hermes' own templates also use:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call, blocks joined by a newline, after the message's text (``format_tool_calls``,
what ``chat_template.prepare_chat`` renders into training data).  At inference the same blocks
are read back from the generated text (``ToolCallParser``), so a model fine-tuned on tool calls
answers with OpenAI's ``tool_calls``.

What must hold:

* Training renders and serving parses one syntax, defined here only.
* Each ``<tool_call>`` block is judged alone: a block whose body is a JSON object with a ``name``
  among the request's tools (and ``arguments`` an object or a string, or absent) is a call; any
  other block stays in the content as the text it was.  Nothing is invented.
* ``content`` is the text outside the accepted calls with its outer whitespace stripped (None when
  nothing is left), and streaming gives exactly that: text is released only once it can no longer
  be the start of a block or trailing whitespace.
* ``tool_choice`` "required" or a named function is forced by prefilling the start of a call
  (``prefill``): one small function, so that grammar-constrained decoding can replace it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def format_tool_call(name: str, arguments: Any) -> str:
    """One call as a ``<tool_call>`` block; ``arguments`` a decoded object (or a raw string)."""
    call_json = json.dumps({"name": name, "arguments": arguments})
    return f"{OPEN}\n{call_json}\n{CLOSE}"


def format_tool_calls(tool_calls: list[dict[str, Any]]) -> str:
    """OpenAI ``tool_calls`` (arguments as JSON strings) as ``<tool_call>`` blocks, one a line."""
    blocks = []
    for call in tool_calls:
        function = call["function"]
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):  # else rendered as the string
                arguments = json.loads(arguments)
        blocks.append(format_tool_call(function["name"], arguments))
    return "\n".join(blocks)


def prefill(choice: str, function: str | None = None) -> str:
    """Text appended after the generation prompt so that the model must call a tool.

    ``choice`` is ``"required"`` (any tool: the call is opened up to its name) or ``"function"``
    (``function`` named: opened up to its arguments); anything else prefills nothing.  The text
    ends where training text has a token boundary (before the space that opens the arguments),
    so the model continues from the tokens it saw in training.
    """
    if choice == "required":
        return f'{OPEN}\n{{"name": "'
    if choice == "function" and function is not None:
        return f'{OPEN}\n{{"name": {json.dumps(function)}, "arguments":'
    return ""


def forced_call_grammar(
    definitions: list[dict[str, Any]],
    choice: str,
    function: str | None = None,
    json_options: dict[str, Any] | None = None,
) -> str | None:
    """What may follow `prefill` so that the call is complete and valid, as a Lark grammar (the
    syntax llguidance reads): the arguments JSON under the tool's ``parameters``, then the
    block's end; None where nothing is forced.

    It continues the prefill exactly as `format_tool_call` writes a call: for ``"required"``
    one of the tools' names, then its arguments; for a named function, its arguments.
    ``json_options``: the grammar library's JSON layout options, set on each schema
    (``x-guidance``), so the arguments are written as `format_tool_call` writes them.
    """

    def literal(text: str) -> str:  # a Lark string: JSON's quoting and escapes
        return json.dumps(text, ensure_ascii=False)

    def arguments(fn: dict[str, Any]) -> str:
        schema = dict(fn.get("parameters") or {"type": "object"})
        if json_options:
            schema["x-guidance"] = json_options
        return json.dumps(schema, ensure_ascii=False)

    end = literal(f"}}\n{CLOSE}")
    functions = [tool["function"] for tool in definitions]
    if choice == "function" and function is not None:
        (fn,) = [fn for fn in functions if fn["name"] == function]
        return f"start: {literal(' ')} args {end}\nargs: %json {arguments(fn)}\n"
    if choice != "required":
        return None
    lines = ["start: " + " | ".join(f"call{i}" for i in range(len(functions)))]
    for i, fn in enumerate(functions):
        head = literal(fn["name"] + '", "arguments": ')
        lines.append(f"call{i}: {head} args{i} {end}")
        lines.append(f"args{i}: %json {arguments(fn)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text, as OpenAI's `function.arguments`


def parse_call(body: str, tool_names: frozenset[str] | None) -> ParsedCall | None:
    """The call a block's body (the text between the tags) holds, or None if it holds none."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if type(value) is not dict or type(value.get("name")) is not str:
        return None
    name = value["name"]
    if tool_names is not None and name not in tool_names:
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, dict):
        return ParsedCall(name, json.dumps(arguments, ensure_ascii=False))
    if isinstance(arguments, str):
        return ParsedCall(name, arguments)
    return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


@dataclass(frozen=True)
class Content:
    text: str


Piece = Content | ParsedCall


class ToolCallParser:
    """Splits one choice's generated text into content and tool calls, as it streams.

    ``feed`` takes the next text delta and returns what became final: ``Content`` text to stream
    and ``ParsedCall``s, in order; ``finish`` returns the rest once the choice has ended.  The
    concatenated content is the text outside accepted calls, outer whitespace stripped.
    ``parallel=False`` keeps the first call only (later blocks are dropped).  ``prefix`` is text
    prefilled into the prompt (``prefill``), parsed as if the model had written it.
    """

    def __init__(
        self, tool_names: frozenset[str] | None, *, parallel: bool = True, prefix: str = ""
    ) -> None:
        self.tool_names = tool_names
        self.parallel = parallel
        self.buffer = ""  # text not yet judged: a block in progress, or a possible block start
        self.in_block = False
        self.pending_space = ""  # whitespace held until non-whitespace content follows it
        self.started = False  # whether any content was released (leading whitespace dropped)
        self.calls = 0
        if prefix:
            self._run(prefix)

    def feed(self, text: str) -> list[Piece]:
        return self._run(text)

    def finish(self) -> list[Piece]:
        """The choice ended: an unterminated block is a call if its body is one, else text."""
        out: list[Piece] = []
        rest, self.buffer = self.buffer, ""
        if self.in_block:
            self.in_block = False
            call = parse_call(rest[len(OPEN) :], self.tool_names)
            if call is not None:
                self._call(call, out)
                return out
        self._content(rest, out)
        return out

    @property
    def called(self) -> bool:
        return self.calls > 0

    def _run(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        self.buffer += text
        while True:
            if self.in_block:
                end = self.buffer.find(CLOSE)
                again = self.buffer.find(OPEN, len(OPEN))
                if again >= 0 and (end < 0 or again < end):  # a tag that opened no call: text
                    self._content(self.buffer[:again], out)
                    self.buffer = self.buffer[again:]
                    continue
                if end < 0:
                    return out
                block = self.buffer[: end + len(CLOSE)]
                self.buffer = self.buffer[end + len(CLOSE) :]
                self.in_block = False
                call = parse_call(block[len(OPEN) : -len(CLOSE)], self.tool_names)
                if call is not None:
                    self._call(call, out)
                else:
                    self._content(block, out)
                continue
            start = self.buffer.find(OPEN)
            if start >= 0:
                self._content(self.buffer[:start], out)
                self.buffer = self.buffer[start:]
                self.in_block = True
                continue
            keep = _partial_suffix(self.buffer, OPEN)
            self._content(self.buffer[: len(self.buffer) - keep], out)
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return out

    def _call(self, call: ParsedCall, out: list[Piece]) -> None:
        if self.parallel or not self.calls:
            out.append(call)
        self.calls += 1

    def _content(self, text: str, out: list[Piece]) -> None:
        """Release ``text`` as content, holding trailing whitespace, dropping leading."""
        if not text:
            return
        body = text.rstrip()
        if not body:
            if self.started:
                self.pending_space += text
            return
        if not self.started:
            body = body.lstrip()
            self.started = True
            released = body
        else:
            released = self.pending_space + body
        self.pending_space = text[len(text.rstrip()) :]
        out.append(Content(released))


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[ParsedCall]


def parse_tool_calls(
    text: str, tool_names: frozenset[str] | None, *, parallel: bool = True, prefix: str = ""
) -> ParsedOutput:
    """A whole generated text as content and tool calls (what streaming gives, at once)."""
    parser = ToolCallParser(tool_names, parallel=parallel, prefix=prefix)
    pieces = parser.feed(text) + parser.finish()
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    calls = [p for p in pieces if isinstance(p, ParsedCall)]
    return ParsedOutput(content or None, calls)
