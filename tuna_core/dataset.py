"""The dataset line formats, and the chat messages of an inference request: one schema.

The upload validator (`app.files.validation`), the worker's check before training
(`worker.training.data`) and the chat completions endpoint (`app.inference.service`) all check
through this module, so a line the upload accepts is a line the worker trains on, and a chat
the worker trained on is a chat inference accepts.

Lines (`LineChecker.check`, one call per line of a JSONL file, in order):
    * blank / whitespace-only lines are not examples (they still count for line numbers); a
      UTF-8 BOM at the very start of the file is skipped;
    * invalid UTF-8 -> ``"invalid UTF-8 at byte N"`` (1-based, in the line);
    * invalid JSON -> ``"invalid JSON (<reason> at column N)"``; also NaN/Infinity, integers past
      Python's digit limit and nesting too deep for the parser;
    * not an object -> ``"expected a JSON object, got array"``;
    * the format: ``messages`` -> chat; ``prompt``/``completion`` -> completion;
      ``input``/``preferred_output``/``non_preferred_output`` -> preference.  A file has one
      format, that of its first valid line; a later line of another format is an error;
    * the format's schema (below); errors name the field path: ``"messages[1].content: missing"``;
    * an unpaired UTF-16 surrogate escaped in any string or key (``"\\ud800"``: valid JSON, not
      text, and no tokenizer takes it) -> ``"messages[1].content: unpaired surrogate \\ud800 at
      character 4 (not valid Unicode text)"``.

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
                at least one assistant message, and at least one that is trained (weight 1);
                the first message is not a trained assistant message.
    completion  prompt (string), completion (non-empty string), metadata
    preference  input ({"messages": [...], "tools"?, "parallel_tool_calls"?}; messages checked
                like chat, no assistant needed), preferred_output, non_preferred_output (each a
                list of exactly one assistant message with string content, no weight), metadata
    metadata, wherever allowed, must be an object (it is not used for training).

Inference requests (`check_request_messages`) use the chat message schema with three changes:
`developer` is a role too (it speaks as `system`), `weight` is not a key, and a key whose value
is null is absent (clients send back messages as they received them: `"refusal": null`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "METHOD_FORMATS",
    "MIN_TRAINING_EXAMPLES",
    "REQUEST_RULES",
    "TRAINING_RULES",
    "DatasetFormat",
    "ExampleError",
    "LineChecker",
    "MessageRules",
    "check_example",
    "check_request_messages",
    "unpaired_surrogate",
]


class DatasetFormat(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    PREFERENCE = "preference"


#: The formats each fine-tuning method trains on.
METHOD_FORMATS: dict[str, frozenset[DatasetFormat]] = {
    "supervised": frozenset({DatasetFormat.CHAT, DatasetFormat.COMPLETION}),
    "dpo": frozenset({DatasetFormat.PREFERENCE}),
}

#: A training file needs this many examples (OpenAI's minimum); a validation file may be smaller.
MIN_TRAINING_EXAMPLES = 10


class ExampleError(ValueError):
    """Why a line or a message is not valid.

    ``path`` is where in the example (``messages[1].content``; empty for the whole line),
    ``reason`` what is wrong there; ``str()`` joins them.  ``param`` is the request parameter to
    name in an API error (the path of the offending key), ``code`` a stable reason for machines:
    ``invalid_format``, ``no_trainable_tokens`` or ``unsupported`` (valid for OpenAI, not here).
    """

    def __init__(
        self, path: str, reason: str, *, param: str | None = None, code: str = "invalid_format"
    ) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason
        self.param = param if param is not None else path
        self.code = code


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


# --------------------------------------------------------------------------- helpers

_MISSING: Any = object()


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
    word = "key" if len(unknown) == 1 else "keys"
    raise ExampleError(
        path,
        f"unknown {word} {names} (allowed: {', '.join(sorted(allowed))})",
        param=_join(path, str(unknown[0])),
    )


def _require(obj: dict[str, Any], key: str, path: str) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        raise ExampleError(_join(path, key), "missing")
    return value


def _expect_string(value: Any, path: str, *, non_empty: bool = False) -> None:
    if type(value) is not str:
        raise ExampleError(path, f"expected a string, got {_kind(value)}")
    if non_empty and not value:
        raise ExampleError(path, "must not be empty")


def _expect_object(value: Any, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise ExampleError(path, f"expected an object, got {_kind(value)}")
    return value


def _expect_list(value: Any, path: str) -> list[Any]:
    if type(value) is not list:
        raise ExampleError(path, f"expected a non-empty array, got {_kind(value)}")
    if not value:
        raise ExampleError(path, "expected a non-empty array, got an empty one")
    return value


def check_unicode(value: Any, path: str = "") -> None:
    """Refuse an unpaired UTF-16 surrogate in any key or string: valid JSON, but not text."""
    if type(value) is str:
        problem = unpaired_surrogate(value)
        if problem is not None:
            raise ExampleError(path or "value", f"{problem} (not valid Unicode text)")
    elif type(value) is dict:
        for key, item in value.items():
            check_unicode(key, f"a key of {path or 'the example'}")
            check_unicode(item, _join(path, key))
    elif type(value) is list:
        for j, item in enumerate(value):
            check_unicode(item, f"{path}[{j}]")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class MessageRules:
    """What a chat message may be where it is read: a training line or an inference request."""

    roles: tuple[str, ...]  # in the order an error lists them
    keys: frozenset[str]
    #: Keys OpenAI knows that this server does not implement: named as unsupported, not unknown.
    unsupported: frozenset[str] = frozenset()
    #: A key whose value is null counts as absent (requests echo a response's `refusal: null`).
    null_is_absent: bool = False


_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})

TRAINING_RULES = MessageRules(
    roles=("system", "user", "assistant", "tool"),
    keys=_MESSAGE_KEYS | {"weight"},
)
REQUEST_RULES = MessageRules(
    roles=("system", "developer", "user", "assistant", "tool"),
    keys=_MESSAGE_KEYS,
    unsupported=frozenset({"audio", "function_call"}),
    null_is_absent=True,
)

_PART_KEYS = frozenset({"type", "text"})
_TOOL_CALL_KEYS = frozenset({"id", "type", "function"})
_TOOL_CALL_FUNCTION_KEYS = frozenset({"name", "arguments"})
_TOOL_KEYS = frozenset({"type", "function"})
_TOOL_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})


def _check_content(content: Any, path: str) -> None:
    if type(content) is str:
        return
    if type(content) is list:
        if not content:
            raise ExampleError(path, "expected a string or a non-empty array of text parts")
        for j, part in enumerate(content):
            ppath = f"{path}[{j}]"
            if type(part) is not dict:
                raise ExampleError(ppath, f"expected a content part object, got {_kind(part)}")
            ptype = _require(part, "type", ppath)
            if ptype != "text":
                raise ExampleError(
                    f"{ppath}.type",
                    f"unsupported content part type {_show(ptype)} (only 'text' is supported)",
                    code="unsupported",
                )
            _check_keys(part, _PART_KEYS, ppath)
            _expect_string(_require(part, "text", ppath), f"{ppath}.text")
        return
    raise ExampleError(path, f"expected a string or an array of text parts, got {_kind(content)}")


def _function_of(
    obj: Any, path: str, keys: frozenset[str], function_keys: frozenset[str]
) -> dict[str, Any]:
    """The function of a ``{"type": "function", "function": {"name": ...}}`` object: a tool, or
    a call of one."""
    _check_keys(_expect_object(obj, path), keys, path)
    kind = _require(obj, "type", path)
    if kind != "function":
        raise ExampleError(f"{path}.type", f"expected 'function', got {_show(kind)}")
    fpath = f"{path}.function"
    function = _expect_object(_require(obj, "function", path), fpath)
    _check_keys(function, function_keys, fpath)
    _expect_string(_require(function, "name", fpath), f"{fpath}.name", non_empty=True)
    return function


def _check_tool_calls(tool_calls: Any, path: str) -> None:
    for j, call in enumerate(_expect_list(tool_calls, path)):
        cpath = f"{path}[{j}]"
        function = _function_of(call, cpath, _TOOL_CALL_KEYS, _TOOL_CALL_FUNCTION_KEYS)
        _expect_string(_require(call, "id", cpath), f"{cpath}.id")
        arguments = _require(function, "arguments", f"{cpath}.function")
        if type(arguments) is not str:
            raise ExampleError(
                f"{cpath}.function.arguments",
                f"expected a string (JSON-encoded arguments), got {_kind(arguments)}",
            )


def check_tools(tools: Any, path: str) -> None:
    for j, tool in enumerate(_expect_list(tools, path)):
        fpath = f"{path}[{j}].function"
        function = _function_of(tool, f"{path}[{j}]", _TOOL_KEYS, _TOOL_FUNCTION_KEYS)
        if "description" in function:
            _expect_string(function["description"], f"{fpath}.description")
        if "parameters" in function:
            _expect_object(function["parameters"], f"{fpath}.parameters")
        if "strict" in function and type(function["strict"]) is not bool:
            kind = _kind(function["strict"])
            raise ExampleError(f"{fpath}.strict", f"expected a boolean, got {kind}")


def _check_unknown_keys(message: dict[str, Any], path: str, rules: MessageRules) -> None:
    for key in message:
        if key in rules.unsupported:
            raise ExampleError(
                f"{path}.{key}", "not supported by this server yet", code="unsupported"
            )
    _check_keys(message, rules.keys, path)


def check_message(message: Any, path: str, rules: MessageRules = TRAINING_RULES) -> str:
    """Checks one chat message; returns its role."""
    if type(message) is not dict:
        raise ExampleError(path, f"expected a message object, got {_kind(message)}")
    if rules.null_is_absent:
        message = {key: value for key, value in message.items() if value is not None}
    if not message.keys() <= rules.keys:
        _check_unknown_keys(message, path, rules)
    role = message.get("role", _MISSING)
    if role is _MISSING:
        raise ExampleError(f"{path}.role", "missing")
    if type(role) is not str or role not in rules.roles:
        expected = ", ".join(rules.roles[:-1]) + f" or {rules.roles[-1]}"
        raise ExampleError(path, f"unknown role {_show(role)} (expected {expected})")
    content = message.get("content", _MISSING)
    if role == "assistant":
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            _check_tool_calls(tool_calls, f"{path}.tool_calls")
        if content is _MISSING:
            if tool_calls is None:
                raise ExampleError(f"{path}.content", "missing")
        elif content is None:
            if tool_calls is None:
                raise ExampleError(
                    f"{path}.content", "may be null only on an assistant message with tool_calls"
                )
        elif type(content) is not str:
            _check_content(content, f"{path}.content")
        if "weight" in message:
            weight = message["weight"]
            if type(weight) not in (int, float) or weight not in (0, 1):
                raise ExampleError(f"{path}.weight", f"must be 0 or 1, got {_show(weight)}")
        refusal = message.get("refusal")
        if refusal is not None and type(refusal) is not str:
            raise ExampleError(
                f"{path}.refusal", f"expected a string or null, got {_kind(refusal)}"
            )
    else:
        for key in ("weight", "tool_calls", "refusal"):
            if key in message:
                raise ExampleError(f"{path}.{key}", "only allowed on assistant messages")
        if content is _MISSING:
            raise ExampleError(f"{path}.content", "missing")
        if type(content) is not str:
            _check_content(content, f"{path}.content")
        if role == "tool":
            _expect_string(_require(message, "tool_call_id", path), f"{path}.tool_call_id")
        elif "tool_call_id" in message:
            raise ExampleError(f"{path}.tool_call_id", "only allowed on tool messages")
    if "name" in message and type(message["name"]) is not str:
        raise ExampleError(f"{path}.name", f"expected a string, got {_kind(message['name'])}")
    return role


def _check_messages(messages: Any, path: str, rules: MessageRules = TRAINING_RULES) -> int:
    """Checks a messages array; returns how many assistant messages are trained (weight 1),
    or -1 when it has none at all."""
    assistants = trained = 0
    for i, message in enumerate(_expect_list(messages, path)):
        if check_message(message, f"{path}[{i}]", rules) == "assistant":
            assistants += 1
            trained += message.get("weight", 1) == 1
    return trained if assistants else -1


def check_request_messages(messages: Any, path: str = "messages") -> list[dict[str, Any]]:
    """Check an inference request's messages; returns them as the chat template takes them.

    Null keys are dropped and `developer` speaks as `system`; every string is checked to be
    text (the tokenizer refuses an unpaired surrogate).  Raises ExampleError.
    """
    _expect_list(messages, path)
    shaped = []
    for i, message in enumerate(messages):
        where = f"{path}[{i}]"
        check_message(message, where, REQUEST_RULES)
        check_unicode(message, where)
        kept = {key: value for key, value in message.items() if value is not None}
        if kept["role"] == "developer":
            kept["role"] = "system"
        shaped.append(kept)
    return shaped


# --------------------------------------------------------------------------- examples


_CHAT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "metadata"})
_COMPLETION_KEYS = frozenset({"prompt", "completion", "metadata"})
_PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output", "metadata"})
_PREFERENCE_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})

_MISSING_FORMAT = (
    "missing 'messages' (expected a chat example {\"messages\": [...]}, a prompt/completion "
    "pair, or a preference example)"
)


def _check_common(obj: dict[str, Any], path: str = "") -> None:
    if "tools" in obj:
        check_tools(obj["tools"], _join(path, "tools"))
    if "parallel_tool_calls" in obj and type(obj["parallel_tool_calls"]) is not bool:
        kind = _kind(obj["parallel_tool_calls"])
        raise ExampleError(_join(path, "parallel_tool_calls"), f"expected a boolean, got {kind}")
    if "metadata" in obj:
        _expect_object(obj["metadata"], _join(path, "metadata"))


def _check_chat(obj: dict[str, Any]) -> None:
    if not obj.keys() <= _CHAT_KEYS:
        _check_keys(obj, _CHAT_KEYS, "")
    trained = _check_messages(obj["messages"], "messages")
    if trained < 0:
        raise ExampleError("messages", "no assistant message (at least one is needed to train on)")
    if trained == 0:
        raise ExampleError(
            "messages",
            "every assistant message has weight 0 (at least one is needed to train on)",
            code="no_trainable_tokens",
        )
    first = obj["messages"][0]
    if first["role"] == "assistant" and first.get("weight", 1) == 1:
        # Its span is what the template adds to the empty conversation, which no template
        # renders (transformers refuses an empty chat).
        raise ExampleError(
            "messages[0]",
            "a trained assistant message cannot open the conversation (nothing comes before it "
            "to answer); start with a system or user message, or give it weight 0",
        )
    if len(obj) > 1:
        _check_common(obj)


def _check_completion(obj: dict[str, Any]) -> None:
    _check_keys(obj, _COMPLETION_KEYS, "")
    _expect_string(_require(obj, "prompt", ""), "prompt")
    _expect_string(_require(obj, "completion", ""), "completion", non_empty=True)
    _check_common(obj)


def _check_output(output: Any, path: str) -> None:
    if type(output) is not list:
        raise ExampleError(
            path, f"expected an array with one assistant message, got {_kind(output)}"
        )
    if len(output) != 1:
        raise ExampleError(path, f"expected exactly one assistant message, got {len(output)}")
    mpath = f"{path}[0]"
    role = check_message(output[0], mpath)
    message = output[0]
    if role != "assistant":
        raise ExampleError(f"{mpath}.role", f"expected 'assistant', got {_show(role)}")
    if "weight" in message:
        raise ExampleError(f"{mpath}.weight", "not allowed in a preference output")
    content = message.get("content")
    if type(content) is not str:
        raise ExampleError(f"{mpath}.content", f"expected a string, got {_kind(content)}")


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


def detect_format(obj: dict[str, Any]) -> DatasetFormat:
    if "messages" in obj:
        return DatasetFormat.CHAT
    if "prompt" in obj or "completion" in obj:
        return DatasetFormat.COMPLETION
    if "input" in obj or "preferred_output" in obj or "non_preferred_output" in obj:
        return DatasetFormat.PREFERENCE
    raise ExampleError("", _MISSING_FORMAT)


def check_example(obj: Any) -> DatasetFormat:
    """Checks one decoded example against its format's schema (text included); its format."""
    if type(obj) is not dict:
        raise ExampleError("", f"expected a JSON object, got {_kind(obj)}")
    fmt = detect_format(obj)
    _CHECKS[fmt](obj)
    check_unicode(obj)
    return fmt


