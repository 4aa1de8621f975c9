"""Many LoRA adapters in one batch: each row of a forward pass with its own adapter, or none.

peft applies its *active* adapter to every row.  For a continuous batch that mixes requests for
several `ft:` models of one base, ``enable_row_adapters(model)`` reroutes each peft LoRA layer of
the model to ``_row_forward``, which reads the rows' adapters from ``row_adapters(...)``, set by
the engine around each forward pass:

* all rows on one adapter: ``y = W x + (x A^T) (s B)^T``, peft's math with the scaling folded in;
* rows on different adapters (the base's rows on none): the adapters' A matrices are stacked
  into one ``[sum of ranks, in]`` matrix and their scaled B matrices side by side, so the whole
  batch takes two matmuls however many adapters it mixes, and a 0/1 mask on the small
  ``[rows, sum of ranks]`` intermediate keeps each row to its own adapter's columns (what
  Punica/LoRAX's gathered kernels compute, in plain torch ops);
* a layer this fast path does not cover (DoRA and other variants, a LoRA bias, an adapter in
  another dtype, a non-Linear LoRA layer) runs peft's own forward once per adapter on that
  adapter's rows (peft's ``adapter_names=`` path refuses DoRA).

The stacked weights and masks are built once per batch composition (``RowAdapters`` is rebuilt
only when rows join or leave) and dropped with it.  With no ``row_adapters`` context a layer
behaves exactly as peft's: the worker thread always sets one.
"""

from __future__ import annotations

