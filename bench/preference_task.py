"""A small preference task for the bundled SmolLM2-135M-Instruct, and how it is scored.

Questions the base model answers correctly in its own style ("The capital of Kenya is
Nairobi."), where the preferred answer follows a strict format it never produces on its own:
``ANSWER: <value>`` on one line, nothing else.  A DPO run that learned the preference answers the
held-out questions (never seen in training) in that format, with the value right.

* Items: capitals, opposites and irregular/regular plurals.  Each one was kept because the base
  model, given its own natural opening ("The capital of Kenya is"), continues greedily with the
  right value (checked once on this model; items it got wrong, e.g. past tenses and the capitals
  of Turkey or Brazil, were dropped), so exact match measures the format learned, not facts the
  model lacks.
* ``build_task(seed)`` is deterministic: each category is shuffled with ``random.Random(seed)``
  and dealt to the held-out set and the training set in proportion to its size, so both hold
  every category and no question is in both.
* Training lines are OpenAI's DPO format: ``{"input": {"messages": [user]}, "preferred_output":
  [assistant "ANSWER: Nairobi"], "non_preferred_output": [assistant "The capital of Kenya is
  Nairobi."]}``.
* Exact match (``is_exact``): the prompt rendered as the server renders it
  (`tuna_core.chat_template.render_prompt`, ChatML with its default system turn), greedy
  decoding, the reply complete (it ended with ``<|im_end|>`` within ``MAX_NEW_TOKENS``), and the
  reply stripped of surrounding whitespace equal to ``ANSWER: <value>`` character for character.
  The base model scores 0 on it.

Used by ``bench/dpo_quality.py`` and ``tests/worker/training/test_dpo_quality.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The base's greedy replies to these run to 20+ tokens; a formatted one takes <= 10.
MAX_NEW_TOKENS = 16

# (category, subject, value): the base model knows every value (see the module docstring).
CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Egypt", "Cairo"),
    ("Canada", "Ottawa"), ("Russia", "Moscow"), ("China", "Beijing"), ("Greece", "Athens"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Thailand", "Bangkok"),
    ("India", "New Delhi"), ("England", "London"), ("Cuba", "Havana"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Portugal", "Lisbon"), ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Hungary", "Budapest"),
    ("Iraq", "Baghdad"), ("Chile", "Santiago"), ("Indonesia", "Jakarta"),
    ("South Korea", "Seoul"), ("Nigeria", "Abuja"), ("Ethiopia", "Addis Ababa"),
    ("the Czech Republic", "Prague"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"),
    ("Australia", "Canberra"), ("the Philippines", "Manila"), ("Morocco", "Rabat"),
    ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Saudi Arabia", "Riyadh"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Croatia", "Zagreb"),
]  # fmt: skip
OPPOSITES = [
    ("big", "small"), ("fast", "slow"), ("day", "night"), ("left", "right"), ("open", "closed"),
    ("happy", "sad"), ("wet", "dry"), ("true", "false"), ("yes", "no"), ("black", "white"),
    ("early", "late"), ("strong", "weak"), ("hard", "soft"), ("tall", "short"), ("push", "pull"),
    ("love", "hate"), ("north", "south"), ("east", "west"), ("heavy", "light"), ("thick", "thin"),
    ("alive", "dead"), ("inside", "outside"), ("before", "after"), ("start", "finish"),
    ("friend", "enemy"),
]  # fmt: skip
PLURALS = [
    ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("man", "men"),
    ("woman", "women"), ("person", "people"), ("box", "boxes"), ("leaf", "leaves"),
    ("knife", "knives"), ("wolf", "wolves"), ("baby", "babies"), ("city", "cities"),
    ("fish", "fish"), ("cactus", "cacti"), ("dog", "dogs"), ("bus", "buses"),
    ("potato", "potatoes"), ("church", "churches"), ("wife", "wives"), ("hero", "heroes"),
]  # fmt: skip
CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "capital": CAPITALS,
    "opposite": OPPOSITES,
    "plural": PLURALS,
}
_NOUN = {"capital": "capital", "opposite": "opposite", "plural": "plural"}

# The preferred answer's strict format, by name: a prefix and a suffix around the value.
STYLES: dict[str, tuple[str, str]] = {
    "ANSWER": ("ANSWER: ", ""),
    "Answer": ("Answer: ", ""),
    "json": ('{"answer": "', '"}'),
}
DEFAULT_STYLE = "ANSWER"


@dataclass(frozen=True)
class Item:
    category: str
    subject: str
    value: str
    style: str = DEFAULT_STYLE

    @property
    def question(self) -> str:
        return f"What is the {_NOUN[self.category]} of {self.subject}?"

    @property
    def preferred(self) -> str:
        """The strict format: what an exact match must equal."""
        prefix, suffix = STYLES[self.style]
        return f"{prefix}{self.value}{suffix}"

    @property
    def natural(self) -> str:
        """The base model's own style (its greedy reply, cut to the first sentence)."""
        return f"The {_NOUN[self.category]} of {self.subject} is {self.value}."

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}]

    def dpo_row(self) -> dict[str, Any]:
        return {
            "input": {"messages": self.messages},
            "preferred_output": [{"role": "assistant", "content": self.preferred}],
            "non_preferred_output": [{"role": "assistant", "content": self.natural}],
        }


