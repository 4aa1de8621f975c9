"""DPO training throughput: Tuna's engine (``method="dpo"``) against ``trl.DPOTrainer`` + ``peft``.

Run through ``bench/train_throughput.py --method dpo``; it shares that bench's arguments, model
building, timing windows and memory accounting (see its docstring), and interleaves the two
trainers step by step in one process the same way:

* baseline: ``trl.DPOTrainer`` on a ``peft`` LoRA model with the engine's LoRA config (trl wraps
  the base model itself from a ``LoraConfig``, as its docs show, so its reference is the base
  model with the adapter disabled), sigmoid loss with the same beta, the same AdamW, warmup-cosine
  schedule and gradient clipping (passed in as ``optimizers``), a sequential sampler over pairs
  already in the engine's (seed, epoch 0) order, ``gradient_checkpointing`` off (trl turns it on
  by default; the engine does not checkpoint at this size), ``bf16`` only where the engine uses
  it, no truncation, logging and saving off.  trl pads the batch's 2 x batch-size sequences to
  the longest and computes log-probabilities through its own fused LM head (labelled positions
  only, in tiles).
* engine: ``worker.training.loop._Run.train_step`` with ``worker.training.dpo.DirectPreference``:
  each pair's two sequences packed into one row with the batch's other pairs, attention per
  sequence, fused LoRA, per-sequence log-probabilities through the chunked head, compiled
  decoder layers (``--compile``).
* Reference log-probabilities: the engine computes them once, before the first step
  (``DirectPreference.prepare``).  By default trl does the same (``--trl-reference precomputed``:
  ``precompute_ref_log_probs=True``), so a step is the same work on both sides (the policy's
  forward and backward over both sequences of each pair) and both one-off passes are timed and
  printed.  ``--trl-reference per-step`` runs trl's default instead (a reference forward with the
  adapter disabled inside every step); then each engine step is charged its share (by tokens) of
  the engine's one-off reference pass, which is what the engine pays per step over one epoch.
* Data: synthetic preference pairs generated in code (fixed seed): a prompt (template, an
  optional system message, the user message) and two answers; each sequence's length lognormal
  like the supervised bench's chats, the non-preferred answer 0.6-1.4x the preferred one's.  The
  engine reads them from a preference JSONL file through ``worker.training.data.load_examples``;
  trl gets the same messages (conversational ``prompt``/``chosen``/``rejected``) and tokenizes
  them itself.  The bench compares the two tokenizations sequence by sequence and prints where
  they differ.
* Throughput: real (non-padding) tokens of both sequences of every pair, each side's own count
  (they agree when the tokenizations do), per step; median per-round ratio of tokens/s.
* Loss parity: at step 1 policy == reference, so both losses are log 2 = 0.693147; later losses
  must stay within the supervised bench's tolerances (the same updates).  ``speedup 0.00`` if not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    MIB,
    describe_machine,
    lognormal_length,
    median,
    percentile,
    rss_bytes,
    words,
)
from train_throughput import (
    MODELS,
    StepRecord,
    _Bench,
    build_engine_model,
    clone_for_baseline,
    load_tokenizer,
)

os.environ.setdefault("TQDM_DISABLE", "1")  # trl's reference pass and datasets' maps

LOG_2 = math.log(2.0)


@dataclass
class PairStep(StepRecord):
    """A round: ``real_tokens`` is the engine's count, ``baseline_tokens`` trl's."""

    baseline_tokens: int = 0
    engine_reference_s: float = 0.0  # share of the engine's one-off reference pass (per-step mode)

    @property
    def ratio(self) -> float:
        """Engine tokens/s over baseline tokens/s (the time ratio when the counts agree)."""
        if not self.engine_s or not self.baseline_s:
            return float("nan")
        return (self.real_tokens / self.engine_s) / (self.baseline_tokens / self.baseline_s)


@dataclass
class DpoResult:
    model: str
    device: str
    weights: str
    trl_reference: str
    records: list[PairStep] = field(default_factory=list)
    warmup_steps: int = 1
    baseline_tokens_per_s: float = float("nan")
    engine_tokens_per_s: float = float("nan")
    median_ratio: float = float("nan")
    baseline_step_mem_mb: float = float("nan")
    engine_step_mem_mb: float = float("nan")
    baseline_peak_mem_mb: float = float("nan")
    engine_peak_mem_mb: float = float("nan")
    memory_ratio: float = float("nan")
    baseline_reference_s: float = 0.0  # trl's precompute (0 when it scores in every step)
    engine_reference_s: float = 0.0  # the engine's prepare()
    token_mismatches: int = 0  # sequences whose token count differs between the two
    first_loss_diff: float = float("nan")
    max_loss_diff: float = float("nan")
    loss_parity: bool = False
    speedup: float = 0.0

    @property
    def measured(self) -> list[PairStep]:
        return self.records[self.warmup_steps :]


# --- data -------------------------------------------------------------------------------------


def preference_example(
    rng: random.Random, total_tokens: int, prompt_share: float, spread: float
) -> dict[str, Any]:
    """A preference line of about ``total_tokens`` tokens per (prompt + preferred) sequence;
    the non-preferred answer has ``spread`` times the preferred one's words."""
    overhead = 30  # SmolLM2's default system message and the turn markers
    prompt = max(1, round(total_tokens * prompt_share) - overhead)
    answer = max(1, total_tokens - prompt - overhead)
    messages = []
    if rng.random() < 0.25:
        messages.append({"role": "system", "content": words(rng, rng.randint(5, 20))})
    messages.append({"role": "user", "content": words(rng, prompt)})
    return {
        "input": {"messages": messages},
        "preferred_output": [{"role": "assistant", "content": words(rng, answer)}],
        "non_preferred_output": [
            {"role": "assistant", "content": words(rng, max(1, round(answer * spread)))}
        ],
    }


