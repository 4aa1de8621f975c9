"""Activation memory: what a training step's activations cost, and keeping each step within
the memory there is.

The tensors autograd keeps for the backward grow with the tokens of a row.  On a GPU, for a
long-context job, they are most of the step's memory (SmolLM2-135M in float32 keeps 1.25 MiB per
token, measured; an 8B llama in bf16 several MB by the same count of its saved tensors, so a
batch of 8 examples of 4k tokens would not fit an 80 GB GPU).  Rather than fail with out-of-memory,
or ask the user to guess a smaller batch, the engine measures what a token costs once, at the
start of a run, and plans every step from that:

1. a batch whose packed row would not fit is split into several rows, each forwarded and
   backwarded in turn (gradient accumulation within the step: the same gradients, only smaller
   matmuls);
2. an example too long to fit on its own recomputes the activations of just enough decoder
   layers during the backward (gradient checkpointing, ``torch.utils.checkpoint``): those
   layers keep only their input and run their forward a second time, one at a time.

The cost is measured, not derived from the architecture: a short probe forward runs under
autograd's saved-tensor hooks, which see every tensor kept for the backward, and the bytes per
token are the difference between two probe rows of different lengths (the weights, kept by both,
cancel out).  The budget is the device's free memory once the model, its gradients and the
optimizer state are accounted for, or ``TrainingConfig.activation_memory_gib``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from worker.training.attention import current_segments, packed_segments
from worker.training.data import IGNORE_INDEX, PackedRow

GIB = 1 << 30
# Probe rows: one and three examples of this many tokens.  Equal example lengths keep the
# attention's share per token the same in both.  Short rows keep the probe cheap (0.35 s for
# SmolLM2 on 2 CPU cores) and predict rows of 100-token examples to within 3%.
_PROBE_EXAMPLE_TOKENS = 8
# Kept free beyond the activations: allocator fragmentation, the backward's temporary
# gradients, the loss's logits chunks (a few hundred MB on a GPU), other processes (CPU).
_RESERVE_FRACTION = 0.15
_RESERVE_BYTES = 512 << 20

# While a probe runs: storage address -> bytes of every tensor kept for the backward.
_kept: ContextVar[dict[int, int] | None] = ContextVar("tuna_kept_tensors", default=None)


def decoder_layers(model: Any) -> torch.nn.ModuleList | None:
    """The repeated decoder blocks of a transformers model (or a peft wrapper of one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    layers = getattr(backbone, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


class LayerCheckpointing:
    """Gradient checkpointing for the first ``active`` decoder layers, switchable per row.

    Wraps each layer's ``forward`` (after ``kernels.compile_layers``, so the compiled function
    runs inside the checkpoint, not the other way round).  The recomputation in the backward
    runs with the row's example boundaries (``attention.packed_segments``) it had in the forward:
    the backward may run on another thread, outside the forward's context.
    """

    def __init__(self, model: Any) -> None:
        self.layers = decoder_layers(model)
        self.n_layers = len(self.layers) if self.layers is not None else 0
        self.active = 0
        for index, layer in enumerate(self.layers or []):
            layer.forward = self._wrap(index, layer.forward)

    def _wrap(self, index: int, forward: Callable[..., Any]) -> Callable[..., Any]:
        def checkpointed_forward(*args: Any, **kwargs: Any) -> Any:
            if index >= self.active or not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            _keep_inputs(args, kwargs)
            lengths = current_segments()

            def contexts() -> tuple[Any, Any]:
                return contextlib.nullcontext(), packed_segments(lengths)

            return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)

        return checkpointed_forward

    @contextlib.contextmanager
    def layers_checkpointed(self, count: int) -> Iterator[None]:
        """Within this block, forwards checkpoint the first ``count`` layers."""
        previous, self.active = self.active, count
        try:
            yield
        finally:
            self.active = previous


class ActivationCost:
    """Bytes autograd keeps per token of a row: with no layer checkpointed, and with all.

    ``measure(n)`` gives the bytes per token with the first ``n`` layers checkpointed; the
    all-checkpointed figure is only measured when a plan first needs it (rarely: only for
    examples too long for the memory).
    """

    def __init__(self, measure: Callable[[int], float], n_layers: int) -> None:
        self.n_layers = n_layers
        self.per_token = measure(0)
        self._measure = measure

    @functools.cached_property
    def per_token_all_checkpointed(self) -> float:
        if not self.n_layers:
            return self.per_token
        return min(self.per_token, self._measure(self.n_layers))

    def step_bytes(self, tokens: int, checkpointed_layers: int) -> float:
        """Peak activation bytes of a row of ``tokens`` with that many layers checkpointed."""
        if not checkpointed_layers or not self.n_layers:
            return tokens * self.per_token
        saved_per_layer = (self.per_token - self.per_token_all_checkpointed) / self.n_layers
        kept = self.per_token - checkpointed_layers * saved_per_layer
        # In the backward, a checkpointed layer's activations exist again, one layer at a time.
        return tokens * (kept + self.per_token / self.n_layers)


@dataclass(frozen=True)
class MemoryPlan:
    """How steps stay within ``budget`` bytes of activations."""

    cost: ActivationCost
    budget: float

    @property
    def row_tokens(self) -> int:
        """The longest row that fits without checkpointing (at least one token)."""
        return max(1, int(self.budget // max(self.cost.per_token, 1.0)))

    def checkpointed_layers(self, tokens: int) -> int:
        """How many layers a row of ``tokens`` checkpoints: as few as fit (all, if none do)."""
        for count in range(self.cost.n_layers + 1):
            if self.cost.step_bytes(tokens, count) <= self.budget:
                return count
        return self.cost.n_layers

    def fits(self, tokens: int) -> bool:
        return self.cost.step_bytes(tokens, self.cost.n_layers) <= self.budget


def measure_activation_cost(
    row_loss: Callable[[PackedRow, torch.device], tuple[torch.Tensor, torch.Tensor]],
    checkpointing: LayerCheckpointing,
    device: torch.device,
    probe_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> ActivationCost:
    """What a token costs, from probe forwards of ``row_loss`` within ``probe_context()``.

    Forwards only: no backward, no optimizer step, and the RNG is left as it was.
    """

    def per_token(checkpointed: int) -> float:
        kept = []
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), probe_context():
            for n_examples in (1, 3):
                row = _probe_row(n_examples)
                with checkpointing.layers_checkpointed(checkpointed):
                    kept.append((_kept_bytes(row_loss, row, device), row.n_tokens))
        (small, small_tokens), (large, large_tokens) = kept
        return max(0.0, (large - small) / (large_tokens - small_tokens))

    return ActivationCost(per_token, checkpointing.n_layers)


def activation_budget(
    device: torch.device, model: Any, optimizer: torch.optim.Optimizer, limit_gib: float | None
) -> float:
    """Bytes the activations of one row may take.

    ``limit_gib`` when given; otherwise the memory available now, less what the first step
    will still allocate (gradients, and AdamW's two moments when the optimizer has no state yet)
    and a reserve.
    """
    if limit_gib is not None:
        return limit_gib * GIB
    trainable = [p for p in model.parameters() if p.requires_grad]
    pending = sum(p.numel() * 4 for p in trainable if p.grad is None)  # float32 gradients
    if not optimizer.state:
        pending += sum(2 * p.numel() * 4 for p in trainable)
    available = _available_bytes(device)
    return max(0.0, available * (1 - _RESERVE_FRACTION) - _RESERVE_BYTES - pending)


def _available_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return float(free + cached)
    try:  # Linux: what can be allocated without swapping, page cache included
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _probe_row(n_examples: int, length: int = _PROBE_EXAMPLE_TOKENS) -> PackedRow:
    row = PackedRow()
    for _ in range(n_examples):
        row.input_ids.extend(range(1, length + 1))
        row.targets.extend([*range(2, length + 1), IGNORE_INDEX])  # every position but the last
        row.position_ids.extend(range(length))
        row.lengths.append(length)
    return row


def _kept_bytes(forward: Callable[..., Any], *args: Any) -> int:
    """Bytes of distinct storages autograd keeps for the backward of ``forward(*args)``."""
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        _record(kept, tensor)
        return tensor

    token = _kept.set(kept)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward(*args)
    finally:
        _kept.reset(token)
    return sum(kept.values())


def _keep_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # A checkpoint keeps its inputs itself, past the saved-tensor hooks: count them here.
    kept = _kept.get()
    if kept is not None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                _record(kept, value)


def _record(kept: dict[int, int], tensor: torch.Tensor) -> None:
    storage = tensor.untyped_storage()
    kept[storage.data_ptr()] = storage.nbytes()


def describe_memory_plan(
    plan: MemoryPlan, longest_example: int, longest_batch: int
) -> list[tuple[str, str]]:
    """(level, message) events for what the plan changes in a run; none when everything fits."""
    mib_per_1k = plan.cost.per_token * 1000 / (1 << 20)
    messages: list[tuple[str, str]] = []
    if longest_batch > plan.row_tokens:
        messages.append(
            (
                "info",
                f"Batches over {plan.row_tokens} tokens are split into rows that fit in memory "
                f"(activations take {mib_per_1k:.0f} MiB per 1k tokens; "
                f"{plan.budget / GIB:.1f} GiB available for them)",
            )
        )
    if longest_example > plan.row_tokens:
        layers = plan.checkpointed_layers(longest_example)
        messages.append(
            (
                "info",
                f"Examples over {plan.row_tokens} tokens recompute activations in the backward "
                f"(gradient checkpointing; up to {layers} of {plan.cost.n_layers} layers for the "
                f"longest, {longest_example} tokens)",
            )
        )
    if not plan.fits(longest_example):
        messages.append(
            (
                "warn",
                f"The longest example ({longest_example} tokens) may not fit in memory even with "
                "every layer checkpointed; lower max_seq_len if training runs out of memory",
            )
        )
    return messages
