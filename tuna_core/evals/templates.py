"""OpenAI's eval templating: ``{{ item.field }}`` and ``{{ sample.output_text }}`` in strings.

A template string may hold any number of references, each ``{{ namespace.path }}`` (spaces inside
the braces optional).  The namespaces are OpenAI's two:

* ``item``: one line of the run's data file (the object under its ``"item"`` key);
* ``sample``: the model's answer to that item (`build_sample`): ``output_text``,
  ``output_json``, ``output_tools``, ``choices``.  It exists only once the model has answered,
  so a prompt template (a run's ``input_messages``) may use ``item`` only.

A path walks nested objects with dots and lists with ``[N]`` or ``.N``:
``{{ item.answer.text }}``, ``{{ item.choices[0] }}``, ``{{ sample.output_json.city }}``.
A string value is inserted as it is; any other value (number, boolean, null, object, list) as
JSON (``true``, ``null``, ``{"a": 1}``), so a structured field renders as data, not Python repr.

A reference to a field the item or sample does not have raises `TemplateError` naming it.
OpenAI's docs do not say what it does there; Tuna refuses rather than render "" because an empty
string grades silently: a misspelt ``{{ item.refrence }}`` would make every ``ne`` check pass
and every ``eq`` check fail with nothing to show why.  The run marks that one item ``errored``
(with the message) and goes on with the others.

Checking happens twice, at different times: `check_template` at eval creation (the syntax and
the namespaces, so a typo in the braces is a 400 naming the parameter), `render` per item (the
fields, which only the data has).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NAMESPACES = ("item", "sample")
MESSAGE_ROLES = ("system", "developer", "user", "assistant")

# ``{{`` ... ``}}`` with no brace inside: the unit a reference is written in.
_REFERENCE = re.compile(r"\{\{([^{}]*)\}\}")
# One step of a path: ``.name`` (anything but dots, brackets, braces and spaces) or ``[N]``.
_STEP = re.compile(r"\.([^.\[\]{}\s]+)|\[(\d+)\]")
_HEAD = re.compile(r"\s*([A-Za-z_]\w*)")


class TemplateError(ValueError):
    """A reference that cannot be resolved against this item or sample.

    ``reference`` is the reference as written in the template, without braces
    (``"item.answer"``); ``str()`` is a sentence for the output item's error.
    """

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"{{{{ {reference} }}}}: {reason}")
        self.reference = reference
        self.reason = reason


class TemplateSyntaxError(ValueError):
    """A template that is malformed whatever the data: raised at check time only."""


@dataclass(frozen=True)
class Reference:
    """One parsed ``{{ namespace.path }}``: the namespace and the steps (keys or indexes)."""

    text: str
    namespace: str
    steps: tuple[str | int, ...]


def parse_reference(inner: str) -> Reference:
    """Parses the inside of ``{{ }}``; raises `TemplateSyntaxError` when it is no reference."""
    text = inner.strip()
    head = _HEAD.match(inner)
    if not text or head is None:
        raise TemplateSyntaxError(
            f"{{{{{inner}}}}} is not a reference: expected {{{{ namespace.variable }}}}"
            f" with namespace {' or '.join(NAMESPACES)}"
        )
    namespace = head.group(1)
    if namespace not in NAMESPACES:
        raise TemplateSyntaxError(
            f"{{{{ {text} }}}}: unknown namespace {namespace!r}"
            f" (the namespaces are {' and '.join(NAMESPACES)})"
        )
    steps: list[str | int] = []
    position = head.end()
    rest_end = len(inner.rstrip())
    while position < rest_end:
        step = _STEP.match(inner, position)
        if step is None:
            raise TemplateSyntaxError(
                f"{{{{ {text} }}}}: cannot read the path at {inner[position:rest_end]!r}"
                " (use dots for fields and [N] for list items)"
            )
        steps.append(step.group(1) if step.group(1) is not None else int(step.group(2)))
        position = step.end()
    if not steps:
        raise TemplateSyntaxError(
            f"{{{{ {text} }}}}: name a variable inside the namespace,"
            f" e.g. {{{{ {namespace}.field }}}}"
        )
    return Reference(text, namespace, tuple(steps))


def references(template: str) -> list[Reference]:
    """Every reference in ``template``, in order; raises `TemplateSyntaxError` on a bad one."""
    return [parse_reference(match.group(1)) for match in _REFERENCE.finditer(template)]


def _describe(steps: Sequence[str | int], namespace: str) -> str:
    path = namespace
    for step in steps:
        path += f"[{step}]" if isinstance(step, int) else f".{step}"
    return path


def resolve(reference: Reference, item: Mapping[str, Any], sample: Mapping[str, Any] | None) -> Any:
    """The value ``reference`` names; raises `TemplateError` naming what is missing."""
    if reference.namespace == "sample" and sample is None:
        raise TemplateError(
            reference.text,
            "the sample namespace is not available here (there is no model answer yet:"
            " a prompt template may use the item namespace only)",
        )
    value: Any = item if reference.namespace == "item" else sample
    for depth, step in enumerate(reference.steps):
        where = _describe(reference.steps[:depth], reference.namespace)
        if isinstance(value, Mapping):
            key = str(step)
            if key not in value:
                raise TemplateError(reference.text, f"{where} has no field {key!r}")
            value = value[key]
        elif isinstance(value, list):
            index = step if isinstance(step, int) else int(step) if step.isdigit() else None
            if index is None:
                raise TemplateError(
                    reference.text, f"{where} is a list: expected an index, got {step!r}"
                )
            if index >= len(value):
                raise TemplateError(
                    reference.text, f"{where} has {len(value)} items, no index {index}"
                )
            value = value[index]
        else:
            kind = "null" if value is None else type(value).__name__
            raise TemplateError(
                reference.text, f"{where} is {kind}, not an object: it has no field {step!r}"
            )
    return value


def as_text(value: Any) -> str:
    """How a value is written into a template: a string as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render(template: str, item: Mapping[str, Any], sample: Mapping[str, Any] | None = None) -> str:
    """``template`` with each reference replaced by its value (`as_text`).

    Raises `TemplateError` for a missing field and `TemplateSyntaxError` for a malformed
    reference (which `check_template` refuses at creation, so a stored eval never has one).
    """

    def substitute(match: re.Match[str]) -> str:
        return as_text(resolve(parse_reference(match.group(1)), item, sample))

    return _REFERENCE.sub(substitute, template)


