"""Constrained decoding (app/inference/constraints.py) on SmolLM2's real tokenizer.

A fake "model" drives greedy decoding: its logits prefer tokens that break JSON (bare words,
closing brackets, newlines, end-of-sequence before the end, a value outside the enum) and it
never repeats itself much (a token's logit drops each time it is emitted), so unconstrained it
writes garbage, and under a constraint whatever it writes must still parse and validate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import torch

from app.inference.constraints import (
    PARALLEL_ROWS,
    SCHEMA_PARAM,
    ConstraintError,
    GrammarCompiler,
    RowConstraint,
    apply_constraints,
    compiler_for,
)
from tests.app.inference.conftest import MODEL_CACHE, TINY

TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "include": {"type": "array", "items": {"type": "string", "enum": ["wind", "uv"]}},
        "alerts": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "channel": {"type": "string", "enum": ["email", "sms"]},
            },
            "required": ["enabled", "channel"],
        },
    },
    "required": ["location", "unit", "days", "include", "alerts"],
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tuna_core.base_models import resolve_base_model

    return AutoTokenizer.from_pretrained(resolve_base_model(TINY, MODEL_CACHE))


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return compiler_for(tokenizer)


class AdversarialModel:
    """Logits over the vocabulary: invalid JSON first, then closing quotes and brackets, then a
    seeded random order; each emitted token but the closing ones loses 30, so a string or an
    array ends once the preferred tokens are spent."""

    def __init__(self, tokenizer: Any, prefer: list[str] = ()) -> None:  # type: ignore[assignment]
        vocab = len(tokenizer)
        generator = torch.Generator().manual_seed(0)
        self.base = torch.rand(vocab, generator=generator)
        bad = [*prefer, "hello", " world", "]", "\n", "\n\n", "  ", "'", "kelvin", "None", "}"]
        for rank, text in enumerate(bad):
            for token in tokenizer.encode(text, add_special_tokens=False)[:1]:
                self.base[token] = max(float(self.base[token]), 20.0 - 0.1 * rank)
        for token in _end_tokens(tokenizer):  # ending early is invalid too
            self.base[token] = 19.0
        self.closing = torch.zeros(vocab, dtype=torch.bool)
        for rank, text in enumerate(['"', '":', '",', '"}', "}", '"]', "]}", "}}", '"}}']):
            for token in tokenizer.encode(text, add_special_tokens=False)[:1]:
                self.base[token] = 6.0 - 0.1 * rank  # below the invalid ones
                self.closing[token] = True
        self.counts = torch.zeros(vocab)

    def logits(self) -> torch.Tensor:
        return self.base - 30.0 * self.counts

    def emitted(self, token: int) -> None:
        if not self.closing[token]:
            self.counts[token] += 1


def _end_tokens(tokenizer: Any) -> set[int]:
    vocab = tokenizer.get_vocab()
    return {tokenizer.eos_token_id} | {vocab[t] for t in ("<|im_end|>", "<|endoftext|>")}


def decode(
    tokenizer: Any, constraint: RowConstraint | None, *, max_tokens: int = 400, prefer=()
) -> tuple[str, bool]:
    """Greedy decoding of the adversarial model: (text, ended with end-of-sequence)."""
    model = AdversarialModel(tokenizer, list(prefer))
    ends = _end_tokens(tokenizer)
    tokens: list[int] = []
    for _ in range(max_tokens):
        logits = model.logits()
        if constraint is not None:
            constraint.apply(logits)
        token = int(logits.argmax())
        if token in ends:
            if constraint is not None:
                assert constraint.accept(token)
            return tokenizer.decode(tokens), True
        if constraint is not None:
            assert constraint.accept(token), constraint.error
        tokens.append(token)
        model.emitted(token)
    return tokenizer.decode(tokens), False


def test_the_fake_model_writes_invalid_json_unconstrained(tokenizer: Any) -> None:
    text, _ = decode(tokenizer, None, max_tokens=60)
    with pytest.raises(ValueError):
        json.loads(text)


def test_json_object_gives_an_object(tokenizer: Any, compiler: GrammarCompiler) -> None:
    constraint = compiler.compile_json_object().constraint()
    text, ended = decode(tokenizer, constraint)

    assert ended, text
    assert isinstance(json.loads(text), dict), text
    assert constraint.is_terminated()


@pytest.mark.parametrize("strict", [True, False])
def test_schema_output_validates(tokenizer: Any, compiler: GrammarCompiler, strict: bool) -> None:
    constraint = compiler.compile_json_schema(TOOL_SCHEMA, strict=strict).constraint()
    text, ended = decode(tokenizer, constraint, prefer=['"kel', "Kelvin", "true"])

    assert ended, text
    document = json.loads(text)
    jsonschema_rs.validate(TOOL_SCHEMA, document)
    assert document["unit"] in ("celsius", "fahrenheit")
    assert document["alerts"]["channel"] in ("email", "sms")
    assert set(document) >= {"location", "unit", "days", "include", "alerts"}
    if strict:  # objects with properties are closed: no key the schema does not name
        assert set(document) == set(TOOL_SCHEMA["properties"]), document
        assert set(document["alerts"]) <= {"enabled", "channel"}, document


def test_enum_is_enforced_token_by_token(tokenizer: Any, compiler: GrammarCompiler) -> None:
    constraint = compiler.compile_json_schema(TOOL_SCHEMA, strict=True).constraint()
    prefix = '{"location": "Paris", "unit": "'
    for token in tokenizer.encode(prefix, add_special_tokens=False):
        assert constraint.accept(token)
    allowed = constraint.allowed().nonzero().flatten().tolist()
    pieces = {tokenizer.decode([t]) for t in allowed}

    assert pieces, "nothing allowed inside the enum"
    assert all("celsius".startswith(p) or "fahrenheit".startswith(p) for p in pieces), pieces
    kelvin = tokenizer.encode("kelvin", add_special_tokens=False)[0]
    assert not constraint.accept(kelvin)
    assert constraint.error


def test_required_keys_come_before_the_end(tokenizer: Any, compiler: GrammarCompiler) -> None:
    constraint = compiler.compile_json_schema(TOOL_SCHEMA, strict=True).constraint()
    for token in tokenizer.encode('{"location": "Paris"', add_special_tokens=False):
        assert constraint.accept(token)
    closing = tokenizer.encode("}", add_special_tokens=False)[0]

    assert not bool(constraint.allowed()[closing])
    assert not constraint.is_complete()
    for end in compiler.eos_ids:
        assert not bool(constraint.allowed()[end])


def test_strict_closes_objects_lenient_does_not(tokenizer: Any, compiler: GrammarCompiler) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    extra = tokenizer.encode('{"a": 1, "zzz": 2}', add_special_tokens=False)

    strict = compiler.compile_json_schema(schema, strict=True).constraint()
    lenient = compiler.compile_json_schema(schema, strict=False).constraint()

    assert not all(strict.accept(t) for t in extra)
    assert all(lenient.accept(t) for t in extra)
    assert lenient.is_complete()


def test_complete_document_allows_only_end_of_sequence(
    tokenizer: Any, compiler: GrammarCompiler
) -> None:
    constraint = compiler.compile_json_object().constraint()
    for token in tokenizer.encode('{"a": [1, {"b": null}], "c": "d"}', add_special_tokens=False):
        assert constraint.accept(token)

    assert constraint.is_complete() and constraint.is_terminated()
    allowed = set(constraint.allowed().nonzero().flatten().tolist())
    assert allowed == set(compiler.eos_ids) == _end_tokens(tokenizer)
    assert constraint.accept(tokenizer.convert_tokens_to_ids("<|im_end|>"))


def test_ending_early_is_refused(tokenizer: Any, compiler: GrammarCompiler) -> None:
    constraint = compiler.compile_json_object().constraint()
    for token in tokenizer.encode('{"a": 1', add_special_tokens=False):
        assert constraint.accept(token)

    assert not constraint.accept(compiler.eos_ids[0])
    assert not constraint.is_complete()
    assert constraint.is_terminated()
    assert "before the document was complete" in constraint.error


def test_a_rejected_token_leaves_only_end_of_sequence(
    tokenizer: Any, compiler: GrammarCompiler
) -> None:
    constraint = compiler.compile_json_object().constraint()
    word = tokenizer.encode("hello", add_special_tokens=False)[0]

    assert not bool(constraint.allowed()[word])
    assert not constraint.accept(word)
    assert constraint.error
    assert set(constraint.allowed().nonzero().flatten().tolist()) == set(compiler.eos_ids)


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "strin"}, "strin"),
        ({"$ref": "#/$defs/missing"}, "missing"),
        ({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}, "a"),
    ],
)
def test_invalid_schema_raises(compiler: GrammarCompiler, schema: Any, fragment: str) -> None:
    with pytest.raises(ConstraintError) as caught:
        compiler.compile_json_schema(schema, strict=True)

    assert caught.value.param == SCHEMA_PARAM == "response_format.json_schema.schema"
    assert SCHEMA_PARAM in caught.value.message
    assert fragment in caught.value.message


@pytest.mark.parametrize("schema", [[1, 2], "object", {"type": "object", "x": {1, 2}}])
def test_a_schema_that_is_not_a_json_object_raises(compiler: GrammarCompiler, schema: Any) -> None:
    with pytest.raises(ConstraintError, match=r"response_format\.json_schema\.schema"):
        compiler.compile_json_schema(schema, strict=False)


def test_lenient_ignores_what_it_cannot_enforce(compiler: GrammarCompiler) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}

    compiler.compile_json_schema(schema, strict=False).constraint()


def test_compiled_schemas_are_cached(tokenizer: Any, compiler: GrammarCompiler) -> None:
    first = compiler.compile_json_schema({"type": "object", "properties": {}}, strict=True)
    again = compiler.compile_json_schema({"properties": {}, "type": "object"}, strict=True)
    same = compiler.compile_json_schema({"type": "object", "properties": {}}, strict=True)

    assert same is first
    assert again is not first  # key order is the property order the output follows
    assert compiler.compile_json_schema(first_schema := {"type": "string"}, strict=False) is (
        compiler.compile_json_schema(dict(first_schema), strict=False)
    )
    assert compiler_for(tokenizer) is compiler


def test_batched_masks_only_constrained_rows(tokenizer: Any, compiler: GrammarCompiler) -> None:
    vocab = compiler.vocab_size
    logits = torch.randn(5, vocab, generator=torch.Generator().manual_seed(1))
    original = logits.clone()
    object_row = compiler.compile_json_object().constraint()
    schema_row = compiler.compile_json_schema(TOOL_SCHEMA, strict=True).constraint()
    done_row = compiler.compile_json_object().constraint()
    for token in tokenizer.encode("{}", add_special_tokens=False):
        assert done_row.accept(token)

    apply_constraints(logits, [object_row, None, schema_row, None, done_row])

    assert torch.equal(logits[1], original[1])
    assert torch.equal(logits[3], original[3])
    for row, constraint in ((0, object_row), (2, schema_row), (4, done_row)):
        allowed = constraint.allowed()
        assert torch.equal(logits[row][allowed], original[row][allowed])
        assert torch.isneginf(logits[row][~allowed]).all()
        assert 0 < int(allowed.sum()) < vocab
    assert set(torch.isfinite(logits[4]).nonzero().flatten().tolist()) == set(compiler.eos_ids)


@pytest.mark.parametrize("count", [4, PARALLEL_ROWS + 1])
def test_batched_equals_row_by_row(tokenizer: Any, compiler: GrammarCompiler, count: int) -> None:
    """Rows at different places in their documents (from PARALLEL_ROWS rows on, filled on the
    library's threads): each row's mask is its own."""
    compiled = compiler.compile_json_schema(TOOL_SCHEMA, strict=True)
    rows = [compiled.constraint() for _ in range(count)]
    tokens = tokenizer.encode(
        '{"location": "Paris", "unit": "celsius", "days": 3, "include": ["uv"], ',
        add_special_tokens=False,
    )
    for i, row in enumerate(rows):
        for token in tokens[: i * len(tokens) // count]:
            assert row.accept(token)
    logits = torch.zeros(count, compiler.vocab_size)

    apply_constraints(logits, list(rows))

    for i, row in enumerate(rows):
        assert torch.equal(torch.isfinite(logits[i]), row.allowed())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "strided"])
@pytest.mark.parametrize("every_row", [False, True])
def test_torch_path_logits(compiler: GrammarCompiler, dtype: Any, every_row: bool) -> None:
    """Half precision and non-contiguous logits (as on a GPU: the bias is added by torch)."""
    constraint = compiler.compile_json_object().constraint()
    if dtype == "strided":
        logits = torch.randn(compiler.vocab_size, 3).t()
        assert not logits.is_contiguous()
    else:
        logits = torch.randn(3, compiler.vocab_size).to(dtype)
    original = logits.clone()
    constrained = [0, 1, 2] if every_row else [1]

    apply_constraints(logits, [constraint if i in constrained else None for i in range(3)])

    assert logits.dtype == original.dtype
    allowed = constraint.allowed()
    for i in range(3):
        if i in constrained:
            assert torch.equal(logits[i][allowed], original[i][allowed])
            assert torch.isneginf(logits[i][~allowed]).all()
        else:
            assert torch.equal(logits[i], original[i])


def test_all_rows_unconstrained_is_a_no_op() -> None:
    logits = torch.randn(3, 10)
    original = logits.clone()

    apply_constraints(logits, [None, None, None])

    assert torch.equal(logits, original)
    with pytest.raises(ValueError):
        apply_constraints(logits, [None])


def test_padded_vocabulary_never_allows_the_padding(tokenizer: Any) -> None:
    padded = compiler_for(tokenizer, vocab_size=len(tokenizer) + 64)
    constraint = padded.compile_json_object().constraint()
    logits = torch.zeros(1, len(tokenizer) + 64)

    apply_constraints(logits, [constraint])

    assert torch.isneginf(logits[0, len(tokenizer) :]).all()
    assert torch.isfinite(logits[0, : len(tokenizer)]).any()
    assert padded is not compiler_for(tokenizer)


def test_fill_mask_checks_its_buffer(compiler: GrammarCompiler) -> None:
    constraint = compiler.compile_json_object().constraint()
    good = torch.zeros(compiler.words, dtype=torch.int32)
    constraint.fill_mask(good)

    assert int((good != 0).sum()) > 0
    with pytest.raises(ValueError):
        constraint.fill_mask(torch.zeros(compiler.words, dtype=torch.int64))
    with pytest.raises(ValueError):
        constraint.fill_mask(torch.zeros(compiler.words - 1, dtype=torch.int32))


@pytest.fixture(autouse=True)
def _no_leaked_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


# -- forced tool calls ---------------------------------------------------------------------------

TOOL_DEFS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


def feed(constraint: Any, tokenizer: Any, text: str) -> bool:
    return all(
        constraint.accept(token) for token in tokenizer(text, add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize(("choice", "function"), [("required", None), ("function", "get_weather")])
def test_a_forced_call_continues_the_prefill_as_training_writes_calls(
    tokenizer: Any, compiler: GrammarCompiler, choice: str, function: str | None
) -> None:
    from tuna_core.tool_calls import format_tool_call, prefill

    written = format_tool_call("get_weather", {"city": "Paris"})
    rest = written[len(prefill(choice, function)) :]
    compiled = compiler.compile_tool_call(TOOL_DEFS, choice, function)
    constraint = compiled.constraint()
    assert feed(constraint, tokenizer, rest) and constraint.is_complete()
    # Another tool's name, or arguments missing a required field, are not allowed.
    if choice == "required":
        assert not feed(compiled.constraint(), tokenizer, 'get_wind", "arguments": {}}')
    assert not feed(compiled.constraint(), tokenizer, rest.replace('"city"', '"town"'))
