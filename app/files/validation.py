"""Upload-time validation of fine-tuning JSONL datasets.

A `fine-tune` file is checked line by line while it streams in (`DatasetValidator.feed`), so a
bad file is refused with a useful 400 before a job ever sees it, and memory stays bounded by the
longest line whatever the file size.

Framing
    Lines are split on ``b"\\n"``. A ``"\\r"`` before the newline is harmless (CRLF files are
    fine: JSON treats it as whitespace, and whitespace-only lines are blank). A UTF-8 BOM at the
    very start of the file is skipped. Blank / whitespace-only lines are skipped and are not
    examples, but they still count for line numbers. Line numbers are 1-based. Every other line
    is one example (``example_count`` counts them, valid or not). A file with no example gets
    the single error ``"file is empty"`` on line 0 (line 0 = "the file as a whole").

Per line, in order (each line reports at most one error: the first problem found, so
``error_count`` is the number of lines with errors):
    1. longer than ``max_line_bytes`` (even a blank one) -> ``"line too long (N bytes; the
       limit is M)"``; such a line is skipped without being buffered
    2. invalid UTF-8 -> ``"invalid UTF-8 at byte N"`` (N: 1-based byte offset in the line)
    3. invalid JSON -> ``"invalid JSON (<reason> at column N)"``; also NaN/Infinity, integers
       past Python's digit limit and nesting too deep for the parser
    4. not an object -> ``"expected a JSON object, got array"`` (string, number, ...)
    5. format detection: ``messages`` -> chat; ``prompt``/``completion`` -> completion;
       ``input``/``preferred_output``/``non_preferred_output`` -> preference; else
       ``"missing 'messages' (...)"``. The file's format is the format of its first *valid*
       line; a later line of another format -> ``"mixed formats: line is X but the file
       started as Y (line N)"``.
    6. the format's schema; errors name the field path, e.g. ``"messages[1].content: missing"``.
    7. an unpaired UTF-16 surrogate escaped in any string or key (``"\\ud800"``: valid JSON, but
       not text, and no tokenizer takes it) -> ``"messages[1].content: unpaired surrogate
       \\ud800 at character 4 (not valid Unicode text)"``

Schemas (allow-lists; any other key is an error):
    chat        top level: messages, tools, parallel_tool_calls, metadata
                message:   role, content, name, weight, tool_calls, tool_call_id, refusal
                           - role: system | user | assistant | tool
                           - content: a string or a non-empty list of {"type": "text",
                             "text": str} parts; may be null/absent only on an assistant message
                             with tool_calls
                           - weight (0 or 1), tool_calls, refusal (string or null): assistant only
                           - tool_call_id (string): required on tool messages, only there
                           - name: string
                tool call: {"id": str, "type": "function",
                            "function": {"name": str, "arguments": str}}
                tool:      {"type": "function", "function": {"name": str, "description"?: str,
                            "parameters"?: object, "strict"?: bool}}
                at least one assistant message.
    completion  prompt (string), completion (non-empty string), metadata
    preference  input ({"messages": [...], "tools"?, "parallel_tool_calls"?}; messages checked
                like chat, no assistant needed), preferred_output, non_preferred_output (each a
                list of exactly one assistant message with string content, no weight), metadata
    metadata, wherever allowed, must be an object (it is not used for training).

The minimum number of examples a *job* needs (OpenAI: 10) is not checked here: the same file may
be a small validation file. That is for job creation, using ``example_count``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Any

from worker.training.data import unpaired_surrogate

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "DatasetFormat",
    "DatasetValidator",
    "LineError",
    "ValidationReport",
    "validate_file",
]

#: A single line (one example) may be this long. Memory use is about a few times this.
DEFAULT_MAX_LINE_BYTES = 128 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class DatasetFormat(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    PREFERENCE = "preference"


@dataclass(frozen=True)
class LineError:
    line: int  # 1-based line number in the file; 0 for the file as a whole ("file is empty")
    message: str


@dataclass
class ValidationReport:
    # The format of the first valid line; when no line is valid, that of the first line whose
    # format could be told; None when not even that.
    format: DatasetFormat | None
    example_count: int  # non-blank lines, valid or not
    errors: list[LineError] = field(default_factory=list)  # the first `max_errors` of them
    error_count: int = 0  # every error, also those beyond the cap

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self, limit: int = 5) -> str:
        """One human message, e.g. for the 400 answer to an upload."""
        if self.ok:
            kind = f"{self.format} " if self.format else ""
            return f"Training file is valid: {self.example_count} {kind}example(s)."
        shown = self.errors[: max(limit, 0)]
        if self.error_count == 1 and shown and shown[0].line == 0:
            return f"Invalid training file: {shown[0].message}."
        parts = [f"Invalid training file: {self.error_count} line(s) have errors."]
        for err in shown:
            parts.append(f"Line {err.line}: {err.message}." if err.line else f"{err.message}.")
        more = self.error_count - len(shown)
        if more > 0:
            parts.append(f"(and {more} more)")
        return " ".join(parts)


class _Invalid(Exception):
    """The line is invalid; args[0] is the message."""


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


# One decoder for all lines: `json.loads(s, **kw)` would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_decode_json = _DECODER.decode

_MISSING: Any = object()

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "metadata"})
_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "refusal"}
)
_PART_KEYS = frozenset({"type", "text"})
_TOOL_CALL_KEYS = frozenset({"id", "type", "function"})
_TOOL_CALL_FUNCTION_KEYS = frozenset({"name", "arguments"})
_TOOL_KEYS = frozenset({"type", "function"})
_TOOL_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_COMPLETION_KEYS = frozenset({"prompt", "completion", "metadata"})
_PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output", "metadata"})
_PREFERENCE_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})

_MISSING_FORMAT = (
    "missing 'messages' (expected a chat example {\"messages\": [...]}, a prompt/completion "
    "pair, or a preference example)"
)


# --------------------------------------------------------------------------- helpers


def _kind(value: Any) -> str:
    """The JSON type name of a decoded value."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _show(value: Any, limit: int = 40) -> str:
    """A short, non-recursive rendering of a value for an error message."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "..."
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    return _kind(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    if obj.keys() <= allowed:
        return
    unknown = sorted(k for k in obj if k not in allowed)
    names = ", ".join(_show(k) for k in unknown[:3])
    if len(unknown) > 3:
        names += f" and {len(unknown) - 3} more"
    where = f"{path}: " if path else ""
    word = "key" if len(unknown) == 1 else "keys"
    raise _Invalid(f"{where}unknown {word} {names} (allowed: {', '.join(sorted(allowed))})")


def _require(obj: dict[str, Any], key: str, path: str) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        raise _Invalid(f"{_join(path, key)}: missing")
    return value


def _expect_string(value: Any, path: str, *, non_empty: bool = False) -> None:
    if type(value) is not str:
        raise _Invalid(f"{path}: expected a string, got {_kind(value)}")
    if non_empty and not value:
        raise _Invalid(f"{path}: must not be empty")


def _expect_object(value: Any, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _Invalid(f"{path}: expected an object, got {_kind(value)}")
    return value


def _expect_list(value: Any, path: str) -> list[Any]:
    if type(value) is not list:
        raise _Invalid(f"{path}: expected a non-empty array, got {_kind(value)}")
    if not value:
        raise _Invalid(f"{path}: expected a non-empty array, got an empty one")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_unicode(value: Any, path: str) -> None:
    """Refuse an unpaired UTF-16 surrogate in any key or string: valid JSON, but not text."""
    if type(value) is str:
        problem = unpaired_surrogate(value)
        if problem is not None:
            raise _Invalid(f"{path or 'value'}: {problem} (not valid Unicode text)")
    elif type(value) is dict:
        for key, item in value.items():
            _check_unicode(key, f"a key of {path or 'the example'}")
            _check_unicode(item, _join(path, key))
    elif type(value) is list:
        for j, item in enumerate(value):
            _check_unicode(item, f"{path}[{j}]")


# --------------------------------------------------------------------------- schemas


def _check_content(content: Any, path: str) -> None:
    if type(content) is str:
        return
    if type(content) is list:
        if not content:
            raise _Invalid(f"{path}: expected a string or a non-empty array of text parts")
        for j, part in enumerate(content):
            ppath = f"{path}[{j}]"
            if type(part) is not dict:
                raise _Invalid(f"{ppath}: expected a content part object, got {_kind(part)}")
            _check_keys(part, _PART_KEYS, ppath)
            ptype = _require(part, "type", ppath)
            if ptype != "text":
                raise _Invalid(
                    f"{ppath}.type: unsupported content part type {_show(ptype)} "
                    "(only 'text' is supported)"
                )
            _expect_string(_require(part, "text", ppath), f"{ppath}.text")
        return
    raise _Invalid(f"{path}: expected a string or an array of text parts, got {_kind(content)}")


def _check_tool_calls(tool_calls: Any, path: str) -> None:
    for j, call in enumerate(_expect_list(tool_calls, path)):
        cpath = f"{path}[{j}]"
        _check_keys(_expect_object(call, cpath), _TOOL_CALL_KEYS, cpath)
        _expect_string(_require(call, "id", cpath), f"{cpath}.id")
        ctype = _require(call, "type", cpath)
        if ctype != "function":
            raise _Invalid(f"{cpath}.type: expected 'function', got {_show(ctype)}")
        fpath = f"{cpath}.function"
        function = _expect_object(_require(call, "function", cpath), fpath)
        _check_keys(function, _TOOL_CALL_FUNCTION_KEYS, fpath)
        _expect_string(_require(function, "name", fpath), f"{fpath}.name", non_empty=True)
        arguments = _require(function, "arguments", fpath)
        if type(arguments) is not str:
            raise _Invalid(
                f"{fpath}.arguments: expected a string (JSON-encoded arguments), "
                f"got {_kind(arguments)}"
            )


def _check_tools(tools: Any, path: str) -> None:
    for j, tool in enumerate(_expect_list(tools, path)):
        tpath = f"{path}[{j}]"
        _check_keys(_expect_object(tool, tpath), _TOOL_KEYS, tpath)
        ttype = _require(tool, "type", tpath)
        if ttype != "function":
            raise _Invalid(f"{tpath}.type: expected 'function', got {_show(ttype)}")
        fpath = f"{tpath}.function"
        function = _expect_object(_require(tool, "function", tpath), fpath)
        _check_keys(function, _TOOL_FUNCTION_KEYS, fpath)
        _expect_string(_require(function, "name", fpath), f"{fpath}.name", non_empty=True)
        if "description" in function:
            _expect_string(function["description"], f"{fpath}.description")
        if "parameters" in function:
            _expect_object(function["parameters"], f"{fpath}.parameters")
        if "strict" in function and type(function["strict"]) is not bool:
            raise _Invalid(f"{fpath}.strict: expected a boolean, got {_kind(function['strict'])}")


def _check_message(message: Any, path: str) -> str:
    """Checks one chat message; returns its role."""
    if type(message) is not dict:
        raise _Invalid(f"{path}: expected a message object, got {_kind(message)}")
    if not message.keys() <= _MESSAGE_KEYS:
        _check_keys(message, _MESSAGE_KEYS, path)
    role = message.get("role", _MISSING)
    if role is _MISSING:
        raise _Invalid(f"{path}.role: missing")
    if type(role) is not str or role not in _ROLES:
        raise _Invalid(
            f"{path}: unknown role {_show(role)} (expected system, user, assistant or tool)"
        )
    content = message.get("content", _MISSING)
    if role == "assistant":
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            _check_tool_calls(tool_calls, f"{path}.tool_calls")
        if content is _MISSING:
            if tool_calls is None:
                raise _Invalid(f"{path}.content: missing")
        elif content is None:
            if tool_calls is None:
                raise _Invalid(
                    f"{path}.content: may be null only on an assistant message with tool_calls"
                )
        elif type(content) is not str:
            _check_content(content, f"{path}.content")
        if "weight" in message:
            weight = message["weight"]
            if type(weight) not in (int, float) or weight not in (0, 1):
                raise _Invalid(f"{path}.weight: must be 0 or 1, got {_show(weight)}")
        refusal = message.get("refusal")
        if refusal is not None and type(refusal) is not str:
            raise _Invalid(f"{path}.refusal: expected a string or null, got {_kind(refusal)}")
    else:
        for key in ("weight", "tool_calls", "refusal"):
            if key in message:
                raise _Invalid(f"{path}.{key}: only allowed on assistant messages")
        if content is _MISSING:
            raise _Invalid(f"{path}.content: missing")
        if type(content) is not str:
            _check_content(content, f"{path}.content")
        if role == "tool":
            _expect_string(_require(message, "tool_call_id", path), f"{path}.tool_call_id")
        elif "tool_call_id" in message:
            raise _Invalid(f"{path}.tool_call_id: only allowed on tool messages")
    if "name" in message and type(message["name"]) is not str:
        raise _Invalid(f"{path}.name: expected a string, got {_kind(message['name'])}")
    return role


def _check_messages(messages: Any, path: str) -> bool:
    """Checks a messages array; returns whether it has an assistant message."""
    has_assistant = False
    for i, message in enumerate(_expect_list(messages, path)):
        if _check_message(message, f"{path}[{i}]") == "assistant":
            has_assistant = True
    return has_assistant


def _check_common(obj: dict[str, Any], path: str = "") -> None:
    if "tools" in obj:
        _check_tools(obj["tools"], _join(path, "tools"))
    if "parallel_tool_calls" in obj and type(obj["parallel_tool_calls"]) is not bool:
        kind = _kind(obj["parallel_tool_calls"])
        raise _Invalid(f"{_join(path, 'parallel_tool_calls')}: expected a boolean, got {kind}")
    if "metadata" in obj:
        _expect_object(obj["metadata"], _join(path, "metadata"))


def _check_chat(obj: dict[str, Any]) -> None:
    if not obj.keys() <= _CHAT_KEYS:
        _check_keys(obj, _CHAT_KEYS, "")
    if not _check_messages(obj["messages"], "messages"):
        raise _Invalid("messages: no assistant message (at least one is needed to train on)")
    if len(obj) > 1:
        _check_common(obj)


def _check_completion(obj: dict[str, Any]) -> None:
    _check_keys(obj, _COMPLETION_KEYS, "")
    _expect_string(_require(obj, "prompt", ""), "prompt")
    _expect_string(_require(obj, "completion", ""), "completion", non_empty=True)
    _check_common(obj)


def _check_output(output: Any, path: str) -> None:
    if type(output) is not list:
        raise _Invalid(f"{path}: expected an array with one assistant message, got {_kind(output)}")
    if len(output) != 1:
        raise _Invalid(f"{path}: expected exactly one assistant message, got {len(output)}")
    mpath = f"{path}[0]"
    role = _check_message(output[0], mpath)
    message = output[0]
    if role != "assistant":
        raise _Invalid(f"{mpath}.role: expected 'assistant', got {_show(role)}")
    if "weight" in message:
        raise _Invalid(f"{mpath}.weight: not allowed in a preference output")
    content = message.get("content")
    if type(content) is not str:
        raise _Invalid(f"{mpath}.content: expected a string, got {_kind(content)}")


def _check_preference(obj: dict[str, Any]) -> None:
    _check_keys(obj, _PREFERENCE_KEYS, "")
    inp = _expect_object(_require(obj, "input", ""), "input")
    _check_keys(inp, _PREFERENCE_INPUT_KEYS, "input")
    _check_messages(_require(inp, "messages", "input"), "input.messages")
    _check_common(inp, "input")
    _check_output(_require(obj, "preferred_output", ""), "preferred_output")
    _check_output(_require(obj, "non_preferred_output", ""), "non_preferred_output")
    if "metadata" in obj:
        _expect_object(obj["metadata"], "metadata")


_CHECKS = {
    DatasetFormat.CHAT: _check_chat,
    DatasetFormat.COMPLETION: _check_completion,
    DatasetFormat.PREFERENCE: _check_preference,
}


def _detect(obj: dict[str, Any]) -> DatasetFormat:
    if "messages" in obj:
        return DatasetFormat.CHAT
    if "prompt" in obj or "completion" in obj:
        return DatasetFormat.COMPLETION
    if "input" in obj or "preferred_output" in obj or "non_preferred_output" in obj:
        return DatasetFormat.PREFERENCE
    raise _Invalid(_MISSING_FORMAT)


# --------------------------------------------------------------------------- validator


def _join_and_clear(pieces: list[bytes]) -> bytes:
    line = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    pieces.clear()
    return line


class DatasetValidator:
    """Incremental validator: `feed` it the file's bytes in any chunks, then `finish`.

    The report does not depend on where the chunk boundaries fall. Memory is bounded by the
    longest line (and by `max_line_bytes` for lines longer than that, which are refused
    without being buffered).
    """

    def __init__(self, max_errors: int = 20, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        self.max_errors = max(0, max_errors)
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []  # pieces of the current, unfinished line
        self._pending_len = 0
        self._overflow = False  # the current line is already too long; it is being skipped
        self._line_no = 0  # number of the last line that was completed
        self._examples = 0
        self._errors: list[LineError] = []
        self._error_count = 0
        self._format: DatasetFormat | None = None
        self._format_line = 0
        self._first_seen: DatasetFormat | None = None
        self._report: ValidationReport | None = None

    # -- input

    def feed(self, chunk: bytes) -> None:
        if self._report is not None:
            raise RuntimeError("feed() called after finish()")
        if not chunk:
            return
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if b"\n" not in chunk:
            self._add_piece(chunk)
            return
        lines = chunk.split(b"\n")
        last = lines.pop()
        start = 0
        if self._pending or self._overflow:
            self._add_piece(lines[0])
            self._end_line()
            start = 1
        line_no = self._line_no
        limit = self.max_line_bytes
        process = self._process
        for line in islice(lines, start, None):
            line_no += 1
            if len(line) > limit:  # first, as for a long line that spans chunks
                self._too_long(line_no, len(line))
            elif line and not line.isspace():
                process(line_no, line)
        self._line_no = line_no
        if last:
            self._add_piece(last)

    def finish(self) -> ValidationReport:
        if self._report is None:
            if self._pending or self._overflow:
                self._end_line()
            if self._examples == 0:
                self._error(0, "file is empty")
            self._report = ValidationReport(
                format=self._format or self._first_seen,
                example_count=self._examples,
                errors=list(self._errors),
                error_count=self._error_count,
            )
        return self._report

    # -- framing

    def _add_piece(self, piece: bytes) -> None:
        if not piece:
            return
        if self._overflow:
            self._pending_len += len(piece)
            return
        self._pending_len += len(piece)
        if self._pending_len > self.max_line_bytes:
            self._pending.clear()
            self._overflow = True
            return
        self._pending.append(piece)

    def _end_line(self) -> None:
        """Completes the pending line (the piece after it has not been seen yet)."""
        self._line_no += 1
        if self._overflow:
            size = self._pending_len
            self._overflow = False
            self._pending_len = 0
            self._too_long(self._line_no, size)
            return
        pieces = self._pending
        self._pending = []
        self._pending_len = 0
        if pieces:
            # No local keeps the joined line, so _process can drop it once it is decoded.
            self._process(self._line_no, _join_and_clear(pieces))

    def _too_long(self, line_no: int, size: int) -> None:
        self._examples += 1
        self._error(line_no, f"line too long ({size} bytes; the limit is {self.max_line_bytes})")

    # -- one line

    def _process(self, line_no: int, raw: bytes) -> None:
        if raw.isspace():
            return
        bom = 0
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[3:]
            bom = 3
            if not raw or raw.isspace():
                return
        self._examples += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._error(line_no, f"invalid UTF-8 at byte {exc.start + 1 + bom}")
            return
        del raw
        try:
            obj = _decode_json(text)
        except json.JSONDecodeError as exc:
            self._error(line_no, f"invalid JSON ({exc.msg} at column {exc.colno})")
            return
        except _BadConstant as exc:
            self._error(line_no, f"invalid JSON ({exc.args[0]} is not a JSON value)")
            return
        except RecursionError:
            self._error(line_no, "invalid JSON (nested too deeply)")
            return
        except ValueError:  # e.g. an integer longer than sys.get_int_max_str_digits()
            self._error(line_no, "invalid JSON (number too large)")
            return
        # Only an escape can put an unpaired surrogate in a decoded string (raw bytes of one are
        # invalid UTF-8, refused above); the regex skips most lines faster than `in` would.
        may_hold_surrogate = _SURROGATE_ESCAPE.search(text) is not None
        del text
        if type(obj) is not dict:
            self._error(line_no, f"expected a JSON object, got {_kind(obj)}")
            return
        try:
            fmt = _detect(obj)
            if self._first_seen is None:
                self._first_seen = fmt
            if self._format is not None and fmt is not self._format:
                raise _Invalid(
                    f"mixed formats: line is {fmt} but the file started as {self._format} "
                    f"(line {self._format_line})"
                )
            _CHECKS[fmt](obj)
            if may_hold_surrogate:
                _check_unicode(obj, "")
        except _Invalid as exc:
            self._error(line_no, exc.args[0])
            return
        except RecursionError:  # not expected (the checks do not recurse), but never crash
            self._error(line_no, "invalid example (nested too deeply)")
            return
        if self._format is None:
            self._format = fmt
            self._format_line = line_no

    def _error(self, line_no: int, message: str) -> None:
        self._error_count += 1
        if len(self._errors) < self.max_errors:
            self._errors.append(LineError(line_no, message))


def validate_file(
    path: Path,
    *,
    chunk_size: int = 1 << 20,
    max_errors: int = 20,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ValidationReport:
    """Validates a JSONL file on disk, reading it in `chunk_size` pieces."""
    validator = DatasetValidator(max_errors=max_errors, max_line_bytes=max_line_bytes)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            validator.feed(chunk)
    return validator.finish()
