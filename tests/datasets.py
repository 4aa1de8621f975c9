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