# --------------------------------------------------------------------------- lines


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


# One decoder for all lines: `json.loads(s, **kw)` would build a new one per call.
_decode_json = json.JSONDecoder(parse_constant=_reject_constant).decode

_BOM = b"\xef\xbb\xbf"
# Only an escape can put an unpaired surrogate in a decoded string (raw bytes of one are invalid
# UTF-8, refused before); the regex skips most lines faster than an `in` search would.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Example:
    """A valid line: its decoded JSON and its format."""

    format: DatasetFormat
    data: dict[str, Any]


class LineChecker:
    """The verdict on each line of one JSONL file, fed in order (see the module docstring).

    ``example_count`` counts the non-blank lines seen so far, valid or not: after `check`, it
    is the number of the example just checked.  ``format`` is the file's format once a line was
    valid; ``first_seen`` that of the first line whose format could be told.
    """

    def __init__(self) -> None:
        self.example_count = 0
        self.format: DatasetFormat | None = None
        self.format_line = 0
        self.first_seen: DatasetFormat | None = None

    def count_unread(self) -> None:
        """Count a line the caller could not hand over (longer than it reads): an example."""
        self.example_count += 1

    def check(self, line_no: int, raw: bytes) -> Example | None:
        """The example on line ``line_no`` (1-based), None for a blank line; ExampleError."""
        if not raw or raw.isspace():
            return None
        bom = 0
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[3:]
            bom = 3
            if not raw or raw.isspace():
                return None
        self.example_count += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExampleError("", f"invalid UTF-8 at byte {exc.start + 1 + bom}") from None
        del raw
        obj = _decode(text)
        may_hold_surrogate = _SURROGATE_ESCAPE.search(text) is not None
        del text
        if type(obj) is not dict:
            raise ExampleError("", f"expected a JSON object, got {_kind(obj)}")
        fmt = detect_format(obj)
        if self.first_seen is None:
            self.first_seen = fmt
        if self.format is not None and fmt is not self.format:
            raise ExampleError(
                "",
                f"mixed formats: line is {fmt} but the file started as {self.format} "
                f"(line {self.format_line})",
            )
        try:
            _CHECKS[fmt](obj)
            if may_hold_surrogate:
                check_unicode(obj)
        except RecursionError:  # not expected (the checks do not recurse), but never crash
            raise ExampleError("", "invalid example (nested too deeply)") from None
        if self.format is None:
            self.format = fmt
            self.format_line = line_no
        return Example(fmt, obj)


def _decode(text: str) -> Any:
    try:
        return _decode_json(text)
    except json.JSONDecodeError as exc:
        raise ExampleError("", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except _BadConstant as exc:
        raise ExampleError("", f"invalid JSON ({exc.args[0]} is not a JSON value)") from None
    except RecursionError:
        raise ExampleError("", "invalid JSON (nested too deeply)") from None
    except ValueError:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise ExampleError("", "invalid JSON (number too large)") from None
