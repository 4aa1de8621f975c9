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

_ROWS: contextvars.ContextVar[RowAdapters | None] = contextvars.ContextVar(
    "tuna_row_adapters", default=None
)


@dataclass
class _Plan:
    """How one layer applies the batch's adapters: skip, fast (stacked) or peft's fallback."""

    kind: str  # "none" | "stacked" | "per_adapter"
    lora_a: torch.Tensor | None = None  # [sum of ranks, in]
    lora_b: torch.Tensor | None = None  # [out, sum of ranks], scaling folded in
    mask: torch.Tensor | None = None  # [rows, 1, sum of ranks]; None when every row uses it


class RowAdapters:
    """The adapter (peft name, or None for the base) of each row of a batch, in row order."""

    def __init__(self, names: Sequence[str | None]) -> None:
        self.names = list(names)
        self.present = sorted({name for name in self.names if name is not None})
        self._rows: dict[str, torch.Tensor] = {}
        # Keyed by id, holding the layer too: an id is never reused while its plan lives.
        self._plans: dict[int, tuple[Any, _Plan]] = {}

    def rows_of(self, name: str, device: torch.device) -> torch.Tensor:
        """Indices of the rows that use adapter ``name``."""
        if name not in self._rows:
            rows = [i for i, row_name in enumerate(self.names) if row_name == name]
            self._rows[name] = torch.tensor(rows, device=device)
        return self._rows[name]

    def plan(self, layer: Any) -> _Plan:
        found = self._plans.get(id(layer))
        if found is None:
            found = self._plans[id(layer)] = (layer, self._make_plan(layer))
        return found[1]

    def _make_plan(self, layer: Any) -> _Plan:
        here = [name for name in self.present if name in layer.lora_A]
        if not here:
            return _Plan("none")
        if not _stackable(layer, here):
            return _Plan("per_adapter")
        a = torch.cat([layer.lora_A[name].weight for name in here], dim=0)
        b = torch.cat([layer.lora_B[name].weight * layer.scaling[name] for name in here], dim=1)
        if all(name == here[0] for name in self.names):
            return _Plan("stacked", a, b)
        columns = []  # which adapter each column of the stacked intermediate belongs to
        for number, name in enumerate(here):
            columns += [number] * layer.lora_A[name].weight.shape[0]
        owner = torch.tensor(columns, device=a.device)
        row_adapter = torch.tensor(
            [here.index(name) if name in here else -1 for name in self.names], device=a.device
        )
        mask = (row_adapter[:, None] == owner[None, :]).to(a.dtype).unsqueeze(1)
        return _Plan("stacked", a, b, mask)


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

    routed = 0
    for module in model.modules():
        routed_already = getattr(module.forward, "__func__", None) is _row_forward
        if isinstance(module, LoraLayer) and not routed_already:
            module.forward = types.MethodType(_row_forward, module)  # type: ignore[method-assign]
            routed += 1
    return routed


def _stackable(layer: Any, names: list[str]) -> bool:
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