def make_pairs(
    tokenizer: Any, n: int, max_len: int, seed: int, median_tokens: float, sigma: float
) -> list[dict[str, Any]]:
    """``n`` preference lines whose two sequences each fit ``max_len`` tokens."""
    from worker.training.data import preference_chats, tokenize_example

    rng = random.Random(seed)
    lo = min(32, max_len)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        target = lognormal_length(rng, median_tokens, sigma, lo, max_len)
        share, spread = rng.uniform(0.2, 0.46), rng.uniform(0.6, 1.4)
        goal = target
        for _ in range(6):  # shrink the text until both sequences fit
            example = preference_example(rng, goal, share, spread)
            longest = max(
                tokenize_example(tokenizer, c).n_tokens for c in preference_chats(example)
            )
            if longest <= max_len:
                out.append(example)
                break
            goal = max(lo, int(goal * max_len / longest) - 4)
    return out


def trl_rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same pairs in trl's conversational preference format."""
    return [
        {
            "prompt": line["input"]["messages"],
            "chosen": line["preferred_output"],
            "rejected": line["non_preferred_output"],
        }
        for line in lines
    ]


def compare_tokenizations(pairs: list[Any], tokenized: Any) -> tuple[int, list[str]]:
    """Sequences whose ids (or answer tokens) differ between the engine and trl; a few notes."""
    mismatches = 0
    notes: list[str] = []
    for i, (pair, row) in enumerate(zip(pairs, tokenized, strict=True)):
        prompt = list(row["prompt_ids"])
        for side, example in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            completion = list(row[f"{side}_ids"])
            same_ids = list(example.input_ids) == prompt + completion
            same_labels = example.n_trainable == len(completion)
            if not (same_ids and same_labels):
                mismatches += 1
                if len(notes) < 3:
                    notes.append(
                        f"pair {i} {side}: engine {example.n_tokens} tokens "
                        f"({example.n_trainable} trained), trl {len(prompt) + len(completion)} "
                        f"({len(completion)} completion)"
                    )
    return mismatches, notes


