"""Constrained decoding: the grammar libraries measured on the bundled model's tokenizer.

Structured output (``response_format`` ``json_object`` / ``json_schema``) is enforced by masking,
at every decoding step of every constrained row, the tokens the grammar does not allow.  This
measures the candidate libraries on SmolLM2-135M-Instruct's tokenizer (49,152 tokens, byte-level
BPE; loaded from the converted cache, never downloaded):

* ``llguidance`` (guidance-ai; Rust, lazy Earley parser + token trie);
* ``xgrammar`` (mlc-ai; C++, pushdown automaton with a per-grammar precomputed token cache);
* ``outlines-core`` (dottxt; Rust, JSON schema -> regex -> a token-level DFA index built ahead).

For each one:

* **setup**: the tokenizer/vocabulary object the library needs, built once per tokenizer;
* **compile**: (a) generic JSON (``json_object``: any JSON object) and (b) a realistic tool
  schema (nested objects, enums, an array of objects, required fields, no extra properties);
  everything a new request pays before its first token: the grammar plus a fresh matcher;
* **mask**: per decoding step, the allowed-token bitmask (int32 words over the vocabulary, what
  ``app/inference/constraints.py`` applies to the logits) while a valid JSON document of about
  ``--tokens`` tokens is fed token by token; p50 and p99 over the steps, plus the time to
  consume the token (advance the parser);
* **batch**: one decoding step of ``--batch`` rows at different positions of the document, the
  library's batched call where it has one (llguidance ``LLExecutor``, xgrammar
  ``BatchGrammarMatcher``), else a loop;
* **correct**: every token of the valid document is allowed by the mask and accepted; at the end
  only end-of-sequence is allowed; a token that breaks the document (a letter where a value or
  key must start, a ``]`` closing an object) is masked out and rejected;
* **coverage**: which of a few JSON-schema features (integer range, string pattern, recursive
  ``$ref``, ``anyOf``, ``minItems``/``maxItems``, ``format``) compile, and whether an unknown
  keyword is reported (what a ``strict`` schema needs).

    python bench/grammar_libraries.py                       # all three, 200 tokens
    python bench/grammar_libraries.py --libraries llguidance,xgrammar --tokens 100

A library that is not installed is skipped (``pip install --no-deps xgrammar apache-tvm-ffi``,
``pip install outlines-core``; llguidance is a Tuna dependency).  The last line is
``recommendation <library>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BENCH_DIR = Path(__file__).resolve().parent
for _path in (str(BENCH_DIR.parent), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import describe_machine  # noqa: E402

DEFAULT_CACHE = BENCH_DIR.parent / "var" / "model-cache"
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
LIBRARIES = ("llguidance", "xgrammar", "outlines-core")

# A tool's parameters, as a client would send in response_format.json_schema (strict).
TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "include": {
            "type": "array",
            "items": {"type": "string", "enum": ["wind", "humidity", "uv", "precipitation"]},
        },
        "alerts": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "channels": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "kind": {"type": "string", "enum": ["email", "sms", "push"]},
                            "address": {"type": "string"},
                            "priority": {"type": "number"},
                        },
                        "required": ["kind", "address", "priority"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["enabled", "channels"],
            "additionalProperties": False,
        },
    },
    "required": ["location", "unit", "days", "include", "alerts"],
    "additionalProperties": False,
}

COVERAGE: dict[str, dict[str, Any]] = {
    "integer range": {"type": "integer", "minimum": 1, "maximum": 14},
    "string pattern": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
    "recursive $ref": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name", "children"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    },
    "anyOf": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
    "minItems/maxItems": {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 2,
        "maxItems": 3,
    },
    "format date-time": {"type": "string", "format": "date-time"},
    # Not enforceable by these grammars: must be reported, not silently dropped (strict).
    "uniqueItems reported": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    "not reported": {"not": {"type": "string"}},
}
REPORTED = ("uniqueItems reported", "not reported")


def schema_document(target_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """A document valid under TOOL_SCHEMA, grown to about target_tokens."""
    doc: dict[str, Any] = {
        "location": "San Francisco, California, United States",
        "unit": "celsius",
        "days": 7,
        "include": ["wind", "humidity", "precipitation"],
        "alerts": {"enabled": True, "channels": []},
    }
    names = ["ops", "weather-team", "alice", "bob", "on-call", "facilities", "carol", "dave"]
    i = 0
    while count_tokens(json.dumps(doc)) < target_tokens:
        kind = ("email", "sms", "push")[i % 3]
        address = f"{names[i % len(names)]}@example.org" if kind == "email" else f"+1-555-01{i:02d}"
        doc["alerts"]["channels"].append({"kind": kind, "address": address, "priority": i / 4})
        i += 1
    return json.dumps(doc)


def object_document(target_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """A free-form JSON object (json_object) of about target_tokens: nesting, numbers, escapes."""
    doc: dict[str, Any] = {"title": 'The "quick" brown fox\\n', "tags": [], "meta": {"ok": None}}
    i = 0
    while count_tokens(json.dumps(doc)) < target_tokens:
        doc["tags"].append({"id": i, "score": -1.5e-3 * i, "flags": [True, False], "note": f"n{i}"})
        i += 1
    return json.dumps(doc)


# --- the libraries, behind one small interface -------------------------------------------------


class Backend:
    name = ""

    def setup(self, tokenizer: Any) -> None:
        raise NotImplementedError

    def compile_object(self) -> Any:
        raise NotImplementedError

    def compile_schema(self, schema: dict[str, Any]) -> Any:
        raise NotImplementedError

    def matcher(self, compiled: Any) -> Any:
        raise NotImplementedError

    def fill(self, matcher: Any, bitmask: Any, row: int = 0) -> None:
        raise NotImplementedError

    def fill_batch(self, matchers: list[Any], bitmask: Any) -> None:
        for row, m in enumerate(matchers):
            self.fill(m, bitmask, row)

    def consume(self, matcher: Any, token: int) -> bool:
        raise NotImplementedError

    def coverage(self, schema: dict[str, Any]) -> bool:
        """True when the schema compiles (a fresh matcher for it is usable)."""
        try:
            self.matcher(self.compile_schema(schema))
        except Exception:
            return False
        return True


class LLGuidance(Backend):
    name = "llguidance"

    def setup(self, tokenizer: Any) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.llg_torch = llguidance.torch
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.executor = llguidance.LLExecutor()
        self.options: Any = {
            "whitespace_flexible": False,
            "item_separator": ", ",
            "key_separator": ": ",
        }

    def _compile(self, grammar: str) -> Any:
        error = self.llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error)
        return grammar

    def compile_object(self) -> Any:
        return self._compile(
            self.llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=self.options)
        )

    def compile_schema(self, schema: dict[str, Any]) -> Any:
        return self._compile(
            self.llg.LLMatcher.grammar_from_json_schema(schema, defaults=self.options)
        )

    def matcher(self, compiled: Any) -> Any:
        m = self.llg.LLMatcher(self.tokenizer, compiled, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def fill(self, matcher: Any, bitmask: Any, row: int = 0) -> None:
        self.llg_torch.fill_next_token_bitmask(matcher, bitmask, row)

    def fill_batch(self, matchers: list[Any], bitmask: Any) -> None:
        self.llg_torch.fill_next_token_bitmask_par(
            self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask
        )

    def consume(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token))


class XGrammar(Backend):
    name = "xgrammar"

    def setup(self, tokenizer: Any) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        # No cache: every compile below is measured as a new request's would be.
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)
        self.batch = xgrammar.BatchGrammarMatcher()

    def compile_object(self) -> Any:
        return self.compiler.compile_builtin_json_grammar()

    def compile_schema(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(", ", ": "), strict_mode=True
        )

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matcher: Any, bitmask: Any, row: int = 0) -> None:
        matcher.fill_next_token_bitmask(bitmask, row)

    def fill_batch(self, matchers: list[Any], bitmask: Any) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def consume(self, matcher: Any, token: int) -> bool:
        return bool(matcher.accept_token(token))


class OutlinesCore(Backend):
    name = "outlines-core"

    def setup(self, tokenizer: Any) -> None:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self.oc = outlines_core
        self.to_regex = build_regex_from_schema
        # The vocabulary as bytes: byte-level BPE stores each byte as a printable character.
        unicode_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
        special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        tokens: dict[bytes, list[int]] = {}
        for text, token_id in tokenizer.get_vocab().items():
            if token_id not in special:
                tokens.setdefault(bytes(unicode_to_byte[c] for c in text), []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, tokens)
        self.size = len(tokenizer)

    def compile_object(self) -> Any:
        return self.oc.Index(self.to_regex(json.dumps({"type": "object"})), self.vocabulary)

    def compile_schema(self, schema: dict[str, Any]) -> Any:
        return self.oc.Index(self.to_regex(json.dumps(schema)), self.vocabulary)

    def matcher(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill(self, matcher: Any, bitmask: Any, row: int = 0) -> None:
        view = bitmask[row]
        matcher.write_mask_into(view.data_ptr(), view.numel(), view.element_size())

    def consume(self, matcher: Any, token: int) -> bool:
        try:
            matcher.advance(token, return_tokens=False)
        except Exception:
            return False
        return True


BACKENDS: dict[str, type[Backend]] = {
    "llguidance": LLGuidance,
    "xgrammar": XGrammar,
    "outlines-core": OutlinesCore,
}
IMPORT_NAMES = {
    "llguidance": "llguidance",
    "xgrammar": "xgrammar",
    "outlines-core": "outlines_core",
}


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Run:
    """One grammar fed one document."""

    compile_s: float = 0.0
    matcher_s: float = 0.0
    mask_ms: list[float] = field(default_factory=list)
    consume_ms: list[float] = field(default_factory=list)
    batch_ms: float = 0.0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)

    def p(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class LibraryResult:
    name: str
    version: str = ""
    setup_s: float = 0.0
    runs: dict[str, Run] = field(default_factory=dict)
    coverage: dict[str, bool] = field(default_factory=dict)
    skipped: str = ""

    @property
    def correct(self) -> bool:
        return not self.skipped and all(not r.errors for r in self.runs.values())


def bit(bitmask: Any, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)


def allowed_count(bitmask: Any, row: int, vocab: int) -> int:
    import torch

    words = bitmask[row].to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(32, dtype=torch.int64)
    bits = ((words.unsqueeze(1) >> shifts) & 1).reshape(-1)[:vocab]
    return int(bits.sum())


def measure(
    backend: Backend,
    compile_fn: Callable[[], Any],
    tokens: list[int],
    bad_cases: list[tuple[str, list[int], int]],
    vocab: int,
    eos: int,
    batch: int,
) -> Run:
    """Compile, feed `tokens` one at a time (timing mask and consume), then check the end and
    `bad_cases` ((what, prefix, token): after the prefix, the token is masked out and refused)."""
    import torch

    run = Run(tokens=len(tokens))
    start = time.perf_counter()
    compiled = compile_fn()
    run.compile_s = time.perf_counter() - start
    start = time.perf_counter()
    matcher = backend.matcher(compiled)
    run.matcher_s = time.perf_counter() - start

    words = (vocab + 31) // 32
    bitmask = torch.zeros((1, words), dtype=torch.int32)
    for position, token in enumerate(tokens):
        start = time.perf_counter()
        backend.fill(matcher, bitmask)
        run.mask_ms.append((time.perf_counter() - start) * 1000)
        if not bit(bitmask, 0, token):
            run.errors.append(f"valid token {token} masked at {position}")
            break
        start = time.perf_counter()
        ok = backend.consume(matcher, token)
        run.consume_ms.append((time.perf_counter() - start) * 1000)
        if not ok:
            run.errors.append(f"valid token {token} rejected at {position}")
            break
    if not run.errors:
        backend.fill(matcher, bitmask)
        if not bit(bitmask, 0, eos):
            run.errors.append("end-of-sequence not allowed at the end")
        if allowed_count(bitmask, 0, vocab) != 1:
            run.errors.append(f"{allowed_count(bitmask, 0, vocab)} tokens allowed at the end")

    # Rejection: a fresh matcher fed the prefix, then the bad token.
    for what, prefix, token in bad_cases:
        fresh = backend.matcher(compiled)
        if not all(backend.consume(fresh, t) for t in prefix):
            run.errors.append(f"{what}: the valid prefix was rejected")
            continue
        backend.fill(fresh, bitmask)
        if bit(bitmask, 0, token):
            run.errors.append(f"{what}: token {token} allowed")
        if backend.consume(fresh, token):
            run.errors.append(f"{what}: token {token} accepted")

    # Batch: `batch` rows at spread positions of the document, one step each, repeated.
    if batch > 0:
        rows = []
        for i in range(batch):
            m = backend.matcher(compiled)
            for t in tokens[: (i * len(tokens)) // batch]:
                backend.consume(m, t)
            rows.append(m)
        batch_mask = torch.zeros((batch, words), dtype=torch.int32)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            backend.fill_batch(rows, batch_mask)
            times.append((time.perf_counter() - start) * 1000)
        run.batch_ms = statistics.median(times)
        for i, m in enumerate(rows):
            single = torch.zeros((1, words), dtype=torch.int32)
            backend.fill(m, single)
            if not torch.equal(single[0], batch_mask[i]):
                run.errors.append(f"batched mask differs from the single one at row {i}")
    return run


def run_library(
    name: str, tokenizer: Any, docs: dict[str, str], batch: int, coverage: bool
) -> LibraryResult:
    import importlib.metadata

    result = LibraryResult(name)
    try:
        __import__(IMPORT_NAMES[name])
        result.version = importlib.metadata.version(name)
    except Exception as exc:  # not installed, or broken
        result.skipped = f"not importable ({exc.__class__.__name__}: {exc})"
        return result
    backend = BACKENDS[name]()
    if name == "llguidance":  # imported before timing: its torch helpers torch.compile a kernel
        import llguidance.torch  # noqa: F401
    start = time.perf_counter()
    backend.setup(tokenizer)
    result.setup_s = time.perf_counter() - start

    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def first(text: str) -> int:
        return encode(text)[0]

    common = [
        ("a word first", [], first("hello")),
        ("a ] first", [], first("]")),
        ("a bare key", encode("{"), first("key")),
    ]
    schema_cases = [
        ("a value outside the enum", encode('{"location": "x", "unit": "'), first("kelvin")),
        ("a required key missing", encode('{"location": "x"'), first("}")),
        ("an unknown key", encode('{"'), first("zzz")),
        (
            "a string for an integer",
            encode('{"location": "x", "unit": "celsius", "days": '),
            first('"'),
        ),
    ]
    for label, compile_fn in (
        ("json_object", backend.compile_object),
        ("json_schema", lambda: backend.compile_schema(TOOL_SCHEMA)),
    ):
        tokens = encode(docs[label])
        bad = [*common, ("text after the end", tokens, first(","))]
        if label == "json_schema":
            bad += schema_cases
        try:
            result.runs[label] = measure(backend, compile_fn, tokens, bad, vocab, eos, batch)
        except Exception as exc:
            failed = Run(tokens=len(tokens))
            failed.errors.append(f"{exc.__class__.__name__}: {str(exc)[:200]}")
            result.runs[label] = failed
    if coverage:
        for feature, schema in COVERAGE.items():
            result.coverage[feature] = backend.coverage(schema)
        for feature in REPORTED:  # a compile error is the good outcome
            result.coverage[feature] = not result.coverage[feature]
    return result


def load_tokenizer(model: str, cache_dir: Path) -> Any:
    from tuna_core.base_models import load_tokenizer, resolve_base_model

    return load_tokenizer(resolve_base_model(model, cache_dir))


def recommend(results: list[LibraryResult]) -> tuple[str, str]:
    """The library to use, and why: among those correct on both grammars and that report the
    keywords they cannot enforce (a strict schema must never be silently weakened), the lowest
    p99 mask time on the schema."""
    candidates = [r for r in results if r.correct and "json_schema" in r.runs]
    if not candidates:
        return "none", "no library passed the correctness checks"
    strict = [r for r in candidates if all(r.coverage.get(f, True) for f in REPORTED)]
    if not strict:
        return "none", "no correct library reports the keywords it cannot enforce"

    def key(r: LibraryResult) -> tuple[float, float]:
        s, o = r.runs["json_schema"], r.runs["json_object"]
        return (s.p(s.mask_ms, 0.99), o.p(o.mask_ms, 0.99))

    best = min(strict, key=key)
    left_out = [r.name for r in results if r not in strict and not r.skipped]
    why = "correct on both grammars, reports unenforceable keywords, fastest p99 mask of those"
    if left_out:
        why += f" (left out: {', '.join(left_out)})"
    return best.name, why


def tuna_apply(tokenizer: Any, document: str, batch: int) -> None:
    """Tuna's own per-step call (app/inference/constraints.py on llguidance): masks filled,
    unpacked and applied to float32 logits, for 1, `batch` and 32 rows, mid-document."""
    import torch

    from app.inference.constraints import apply_constraints, compiler_for

    compiler = compiler_for(tokenizer)
    compiled = compiler.compile_json_schema(TOOL_SCHEMA, strict=True)
    tokens = list(tokenizer.encode(document, add_special_tokens=False))
    for rows in sorted({1, max(batch, 1), 32}):
        constraints = []
        for i in range(rows):
            row = compiled.constraint()
            for t in tokens[: (i + 1) * len(tokens) // (rows + 1)]:
                row.accept(t)
            constraints.append(row)
        logits = torch.zeros(rows, compiler.vocab_size)
        times = []
        for _ in range(50):
            start = time.perf_counter()
            apply_constraints(logits, constraints)
            times.append((time.perf_counter() - start) * 1000)
        print(
            f"tuna apply_constraints, {rows} constrained row(s) of {compiler.vocab_size}: "
            f"p50 {statistics.median(times):.3f} ms, max {max(times):.3f} ms"
        )


def main(argv: list[str] | None = None) -> list[LibraryResult]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--model-cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--tokens", type=int, default=200, help="length of each fed document")
    parser.add_argument("--batch", type=int, default=8, help="rows of the batched mask step")
    parser.add_argument("--no-coverage", action="store_true")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.libraries.split(",") if n.strip()]
    for n in names:
        if n not in BACKENDS:
            parser.error(f"unknown library {n!r} (known: {', '.join(LIBRARIES)})")

    print(f"machine: {describe_machine()}")
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.model, args.model_cache_dir)
    print(
        f"tokenizer: {args.model}, {len(tokenizer)} tokens, eos {tokenizer.eos_token!r} "
        f"(loaded in {time.perf_counter() - start:.1f} s)"
    )

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    docs = {
        "json_object": object_document(args.tokens, count),
        "json_schema": schema_document(args.tokens, count),
    }
    results = []
    for name in names:
        result = run_library(name, tokenizer, docs, args.batch, not args.no_coverage)
        results.append(result)
        if result.skipped:
            print(f"{name}: skipped, {result.skipped}")

    header = (
        f"{'library':<14} {'grammar':<12} {'setup s':>8} {'compile ms':>11} {'matcher ms':>11} "
        f"{'mask p50 ms':>12} {'mask p99 ms':>12} {'consume p50':>12} "
        f"{'batch' + str(args.batch) + ' ms':>10} {'tokens':>7} correct"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        for label, run in r.runs.items():
            print(
                f"{r.name:<14} {label:<12} {r.setup_s:>8.2f} {run.compile_s * 1000:>11.1f} "
                f"{run.matcher_s * 1000:>11.2f} {run.p(run.mask_ms, 0.5):>12.3f} "
                f"{run.p(run.mask_ms, 0.99):>12.3f} {run.p(run.consume_ms, 0.5):>12.3f} "
                f"{run.batch_ms:>10.3f} {run.tokens:>7} {'yes' if not run.errors else 'NO'}"
            )
            for error in run.errors[:3]:
                print(f"    ! {error}")
    covered = [r for r in results if r.coverage]
    if covered:
        print()
        print(f"{'schema feature':<26} " + " ".join(f"{r.name:>14}" for r in covered))
        for feature in COVERAGE:
            marks = " ".join(f"{'yes' if r.coverage[feature] else 'no':>14}" for r in covered)
            print(f"{feature:<26} {marks}")
    print()
    for r in results:
        if r.version:
            print(f"{r.name} {r.version}")
    if any(r.name == "llguidance" and r.correct for r in results):
        tuna_apply(tokenizer, docs["json_schema"], args.batch)
    choice, why = recommend(results)
    print(f"why: {why}")
    print(f"recommendation {choice}")
    return results


if __name__ == "__main__":
    main()