def content_text(content: Any) -> str:
    """The text of a message's content as OpenAI's eval inputs write it.

    A string; one part (``{"type": "input_text" | "output_text", "text": ...}``); or a list of
    parts and strings, joined with no separator, as the chat template joins text parts.
    Anything else (images, audio) was refused at check time; here it raises ``ValueError``.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return str(content["text"])
    if isinstance(content, list):
        return "".join(content_text(part) for part in content)
    raise ValueError(f"unsupported message content {content!r}")


def render_messages(
    messages: Sequence[Mapping[str, Any]],
    item: Mapping[str, Any],
    sample: Mapping[str, Any] | None = None,
) -> list[dict[str, str]]:
    """Renders OpenAI eval input messages into plain chat messages ``{"role", "content"}``.

    ``messages`` is a checked template (`check_messages`): a run's ``input_messages.template``
    (``sample`` None) or a model grader's ``input`` (``sample`` given).  Each message is
    ``{"role", "content"}`` or ``{"type": "message", "role", "content"}``; content a string,
    a text part or a list of them.  Raises `TemplateError` naming a missing field.
    """
    return [
        {
            "role": str(message["role"]),
            "content": render(content_text(message["content"]), item, sample),
        }
        for message in messages
    ]


def referenced_messages(reference: str, item: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages an ``item_reference`` input names (``"item.input"``), taken as they are.

    OpenAI's ``input_messages: {"type": "item_reference", "item_reference": "item.input"}``
    reads each item's own conversation instead of rendering one template: the value must be a
    non-empty list of ``{"role", "content"}`` messages. Their content is not rendered (the data
    is the prompt). Raises `TemplateError` naming what is missing or malformed.
    """
    parsed = parse_reference(reference)
    value = resolve(parsed, item, None)
    if not isinstance(value, list) or not value:
        raise TemplateError(parsed.text, "expected a non-empty list of messages")
    messages = []
    for index, message in enumerate(value):
        where = f"{parsed.text}[{index}]"
        if not isinstance(message, Mapping) or message.get("role") not in MESSAGE_ROLES:
            raise TemplateError(
                where, f"expected a message with a role of {', '.join(MESSAGE_ROLES)}"
            )
        try:
            content = content_text(message.get("content"))
        except (ValueError, KeyError, TypeError):
            raise TemplateError(where, "expected text content") from None
        messages.append({"role": str(message["role"]), "content": content})
    return messages


def build_sample(
    output_text: str,
    *,
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
    finish_reason: str = "stop",
    json_output: bool = False,
) -> dict[str, Any]:
    """The ``sample`` namespace for one model answer, with OpenAI's variables.

    ``output_text`` the answer; ``output_json`` the answer parsed as JSON when the run asked for
    JSON output (``json_output``; OpenAI fills it only when the sample had a response format),
    else null, and null too when the answer is not JSON; ``output_tools`` the tool calls
    (chat completions' shape); ``choices`` chat completions' ``choices`` for this answer.
    """
    output_json: Any = None
    if json_output:
        try:
            output_json = json.loads(output_text)
        except ValueError:
            output_json = None
    tools = [dict(call) for call in tool_calls or ()]
    message: dict[str, Any] = {"role": "assistant", "content": output_text}
    if tools:
        message["tool_calls"] = tools
    return {
        "output_text": output_text,
        "output_json": output_json,
        "output_tools": tools,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
