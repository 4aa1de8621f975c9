"""The training loop (LoRA or full, any method): read top to bottom in ``train``.

The loop knows nothing of a method's data or loss: a `method.TrainingMethod` (supervised
fine-tuning in `supervised.py`, DPO in `dpo.py`) loads and packs its examples, computes the loss
of a row and names its metrics; the loop does the rest.

What must hold:

* Same config and seed on the CPU -> the same losses, step for step.  Randomness comes only from
  the seeded RNGs (python, numpy, torch) and the (seed, epoch) example order.
* A run resumed from a checkpoint continues at the exact next step with the same losses and
  final weights as a run never interrupted: a checkpoint holds the weights (adapter or full),
  optimizer and scheduler state, every RNG state and the data position (next epoch, next batch).
* Loss of a step = the method's summed loss over all rows of the batch / the method's
  denominator for the batch (label tokens for supervised, pairs for DPO), so packing or splitting
  a batch into rows changes nothing.  Each row is one forward and one backward.
* A checkpoint also holds the method's state (DPO: the reference log-probabilities).
* ``init_from``: the run starts from a fine-tuned model's weights (a LoRA adapter continues
  training as that adapter; full weights are loaded; an adapter trained further as a full model
  is merged first).  Its ``tuna_model.json`` must name the same base model.
* Validation (with a validation file): a run that starts fresh (not one resumed from a
  checkpoint) first measures the starting model on the whole validation file and reports it as
  an ``info`` event whose data is ``{"baseline": {"full_valid_loss": ..., ...}}`` (the method's
  ``full_valid_*`` metrics); each epoch checkpoint's metrics and the last step's carry the same
  ``full_valid_*`` metrics, so base, checkpoints and final model compare on one measure.
  Evaluation consumes no RNG and changes no weight: losses and weights are the same as without.
* Checkpoints: one at each epoch end, in ``output_dir/checkpoints/step-N``, last
  ``keep_checkpoints`` kept.  A pause writes the same kind of folder (so "resume from the newest
  ``step-N``" works for pauses and crashes alike) but it is not reported through
  ``on_checkpoint``; it is swept away at the next epoch checkpoint or when the run finishes.
* The final model is written to ``output_dir/final``: a peft adapter folder for LoRA
  (``PeftModel.from_pretrained(base, final)``), a full model folder otherwise, plus the tokenizer
  and ``tuna_model.json`` naming the base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tuna_core.base_models import (
    UnknownBaseModel,
    get_base_model_info,
    load_tokenizer,
    resolve_base_model,
)
from tuna_core.devices import DeviceUnavailable, pick_device
from tuna_core.model_folders import MODEL_INFO_FILE, write_model_info
from worker.training.callbacks import TrainingCallbacks
from worker.training.config import ResolvedHyperparameters, TrainingConfig, resolve_hyperparameters
from worker.training.data import InvalidExample, epoch_batches
from worker.training.distributed import Parallel
from worker.training.kernels import compile_layers
from worker.training.memory import (
    LayerCheckpointing,
    MemoryPlan,
    activation_budget,
    describe_memory_plan,
    measure_activation_cost,
)
from worker.training.method import RowLoss, TrainingMethod, method_for
from worker.training.supervised import make_row_loss

try:
    import numpy as np
except ImportError:  # numpy is optional; nothing here draws from it
    np = None  # type: ignore[assignment]

STATE_FILE = "trainer_state.pt"
_STATE_VERSION = 1


class TrainingError(RuntimeError):
    """A run failed for a reason the user can act on; ``code``/``param`` feed the job's error."""

    def __init__(self, message: str, code: str = "training_failed", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class TrainingStopped(Exception):
    """The callbacks asked the run to stop."""


class TrainingCancelled(TrainingStopped):
    def __init__(self, step: int) -> None:
        super().__init__(f"Training cancelled after step {step}")
        self.step = step


class TrainingPaused(TrainingStopped):
    """Resume by passing ``checkpoint_path`` as ``resume_from_checkpoint``."""

    def __init__(self, checkpoint_path: Path, step: int) -> None:
        super().__init__(f"Training paused after step {step}; checkpoint {checkpoint_path}")
        self.checkpoint_path = checkpoint_path
        self.step = step


class CheckpointInfo(NamedTuple):
    step: int
    path: Path
    metrics: dict[str, float]


@dataclass
class TrainingResult:
    final_dir: Path
    trained_tokens: int
    total_steps: int
    metrics: dict[str, float]  # the last step's, including full_valid_* when validating
    checkpoints: list[CheckpointInfo]  # the kept ones, oldest first
    hyperparameters: ResolvedHyperparameters
    history: list[dict[str, float]] = field(default_factory=list)  # every step's metrics


@dataclass
class _Position:
    """Where the loop is: ``step`` optimizer steps done; the next batch is (epoch, batch)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    trained_tokens: int = 0


def train(
    config: TrainingConfig,
    callbacks: TrainingCallbacks,
    tokenized: Mapping[Path, list[Any]] | None = None,
) -> TrainingResult:
    """Fine-tune ``config.base_model`` on ``config.training_file``; see the module docstring.

    ``tokenized``: files already tokenized with this base model's tokenizer (by the worker's file
    check, in the same process), used instead of tokenizing them again.
    """
    config.validate()
    try:
        device = pick_device(config.device)
    except DeviceUnavailable as exc:
        raise TrainingError(str(exc), code="no_gpu") from exc
    parallel = Parallel()  # this process's rank in the run's group (one process: rank 0 of 1)
    if parallel.active and config.method == "dpo" and config.training_type == "full":
        raise TrainingError(
            "DPO full fine-tuning runs on one process; use training_type 'lora' to train it on "
            "several, or a worker with TUNA_TRAINING_PROCESSES=1.",
            code="invalid_training_type",
            param="training_type",
        )

    # 1. Base model and data ------------------------------------------------------------------
    callbacks.on_event("info", f"Loading base model {config.base_model}", None)
    try:
        model_dir = resolve_base_model(
            config.base_model, config.model_cache_dir, config.local_models
        )
        context = get_base_model_info(config.base_model, config.local_models).context_length
    except UnknownBaseModel as exc:  # a hub model that cannot be fetched has its own code
        code = getattr(exc, "code", "model_not_found")
        raise TrainingError(str(exc), code=code, param="model") from exc
    max_seq_len = config.max_seq_len or context
    tokenizer = load_tokenizer(model_dir)
    tokenized = tokenized or {}
    method = method_for(config)
    train_examples = _load(
        method, config.training_file, tokenizer, max_seq_len, "training_file", tokenized
    )
    valid_examples = (
        _load(method, config.validation_file, tokenizer, max_seq_len, "validation_file", tokenized)
        if config.validation_file is not None
        else []
    )
    n_tokens = sum(e.n_tokens for e in train_examples)
    callbacks.on_event(
        "info",
        f"Training file has {len(train_examples)} examples and {n_tokens} tokens",
        {"n_examples": len(train_examples), "n_tokens": n_tokens},
    )

    # 2. Hyperparameters, or the ones a checkpoint was made with --------------------------------
    state: dict[str, Any] | None = None
    fingerprint = _fingerprint(config.training_file)  # checked on resume, saved in checkpoints
    if config.resume_from_checkpoint is not None:
        state = _read_state(config.resume_from_checkpoint)
        _check_resumable(state, config, fingerprint)
        hp = ResolvedHyperparameters(**state["hyperparameters"])
    else:
        hp = resolve_hyperparameters(len(train_examples), n_tokens, config)
    callbacks.on_hyperparameters(hp)
    if hp.batch_size < parallel.world_size:
        raise TrainingError(
            f"batch_size {hp.batch_size} is smaller than the {parallel.world_size} processes "
            "this run is split over; each needs at least one example per step.",
            code="invalid_batch_size",
            param="batch_size",
        )
    steps_per_epoch = math.ceil(len(train_examples) / hp.batch_size)
    total_steps = hp.n_epochs * steps_per_epoch
    eval_every = config.eval_every_steps or max(1, total_steps // 20)

    # 3. Model, optimizer, schedule (seeded so LoRA's initialisation is reproducible) ------------
    _seed_everything(config.seed)
    model = _load_model(config, model_dir, device)
    # Wrapped (DDP, FSDP2) before the optimizer exists: FSDP2 turns the parameters into shards.
    plain_forward = method.row_loss(model)
    forward = parallel.wrap(model, plain_forward, config.training_type, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, hp.learning_rate, config.weight_decay, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(total_steps, config.warmup_ratio, config.min_lr_ratio)
    )
    position = _Position()
    history: list[dict[str, float]] = []
    checkpoints: list[CheckpointInfo] = []
    if state is not None:
        parallel.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        position = _Position(**state["position"])
        history = list(state["history"])
        checkpoints = [CheckpointInfo(s, Path(p), m) for s, p, m in state["checkpoints"]]
        callbacks.on_event(
            "info",
            f"Resumed from checkpoint at step {position.step}",
            {"step": position.step, "resumed": True},
        )

    # Not under DDP/FSDP yet: their hooks around compiled layers are not tested here.
    compiled = _use_compile(config, device, n_tokens * hp.n_epochs) and not parallel.active
    run = _Run(
        config,
        model,
        tokenizer,
        optimizer,
        scheduler,
        hp,
        device,
        max_seq_len,
        compiled=compiled,
        fingerprint=fingerprint,
        method=method,
        forward=forward,
        probe_forward=plain_forward,
        parallel=parallel,
    )
    # Anything the method computes once with the starting model (DPO: reference log-probs).
    prepared = method.prepare(
        {"train": train_examples, "valid": valid_examples},
        hp,
        run,
        state.get("method_state") if state is not None else None,
        callbacks,
    )
    train_examples, valid_examples = prepared["train"], prepared["valid"]
    if valid_examples and state is None:
        # The starting model's validation loss, to compare checkpoints and the final model with.
        # After `prepare` (DPO scores the validation pairs against the reference there); no RNG
        # is consumed and no weight changes, so the run trains exactly as it would without it.
        baseline = run.evaluate(valid_examples, "full_valid")
        callbacks.on_event(
            "info",
            f"Validation loss before training: {baseline['full_valid_loss']:.4f}",
            {"baseline": baseline},
        )
    if compiled:
        callbacks.on_event(
            "info", "Compiling the model's layers (the first step takes longer)", None
        )
    precision = "bf16" if run.autocast_dtype == torch.bfloat16 else "float32"
    longest_batch = sum(sorted(e.n_tokens for e in train_examples)[-hp.batch_size :])
    longest_example = max(e.n_tokens for e in train_examples)
    for level, message in describe_memory_plan(run.memory, longest_example, longest_batch):
        callbacks.on_event(level, message, None)
    processes = (
        f" x {parallel.world_size} processes ({parallel.kind.upper()})" if parallel.active else ""
    )
    callbacks.on_event(
        "info",
        f"Training {config.training_type} for {total_steps} steps on {device.type}{processes}"
        + (" in bf16" if precision == "bf16" else ""),
        {
            "total_steps": total_steps,
            "trainable_parameters": sum(p.numel() for p in trainable) * _shards(parallel),
            "precision": precision,
            "processes": parallel.world_size,
        },
    )

    # 4. The loop -------------------------------------------------------------------------------
    metrics: dict[str, float] = history[-1] if history else {}
    for epoch in range(position.epoch, hp.n_epochs):
        batches = epoch_batches(len(train_examples), hp.batch_size, config.seed, epoch)
        for batch_index in range(position.batch if epoch == position.epoch else 0, len(batches)):
            request = parallel.decide(callbacks.should_stop())  # rank 0 owns the job
            if request == "cancel":
                raise TrainingCancelled(position.step)
            if request == "pause":
                path = run.save_pause_checkpoint(position, history, checkpoints)
                callbacks.on_event("info", f"Paused at step {position.step}", {"path": str(path)})
                raise TrainingPaused(path, position.step)

            started = time.perf_counter()
            batch = parallel.share([train_examples[i] for i in batches[batch_index]])
            learning_rate = float(scheduler.get_last_lr()[0])  # what this step uses
            step_metrics, n_batch_tokens = run.train_step(batch, position.step)
            loss = step_metrics["train_loss"]
            if not math.isfinite(loss):
                # Training on would only publish a broken model; stop while the cause is clear.
                raise TrainingError(
                    f"Training diverged: the loss became {loss} at step {position.step + 1}. "
                    "Lower learning_rate_multiplier.",
                    code="training_diverged",
                )
            position.step += 1
            position.trained_tokens += n_batch_tokens
            position.epoch, position.batch = divmod(position.step, steps_per_epoch)

            metrics = {
                **step_metrics,
                "learning_rate": learning_rate,
                "epoch": epoch + (batch_index + 1) / len(batches),
                "trained_tokens": position.trained_tokens,
                "tokens_per_second": n_batch_tokens / max(time.perf_counter() - started, 1e-9),
            }
            if valid_examples and position.step % eval_every == 0:
                valid_batches = [
                    valid_examples[i : i + hp.batch_size]
                    for i in range(0, len(valid_examples), hp.batch_size)
                ]
                chosen = valid_batches[(position.step // eval_every - 1) % len(valid_batches)]
                metrics |= run.evaluate(chosen, "valid")
            if valid_examples and position.step == total_steps:
                metrics |= run.evaluate(valid_examples, "full_valid")
            history.append(metrics)
            callbacks.on_metrics(position.step, total_steps, metrics)

            if config.checkpoint_every_epoch and batch_index == len(batches) - 1:
                path = config.output_dir / "checkpoints" / f"step-{position.step}"
                checkpoint_metrics = metrics
                if valid_examples and "full_valid_loss" not in metrics:
                    # Each checkpoint is measured on the whole validation file, as the last step
                    # is (the step's own metrics, already reported, stay as they were).
                    checkpoint_metrics = metrics | run.evaluate(valid_examples, "full_valid")
                kept = [*checkpoints, CheckpointInfo(position.step, path, checkpoint_metrics)]
                dropped, checkpoints = (
                    kept[: -config.keep_checkpoints],
                    kept[-config.keep_checkpoints :],
                )
                # The state lists the kept checkpoints, so a resumed run prunes the same ones.
                run.save_checkpoint(path, position, history, checkpoints)
                callbacks.on_checkpoint(position.step, path, checkpoint_metrics)
                if not parallel.is_main:
                    continue  # rank 0 owns the files
                for old in dropped:
                    # Only ours: a run resumed from another run's folder leaves that one alone.
                    if old.path.resolve().is_relative_to(config.output_dir.resolve()):
                        shutil.rmtree(old.path, ignore_errors=True)
                        callbacks.on_checkpoint_deleted(old.step, old.path)
                _sweep_unlisted(config.output_dir / "checkpoints", checkpoints)

    # 5. The final model ----------------------------------------------------------------------
    final_dir = run.save_model(config.output_dir / "final")
    if parallel.is_main:
        _sweep_unlisted(config.output_dir / "checkpoints", checkpoints)
    callbacks.on_event("info", "Training finished", {"final_dir": str(final_dir)})
    return TrainingResult(
        final_dir=final_dir,
        trained_tokens=position.trained_tokens,
        total_steps=total_steps,
        metrics=metrics,
        checkpoints=checkpoints,
        hyperparameters=hp,
        history=history,
    )


class _Run:
    """The pieces of one run the step, evaluation and checkpoint code share."""

    def __init__(
        self,
        config: TrainingConfig,
        model: Any,
        tokenizer: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        hp: ResolvedHyperparameters,
        device: torch.device,
        max_seq_len: int,
        row_tokens: int | None = None,
        compiled: bool = False,
        fingerprint: str | None = None,
        method: TrainingMethod | None = None,
        forward: RowLoss | None = None,
        probe_forward: RowLoss | None = None,
        parallel: Parallel | None = None,
    ) -> None:
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.optimizer, self.scheduler, self.hp = optimizer, scheduler, hp
        self.device, self.max_seq_len = device, max_seq_len
        self.autocast_dtype = autocast_dtype(config.precision, device)
        # None: the whole batch in one row. Attention runs per example
        # (`attention.use_varlen_attention`), so a longer row adds no attention work, while the
        # projections and MLPs get one large matmul per layer and there is one forward and one
        # backward per step; the row never holds more than the batch's real tokens.
        self.row_tokens = row_tokens
        self.fingerprint = fingerprint or _fingerprint(config.training_file)
        self.method = method or method_for(config)
        self.parallel = parallel or Parallel()
        # The loss of a row, through DDP/FSDP2 when the run has several processes.
        self.forward = forward or self.method.row_loss(model)
        # Training steps run compiled; evaluation (no grad, eval mode: other graphs) runs eager
        # rather than compiling a second time for a few batches.
        self.compiled = compiled and compile_layers(model) > 0
        self.checkpointing = LayerCheckpointing(model)
        self.model.train()
        # Probed with supervised rows whatever the method: the backbone's activations dominate,
        # and a DPO row is two such sequences per pair.
        # Forwards only: under DDP they go around the wrapper (it expects a backward after each
        # forward with gradients); under FSDP2 through it (only it gathers the weights).
        plain = probe_forward or self.forward
        probe = plain if self.method.name == "supervised" else make_row_loss(model)
        if self.parallel.kind == "fsdp":
            probe = self.forward
        cost = measure_activation_cost(probe, self.checkpointing, device, self._probing)
        budget = activation_budget(device, model, optimizer, config.activation_memory_gib)
        self.memory = MemoryPlan(cost, budget)

    @property
    def max_row_tokens(self) -> int:
        """Tokens packed into one forward at most: the memory plan's, unless set explicitly."""
        return self.row_tokens if self.row_tokens is not None else self.memory.row_tokens

    def train_step(self, batch: list[Any], step: int) -> tuple[dict[str, float], int]:
        """One optimizer step on ``batch``; returns (its train_* metrics, tokens processed)."""
        self.model.train()
        parallel = self.parallel
        rows = self.method.pack(batch, self.max_row_tokens)
        # Over the whole global batch: every rank's share (one process: this batch).
        local = torch.tensor([self.method.denominator(rows), sum(r.n_tokens for r in rows)])
        denominator, n_tokens = (int(v) for v in parallel.global_sum(local).tolist())
        n_forwards = parallel.forwards(len(rows))
        self.optimizer.zero_grad(set_to_none=True)
        totals: torch.Tensor | None = None  # summed loss, then statistics; read once, below
        try:
            for index in range(n_forwards):
                real = index < len(rows)  # else: a zero-weight forward to match other ranks
                row = rows[index] if real else rows[0]
                checkpointed = self.memory.checkpointed_layers(row.n_tokens)
                with (
                    self._compile_fallback(),
                    self.checkpointing.layers_checkpointed(checkpointed),
                    parallel.gradient_sync(index == n_forwards - 1),
                ):
                    with self._autocast():
                        row_loss, row_stats = self.forward(row, self.device)
                    weight = parallel.loss_scale if real else 0
                    (row_loss * weight / denominator).backward()
                if real:
                    totals = _accumulate(totals, row_loss, row_stats)
        except torch.OutOfMemoryError as exc:
            raise TrainingError(
                f"Out of memory at step {step + 1} (batch of {len(batch)} examples, "
                f"{sum(r.n_tokens for r in rows)} tokens); lower batch_size or max_seq_len",
                code="out_of_memory",
            ) from exc
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.config.max_grad_norm
            )
        self.optimizer.step()
        self.scheduler.step()
        assert totals is not None
        metrics = self.method.metrics(parallel.global_sum(totals).tolist(), denominator, "train")
        return metrics, n_tokens

    @torch.no_grad()
    def evaluate(self, examples: list[Any], split: str = "valid") -> dict[str, float]:
        """The method's metrics over ``examples``, named for ``split``; no RNG is consumed."""
        rows = self.method.pack(examples, self.max_row_tokens)
        totals: torch.Tensor | None = None
        with self.inference():
            for row in rows:
                row_loss, row_stats = self.forward(row, self.device)
                totals = _accumulate(totals, row_loss, row_stats)
        assert totals is not None
        return self.method.metrics(totals.tolist(), self.method.denominator(rows), split)

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Forwards as evaluation runs them: eval mode, no gradients, the step's autocast,
        compiled layers eager; training mode again afterwards."""
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast(), self._eager():
                yield
        finally:
            self.model.train()

    def _autocast(self) -> Any:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _eager(self) -> Any:
        """Compiled layers run eagerly in this block (evaluation: other graphs, a few batches)."""
        return (
            torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()
        )

    @contextlib.contextmanager
    def _probing(self) -> Iterator[None]:
        """How the memory probe runs its forwards: as training does, but eager."""
        with self._eager(), self._autocast():
            yield

    def _compile_fallback(self) -> Any:
        """If compiling fails (no working C++ compiler, an unsupported op), run eager instead."""
        if not self.compiled:
            return contextlib.nullcontext()
        import torch._dynamo

        return torch._dynamo.config.patch(suppress_errors=True)

    # Checkpoints -------------------------------------------------------------------------------

    def save_model(self, target: Path) -> Path:
        """Weights (adapter or full), tokenizer and tuna_model.json, written then renamed.

        Every rank calls it (FSDP gathers the shards); rank 0 writes."""
        whole = self.parallel.model_state(self.model)
        if self.parallel.is_main:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if whole is None:
                self.model.save_pretrained(tmp)
            else:
                self.model.save_pretrained(tmp, state_dict=whole)
            self.tokenizer.save_pretrained(tmp)
            write_model_info(tmp, self.config.base_model, self.config.training_type)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        self.parallel.barrier()
        return target

    def save_checkpoint(
        self,
        target: Path,
        position: _Position,
        history: list[dict[str, float]],
        checkpoints: list[CheckpointInfo],
    ) -> Path:
        """Model files plus trainer_state.pt: everything needed to continue at ``position``.

        Every rank calls it; rank 0 writes."""
        target.parent.mkdir(parents=True, exist_ok=True)
        optimizer_state = self.parallel.optimizer_state(self.model, self.optimizer)
        self.save_model(target)
        if not self.parallel.is_main:
            return target
        state = {
            "version": _STATE_VERSION,
            "base_model": self.config.base_model,
            "training_type": self.config.training_type,
            "method": self.config.method,
            "seed": self.config.seed,
            "training_file_sha256": self.fingerprint,
            "hyperparameters": self.hp.to_dict(),
            "position": vars(position).copy(),
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "rng": _capture_rng(),
            "history": history,
            "checkpoints": [(c.step, str(c.path), c.metrics) for c in checkpoints],
            "method_state": self.method.state_dict(),
        }
        torch.save(state, target / STATE_FILE)
        return target

    def save_pause_checkpoint(
        self,
        position: _Position,
        history: list[dict[str, float]],
        checkpoints: list[CheckpointInfo],
    ) -> Path:
        target = self.config.output_dir / "checkpoints" / f"step-{position.step}"
        if any(c.path == target for c in checkpoints):
            return target  # just written at this epoch end; identical state
        return self.save_checkpoint(target, position, history, checkpoints)


def _shards(parallel: Parallel) -> int:
    """Under FSDP each rank holds 1/world of the parameters: count them all."""
    return parallel.world_size if parallel.kind == "fsdp" else 1


def _sweep_unlisted(folder: Path, kept: list[CheckpointInfo]) -> None:
    """Remove pause checkpoints and leftovers of interrupted writes: every entry not kept."""
    if not folder.is_dir():
        return
    keep = {c.path.resolve() for c in kept}
    for entry in folder.iterdir():
        if entry.resolve() not in keep:
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loss


def _accumulate(
    totals: torch.Tensor | None, row_loss: torch.Tensor, row_stats: torch.Tensor
) -> torch.Tensor:
    """Add a row's loss and statistics to the step's totals, on the device (no sync)."""
    row = torch.cat([row_loss.detach().reshape(1).float(), row_stats.reshape(-1).float()])
    return row if totals is None else totals + row


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype a step's matmuls autocast to (None: float32 throughout).

    "auto" is bf16 where the hardware multiplies bf16 natively: a GPU with bf16, or a CPU with
    AVX512-BF16 or AMX, where a SmolLM2-135M LoRA step takes 0.6x the float32 time.  Elsewhere
    bf16 would be emulated, slower than float32.
    """
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None