# --- trl's model ------------------------------------------------------------------------------


def trl_base_model(engine_model: Any) -> Any:
    """The engine's base model without its adapter, frozen tensors shared (for trl to wrap)."""
    clone = clone_for_baseline(engine_model, "lora")
    return clone.unload()  # peft: the LoRA layers replaced by their base layers, nothing merged


def copy_adapters(source: Any, target: Any) -> int:
    """Give ``target``'s adapters ``source``'s values (same names); returns how many tensors."""
    import torch

    values = {n: p for n, p in source.named_parameters() if p.requires_grad}
    copied = 0
    with torch.no_grad():
        for name, param in target.named_parameters():
            if param.requires_grad:
                param.copy_(values[name])
                copied += 1
    if copied != len(values):
        raise RuntimeError(f"trl's model has {copied} adapter tensors, the engine's {len(values)}")
    return copied


class _NoEvents:
    def on_event(self, *_: Any, **__: Any) -> None:
        pass


class _PairBench(_Bench):
    """The supervised bench's windows; an engine step may carry its share of the reference pass."""

    def engine_step(self, index: int) -> None:
        rec: Any = self.records[index]  # a PairStep
        rec.engine_held = self.open_window(self.run.model, self.run.optimizer)
        loss = self.run.train_step(self.batches[index], index)[0]["train_loss"]
        seconds, grown = self.close_window()
        rec.engine_s = seconds + rec.engine_reference_s
        rec.engine_mem, rec.engine_loss = grown, loss
        if self.verbose:
            tag = " (warmup)" if index < self.warmup else ""
            print(
                f"step {index + 1:3d}{tag}: {rec.real_tokens:6d} tokens "
                f"({rec.padded_tokens:6d} padded)  trl {rec.baseline_s:7.2f}s "
                f"loss {rec.baseline_loss:.6f}  engine {rec.engine_s:7.2f}s "
                f"loss {rec.engine_loss:.6f}  ratio {rec.ratio:5.2f}",
                flush=True,
            )


# --- the run ----------------------------------------------------------------------------------


