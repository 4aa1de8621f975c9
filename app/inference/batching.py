"""A continuous batch on one model: rows join at the next step and leave as soon as they finish.

The layout is the one Hugging Face's text-generation-inference started with: the batch's KV cache
(a transformers ``DynamicCache``) is left-padded, so every row's next token sits in the same last
column and one forward pass of ``[rows, 1]`` tokens decodes them all.  Per row, the attention mask
hides the padding and ``position_ids`` count only that row's own tokens, so a row's logits do not
depend on what else is in the batch (up to float rounding).

* ``prefill(rows)`` runs the new rows' prompts as one left-padded batch and returns their
  next-token logits; their cache is merged into the running batch, the shorter side padded on the
  left.  Joining costs one copy of the cache; the decode steps' own concatenation copies it
  anyway.
* ``step()`` decodes one token for every row.
* ``keep(rows)`` drops the rows that finished or were cancelled and trims padding columns no row
  needs any more.

Rows of one batch share the model's weights; a row's LoRA adapter (or none) is applied per row
(``app.inference.lora``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from app.inference.lora import RowAdapters, row_adapters

# Columns of KV cache reserved ahead of the batch's longest row (or half its width, if more):
# decode steps write into them in place; running out costs one copy.
SPARE_COLUMNS = 64
ROOMY_CACHE = True


@dataclass
class Row:
    """One sequence of the batch: its tokens so far and the adapter it decodes with."""

    prompt_ids: list[int]
    adapter: str | None
    owner: Any  # whatever the engine attaches (its request and choice)
    next_token: int = -1


class DecodeBatch:
    def __init__(self, model: Any, model_kwargs: dict[str, Any], pad_id: int) -> None:
        self.model = model
        self.model_kwargs = model_kwargs
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self._cache_arg = cache_argument(model)
        self.rows: list[Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, columns] 1 = a real token
        self._adapters: RowAdapters | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def prefill(self, rows: Sequence[Row]) -> torch.Tensor:
        """Run the new rows' prompts and add them to the batch; their next-token float logits."""
        from transformers import DynamicCache

        width = max(len(row.prompt_ids) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        with row_adapters(RowAdapters([row.adapter for row in rows], self.model)):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: cache},
                **self.model_kwargs,
            )
        _zero_padding(cache, mask)  # the model filled `cache` in place
        self._join(list(rows), cache, mask)
        return out.logits[:, -1, :].float()  # type: ignore[no-any-return]

    def step(self) -> torch.Tensor:
        """Decode one token for every row (each row's ``next_token``); their next float logits."""
        assert self._mask is not None
        tokens = torch.tensor([row.next_token for row in self.rows], device=self.device)
        ones = torch.ones((len(self.rows), 1), dtype=self._mask.dtype, device=self.device)
        positions = self._mask.sum(-1, keepdim=True)  # this token's place in its own row
        self._mask = torch.cat([self._mask, ones], dim=-1)
        with row_adapters(self._row_adapters()):
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=self._mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: self._cache},
                **self.model_kwargs,
            )
        return out.logits[:, -1, :].float()  # type: ignore[no-any-return]

    def keep(self, rows: Sequence[Row]) -> None:
        """Keep only ``rows`` (a subset, in batch order); free what the others held."""
        if len(rows) == len(self.rows):
            return
        if not rows:
            self.rows, self._cache, self._mask, self._adapters = [], None, None, None
            return
        assert self._mask is not None
        position = {id(row): i for i, row in enumerate(self.rows)}
        index = torch.tensor([position[id(row)] for row in rows], device=self.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0])  # columns before it are padding in every row
        self._mask = mask[:, start:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.rows = list(rows)
        self._adapters = None
        if ROOMY_CACHE:
            _roomy(self._cache)

    def _join(self, rows: list[Row], cache: Any, mask: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self._cache, self._mask = rows, cache, mask
            self._adapters = None
            if ROOMY_CACHE:
                _roomy(self._cache)
            return
        assert self._mask is not None
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)], dim=0)
        for mine, theirs in zip(_layers(self._cache), _layers(cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat(
                [_pad_left(mine.values, width), _pad_left(theirs.values, width)]
            )
        self.rows = self.rows + rows
        self._adapters = None
        if ROOMY_CACHE:
            _roomy(self._cache)

    def _row_adapters(self) -> RowAdapters:
        if self._adapters is None:
            self._adapters = RowAdapters([row.adapter for row in self.rows], self.model)
        return self._adapters


def _roomy_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):  # type: ignore[misc]
        """A ``DynamicLayer`` whose keys/values are views into buffers with spare columns.

        A decode step writes its one new column in place, where ``DynamicLayer`` concatenates
        (a copy of the layer's whole cache, every step).
        """

        def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            super().__init__()
            self.lazy_initialization(keys, values)
            self._reserve(keys, values)

        def _reserve(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            rows, heads, width, dim = keys.shape
            room = width + max(SPARE_COLUMNS, width // 2)
            self._keys = keys.new_empty((rows, heads, room, dim))
            self._values = values.new_empty((rows, heads, room, values.shape[-1]))
            self._keys[:, :, :width] = keys
            self._values[:, :, :width] = values
            self.keys, self.values = self._keys[:, :, :width], self._values[:, :, :width]

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            assert self.keys is not None and self.values is not None
            width, new = self.keys.shape[-2], key_states.shape[-2]
            if width + new > self._keys.shape[-2]:
                self._reserve(self.keys, self.values)
            self._keys[:, :, width : width + new] = key_states
            self._values[:, :, width : width + new] = value_states
            self.keys = self._keys[:, :, : width + new]
            self.values = self._values[:, :, : width + new]
            return self.keys, self.values

    return RoomyLayer


def _roomy(cache: Any) -> None:
    """Give each plain ``DynamicLayer`` of ``cache`` room to grow in place (after a join/keep)."""
    from transformers.cache_utils import DynamicLayer

    global _ROOMY
    if _ROOMY is None:
        _ROOMY = _roomy_layer_class()
    for i, layer in enumerate(cache.layers):
        if type(layer) in (DynamicLayer, _ROOMY):
            cache.layers[i] = _ROOMY(layer.keys, layer.values)


_ROOMY: type | None = None


def cache_argument(model: Any) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; older releases take only the old."""
    import inspect

    try:
        accepted = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in accepted else "past_key_values"


def _layers(cache: Any) -> list[Any]:
    """The cache's per-layer holders of ``keys``/``values`` [rows, heads, columns, head dim]."""
    return list(cache.layers)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the column axis (dim 1 of a mask, dim 2 of keys/values) on the left with zeros."""
    axis = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _zero_padding(cache: Any, mask: torch.Tensor) -> None:
    """Zero the keys/values at padding columns: masked anyway, but never NaN (0 * NaN = NaN)."""
    if bool(mask.all()):
        return
    padding = (mask == 0)[:, None, :, None]
    for layer in _layers(cache):
        layer.keys = layer.keys.masked_fill(padding, 0)
        layer.values = layer.values.masked_fill(padding, 0)
