"""Constrained decoding for structured output: ``response_format`` ``json_object`` and
``json_schema``, enforced per row of a decoding batch.

The engine-facing API, independent of the grammar library behind it (llguidance; see
docs/benchmarks.md, "Constrained decoding: grammar libraries", for why):

* ``compiler_for(tokenizer)`` gives the tokenizer's ``GrammarCompiler``, built once per tokenizer
  (about half a second: the library indexes the vocabulary) and cached;
* ``GrammarCompiler.compile_json_object()`` / ``compile_json_schema(schema, strict=...)`` give a
  ``CompiledGrammar``; schemas are validated here and cached by their canonical JSON, so a bad
  schema fails before the request is queued (``ConstraintError``, a 400 naming
  ``response_format.json_schema.schema``);
* ``CompiledGrammar.constraint()`` gives a ``RowConstraint``: one per decoding row (each of a
  request's ``n`` choices has its own), holding the parser state of what that row generated;
* per step: ``apply_constraints(logits, [row constraint or None, ...])`` sets the disallowed
  logits of the constrained rows to ``-inf`` (one call for the batch; unconstrained rows are not
  touched), then the sampler picks, then ``RowConstraint.accept(token)`` advances the row.

Once the document is complete (a JSON object closed, a schema satisfied with nothing more it
could take) only end-of-sequence is allowed, so the row ends with ``finish_reason`` ``stop``.

Output format: JSON without free whitespace, with ``", "`` and ``": "`` as separators (what
``json.dumps`` writes).  Free whitespace would let a small model loop on newlines until its token
budget runs out; a schema's own ``x-guidance`` options are dropped for the same reason.

``strict``: ``True`` enforces the schema exactly, and a keyword the grammar cannot enforce
(``uniqueItems``, ``not``, ``if``/``then``, ``contains``...) is an error rather than silently
dropped; an object schema that declares ``properties`` and says nothing about
``additionalProperties`` takes no other keys (OpenAI's strict mode requires
``"additionalProperties": false`` anyway).  ``False``: the schema as JSON Schema reads it, keywords
the grammar cannot enforce are ignored (best effort, like OpenAI's non-strict mode).
"""

from __future__ import annotations

import json
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import llguidance
import numpy as np
import torch

from app.inference.types import ResponseFormat
from tuna_core.tool_calls import forced_call_grammar

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

SCHEMA_PARAM = "response_format.json_schema.schema"
# Tokens that end a turn in the chat templates Tuna serves (as app/inference/models.py lists).
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>")
# Compiled schemas kept per tokenizer (a compiled grammar is small: the schema's grammar text and
# one parser state).
CACHE_SIZE = 256
# The JSON output format (see the module docstring).
_JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
# From this many constrained rows on, their masks are computed on the library's threads.
PARALLEL_ROWS = 16
# The bits of float32 -inf, as a signed int32 (0xFF800000).
_NEG_INF_BITS = -8388608
# Keywords whose values are subschemas (or maps/lists of them): where strict closes objects.
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


class ConstraintError(ValueError):
    """The response format cannot be enforced: an invalid schema, or one with keywords the
    grammar does not support (under ``strict``).  ``param`` names the request field."""

    def __init__(self, message: str, param: str = SCHEMA_PARAM) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class CompiledGrammar:
    """A validated grammar for one tokenizer: make one ``RowConstraint`` per decoding row."""

    kind: Literal["json_object", "json_schema", "tool_call"]
    key: str  # the cache key: kind, strictness and the schema's canonical JSON
    compiler: GrammarCompiler = field(repr=False, compare=False)
    _prototype: Any = field(repr=False, compare=False)  # an llguidance.LLMatcher at the start

    def constraint(self) -> RowConstraint:
        return RowConstraint(self)


