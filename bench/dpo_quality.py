"""DPO quality on the bundled model: the base, a plain reference DPO loop, and Tuna's engine.

The task (`bench/preference_task.py`): questions SmolLM2-135M-Instruct answers correctly in its
own words, whose preferred answer is ``ANSWER: <value>``, a format the base never uses.  Held-out
exact match (greedy reply, as the server renders the prompt, equal to ``ANSWER: <value>``) before
and after DPO, in one process:

* **base**: the base model as it is.
* **reference**: a plain DPO loop in torch + peft: LoRA (rank 16, alpha 32, dropout 0,
  ``all-linear``) on the base, AdamW (torch defaults, constant learning rate 2e-4), one pair per
  step (its two sequences right-padded into one batch of 2, logits over every position), the
  pairs shuffled each epoch; ``log p(y | x)`` the sum over the answer tokens (content and
  ``<|im_end|>\\n``, as the engine trains), the reference log-probabilities from the same model
  with the adapter disabled, under ``no_grad``, at every step; loss ``-logsigmoid(beta *
  ((pi_w - ref_w) - (pi_l - ref_l)))``.  Timed from loading the model to the last step.
* **tuna**: ``worker.training.train(TrainingConfig(method="dpo", lora_rank=16, lora_alpha=32,
  n_epochs=3, batch_size=1, learning_rate_multiplier=1.0, beta=0.1, seed=0))``, the engine's own
  defaults otherwise (warmup and cosine schedule, gradient clipping, precision, compile), timed
  around the call; its ``final`` adapter is then loaded with peft and scored the same way.

Prints a table, then ``em_gain_tuna_over_reference X.XX`` (Tuna's held-out exact match minus the
reference's, in points) and last ``time_ratio_tuna_over_reference X.XX`` (< 1: Tuna faster).

    .venv/bin/python bench/dpo_quality.py                    # 48 pairs, 3 epochs, both sides
    .venv/bin/python bench/dpo_quality.py --tuna-only
    .venv/bin/python bench/dpo_quality.py --reference-only --epochs 2 --train-pairs 32
    .venv/bin/python bench/dpo_quality.py --reference-only --epoch-em --reference-sft-weight 1

``--threads 1`` on a machine shared with other work: two torch threads on two busy cores ran the
reference loop 10x slower (OpenMP workers waiting on each other), one side more than the other.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import preference_task as task_mod  # noqa: E402
from preference_task import Item, Reply, exact_match  # noqa: E402

BASE_MODEL = "SmolLM2-135M-Instruct"


def load_base(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


# --- the plain reference loop -----------------------------------------------------------------


def _pair_tensors(tokenizer: Any, item: Item) -> tuple[Any, Any, Any]:
    """(input_ids [2, T], attention_mask [2, T], answer_mask [2, T-1]) for (preferred,
    non-preferred): the mask marks the positions whose next token is an answer token."""
    import torch

    from tuna_core.chat_template import render_prompt

    prompt = render_prompt(tokenizer, item.messages)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    seqs, answer_starts = [], []
    for answer in (item.preferred, item.natural):
        ids = tokenizer(prompt + answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:
            raise RuntimeError("the prompt does not tokenize as a prefix of prompt + answer")
        seqs.append(ids)
        answer_starts.append(len(prompt_ids))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((2, width), pad, dtype=torch.long)
    attention = torch.zeros((2, width), dtype=torch.long)
    answer_mask = torch.zeros((2, width - 1), dtype=torch.bool)
    for row, (ids, start) in enumerate(zip(seqs, answer_starts, strict=True)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        answer_mask[row, start - 1 : len(ids) - 1] = True  # position p predicts token p + 1
    return input_ids, attention, answer_mask


def _sequence_log_probs(model: Any, input_ids: Any, attention: Any, answer_mask: Any) -> Any:
    """Sum of the answer tokens' log-probabilities, one per row."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_lp * answer_mask).sum(-1)


