"""Dataset throughput: upload-time validation and tokenization of a large chat JSONL.

A chat JSONL of ``--size-mb`` is generated (streamed to a temporary file, never held in memory),
then measured:

(a) upload-time validation, ``app.files.validation.validate_file``: MB/s and peak RSS growth.
    The same is done for a file a quarter the size: memory must be flat in the file size (the
    validator holds one line at a time), so the two peaks should be about equal.
(b) tokenization with the SmolLM2 tokenizer, on the first ``--tokenize-mb`` of the file:
      * ``encode_batch``: the Rust tokenizer's own batch call (all cores) on the texts rendered
        by the chat template beforehand, the reference;
      * ``batched``: the transformers fast tokenizer called on the same batches with offsets;
      * ``engine_tokenize``: ``worker.training.data.tokenize_rendered``, the engine's tokenizing
        step, on the same chats rendered beforehand (batched call, labels of the assistant
        spans), chunk by chunk as ``load_examples`` calls it;
      * ``engine``: ``worker.training.data.load_examples`` on a JSONL file of those examples,
        the function the worker calls to load a training file: it reads and parses the file,
        renders the template (the whole chat, and the prefix before each trained assistant
        message to locate it), tokenizes and labels; the rendering overlaps with tokenizing.
        This is the real path, and what the ``tokenization_ratio`` line reports.
    MB/s counts rendered-text bytes; the ratios are against ``encode_batch``.  The paths run in
    turn ``--repeats`` times and each keeps its best time, so a burst of load from other work on
    the machine skews one round rather than the ratio.  The tokenizer uses all cores unless
    ``TOKENIZERS_PARALLELISM`` is false (the header line says which).  The memory the examples
    ``load_examples`` returns hold is traced too.
(c) the worker's check of a whole file, ``worker.training.data.validate_examples`` (render,
    tokenize, label and check every example, keeping none) on the quarter-size and the full
    file: MB/s of file bytes and peak RSS growth, which must not grow with the file (it streams
    ``TOKENIZE_CHUNK`` examples at a time).

    python bench/validate_throughput.py                  # 200 MB
    python bench/validate_throughput.py --size-mb 50 --tokenize-mb 8

Targets: validation >= 50 MB/s; tokenization (the engine) within 90% of ``encode_batch``.  The
last two lines are ``tokenization_ratio X.XX`` (engine / ``encode_batch``) and
``validation_mb_s X.X``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BENCH_DIR = Path(__file__).resolve().parent
for _path in (str(BENCH_DIR.parent), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import (  # noqa: E402
    MIB,
    chat_example,
    describe_machine,
    hwm_bytes,
    lognormal_length,
    rss_bytes,
    trim_heap,
)

DEFAULT_CACHE = BENCH_DIR.parent / "var" / "model-cache"
VALIDATION_GOAL_MB_S = 50.0
TOKENIZATION_GOAL = 0.90
POOL = 4000  # distinct example lines; the file repeats them in random order


@dataclass
class ValidationRun:
    size_mb: float
    seconds: float
    mb_s: float
    peak_growth_mb: float
    examples: int
    ok: bool


@dataclass
class Result:
    full: ValidationRun
    quarter: ValidationRun
    encode_batch_mb_s: float
    batched_mb_s: float
    engine_tokenize_mb_s: float
    engine_mb_s: float
    render_mb_s: float
    engine_render_mb_s: float
    tokenized_mb: float
    threads: int
    worker_quarter: ValidationRun
    worker_full: ValidationRun

    @property
    def batched_ratio(self) -> float:
        return self.batched_mb_s / self.encode_batch_mb_s

    @property
    def engine_tokenize_ratio(self) -> float:
        return self.engine_tokenize_mb_s / self.encode_batch_mb_s

    @property
    def engine_ratio(self) -> float:
        return self.engine_mb_s / self.encode_batch_mb_s


# --- the file ---------------------------------------------------------------------------------


def example_lines(seed: int) -> list[bytes]:
    """A pool of JSONL lines: chats of lognormal length (median 256 tokens), ~1/3 prompt."""
    rng = random.Random(seed)
    lines = []
    for _ in range(POOL):
        tokens = lognormal_length(rng, 256, 0.9, 32, 1024)
        example = chat_example(rng, tokens, rng.uniform(0.2, 0.46))
        lines.append(json.dumps(example, ensure_ascii=False).encode() + b"\n")
    return lines


def chunks(size: int, seed: int) -> Iterator[bytes]:
    """About ``size`` bytes of JSONL in ~1 MiB chunks, whole lines only."""
    pool = example_lines(seed)
    rng = random.Random(seed + 1)
    written = 0
    while written < size:
        buf = []
        n = 0
        while n < MIB and written + n < size:
            line = pool[rng.randrange(len(pool))]
            buf.append(line)
            n += len(line)
        written += n
        yield b"".join(buf)


def write_file(path: Path, size: int, seed: int) -> int:
    with path.open("wb") as fh:
        for chunk in chunks(size, seed):
            fh.write(chunk)
    return path.stat().st_size


# --- (a) validation ---------------------------------------------------------------------------


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def measure_pass(path: Path, check: Callable[[Path], tuple[int, bool]]) -> ValidationRun:
    """``check(path)`` -> (examples, ok): throughput and the peak RSS growth while it runs."""
    trim_heap()
    start_rss = rss_bytes()
    exact = _reset_hwm()
    peak = start_rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    examples, ok = check(path)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    hwm = hwm_bytes() if exact else None
    if hwm is not None:
        peak = max(peak, hwm)
    size_mb = path.stat().st_size / MIB
    return ValidationRun(
        size_mb=size_mb,
        seconds=seconds,
        mb_s=size_mb / seconds,
        peak_growth_mb=(peak - start_rss) / MIB,
        examples=examples,
        ok=ok,
    )


def print_passes(name: str, quarter: ValidationRun, full: ValidationRun, slack_mb: float) -> None:
    """Both passes of ``name``, and whether its peak memory stayed flat in the file size."""
    for run in (quarter, full):
        print(
            f"{name} {run.size_mb:6.1f} MB: {run.seconds:6.2f}s  {run.mb_s:6.1f} MB/s  "
            f"peak RSS growth {run.peak_growth_mb:6.1f} MB  "
            f"{run.examples} examples, {'valid' if run.ok else 'INVALID'}"
        )
    flat = full.peak_growth_mb <= quarter.peak_growth_mb + slack_mb
    print(
        f"{name}: memory flat in file size: {'yes' if flat else 'NO'} "
        f"({quarter.size_mb:.0f} MB -> {quarter.peak_growth_mb:.1f} MB, "
        f"{full.size_mb:.0f} MB -> {full.peak_growth_mb:.1f} MB)"
    )


def upload_validation(path: Path) -> tuple[int, bool]:
    from app.files.validation import validate_file

    report = validate_file(path)
    return report.example_count, report.ok


def worker_validation(tokenizer: Any, context: int) -> Callable[[Path], tuple[int, bool]]:
    """The worker's check of a job's file (render, tokenize, label, check every example) without
    keeping the examples: what a file of any size costs to stream through the tokenizer."""
    from worker.training.data import validate_examples

    def check(path: Path) -> tuple[int, bool]:
        report = validate_examples(path, tokenizer, context)
        return report.n_examples, report.ok

    return check


# --- (b) tokenization -------------------------------------------------------------------------


def load_tokenizer(cache_dir: Path) -> Any:
    from tuna_core.base_models import load_tokenizer, resolve_base_model

    folder = resolve_base_model("tuna-tiny-test", cache_dir)  # SmolLM2's tokenizer
    return load_tokenizer(folder)


def first_lines(path: Path, limit: int) -> list[bytes]:
    """The whole lines of the first ``limit`` bytes of ``path``."""
    out, n = [], 0
    with path.open("rb") as fh:
        for raw in fh:
            if n >= limit:
                break
            n += len(raw)
            out.append(raw)
    return out


def measure_tokenization(
    tokenizer: Any, path: Path, context: int, batch: int, repeats: int
) -> dict[str, float]:
    """MB/s (rendered text) of the ways to tokenize; see the module docstring."""
    from tuna_core.chat_template import prepare_chat, render_chat, render_training_chat
    from worker.training.data import TOKENIZE_CHUNK, load_examples, tokenize_rendered

    examples = [json.loads(line) for line in path.read_bytes().splitlines()]
    template = tokenizer.chat_template
    started = time.perf_counter()
    texts = []
    for example in examples:
        messages, _, tools = prepare_chat(example["messages"], example.get("tools"), template)
        texts.append(render_chat(tokenizer, messages, tools))
    render_s = time.perf_counter() - started
    started = time.perf_counter()
    chats = [render_training_chat(tokenizer, example) for example in examples]
    engine_render_s = time.perf_counter() - started
    assert [chat.text for chat in chats] == texts
    mb = sum(len(t.encode()) for t in texts) / MIB
    rust = tokenizer.backend_tokenizer

    def encode_batch() -> None:
        for i in range(0, len(texts), batch):
            rust.encode_batch(texts[i : i + batch], add_special_tokens=False)

    def batched() -> None:
        for i in range(0, len(texts), batch):
            tokenizer(texts[i : i + batch], add_special_tokens=False, return_offsets_mapping=True)

    def engine_tokenize() -> None:
        for i in range(0, len(chats), TOKENIZE_CHUNK):
            tokenize_rendered(tokenizer, chats[i : i + TOKENIZE_CHUNK])

    def engine() -> None:
        assert len(load_examples(path, tokenizer, context)) == len(texts)

    paths = {
        "encode_batch": encode_batch,
        "batched": batched,
        "engine_tokenize": engine_tokenize,
        "engine": engine,
    }
    seconds = dict.fromkeys(paths, float("inf"))
    for _ in range(repeats):
        for name, run in paths.items():
            started = time.perf_counter()
            run()
            seconds[name] = min(seconds[name], time.perf_counter() - started)
    rates = {name: mb / s for name, s in seconds.items()}
    held, tokens = memory_held(path, tokenizer, context)
    return {
        "mb": mb,
        "render": mb / render_s,
        "engine_render": mb / engine_render_s,
        "held_mb": held / MIB,
        "held_bytes_per_token": held / tokens,
        **rates,
    }


def memory_held(path: Path, tokenizer: Any, context: int) -> tuple[int, int]:
    """Bytes the examples ``load_examples`` returns keep allocated (traced by tracemalloc, so
    exact and free of allocator noise), and their token count."""
    import tracemalloc

    from worker.training.data import load_examples

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    examples = load_examples(path, tokenizer, context)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, sum(e.n_tokens for e in examples)


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200.0)
    parser.add_argument("--tokenize-mb", type=float, default=16.0)
    parser.add_argument("--batch", type=int, default=1000, help="texts per tokenizer call")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the tokenization paths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary files go")
    args = parser.parse_args(argv)

    print(f"machine: {describe_machine()}")
    with tempfile.TemporaryDirectory(prefix="tuna-validate-", dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        full_path, quarter_path = tmp / "full.jsonl", tmp / "quarter.jsonl"
        started = time.perf_counter()
        size = write_file(full_path, int(args.size_mb * MIB), args.seed)
        write_file(quarter_path, int(args.size_mb * MIB / 4), args.seed)
        print(
            f"generated {size / MIB:.0f} MB (+ a quarter-size file) of chat JSONL "
            f"in {time.perf_counter() - started:.1f}s"
        )

        quarter = measure_pass(quarter_path, upload_validation)
        full = measure_pass(full_path, upload_validation)
        print_passes("validate_file", quarter, full, slack_mb=16)

        tokenizer = load_tokenizer(args.model_cache_dir)
        head = first_lines(full_path, int(args.tokenize_mb * MIB))
        head_path = tmp / "head.jsonl"
        head_path.write_bytes(b"".join(head))
        from tuna_core.base_models import get_base_model_info

        context = get_base_model_info("tuna-tiny-test").context_length
        tok = measure_tokenization(tokenizer, head_path, context, args.batch, args.repeats)
        check = worker_validation(tokenizer, context)
        worker_quarter = measure_pass(quarter_path, check)
        worker_full = measure_pass(full_path, check)
    threads = os.cpu_count() or 1
    result = Result(
        full=full,
        quarter=quarter,
        encode_batch_mb_s=tok["encode_batch"],
        batched_mb_s=tok["batched"],
        engine_tokenize_mb_s=tok["engine_tokenize"],
        engine_mb_s=tok["engine"],
        render_mb_s=tok["render"],
        engine_render_mb_s=tok["engine_render"],
        tokenized_mb=tok["mb"],
        threads=threads,
        worker_quarter=worker_quarter,
        worker_full=worker_full,
    )
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM", "unset: parallel")
    print(
        f"tokenization of {tok['mb']:.1f} MB rendered text ({len(head)} chats, {threads} cores, "
        f"TOKENIZERS_PARALLELISM {parallelism}, best of {args.repeats}):"
    )

    def line(name: str, mb_s: float, reference: bool = False) -> str:
        ratio = mb_s / result.encode_batch_mb_s
        verdict = "ok" if ratio >= TOKENIZATION_GOAL else "below"
        versus = "" if reference else f" = {ratio:4.0%} of encode_batch ({verdict} the 90% target)"
        return f"  {name:46s} {mb_s:6.2f} MB/s{versus}"

    print(line("encode_batch, pre-rendered texts (reference)", result.encode_batch_mb_s, True))
    print(line("transformers batch call with offsets", result.batched_mb_s))
    print(line("engine tokenizing, data.tokenize_rendered", result.engine_tokenize_mb_s))
    print(line("engine real path, data.load_examples", result.engine_mb_s))
    print(
        f"  (chat-template rendering alone, 1 render per chat: {result.render_mb_s:.2f} MB/s; "
        f"the engine's renders, whole chat + prefixes: {result.engine_render_mb_s:.2f} MB/s)"
    )
    print(
        f"  loaded examples hold {tok['held_mb']:.1f} MB "
        f"({tok['held_bytes_per_token']:.1f} bytes a token, traced)"
    )
    # The worker's chunks of rendered chats and encodings weigh tens of MB: more slack.
    print_passes("worker check, data.validate_examples", worker_quarter, worker_full, slack_mb=64)
    print(
        f"validation {'meets' if full.mb_s >= VALIDATION_GOAL_MB_S else 'misses'} the "
        f"{VALIDATION_GOAL_MB_S:.0f} MB/s target"
    )
    print(f"tokenization_ratio {result.engine_ratio:.2f}")
    print(f"validation_mb_s {full.mb_s:.1f}")
    return result


if __name__ == "__main__":
    main()