class GrammarCompiler:
    """Compiles response formats for one tokenizer (use ``compiler_for``: building one indexes
    the whole vocabulary).  Thread-safe: the API thread compiles, the scheduler decodes."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        vocab_size: int | None = None,
        eos_ids: Iterable[int] | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        import llguidance.hf

        # The logits' width: a model's embedding may be padded past the tokenizer's size; the
        # extra ids are never allowed.
        self.vocab_size = int(vocab_size if vocab_size is not None else len(tokenizer))
        self.eos_ids = sorted(set(eos_ids) if eos_ids is not None else _end_ids(tokenizer))
        if not self.eos_ids:
            raise ValueError("the tokenizer has no end-of-sequence token")
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids
        )
        self.words = (self.vocab_size + 31) // 32  # int32 words of one row's bitmask
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile_json_object(self) -> CompiledGrammar:
        """Any JSON object (``response_format: {"type": "json_object"}``)."""
        return self._compile("json_object", {"type": "object"}, strict=False)

    def compile_json_schema(self, schema: Mapping[str, Any], *, strict: bool) -> CompiledGrammar:
        """A document valid under ``schema`` (``response_format.json_schema``)."""
        if not isinstance(schema, Mapping):
            raise ConstraintError(f"{SCHEMA_PARAM} must be a JSON object (a JSON Schema).")
        return self._compile("json_schema", schema, strict=strict)

    def _compile(self, kind: Any, schema: Mapping[str, Any], *, strict: bool) -> CompiledGrammar:
        try:
            canonical = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ConstraintError(f"{SCHEMA_PARAM} is not JSON: {exc}") from None
        key = f"{kind}:{'strict' if strict else 'lenient'}:{canonical}"
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        document: dict[str, Any] = json.loads(canonical)
        document.pop("x-guidance", None)  # the output format is Tuna's (see the docstring)
        if strict:
            _close_objects(document)
        options: JsonCompileOptions = {**_JSON_OPTIONS, "lenient": not strict}
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(document, overrides=options)
        except (ValueError, TypeError) as exc:
            raise ConstraintError(f"Invalid schema in {SCHEMA_PARAM}: {exc}") from None
        return self._store(kind, key, grammar, SCHEMA_PARAM)

    def compile_tool_call(
        self, definitions: list[dict[str, Any]], choice: str, function: str | None
    ) -> CompiledGrammar:
        """The rest of a forced call after `tuna_core.tool_calls.prefill` (``tool_choice``
        "required", or a named function): a tool's name and arguments valid under its
        ``parameters`` (keywords the grammar cannot enforce are ignored), then the block's end."""
        options = {**_JSON_OPTIONS, "lenient": True}
        lark = forced_call_grammar(definitions, choice, function, json_options=dict(options))
        if lark is None:
            raise ValueError(f"tool_choice {choice!r} forces no call")
        key = f"tool_call:{lark}"
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        try:
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        except (ValueError, TypeError) as exc:
            raise ConstraintError(f"Invalid tool parameters: {exc}", param="tools") from None
        return self._store("tool_call", key, grammar, "tools")

    def _store(self, kind: Any, key: str, grammar: str, param: str) -> CompiledGrammar:
        """Validate a grammar for this tokenizer and keep it in the cache."""
        where = SCHEMA_PARAM if param == SCHEMA_PARAM else "the tools' parameters"
        error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            raise ConstraintError(f"Invalid schema in {where}: {_readable(error)}", param=param)
        prototype = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if prototype.is_error():
            raise ConstraintError(
                f"Invalid schema in {where}: {_readable(prototype.get_error())}", param=param
            )
        compiled = CompiledGrammar(kind, key, self, prototype)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _new_matcher(self, compiled: CompiledGrammar) -> Any:
        with self._lock:  # the prototype is shared; copying it is cheap
            return compiled._prototype.deep_copy()

    def eos_only(self, bitmask_row: torch.Tensor) -> None:
        """Write a mask that allows end-of-sequence only."""
        bitmask_row.zero_()
        for token in self.eos_ids:
            word, bit = divmod(token, 32)
            bitmask_row[word] |= _bit(bit)


class RowConstraint:
    """The grammar state of one decoding row: which tokens may come next, and what it took."""

    def __init__(self, compiled: CompiledGrammar) -> None:
        self.compiled = compiled
        self.compiler = compiled.compiler
        self._matcher = self.compiler._new_matcher(compiled)
        self._ended = False  # end-of-sequence taken
        self._ended_early = False  # ... before the document was complete

    @property
    def vocab_size(self) -> int:
        return self.compiler.vocab_size

    def fill_mask(self, bitmask_row: torch.Tensor) -> None:
        """Write the allowed next tokens into ``bitmask_row``: int32, ``(vocab + 31) // 32``
        words, contiguous, on the CPU; bit ``t % 32`` of word ``t // 32`` set = token t allowed.
        A row that is complete, ended or broken allows end-of-sequence only."""
        _check_bitmask(bitmask_row, self.compiler.words)
        if self._ended or self._matcher.is_error():
            self.compiler.eos_only(bitmask_row)
            return
        self._matcher.unsafe_compute_mask_ptr(
            bitmask_row.data_ptr(), bitmask_row.numel() * bitmask_row.element_size()
        )

    def allowed(self) -> torch.Tensor:
        """The allowed next tokens as a bool tensor over the vocabulary."""
        bitmask = torch.empty(self.compiler.words, dtype=torch.int32)
        self.fill_mask(bitmask)
        return unpack_bitmask(bitmask.unsqueeze(0), self.vocab_size)[0]

    def apply(self, logits_row: torch.Tensor) -> torch.Tensor:
        """Set the disallowed entries of ``logits_row`` (``[vocab]``) to ``-inf``, in place."""
        apply_constraints(logits_row.unsqueeze(0), [self])
        return logits_row

    def accept(self, token_id: int) -> bool:
        """Advance past the sampled token.  False when the grammar does not allow it (a caller
        that sampled outside the mask): the row is then broken and allows only end-of-sequence."""
        if self._ended:
            return False
        if token_id in self.compiler.eos_ids:
            ok = bool(self._matcher.is_accepting()) and not self._matcher.is_error()
            self._ended, self._ended_early = True, not ok
            return ok
        return bool(self._matcher.consume_token(int(token_id)))

    def is_complete(self) -> bool:
        """What the row generated is a whole valid document (it may still go on, e.g. digits)."""
        if self._ended:
            return not self._ended_early
        return bool(self._matcher.is_accepting()) and not self._matcher.is_error()

    def is_terminated(self) -> bool:
        """Nothing but end-of-sequence can follow (or it was taken): the document is complete
        and cannot go on, or the row broke."""
        return self._ended or bool(self._matcher.is_stopped())

    @property
    def error(self) -> str:
        """Why the row broke (a token outside the grammar was taken), else ``""``."""
        if self._matcher.is_error():
            return str(self._matcher.get_error())
        return "end-of-sequence before the document was complete" if self._ended_early else ""