def run(args: Any) -> DpoResult:
    """The DPO bench for ``train_throughput.py``'s parsed arguments."""
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from worker.training import loop as sft
    from worker.training.config import TrainingConfig, resolve_hyperparameters
    from worker.training.data import epoch_order, load_examples
    from worker.training.dpo import DirectPreference

    datasets.disable_progress_bars()
    if args.training_type != "lora":
        raise SystemExit("--method dpo compares LoRA runs only (trl's peft path)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is available")
    device = torch.device(args.device)
    bf16 = sft.autocast_dtype(args.precision, device) == torch.bfloat16
    total_steps = args.warmup_steps + args.steps
    n_pairs = total_steps * args.batch_size
    rtol = args.loss_rtol or (2e-2 if bf16 else 1e-3)
    print(
        f"machine: {describe_machine()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    with tempfile.TemporaryDirectory(prefix="tuna-bench-dpo-") as tmp_name:
        tmp = Path(tmp_name)
        # 1. data: the same pairs, in the engine's epoch-0 order, for both -------------------
        tokenizer = load_tokenizer(args.model_cache_dir)
        if tokenizer is None:
            raise SystemExit("--method dpo needs the SmolLM2 tokenizer: trl tokenizes text")
        lines = make_pairs(tokenizer, n_pairs, args.max_len, args.seed, args.median_len, args.sigma)
        lines = [lines[i] for i in epoch_order(len(lines), args.seed, 0)]
        training_file = tmp / "pairs.jsonl"
        training_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
        pairs = load_examples(training_file, tokenizer, args.max_len, method="dpo")

        cfg = TrainingConfig(
            base_model=MODELS[args.model][0] or args.model,
            model_cache_dir=args.model_cache_dir,
            training_file=training_file,
            output_dir=tmp / "engine-out",
            training_type="lora",
            method="dpo",
            beta=args.beta,
            n_epochs=1,
            batch_size=args.batch_size,
            seed=args.seed,
            max_seq_len=args.max_len,
            device=args.device,
            precision="bf16" if bf16 else "float32",
            activation_memory_gib=args.activation_memory_gib,
            compile=args.compile,
        )
        n_tokens = sum(p.n_tokens for p in pairs)
        hp = resolve_hyperparameters(len(pairs), n_tokens, cfg)

        # 2. models: the engine's LoRA model; trl gets its base (frozen tensors shared) -------
        notes: list[str] = []
        rss0 = rss_bytes()
        engine_model, weights = build_engine_model(
            args.model, args.weights, cfg, args.model_cache_dir, device, notes
        )
        trl_base = trl_base_model(engine_model)
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
        compiled = sft._use_compile(cfg, device, n_tokens)
        method = DirectPreference()
        run_ = sft._Run(
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
            method=method,
        )

        # 3. reference log-probabilities: the engine's one-off pass ---------------------------
        started = time.perf_counter()
        scored = method.prepare({"train": pairs, "valid": []}, hp, run_, None, _NoEvents())
        engine_reference_s = time.perf_counter() - started
        batches = [
            scored["train"][i : i + args.batch_size] for i in range(0, len(pairs), args.batch_size)
        ]

        # 4. trl: DPOTrainer over the same messages -------------------------------------------
        precompute = args.trl_reference == "precomputed"
        timings: dict[str, float] = {}
        baseline_losses: list[Any] = []

        class RecordingDPOTrainer(DPOTrainer):  # type: ignore[misc]
            def _precompute_ref_logps(self, *a: Any, **kw: Any) -> Any:
                begun = time.perf_counter()
                out = super()._precompute_ref_logps(*a, **kw)
                timings["precompute"] = timings.get("precompute", 0.0) + time.perf_counter() - begun
                return out

            def compute_loss(self, model: Any, inputs: Any, *a: Any, **kw: Any) -> Any:
                loss = super().compute_loss(model, inputs, *a, **kw)
                value = loss[0] if isinstance(loss, tuple) else loss
                baseline_losses.append(value.detach())
                return loss

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        # trl turns activation checkpointing on by default; the engine does not checkpoint here.
        names = {f.name for f in dataclasses.fields(DPOConfig)}
        no_checkpointing: dict[str, Any] = {
            "activation_checkpointing"
            if "activation_checkpointing" in names
            else "gradient_checkpointing": False
        }
        dpo_args = DPOConfig(
            output_dir=str(tmp / "baseline-out"),
            per_device_train_batch_size=args.batch_size,
            max_steps=total_steps,
            learning_rate=hp.learning_rate,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm or 0.0,
            seed=args.seed,
            beta=float(hp.beta or args.beta),
            loss_type=["sigmoid"],
            max_length=None,  # every sequence fits --max-len already; the engine never truncates
            precompute_ref_log_probs=precompute,
            **no_checkpointing,
            bf16=bf16,
            train_sampling_strategy="sequential",  # same order as the engine's batches
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=args.device == "cpu",
            dataloader_pin_memory=args.device == "cuda",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside trl
            trainer = RecordingDPOTrainer(
                model=trl_base,
                args=dpo_args,
                train_dataset=Dataset.from_list(trl_rows(lines)),
                processing_class=tokenizer,
                peft_config=lora,
            )
        trainer.remove_callback(PrinterCallback)  # its end-of-training log line
        baseline_model = trainer.model
        copy_adapters(engine_model, baseline_model)  # the same starting adapter on both sides
        baseline_opt, baseline_sched = optimizer_and_schedule(baseline_model, engine=False)
        trainer.optimizer, trainer.lr_scheduler = baseline_opt, baseline_sched

        trl_data: Any = trainer.train_dataset  # tokenized by trl (+ reference log-probs)
        mismatches, token_notes = compare_tokenizations(pairs, trl_data)

        # 5. records, the plan --------------------------------------------------------------
        records: list[PairStep] = []
        total_engine_tokens = sum(p.n_tokens for p in pairs)
        for i, batch in enumerate(batches):
            index = range(i * args.batch_size, i * args.batch_size + len(batch))
            rows = [trl_data[j] for j in index]
            trl_lengths = [
                len(r["prompt_ids"]) + len(r[f"{side}_ids"])
                for r in rows
                for side in ("chosen", "rejected")
            ]
            engine_tokens = sum(p.n_tokens for p in batch)
            records.append(
                PairStep(
                    step=i,
                    real_tokens=engine_tokens,
                    padded_tokens=max(trl_lengths) * len(trl_lengths),
                    label_tokens=sum(
                        p.pair.chosen.n_trainable + p.pair.rejected.n_trainable for p in batch
                    ),
                    engine_rows=len(method.pack(batch, run_.max_row_tokens)),
                    baseline_tokens=sum(trl_lengths),
                    engine_reference_s=(
                        0.0
                        if precompute
                        else engine_reference_s * engine_tokens / total_engine_tokens
                    ),
                )
            )
        lengths = [e.n_tokens for p in pairs for e in (p.chosen, p.rejected)]
        label_share = sum(r.label_tokens for r in records) / sum(r.real_tokens for r in records)
        padded = sum(r.padded_tokens for r in records) / sum(r.baseline_tokens for r in records)
        trainable = sum(p.numel() for p in engine_model.parameters() if p.requires_grad)
        print(
            f"model: {args.model} ({weights} weights), LoRA, {trainable / 1e6:.2f}M trainable, "
            f"device {args.device}, {'bf16 autocast' if bf16 else 'float32'}; DPO beta "
            f"{hp.beta:g}, lr {hp.learning_rate:g}, batch {args.batch_size} pairs, "
            f"{args.warmup_steps} warmup + {args.steps} measured steps"
        )
        print(
            f"data: {len(pairs)} pairs, {len(lengths)} sequences of median "
            f"{median(lengths):.0f} mean {sum(lengths) / len(lengths):.0f} p90 "
            f"{percentile(lengths, 0.9):.0f} max {max(lengths)} tokens; "
            f"{1 - label_share:.0%} prompt / {label_share:.0%} answer; trl pads to "
            f"{padded:.2f}x the real tokens; engine "
            + (
                f"rows of <= {run_.max_row_tokens} tokens"
                if any(r.engine_rows > 1 for r in records)
                else "one row per batch"
            )
            + (
                ", compiled layers (compiling in the first warmup step)"
                if run_.compiled
                else ", eager"
            )
        )
        same = len(lengths) - mismatches
        print(
            f"tokenization: engine (worker.training.data) and trl agree on {same} of "
            f"{len(lengths)} sequences (ids and answer tokens)"
            + ("" if not token_notes else "; " + "; ".join(token_notes))
        )
        trl_ref = timings.get("precompute", 0.0)
        print(
            "reference log-probs: "
            + (
                f"both once before training: trl {trl_ref:.2f}s, engine {engine_reference_s:.2f}s"
                if precompute
                else f"trl in every step (its default), engine once ({engine_reference_s:.2f}s, "
                "charged to its steps by tokens)"
            )
        )

        # 6. interleaved steps ----------------------------------------------------------------
        bench = _PairBench(device, records, run_, batches)  # type: ignore[arg-type]
        bench.warmup = args.warmup_steps

        class Alternate(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, *_: Any, **__: Any) -> None:
                records[0].baseline_held = bench.open_window(baseline_model, baseline_opt)

            def on_step_end(  # type: ignore[override]
                self, _args: Any, state: Any, *_: Any, **__: Any
            ) -> None:
                index = state.global_step - 1
                rec = records[index]
                rec.baseline_s, rec.baseline_mem = bench.close_window()
                rec.baseline_loss = float(baseline_losses[index])
                bench.engine_step(index)
                if index + 1 < len(records):
                    held = bench.open_window(baseline_model, baseline_opt)
                    records[index + 1].baseline_held = held

        trainer.add_callback(Alternate())
        with bench.sampler, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside trl
            trainer.train()

    # 7. results ------------------------------------------------------------------------------
    result = DpoResult(
        model=args.model,
        device=args.device,
        weights=weights,
        trl_reference=args.trl_reference,
        records=records,
        warmup_steps=min(args.warmup_steps, len(records) - 1),
        baseline_reference_s=trl_ref,
        engine_reference_s=engine_reference_s,
        token_mismatches=mismatches,
    )
    measured = result.measured
    base_tps = [r.baseline_tokens / r.baseline_s for r in measured]
    eng_tps = [r.real_tokens / r.engine_s for r in measured]
    ratios = [r.ratio for r in measured]
    result.baseline_tokens_per_s = median(base_tps)
    result.engine_tokens_per_s = median(eng_tps)
    result.median_ratio = median(ratios)
    result.baseline_step_mem_mb = max(r.baseline_mem for r in measured) / MIB
    result.engine_step_mem_mb = max(r.engine_mem for r in measured) / MIB
    result.baseline_peak_mem_mb = max(r.baseline_peak for r in measured) / MIB
    result.engine_peak_mem_mb = max(r.engine_peak for r in measured) / MIB
    result.memory_ratio = result.engine_peak_mem_mb / result.baseline_peak_mem_mb
    first = records[0]
    result.first_loss_diff = abs(first.baseline_loss - first.engine_loss)
    rel = [abs(r.baseline_loss - r.engine_loss) / max(abs(r.baseline_loss), 1e-6) for r in records]
    result.max_loss_diff = max(rel)
    at_log_2 = all(abs(x - LOG_2) <= rtol * LOG_2 for x in (first.baseline_loss, first.engine_loss))
    result.loss_parity = (
        at_log_2 and result.first_loss_diff <= rtol * LOG_2 and result.max_loss_diff <= 10 * rtol
    )
    result.speedup = result.median_ratio if result.loss_parity else 0.0

    ref_note = "reference precomputed" if precompute else "reference forward in every step"
    print(
        f"baseline (trl DPOTrainer + peft LoRA, padded, {ref_note}): median "
        f"{result.baseline_tokens_per_s:.1f} real tokens/s "
        f"(min {min(base_tps):.1f}, max {max(base_tps):.1f})"
    )
    print(
        f"engine (pairs packed, varlen attention, fused LoRA + head, "
        f"{'compiled' if run_.compiled else 'eager'}"
        + ("" if precompute else ", + its share of the one-off reference pass")
        + f"): median {result.engine_tokens_per_s:.1f} real tokens/s "
        f"(min {min(eng_tps):.1f}, max {max(eng_tps):.1f})"
    )
    base_total = sum(r.baseline_s for r in measured)
    eng_total = sum(r.engine_s for r in measured)
    print(
        f"per-step ratio: median {result.median_ratio:.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} rounds); "
        f"in total {base_total:.1f}s vs {eng_total:.1f}s"
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
    last = records[-1]
    print(f"final loss: baseline {last.baseline_loss:.6f}, engine {last.engine_loss:.6f}")
    print(
        f"first-step loss (log 2 = {LOG_2:.6f}): baseline {first.baseline_loss:.6f}, engine "
        f"{first.engine_loss:.6f}, |diff| {result.first_loss_diff:.2e} (tolerance {rtol:g} "
        f"relative); largest relative difference over all steps {result.max_loss_diff:.2e}"
    )
    print(f"loss parity: {'ok' if result.loss_parity else 'FAILED'}")
    if not result.loss_parity:
        print(f"median ratio {result.median_ratio:.2f} not counted: loss parity FAILED")
    print(f"speedup {result.speedup:.2f}")
    return result
