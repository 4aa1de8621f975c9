"""Loaded weights for the local engine: bases once, LoRA adapters and full fine-tunes in an LRU.

What must hold:

* Only the engine's worker thread calls into this class (loading, evicting, forward passes), so
  nothing here needs to be thread-safe except `stats()`.
* Each base model is loaded once and stays loaded.  All LoRA adapters of a base share it: the
  base is wrapped once with `PeftModel.from_pretrained(base, dir, adapter_name=...)`, further
  adapters join with `load_adapter`.  peft's *active* adapter is never used: every LoRA layer is
  routed through `app.inference.lora`, which applies each batch row's own adapter (or none, for
  the base's rows), so requests for the base and for any of its adapters decode in one batch.
* Adapters and full fine-tunes are kept in one LRU bounded by bytes (adapter files / parameter
  bytes).  The entry just loaded is never evicted by its own load, so a single model bigger than
  the budget still answers (and goes at the next load).  A model that running requests hold
  (`hold`/`release`) is not evicted under them: the LRU passes it over, and a deletion waits for
  the last holder.  Evicting the last adapter of a base unwraps it (`unload()`) because peft
  cannot run a `PeftModel` with no adapter.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.errors import APIError, NotFound, ServerError
from app.inference.lora import enable_row_adapters, forget_stacks
from app.inference.types import ModelTarget
from tuna_core.base_models import UnknownBaseModel, resolve_base_model
from tuna_core.chat_template import ensure_chat_template
from tuna_core.devices import pick_device

logger = logging.getLogger("tuna.inference")

# Tokens that end a turn in the chat formats our bases use, added to the model's own EOS.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>")


@dataclass
class Loaded:
    """What one request runs with, on the worker thread, while it holds the model.

    Requests with the same ``batch_key`` share ``model`` and decode in one batch, each row with
    its own ``adapter`` (a peft adapter name; None for the base itself).
    """

    model_id: str
    model: Any
    tokenizer: Any
    eos_ids: set[int]
    model_kwargs: dict[str, Any]
    batch_key: str
    adapter: str | None = None


@dataclass
class _Base:
    name: str
    model: Any  # the plain model; LoRA layers are injected into it once wrapped
    tokenizer: Any
    eos_ids: set[int]
    model_kwargs: dict[str, Any]
    peft: Any = None  # PeftModel wrapping `model`, once the first adapter is loaded


@dataclass
class _Entry:
    model_id: str
    kind: str
    bytes: int
    path: Path
    base: str | None = None
    adapter_name: str | None = None
    model: Any = None
    tokenizer: Any = None
    eos_ids: set[int] = field(default_factory=set)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    holders: int = 0  # running requests that use it
    doomed: bool = False  # deleted while held: dropped when the last holder lets go


class ModelCache:
    def __init__(
        self,
        cache_dir: Path,
        local_models: dict[str, Path] | None,
        budget_bytes: int,
        device: str = "auto",
    ) -> None:
        self.cache_dir = cache_dir
        self.local_models = dict(local_models or {})
        self.budget_bytes = budget_bytes
        self.device = pick_device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self._bases: dict[str, _Base] = {}
        self._lru: OrderedDict[str, _Entry] = OrderedDict()
        # Guards the dicts against `stats()` from other threads; loading is single-threaded.
        self._lock = threading.Lock()

    # -- what the engine calls -----------------------------------------------------------------

    def acquire(self, target: ModelTarget) -> Loaded:
        """Load (or find) the target's model and hold it until ``release(loaded.model_id)``."""
        if target.kind == "base":
            base = self._base(target.base_model)
            return Loaded(
                target.model_id,
                base.model,
                base.tokenizer,
                base.eos_ids,
                base.model_kwargs,
                batch_key=f"base:{base.name}",
            )
        loaded = self._adapter(target) if target.kind == "lora" else self._full(target)
        self._lru[target.model_id].holders += 1
        return loaded

    def release(self, model_id: str) -> None:
        entry = self._lru.get(model_id)
        if entry is None:
            return  # a base: never evicted
        entry.holders -= 1
        if entry.holders == 0 and entry.doomed:
            self.evict(model_id)

    def evict(self, model_id: str) -> bool:
        entry = self._lru.get(model_id)
        if entry is None:
            return False
        if entry.holders > 0:
            entry.doomed = True  # requests are decoding with it: drop it after the last one
            return True
        with self._lock:
            del self._lru[model_id]
        self._drop(entry)
        return True

    def stats(self) -> dict[str, Any]:
        """For tests and logs: which models are in memory and how many bytes the LRU holds."""
        with self._lock:
            return {
                "bases": sorted(self._bases),
                "cached": list(self._lru),
                "cached_bytes": sum(e.bytes for e in self._lru.values()),
                "budget_bytes": self.budget_bytes,
            }

    # -- loading -------------------------------------------------------------------------------

    def _base(self, name: str) -> _Base:
        base = self._bases.get(name)
        if base is not None:
            return base
        try:
            folder = resolve_base_model(name, self.cache_dir, self.local_models)
        except UnknownBaseModel as exc:
            raise NotFound(str(exc), param="model", code="model_not_found") from exc
        logger.info("loading base model %s from %s", name, folder)
        model, tokenizer = self._load_model(folder)
        base = _Base(name, model, tokenizer, _eos_ids(model, tokenizer), _model_kwargs(model))
        with self._lock:
            self._bases[name] = base
        return base

    def _load_model(self, folder: Path) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(folder))
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype)
        model.to(self.device).eval()
        return model, tokenizer

    def _adapter(self, target: ModelTarget) -> Loaded:
        entry = self._lru.get(target.model_id)
        base = self._base(target.base_model)
        if entry is None or _stale(entry, target):
            if entry is not None:  # same id, other folder (re-created): reload it
                self.evict(target.model_id)
            path = _existing(target)
            name = adapter_name(target.model_id)
            logger.info("loading adapter %s from %s", target.model_id, path)
            try:
                if base.peft is None:
                    from peft import PeftModel

                    base.peft = PeftModel.from_pretrained(base.model, path, adapter_name=name)
                else:
                    base.peft.load_adapter(path, adapter_name=name)
            except (OSError, ValueError) as exc:
                raise ServerError(f"Could not load the adapter of `{target.model_id}`.") from exc
            base.peft.to(self.device).eval()
            enable_row_adapters(base.model)
            entry = _Entry(
                target.model_id,
                "lora",
                _adapter_bytes(path),
                path,
                base=base.name,
                adapter_name=name,
            )
            self._insert(entry)
        with self._lock:
            self._lru.move_to_end(target.model_id)
        return Loaded(
            target.model_id,
            base.model,  # wrapped in place by peft: its LoRA layers apply each row's adapter
            base.tokenizer,
            base.eos_ids,
            base.model_kwargs,
            batch_key=f"base:{base.name}",
            adapter=entry.adapter_name,
        )

    def _full(self, target: ModelTarget) -> Loaded:
        entry = self._lru.get(target.model_id)
        if entry is None or _stale(entry, target):
            if entry is not None:
                self.evict(target.model_id)
            path = _existing(target)
            logger.info("loading full fine-tune %s from %s", target.model_id, path)
            try:
                model, tokenizer = self._load_model(path)
            except (OSError, ValueError) as exc:
                raise ServerError(f"Could not load the weights of `{target.model_id}`.") from exc
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            entry = _Entry(
                target.model_id,
                "full",
                size,
                path,
                model=model,
                tokenizer=tokenizer,
                eos_ids=_eos_ids(model, tokenizer),
                model_kwargs=_model_kwargs(model),
            )
            self._insert(entry)
        with self._lock:
            self._lru.move_to_end(target.model_id)
        return Loaded(
            target.model_id,
            entry.model,
            entry.tokenizer,
            entry.eos_ids,
            entry.model_kwargs,
            batch_key=f"full:{target.model_id}:{entry.path}",
        )

    def _insert(self, entry: _Entry) -> None:
        with self._lock:
            self._lru[entry.model_id] = entry
        total = sum(e.bytes for e in self._lru.values())
        for model_id in list(self._lru):
            held = self._lru[model_id].holders > 0
            if total <= self.budget_bytes or model_id == entry.model_id or held:
                continue
            total -= self._lru[model_id].bytes
            logger.info("evicting %s from the model cache (LRU, over budget)", model_id)
            self.evict(model_id)

    def _drop(self, entry: _Entry) -> None:
        if entry.kind == "lora" and entry.base in self._bases:
            base = self._bases[entry.base]
            if base.peft is not None and entry.adapter_name in base.peft.peft_config:
                if len(base.peft.peft_config) == 1:
                    base.model = base.peft.unload()  # the plain base again
                    base.peft = None
                else:
                    with warnings.catch_warnings():  # "was active, now deleted": expected
                        warnings.simplefilter("ignore", UserWarning)
                        base.peft.delete_adapter(entry.adapter_name)
                forget_stacks(base.model)
        entry.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _stale(entry: _Entry, target: ModelTarget) -> bool:
    """The id now names another folder (deleted and re-created).  While requests still decode
    with the old weights they keep them; the next request after them loads the new ones."""
    return entry.path != target.path and entry.holders == 0


def adapter_name(model_id: str) -> str:
    """peft adapter names become module keys, which may not contain '.' or ':'."""
    return "ft_" + hashlib.sha256(model_id.encode()).hexdigest()[:20]


def _existing(target: ModelTarget) -> Path:
    if target.path is None or not target.path.is_dir():
        raise APIError(
            f"The files of model `{target.model_id}` are missing on this server.",
            param="model",
            code="model_files_missing",
            status_code=500,
        )
    return target.path


def _adapter_bytes(path: Path) -> int:
    files = [*path.glob("adapter_model.*")] or [*path.glob("*.safetensors"), *path.glob("*.bin")]
    return sum(f.stat().st_size for f in files if f.is_file())


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_TOKENS if token in vocab)
    return ids


def _model_kwargs(model: Any) -> dict[str, Any]:
    """`logits_to_keep=1` where the architecture takes it: no logits for the whole prompt."""
    import inspect

    try:
        accepted = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