def apply_constraints(
    logits: torch.Tensor, constraints: Sequence[RowConstraint | None]
) -> torch.Tensor:
    """Mask the constrained rows of ``logits`` (``[batch, vocab]``, any device) in place: their
    disallowed tokens get ``-inf``.  The masks of all constrained rows are computed in one go (on
    the library's threads from ``PARALLEL_ROWS`` rows on) and added as one 0/-inf bias (moved to
    the logits' device once); rows whose constraint is None are left as they are."""
    if logits.dim() != 2 or logits.shape[0] != len(constraints):
        raise ValueError(f"logits {tuple(logits.shape)} for {len(constraints)} constraints")
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    compiler = constraints[rows[0]].compiler  # type: ignore[union-attr]
    bitmask = torch.empty((len(rows), compiler.words), dtype=torch.int32)
    live: list[tuple[Any, int]] = []
    for k, i in enumerate(rows):
        constraint = constraints[i]
        assert constraint is not None
        if constraint.compiler is not compiler:
            raise ValueError("the rows' constraints belong to different tokenizers")
        if constraint._ended or constraint._matcher.is_error():
            compiler.eos_only(bitmask[k])
        else:
            live.append((constraint._matcher, k))
    if len(live) < PARALLEL_ROWS:  # a few microseconds a row: threads would cost more
        for matcher, k in live:
            row = bitmask[k]
            matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
    else:
        _executor().unsafe_compute_mask_ptr(live, bitmask.data_ptr(), compiler.words * 4, len(rows))
    bias = _bias(bitmask, logits.shape[1])
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous():
        # numpy on this thread: torch's add forks its thread pool, which on a small CPU busy
        # with the model measured 8 ms for one row of 49k (numpy: 0.02 ms).
        array = logits.detach().numpy()
        if len(rows) == logits.shape[0]:
            np.add(array, bias, out=array)
        else:
            array[rows] += bias
        return logits
    device_bias = torch.from_numpy(bias).to(logits.device, non_blocking=True)
    if len(rows) == logits.shape[0]:
        logits.add_(device_bias)
    else:
        index = torch.tensor(rows, device=logits.device)
        logits.index_add_(0, index, device_bias.to(logits.dtype))
    return logits


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[rows, words]`` int32 bitmask -> ``[rows, vocab_size]`` bool (ids past the mask's end,
    a padded embedding's, are not allowed)."""
    return torch.from_numpy(_unpack(bitmask, vocab_size).astype(np.bool_))


def _unpack(bitmask: torch.Tensor, vocab_size: int) -> np.ndarray:
    """The bitmask as uint8 0/1 per token, ``[rows, vocab_size]``."""
    if sys.byteorder == "little":  # bit k of an int32 word is bit k % 8 of its byte k // 8
        array = bitmask.contiguous().numpy().view(np.uint8)
        bits = np.unpackbits(array, axis=1, bitorder="little")
    else:
        shifts = torch.arange(32, dtype=torch.int32)
        words = (bitmask.unsqueeze(-1) >> shifts) & 1
        bits = words.reshape(bitmask.shape[0], -1).to(torch.uint8).numpy()
    if bits.shape[1] >= vocab_size:
        return bits[:, :vocab_size]
    padding = np.zeros((bits.shape[0], vocab_size - bits.shape[1]), dtype=np.uint8)
    return np.concatenate([bits, padding], axis=1)


def _bias(bitmask: torch.Tensor, vocab_size: int) -> np.ndarray:
    """float32 ``[rows, vocab_size]``: 0 where allowed, -inf elsewhere.

    Added to the logits rather than ``masked_fill_``-ed: on a CPU a bool-masked fill of a random
    mask costs ~5 ns a token (2.4 ms for 8 rows of 49k), an add ~0.1 ns.  The -inf is built from
    its bits (0/1 -> 0x00000000/0xFF800000, integer ops) in numpy, on the calling thread."""
    bits = _unpack(bitmask, vocab_size).astype(np.int32)
    np.subtract(bits, 1, out=bits)
    np.bitwise_and(bits, _NEG_INF_BITS, out=bits)
    return bits.view(np.float32)


# --- per tokenizer --------------------------------------------------------------------------

_compilers: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...]], GrammarCompiler]] = (
    weakref.WeakKeyDictionary()
)
_compilers_lock = threading.Lock()