@dataclass(frozen=True)
class PreferenceTask:
    train: list[Item]
    heldout: list[Item]


def pool_size() -> int:
    return sum(len(items) for items in CATEGORIES.values())


def build_task(
    seed: int = 0, n_train: int = 48, n_heldout: int = 30, style: str = DEFAULT_STYLE
) -> PreferenceTask:
    """``n_train`` training and ``n_heldout`` held-out items, disjoint, every category in both
    (dealt in proportion to its size), deterministic in ``seed``."""
    total = pool_size()
    if n_train < 1 or n_heldout < 1 or n_train + n_heldout > total:
        raise ValueError(f"n_train + n_heldout must be in 2..{total}, not {n_train + n_heldout}")
    rng = random.Random(seed)
    shuffled = {}
    for name, pairs in CATEGORIES.items():
        items = [Item(name, subject, value, style) for subject, value in pairs]
        rng.shuffle(items)
        shuffled[name] = items
    names = list(CATEGORIES)
    heldout_counts = _apportion(n_heldout, [len(shuffled[n]) for n in names])
    rest = [len(shuffled[n]) - h for n, h in zip(names, heldout_counts, strict=True)]
    train_counts = _apportion(n_train, rest)
    heldout: list[Item] = []
    train: list[Item] = []
    for name, h, t in zip(names, heldout_counts, train_counts, strict=True):
        heldout += shuffled[name][:h]
        train += shuffled[name][h : h + t]
    rng.shuffle(train)  # categories mixed in file order
    return PreferenceTask(train=train, heldout=heldout)


def _apportion(n: int, sizes: Sequence[int]) -> list[int]:
    """``n`` split over categories in proportion to ``sizes`` (largest remainders), each share
    capped at its size."""
    total = sum(sizes)
    exact = [n * s / total for s in sizes]
    counts = [min(int(e), s) for e, s in zip(exact, sizes, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    while sum(counts) < n:
        for i in order:
            if sum(counts) < n and counts[i] < sizes[i]:
                counts[i] += 1
    return counts


def write_training_file(path: Path, items: Sequence[Item]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.dpo_row()) + "\n")
    return path


# --- scoring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    text: str  # the reply's tokens decoded, up to <|im_end|> or MAX_NEW_TOKENS
    complete: bool  # it ended with <|im_end|> within MAX_NEW_TOKENS tokens

    def __str__(self) -> str:
        return repr(self.text) if self.complete else f"{self.text!r}..."


def is_exact(reply: Reply, item: Item) -> bool:
    """The reply is complete and, stripped, equal to the preferred answer."""
    return reply.complete and reply.text.strip() == item.preferred


def in_format(reply: Reply, style: str = DEFAULT_STYLE) -> bool:
    """The reply is complete and one line in ``style``'s format, right value or not."""
    if not reply.complete:
        return False
    prefix, suffix = STYLES[style]
    text = reply.text.strip()
    value = text[len(prefix) : len(text) - len(suffix)]
    return text.startswith(prefix) and text.endswith(suffix) and "\n" not in text and bool(value)


def greedy_replies(
    model: Any, tokenizer: Any, items: Sequence[Item], batch_size: int = 32
) -> list[Reply]:
    """Each item's greedy reply to its question, rendered as the server renders a chat request,
    at most MAX_NEW_TOKENS tokens.

    Prompts go through ``generate`` in left-padded batches (same replies as one at a time, up to
    float rounding), with the model in eval mode and no gradients.
    """
    import torch

    from tuna_core.chat_template import render_prompt

    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    was_training = model.training
    model.eval()
    replies: list[Reply] = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            encoded = [
                tokenizer(render_prompt(tokenizer, item.messages), add_special_tokens=False)[
                    "input_ids"
                ]
                for item in chunk
            ]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(encoded):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                mask[row, width - len(ids) :] = 1
            device = next(model.parameters()).device
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    eos_token_id=end_id,
                    pad_token_id=pad_id,
                )
            for row in out[:, width:].tolist():
                complete = end_id in row
                tokens = row[: row.index(end_id)] if complete else row
                replies.append(Reply(tokenizer.decode(tokens), complete))
    finally:
        model.train(was_training)
    return replies


def exact_match(model: Any, tokenizer: Any, items: Sequence[Item]) -> tuple[float, list[Reply]]:
    """(fraction of exact matches, the replies)."""
    replies = greedy_replies(model, tokenizer, items)
    hits = sum(is_exact(reply, item) for reply, item in zip(replies, items, strict=True))
    return hits / len(items), replies
