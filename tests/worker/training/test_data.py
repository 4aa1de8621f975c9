"""Label masking on SmolLM2's chat template, validation problems, packing and ordering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.worker.training.helpers import chat, write_jsonl
from worker.training.data import (
    IGNORE_INDEX,
    PackedRow,
    TokenizedExample,
    epoch_batches,
    load_examples,
    pack_examples,
    tokenize_example,
    validate_examples,
)
from worker.training.supervised import make_row_loss


def trained_text(tokenizer: Any, example: TokenizedExample) -> str:
    return tokenizer.decode(
        [
            t
            for t, label in zip(example.input_ids, example.labels, strict=True)
            if label != IGNORE_INDEX
        ]
    )


def test_only_assistant_tokens_are_trained(tokenizer: Any) -> None:
    example = tokenize_example(tokenizer, chat("What is the capital of France?", "Paris."))
    assert len(example.labels) == len(example.input_ids)
    assert trained_text(tokenizer, example) == "Paris.<|im_end|>\n"
    # Everything before the answer (default system prompt, user turn, assistant header) is masked.
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert tokenizer.decode(example.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_weight_zero_assistant_messages_are_context_only(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there", "weight": 0},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye", "weight": 1},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "See you"},
    ]
    example = tokenize_example(tokenizer, {"messages": messages})
    assert trained_text(tokenizer, example) == "Goodbye<|im_end|>\nSee you<|im_end|>\n"
    assert "Hello there" in tokenizer.decode(example.input_ids)


@given(st.lists(st.tuples(st.integers(0, 49151), st.booleans()), max_size=40))
def test_trained_spans_give_the_labels_and_targets_they_stand_for(
    tokens: list[tuple[int, bool]],
) -> None:
    ids = [token for token, _ in tokens]
    labels = [token if trained else IGNORE_INDEX for token, trained in tokens]
    example = TokenizedExample.from_labels(ids, labels)
    assert example.labels == labels
    assert example.targets() == [*labels[1:], IGNORE_INDEX][: len(labels)]
    assert example.n_trainable == sum(trained for _, trained in tokens)
    assert all(start < stop for start, stop in example.trained)


def test_legacy_prompt_completion(tokenizer: Any) -> None:
    example = tokenize_example(tokenizer, {"prompt": "The sky is", "completion": " blue."})
    assert tokenizer.decode(example.input_ids) == "The sky is blue.<|im_end|>"
    assert trained_text(tokenizer, example) == " blue.<|im_end|>"


def test_tool_calls_render_as_text_for_smollm2(tokenizer: Any) -> None:
    example = {
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
    }
    tokenized = tokenize_example(tokenizer, example)
    text = trained_text(tokenizer, tokenized)
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert text.endswith("It is sunny.<|im_end|>\n")
    assert "<|im_start|>tool" not in text  # the tool's result is context, not a target
    full = tokenizer.decode(tokenized.input_ids)
    assert full.startswith("<|im_start|>system\nYou have access to the following tools:")


def test_validate_reports_every_problem(tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            chat("Hi", "Hello"),
            chat("Tell me a long story", "Once upon a time " * 40),
            chat("Hi", "Hello", weight=0),
            {"messages": [{"role": "robot", "content": "beep"}]},
            {"messages": [{"role": "user", "content": "no answer"}]},
            chat("Hi", "Hello"),
        ],
    )
    report = validate_examples(path, tokenizer, max_seq_len=64)
    assert report.n_examples == 6
    assert [(p.example_number, p.code) for p in report.problems] == [
        (2, "example_too_long"),
        (3, "no_trainable_tokens"),
        (4, "invalid_format"),
        (5, "invalid_format"),
    ]
    assert "Example 2" in report.problems[0].message
    assert not report.ok

    good = validate_examples(write_jsonl(tmp_path / "g.jsonl", [chat("a", "b")]), tokenizer, 64)
    assert good.ok and good.n_examples == 1 and good.n_tokens > 0


def test_unpaired_surrogates_are_reported_not_fed_to_the_tokenizer(
    tokenizer: Any, tmp_path: Path
) -> None:
    # The tokenizer refuses the whole batched call for one such text; each is an example's
    # problem instead, and the examples around it are tokenized as usual.
    path = write_jsonl(
        tmp_path / "surrogates.jsonl",
        [
            chat("Hi", "Hello"),
            chat("caf\u00e9 \ud83d", "Hello"),
            chat("a", "b\udc00"),
            chat("Hi", "Hello"),
        ],
    )
    report = validate_examples(path, tokenizer, max_seq_len=512)
    assert [(p.example_number, p.message) for p in report.problems] == [
        (
            2,
            "Example 2: messages[0].content: unpaired surrogate \\ud83d at character 6 "
            "(not valid Unicode text)",
        ),
        (
            3,
            "Example 3: messages[1].content: unpaired surrogate \\udc00 at character 2 "
            "(not valid Unicode text)",
        ),
    ]
    assert report.n_tokens == 2 * tokenize_example(tokenizer, chat("Hi", "Hello")).n_tokens


def test_validation_can_hand_over_the_tokenized_examples(
    tokenizer: Any, tmp_path: Path, varied_file: Path
) -> None:
    kept = validate_examples(varied_file, tokenizer, 512, keep_examples=True)
    assert kept.examples == load_examples(varied_file, tokenizer, 512)
    assert validate_examples(varied_file, tokenizer, 512).examples is None  # not asked for

    rows = [chat("Hi", "Hello"), chat("Hi", "Hello", weight=0), chat("Hi", "Hello")]
    with_problem = write_jsonl(tmp_path / "problem.jsonl", rows)
    assert validate_examples(with_problem, tokenizer, 512, keep_examples=True).examples is None


def test_invalid_json_line_is_reported(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{not json\n')
    report = validate_examples(path, tokenizer, 64)
    assert [(p.example_number, p.code) for p in report.problems] == [(2, "invalid_format")]


def test_packing_keeps_examples_whole_and_positions_restarting(tokenizer: Any) -> None:
    examples = [tokenize_example(tokenizer, chat(f"Q{i}", "A" * (i + 1))) for i in range(5)]
    size = examples[0].n_tokens
    rows = pack_examples(examples, max_tokens_per_row=2 * size + 3)
    assert sum(r.n_tokens for r in rows) == sum(e.n_tokens for e in examples)
    assert len(rows) == 3
    assert rows[0].position_ids == [*range(examples[0].n_tokens), *range(examples[1].n_tokens)]
    # The last token of each example predicts nothing: no example learns its successor's start.
    boundary = examples[0].n_tokens - 1
    assert rows[0].targets[boundary] == IGNORE_INDEX


def test_packed_loss_equals_unpacked_loss(tiny_dir: Path, varied_file: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    examples = load_examples(varied_file, tokenizer, 2048)
    row_loss = make_row_loss(model)
    cpu = torch.device("cpu")

    with torch.no_grad():
        packed = pack_examples(examples, 10_000)
        assert len(packed) == 1
        packed_sum = row_loss(packed[0], cpu)[0].item()
        single_sums = [row_loss(pack_examples([e], 10_000)[0], cpu)[0].item() for e in examples]
        # Reference: transformers' own loss, each example alone, unpacked and unmasked by us.
        hf_sums = []
        for e in examples:
            out = model(
                input_ids=torch.tensor([list(e.input_ids)]), labels=torch.tensor([e.labels])
            )
            hf_sums.append(out.loss.item() * sum(1 for t in e.targets() if t != IGNORE_INDEX))
        # Without restarting positions the examples would see each other: the mask matters.
        leaky = PackedRow(packed[0].input_ids, packed[0].targets, list(range(packed[0].n_tokens)))
        leaky_sum = row_loss(leaky, cpu)[0].item()

    n_targets = packed[0].n_targets
    assert packed_sum / n_targets == pytest.approx(sum(single_sums) / n_targets, abs=1e-5)
    assert sum(single_sums) / n_targets == pytest.approx(sum(hf_sums) / n_targets, abs=1e-5)
    assert abs(leaky_sum - packed_sum) / n_targets > 1e-4


def test_epoch_order_is_seeded_and_covers_every_example() -> None:
    first = epoch_batches(10, 3, seed=7, epoch=0)
    assert first == epoch_batches(10, 3, seed=7, epoch=0)
    assert first != epoch_batches(10, 3, seed=7, epoch=1)
    assert first != epoch_batches(10, 3, seed=8, epoch=0)
    assert [len(b) for b in first] == [3, 3, 3, 1]
    assert sorted(i for b in first for i in b) == list(range(10))
