"""Small datasets the tests upload, built in code so every test states what it sends."""

from __future__ import annotations

import json


def chat_example(question: str, answer: str, system: str | None = None) -> dict[str, object]:
    messages: list[dict[str, object]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def chat_jsonl(n: int = 12) -> bytes:
    lines = [json.dumps(chat_example(f"What is {i} plus {i}?", str(2 * i))) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def preference_example(question: str, preferred: str, non_preferred: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def preference_jsonl(n: int = 12) -> bytes:
    """A DPO file: one prompt, a preferred and a non-preferred answer per line."""
    lines = [
        json.dumps(preference_example(f"What is {i} plus {i}?", str(2 * i), str(2 * i + 1)))
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()