def compiler_for(
    tokenizer: Any, *, vocab_size: int | None = None, eos_ids: Iterable[int] | None = None
) -> GrammarCompiler:
    """The tokenizer's compiler, built on first use and kept while the tokenizer lives.
    ``vocab_size``: the model's logits width (default the tokenizer's size); ``eos_ids``: the
    tokens that end the answer (default the tokenizer's end-of-sequence and end-of-turn)."""
    size = int(vocab_size if vocab_size is not None else len(tokenizer))
    ends = tuple(sorted(set(eos_ids) if eos_ids is not None else _end_ids(tokenizer)))
    with _compilers_lock:
        per_tokenizer = _compilers.setdefault(tokenizer, {})
        compiler = per_tokenizer.get((size, ends))
        if compiler is None:
            compiler = per_tokenizer[(size, ends)] = GrammarCompiler(
                tokenizer, vocab_size=size, eos_ids=ends
            )
        return compiler


_executor_instance: Any = None


def _executor() -> Any:
    global _executor_instance
    if _executor_instance is None:
        _executor_instance = llguidance.LLExecutor()
    return _executor_instance


# --- helpers --------------------------------------------------------------------------------


def _end_ids(tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[token]) for token in END_TOKENS if token in vocab)
    return ids


def _bit(position: int) -> int:
    """Bit ``position`` of an int32 word, as a signed int32 value."""
    return (1 << position) - (1 << 32) if position == 31 else 1 << position


def _check_bitmask(bitmask_row: torch.Tensor, words: int) -> None:
    if (
        bitmask_row.dtype != torch.int32
        or bitmask_row.dim() != 1
        or bitmask_row.numel() != words
        or not bitmask_row.is_contiguous()
        or bitmask_row.device.type != "cpu"
    ):
        raise ValueError(f"the bitmask row must be a contiguous CPU int32 tensor of {words} words")


def _close_objects(schema: Any) -> None:
    """Strict: an object schema with ``properties`` and no ``additionalProperties`` takes no
    other keys.  Walks subschemas only (not ``enum``, ``const``, ``default`` or ``examples``)."""
    if not isinstance(schema, dict):
        return
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for name in _SUBSCHEMA_MAPS:
        children = schema.get(name)
        if isinstance(children, dict):
            for child in children.values():
                _close_objects(child)
    for name in _SUBSCHEMA_LISTS:
        children = schema.get(name)
        if isinstance(children, list):
            for child in children:
                _close_objects(child)
    for name in _SUBSCHEMAS:
        _close_objects(schema.get(name))


def _readable(error: str) -> str:
    """llguidance's message without its internal prefixes."""
    message = error.strip()
    for prefix in ("Error:", "error:", "ERROR:"):
        if message.startswith(prefix):
            message = message[len(prefix) :].strip()
    return message.splitlines()[0] if message else "the schema cannot be compiled"


__all__ = [
    "SCHEMA_PARAM",
    "CompiledGrammar",
    "ConstraintError",
    "GrammarCompiler",
    "RowConstraint",
    "apply_constraints",
    "compiler_for",
    "unpack_bitmask",
]


def compile_response_format(
    tokenizer: Any, response_format: ResponseFormat, *, vocab_size: int, eos_ids: Iterable[int]
) -> CompiledGrammar:
    """A request's `response_format` compiled for the model that answers it (cached)."""
    compiler = compiler_for(tokenizer, vocab_size=vocab_size, eos_ids=eos_ids)
    if response_format.kind == "tool_call":
        spec = json.loads(response_format.schema or "{}")
        return compiler.compile_tool_call(spec["tools"], spec["choice"], spec.get("function"))
    if response_format.schema is None:
        return compiler.compile_json_object()
    return compiler.compile_json_schema(
        json.loads(response_format.schema), strict=response_format.strict
    )