def reference_dpo(
    model_dir: Path,
    tokenizer: Any,
    items: list[Item],
    *,
    epochs: int,
    lr: float,
    beta: float,
    rank: int,
    alpha: int,
    seed: int,
    sft_weight: float = 0.0,
    after_epoch: Callable[[int, Any], None] | None = None,
) -> tuple[Any, float, tuple[list[float], list[float], list[float]]]:
    """The plain loop: (the trained peft model, seconds from loading to the last step, (losses,
    chosen rewards, rejected rewards) of every step).

    ``sft_weight`` > 0 adds that times the preferred answer's mean token negative log-likelihood
    to each pair's loss (RPO, Pang et al. 2024; TRL's ``rpo_alpha``): not plain DPO, a variant
    to compare.  ``after_epoch(epoch, model)`` runs after each epoch, its time not counted.
    """
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = get_peft_model(
        load_base(model_dir),
        LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    pairs = [_pair_tensors(tokenizer, item) for item in items]
    order = list(range(len(pairs)))
    rng = random.Random(seed)
    losses: list[float] = []
    chosen: list[float] = []
    rejected: list[float] = []
    n_chosen = [float(mask[0].sum()) for _, _, mask in pairs]
    paused = 0.0
    for epoch in range(epochs):
        if epoch:
            epoch_loss = sum(losses[-len(order) :]) / len(order)
            elapsed = time.perf_counter() - start - paused
            print(f"  reference: epoch {epoch} loss {epoch_loss:.4f}, {elapsed:.0f} s")
        rng.shuffle(order)
        for index in order:
            input_ids, attention, answer_mask = pairs[index]
            with torch.no_grad(), model.disable_adapter():
                ref = _sequence_log_probs(model, input_ids, attention, answer_mask)
            policy = _sequence_log_probs(model, input_ids, attention, answer_mask)
            margin = (policy[0] - ref[0]) - (policy[1] - ref[1])
            loss = -F.logsigmoid(beta * margin)
            if sft_weight:
                loss = loss - sft_weight * policy[0] / n_chosen[index]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            rewards = (beta * (policy - ref)).detach()
            chosen.append(float(rewards[0]))
            rejected.append(float(rewards[1]))
        if after_epoch is not None:
            pause = time.perf_counter()
            after_epoch(epoch + 1, model)
            model.train()
            paused += time.perf_counter() - pause
    return model, time.perf_counter() - start - paused, (losses, chosen, rejected)


# --- Tuna's engine ----------------------------------------------------------------------------


def tuna_dpo(
    training_file: Path,
    output_dir: Path,
    model_cache: Path,
    *,
    epochs: int,
    lr_multiplier: float,
    beta: float,
    rank: int,
    alpha: int,
    seed: int,
    **overrides: Any,
) -> tuple[Path, float, list[dict[str, float]]]:
    """(the final adapter folder, seconds in ``train``, the metrics of every step)."""
    from worker.training import NullCallbacks, TrainingConfig, train

    class Recorder(NullCallbacks):
        def __init__(self) -> None:
            self.metrics: list[dict[str, float]] = []

        def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
            self.metrics.append({"step": step, **metrics})

    config = TrainingConfig(
        method="dpo",
        base_model=BASE_MODEL,
        training_file=training_file,
        output_dir=output_dir,
        model_cache_dir=model_cache,
        lora_rank=rank,
        lora_alpha=alpha,
        n_epochs=epochs,
        batch_size=1,
        learning_rate_multiplier=lr_multiplier,
        beta=beta,
        seed=seed,
        **overrides,
    )
    recorder = Recorder()
    start = time.perf_counter()
    result = train(config, recorder)
    return result.final_dir, time.perf_counter() - start, recorder.metrics


def load_adapter(model_dir: Path, adapter_dir: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(model_dir), adapter_dir)


# --- the run ----------------------------------------------------------------------------------


def _show(name: str, items: list[Item], replies: list[Reply], n: int) -> None:
    for item, reply in list(zip(items, replies, strict=True))[:n]:
        mark = "ok " if task_mod.is_exact(reply, item) else "   "
        print(f"  [{name}] {mark}{item.question!r} -> {reply}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sides = parser.add_mutually_exclusive_group()
    sides.add_argument("--tuna-only", action="store_true", help="skip the reference loop")
    sides.add_argument("--reference-only", action="store_true", help="skip Tuna's engine")
    parser.add_argument("--train-pairs", type=int, default=48)
    parser.add_argument("--heldout", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4, help="reference's constant learning rate")
    parser.add_argument("--lr-multiplier", type=float, default=1.0, help="Tuna's (x 2e-4 for LoRA)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="task split, LoRA init, data order")
    parser.add_argument(
        "--style",
        choices=sorted(task_mod.STYLES),
        default=task_mod.DEFAULT_STYLE,
        help="the preferred answer's format",
    )
    parser.add_argument(
        "--reference-sft-weight",
        type=float,
        default=0.0,
        help="add this x the preferred answer's NLL to the reference's loss (RPO; 0: plain DPO)",
    )
    parser.add_argument(
        "--epoch-em", action="store_true", help="the reference's held-out EM after each epoch"
    )
    parser.add_argument("--show", type=int, default=3, help="replies to print per model")
    parser.add_argument("--model-cache", type=Path, default=REPO_ROOT / "var" / "model-cache")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args(argv)

    import torch

    from tuna_core.base_models import load_tokenizer, resolve_base_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_base_model(BASE_MODEL, args.model_cache)
    tokenizer = load_tokenizer(model_dir)
    task = task_mod.build_task(args.seed, args.train_pairs, args.heldout, args.style)
    print(
        f"task: {len(task.train)} training pairs, {len(task.heldout)} held-out questions "
        f"(seed {args.seed}); preferred answers like {task.heldout[0].preferred!r}; "
        f"epochs {args.epochs}, beta {args.beta}, LoRA r{args.rank} alpha {args.alpha}; "
        f"torch threads {torch.get_num_threads()}"
    )
    rows: list[tuple[str, float, int, float | None, str]] = []

    base = load_base(model_dir)
    base_em, replies = exact_match(base, tokenizer, task.heldout)
    _show("base", task.heldout, replies, args.show)
    rows.append(("base", base_em, _n_format(replies, args.style), None, ""))
    del base
    gc.collect()

    def after_epoch(epoch: int, model: Any) -> None:
        em, replies = exact_match(model, tokenizer, task.heldout)
        n_format = _n_format(replies, args.style)
        print(f"  reference after epoch {epoch}: held-out exact match {em:.0%}, format {n_format}")

    ref_em = ref_time = None
    if not args.tuna_only:
        model, ref_time, (losses, chosen, rejected) = reference_dpo(
            model_dir,
            tokenizer,
            task.train,
            epochs=args.epochs,
            lr=args.lr,
            beta=args.beta,
            rank=args.rank,
            alpha=args.alpha,
            seed=args.seed,
            sft_weight=args.reference_sft_weight,
            after_epoch=after_epoch if args.epoch_em else None,
        )
        ref_em, replies = exact_match(model, tokenizer, task.heldout)
        _show("reference", task.heldout, replies, args.show)
        n_last = len(task.train)
        note = _note(losses[-n_last:], chosen[-n_last:], rejected[-n_last:])
        name = "reference (torch + peft)"
        if args.reference_sft_weight:
            name = f"reference + {args.reference_sft_weight:g} x NLL(preferred) (RPO)"
        rows.append((name, ref_em, _n_format(replies, args.style), ref_time, note))
        del model
        gc.collect()

    tuna_em = tuna_time = None
    if not args.reference_only:
        with tempfile.TemporaryDirectory(prefix="tuna-dpo-quality-") as tmp:
            training_file = task_mod.write_training_file(Path(tmp) / "train.jsonl", task.train)
            final_dir, tuna_time, metrics = tuna_dpo(
                training_file,
                Path(tmp) / "out",
                args.model_cache,
                epochs=args.epochs,
                lr_multiplier=args.lr_multiplier,
                beta=args.beta,
                rank=args.rank,
                alpha=args.alpha,
                seed=args.seed,
            )
            model = load_adapter(model_dir, final_dir)
            tuna_em, replies = exact_match(model, tokenizer, task.heldout)
        _show("tuna", task.heldout, replies, args.show)
        last_epoch = metrics[-len(task.train) :]
        note = _note(
            [m.get("train_loss", math.nan) for m in last_epoch],
            [m.get("train_chosen_reward", math.nan) for m in last_epoch],
            [m.get("train_rejected_reward", math.nan) for m in last_epoch],
        )
        rows.append(
            (
                "tuna (worker.training.train)",
                tuna_em,
                _n_format(replies, args.style),
                tuna_time,
                note,
            )
        )
        del model
        gc.collect()

    print()
    print("| model | held-out exact match | in format | training wall time | |")
    print("| --- | --- | --- | --- | --- |")
    n = len(task.heldout)
    for name, em, fmt, seconds, note in rows:
        wall = "-" if seconds is None else f"{seconds:.1f} s"
        print(f"| {name} | {em:.0%} ({round(em * n)}/{n}) | {fmt}/{n} | {wall} | {note} |")
    print()
    if ref_em is not None and tuna_em is not None:
        assert ref_time is not None and tuna_time is not None
        print(f"em_gain_tuna_over_reference {100 * (tuna_em - ref_em):+.1f}")
        print(f"time_ratio_tuna_over_reference {tuna_time / ref_time:.2f}")
    return 0


def _n_format(replies: list[Reply], style: str) -> int:
    return sum(task_mod.in_format(reply, style) for reply in replies)


def _note(losses: list[float], chosen: list[float], rejected: list[float]) -> str:
    """The last epoch's mean loss and rewards."""
    return (
        f"last epoch: loss {_mean(losses):.4f}, chosen reward {_mean(chosen):+.2f}, "
        f"rejected reward {_mean(rejected):+.2f}"
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


if __name__ == "__main__":
    sys.exit(main())
