"""Ready-made testing criteria: what "grade against the expected answer" means everywhere.

The CLI's ``tuna evals create --expect FIELD``, the dashboard's new-eval form and the comparison
a fine-tuning job runs on its validation set all grade an answer the same two ways.

`validation_item` turns one fine-tuning example into the item that comparison grades: the
conversation before the answer the model was trained to give, and that answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuna_core.evals.templates import content_text

#: `similar` passes when the answer's fuzzy match with the expected one reaches this.
SIMILARITY_THRESHOLD = 0.8


def expected_answer_criteria(field: str) -> list[dict[str, Any]]:
    """`exact`: the answer equals ``item.<field>``; `similar`: fuzzy match >= the threshold."""
    reference = "{{ item." + field + " }}"
    return [
        {
            "type": "string_check",
            "name": "exact",
            "input": "{{ sample.output_text }}",
            "reference": reference,
            "operation": "eq",
        },
        {
            "type": "text_similarity",
            "name": "similar",
            "input": "{{ sample.output_text }}",
            "reference": reference,
            "evaluation_metric": "fuzzy_match",
            "pass_threshold": SIMILARITY_THRESHOLD,
        },
    ]


#: The fields of a `validation_item`; its item schema, and the reference its runs prompt with.
VALIDATION_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "input": {"type": "array", "items": {"type": "object"}, "minItems": 1},
        "expected": {"type": "string"},
    },
    "required": ["input", "expected"],
}
VALIDATION_INPUT_REFERENCE = "item.input"
VALIDATION_EXPECTED_FIELD = "expected"


def validation_item(example: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"input": [messages], "expected": "answer"}`` for one checked training example, or None
    when it has no plain-text answer to compare with.

    A chat example: the messages before its last one, which must be an assistant message with
    text content (not a tool call). A preference (DPO) example: its ``input.messages`` and the
    preferred output's text. A prompt/completion example is not a chat conversation, so it has
    no item (the chat endpoint would wrap it in a template it was not trained with).
    """
    if "messages" in example:
        messages = list(example["messages"])
        answer = _answer(messages[-1] if messages else None)
        prompt = messages[:-1]
    elif "input" in example and "preferred_output" in example:
        prompt = list(example["input"].get("messages") or [])
        outputs = example["preferred_output"]
        answer = _answer(outputs[-1] if outputs else None)
    else:
        return None
    if answer is None or not prompt:
        return None
    try:
        conversation = [
            {"role": str(m["role"]), "content": content_text(m.get("content"))}
            for m in prompt
            if m.get("role") in ("system", "developer", "user", "assistant")
        ]
    except (ValueError, KeyError, TypeError):
        return None
    if not conversation or conversation[-1]["role"] == "assistant":
        return None
    return {"input": conversation, VALIDATION_EXPECTED_FIELD: answer}


def _answer(message: Any) -> str | None:
    if not isinstance(message, Mapping) or message.get("role") != "assistant":
        return None
    if message.get("tool_calls") or message.get("content") is None:
        return None
    try:
        return content_text(message["content"])
    except (ValueError, KeyError, TypeError):
        return None