def _cpu_has_bf16() -> bool:
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def make_optimizer(
    params: list[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    """AdamW; on a GPU the fused kernel (one launch for all parameters, no per-tensor loop)."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=fused)


# On a CPU, compiling the layers takes 20-40 s on 2 cores (once: all layers share the graph).
# In float32 it saves about 6% of every step, so it pays from about 100k tokens (12 minutes of
# SmolLM2-135M LoRA at ~150 tokens/s); under bf16 autocast it saves 22% (it fuses the casts:
# 293 vs 228 tokens/s), paying from about 40k tokens.  Short runs stay eager.
_CPU_COMPILE_MIN_TOKENS = {None: 100_000, torch.bfloat16: 40_000}


def _use_compile(config: TrainingConfig, device: torch.device, planned_tokens: int) -> bool:
    if config.compile != "auto":
        return config.compile == "on"
    if device.type == "cuda":
        return True
    threshold = _CPU_COMPILE_MIN_TOKENS[autocast_dtype(config.precision, device)]
    return planned_tokens >= threshold and _has_cxx_compiler()


def _has_cxx_compiler() -> bool:
    """Inductor's CPU backend builds C++; without a compiler, compiling would only fail."""
    candidates = (os.environ.get("CXX"), "g++", "c++", "clang++")
    return any(shutil.which(name) for name in candidates if name)


def _warmup_cosine(
    total_steps: int, warmup_ratio: float, min_ratio: float
) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup_ratio`` of the steps, then cosine to ``min_ratio``."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ---------------------------------------------------------------------------------------------
# Loading


def _load(
    method: TrainingMethod,
    path: Path,
    tokenizer: Any,
    max_seq_len: int,
    param: str,
    tokenized: Mapping[Path, list[Any]],
) -> list[Any]:
    name = "Training" if param == "training_file" else "Validation"
    ready = tokenized.get(path)
    if ready and method.reusable(ready, max_seq_len):
        return ready
    try:
        examples = method.load(path, tokenizer, max_seq_len)
    except InvalidExample as exc:
        raise TrainingError(f"{name} file: {exc}", code=f"invalid_{param}", param=param) from exc
    except OSError as exc:
        raise TrainingError(f"{name} file cannot be read: {exc}", param=param) from exc
    if not examples:
        raise TrainingError(f"{name} file has no examples", code="invalid_n_examples", param=param)
    return examples


def _load_model(config: TrainingConfig, model_dir: Path, device: torch.device) -> Any:
    """Float32 master weights: the base model, a fine-tuned model (``init_from``) or a
    checkpoint's weights; wrapped for LoRA."""
    from transformers import AutoModelForCausalLM

    if config.quantization != "none":  # QLoRA: a 4-bit base under LoRA (quantization.py)
        from worker.training.quantization import load_qlora_model

        return load_qlora_model(config, model_dir, device)
    model: Any
    resume, start = config.resume_from_checkpoint, config.init_from
    start_type = _model_type(start, config.base_model) if start is not None else None
    source = resume or start  # where the trained weights come from: this run's, else the start
    if config.training_type == "full":
        whole = source is not None and (resume is not None or start_type == "full")
        model = AutoModelForCausalLM.from_pretrained(
            source if whole and source is not None else model_dir, dtype=torch.float32
        )
        if start is not None and not whole:  # continue an adapter as a full fine-tune: merge
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, start).merge_and_unload()
            model.requires_grad_(True)  # peft froze the base weights it merged into
        model.config.use_cache = False
        return model.to(device)

    from peft import PeftModel, get_peft_model

    if start_type == "full":
        raise TrainingError(
            "A LoRA run cannot continue a full fine-tune (its adapter could not be served over "
            "the base model); continue it with training_type 'full'.",
            code="invalid_training_type",
            param="training_type",
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    if source is not None:
        model = PeftModel.from_pretrained(model, source, is_trainable=True)
    else:
        model = get_peft_model(model, lora_config(config))
    return model.to(device)


def lora_config(config: TrainingConfig) -> Any:
    """The adapter a new LoRA run trains (QLoRA's too): every attention and MLP projection."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",  # attention + MLP projections; never lm_head
        task_type="CAUSAL_LM",
    )


def _model_type(folder: Path, base_model: str) -> str:
    """ "lora" or "full": what the engine wrote in ``folder`` (checked against ``base_model``)."""
    info_path = Path(folder) / MODEL_INFO_FILE
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(
            f"The model to continue from cannot be read ({info_path}: {exc})",
            code="model_not_found",
            param="model",
        ) from exc
    if info.get("base_model") != base_model:
        raise TrainingError(
            f"The model to continue from was trained on {info.get('base_model')!r}, "
            f"not {base_model!r}",
            code="model_not_found",
            param="model",
        )
    return "full" if info.get("training_type") == "full" else "lora"


def _read_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise TrainingError(f"{checkpoint} is not a Tuna checkpoint (no {STATE_FILE})")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != _STATE_VERSION:
        raise TrainingError(f"{checkpoint} was written by an incompatible engine version")
    return state


def _check_resumable(state: dict[str, Any], config: TrainingConfig, fingerprint: str) -> None:
    """A checkpoint continues only the run that made it: same base, method, seed and data."""
    for key, value in (
        ("base_model", config.base_model),
        ("training_type", config.training_type),
        ("method", config.method),
        ("seed", config.seed),
        ("training_file_sha256", fingerprint),
    ):
        if state.get(key, "supervised" if key == "method" else None) != value:
            raise TrainingError(f"Cannot resume: the checkpoint's {key} differs from this run's")


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Randomness


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if np is not None:
        np.random.seed(seed % 2**32)


def _capture_rng() -> dict[str, Any]:
    """Every RNG state, in types ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if np is not None:
        numpy_state: Any = np.random.get_state()
        kind, keys, pos, has_gauss, cached = numpy_state
        state["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached)
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state and np is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