import contextlib
import contextvars
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Adapter sets whose stacked weights a model keeps (each costs its adapters' weights again).
ADAPTER_SETS_KEPT = 2
_SETS = "_tuna_adapter_sets"

_ROWS: contextvars.ContextVar[RowAdapters | None] = contextvars.ContextVar(
    "tuna_row_adapters", default=None
)


@dataclass
class _Stack:
    """One layer's share of an adapter set: which of them it has, and their weights stacked."""

    kind: str  # "none" | "stacked" | "per_adapter"
    here: tuple[str, ...] = ()
    ranks: tuple[int, ...] = ()
    lora_a: torch.Tensor | None = None  # [sum of ranks, in]
    lora_b: torch.Tensor | None = None  # [out, sum of ranks], scaling folded in


@dataclass
class _Plan:
    """How one layer applies one batch's adapters."""

    kind: str  # "none" | "stacked" | "per_adapter"
    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # [rows, 1, sum of ranks]; None when every row uses it


class RowAdapters:
    """The adapter (peft name, or None for the base) of each row of a batch, in row order.

    Built whenever rows join or leave.  The stacked weights depend only on the *set* of
    adapters, which changes far less often: they are kept on the model per set
    (``_stacks_for``), so a new composition costs a dict lookup per layer plus one mask.
    """

    def __init__(self, names: Sequence[str | None], model: torch.nn.Module | None = None):
        self.names = list(names)
        self.present = tuple(sorted({name for name in self.names if name is not None}))
        self.uniform = len(set(self.names)) == 1  # one adapter (or none) for every row
        self._stacks = _stacks_for(model, self.present)
        self._plans: dict[int, _Plan] = {}
        self._masks: dict[Any, torch.Tensor] = {}
        self._rows: dict[str, torch.Tensor] = {}

    def rows_of(self, name: str, device: torch.device) -> torch.Tensor:
        """Indices of the rows that use adapter ``name``."""
        if name not in self._rows:
            rows = [i for i, row_name in enumerate(self.names) if row_name == name]
            self._rows[name] = torch.tensor(rows, device=device)
        return self._rows[name]

    def plan(self, layer: Any) -> _Plan:
        plan = self._plans.get(id(layer))
        if plan is None:
            plan = self._plans[id(layer)] = self._make_plan(layer)
        return plan

    def _make_plan(self, layer: Any) -> _Plan:
        found = self._stacks.get(id(layer))
        if found is None:  # held with its layer, so the id is not reused while it lives
            found = self._stacks[id(layer)] = (layer, _stack(layer, self.present))
        stack = found[1]
        if stack.kind != "stacked":
            return _Plan(stack.kind)
        assert stack.lora_a is not None
        if self.uniform:
            return _Plan("stacked", stack.lora_a, stack.lora_b)
        return _Plan("stacked", stack.lora_a, stack.lora_b, self._mask(stack, stack.lora_a))

    def _mask(self, stack: _Stack, like: torch.Tensor) -> torch.Tensor:
        """[rows, 1, sum of ranks]: 1 where a column belongs to the row's adapter.  Layers with
        the same adapters and ranks (usually all of them) share one."""
        key = (stack.here, stack.ranks, like.device, like.dtype)
        mask = self._masks.get(key)
        if mask is None:
            owner = torch.repeat_interleave(
                torch.arange(len(stack.here), device=like.device),
                torch.tensor(stack.ranks, device=like.device),
            )
            row_adapter = torch.tensor(
                [stack.here.index(n) if n in stack.here else -1 for n in self.names],
                device=like.device,
            )
            mask = (row_adapter[:, None] == owner[None, :]).to(like.dtype).unsqueeze(1)
            self._masks[key] = mask
        return mask


def _stacks_for(model: torch.nn.Module | None, present: tuple[str, ...]) -> dict[int, Any]:
    """The per-layer stacks of this adapter set, kept on the model for its last few sets
    (cleared whenever an adapter is loaded or unloaded: `enable_row_adapters`, `forget_stacks`).
    Only the model's engine thread touches them."""
    if model is None:
        return {}
    sets: dict[tuple[str, ...], dict[int, Any]] = model.__dict__.setdefault(_SETS, {})
    stacks = sets.pop(present, None)
    if stacks is None:
        stacks = {}
    sets[present] = stacks  # most recent last
    while len(sets) > ADAPTER_SETS_KEPT:
        del sets[next(iter(sets))]
    return stacks


def _stack(layer: Any, present: tuple[str, ...]) -> _Stack:
    here = tuple(name for name in present if name in layer.lora_A)
    if not here:
        return _Stack("none")
    if not _stackable(layer, here):
        return _Stack("per_adapter", here)
    a = torch.cat([layer.lora_A[name].weight for name in here], dim=0)
    b = torch.cat([layer.lora_B[name].weight * layer.scaling[name] for name in here], dim=1)
    ranks = tuple(layer.lora_A[name].weight.shape[0] for name in here)
    return _Stack("stacked", here, ranks, a, b)


@contextlib.contextmanager
def row_adapters(rows: RowAdapters | None) -> Iterator[None]:
    """Run the forward passes inside with these rows' adapters."""
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def enable_row_adapters(model: torch.nn.Module) -> int:
    """Route every peft LoRA layer of ``model`` through ``_row_forward`` (idempotent)."""
    from peft.tuners.lora.layer import LoraLayer

    forget_stacks(model)  # a new adapter: the layers' adapter sets are not what they were
    routed = 0
    for module in model.modules():
        routed_already = getattr(module.forward, "__func__", None) is _row_forward
        if isinstance(module, LoraLayer) and not routed_already:
            module.forward = types.MethodType(_row_forward, module)  # type: ignore[method-assign]
            routed += 1
    return routed


def forget_stacks(model: torch.nn.Module) -> None:
    """Drop the model's stacked weights (an adapter was loaded or unloaded)."""
    model.__dict__.pop(_SETS, None)


def _stackable(layer: Any, names: tuple[str, ...]) -> bool:
    from peft.tuners.lora.layer import Linear

    if (
        type(layer) is not Linear
        or layer.merged
        or not isinstance(layer.base_layer, torch.nn.Linear)
    ):
        return False
    dtype = layer.base_layer.weight.dtype
    return all(
        name not in layer.lora_variant
        and layer.lora_B[name].bias is None
        and layer.lora_A[name].weight.dtype == dtype
        for name in names
    )


def _row_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    rows = _ROWS.get()
    if rows is None or args or kwargs:
        return type(self).forward(self, x, *args, **kwargs)
    plan = rows.plan(self)
    if plan.kind == "none":
        return self.base_layer(x)  # type: ignore[no-any-return]
    if plan.kind == "per_adapter":
        return _per_adapter_forward(self, x, rows)
    assert plan.lora_a is not None and plan.lora_b is not None
    result = self.base_layer(x)
    down = x @ plan.lora_a.t()  # [rows, tokens, sum of ranks]: small
    if plan.mask is not None:
        down.mul_(plan.mask)
    flat = result.view(-1, result.shape[-1])  # the base layer's fresh output: add in place
    flat.addmm_(down.view(-1, down.shape[-1]), plan.lora_b.t())
    return result  # type: ignore[no-any-return]


def _per_adapter_forward(self: Any, x: torch.Tensor, rows: RowAdapters) -> torch.Tensor:
    """peft's own forward, once per adapter on its rows (the slow path, for any LoRA kind)."""
    result: torch.Tensor = self.base_layer(x)
    active = self.active_adapters
    try:
        for name in rows.present:
            if name in self.lora_A:
                index = rows.rows_of(name, x.device)
                self.set_adapter(name)
                result[index] = type(self).forward(self, x[index]).to(result.dtype)
    finally:
        self.set_adapter(active)
    return result
