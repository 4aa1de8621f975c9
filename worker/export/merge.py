"""A fine-tuned model as one plain transformers folder: base + LoRA adapter merged.

Tools outside Tuna (vLLM, llama.cpp's converter, ``write_gguf``, anyone's ``from_pretrained``)
know nothing of peft adapters, so an export starts by folding the adapter into the base weights
(``merge_and_unload``: W + scale * B @ A per adapted layer).  The folder holds what a reader
needs to use the model as it was trained: safetensors weights, config, generation config, and the
tokenizer *with* the chat template the model was trained on (``ensure_chat_template``, as the
engine does), so ``apply_chat_template`` on the export renders exactly what training rendered.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from tuna_core.chat_template import ensure_chat_template
from worker.export.atomic import staged_folder
from worker.export.errors import UnsupportedExport

# "auto" keeps the dtype the base declares (config.json); the others convert on save.
MERGE_DTYPES = ("auto", "float32", "bfloat16", "float16")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def write_merged(
    base_dir: Path, adapter_dir: Path | None, target: Path, dtype: str = "auto"
) -> Path:
    """Write ``base_dir`` with ``adapter_dir``'s LoRA merged into it as a folder at ``target``.

    ``adapter_dir`` None means ``base_dir`` already is the model (a full fine-tune): it is
    loaded and re-saved, which also normalizes old ``.bin`` weights to safetensors and applies
    ``dtype``.  The tokenizer comes from the adapter folder when it has one (the engine saves it
    there), else from the base.  The folder appears at ``target`` complete or not at all
    (written beside it and renamed); an existing ``target`` is replaced.  Returns ``target``.
    """
    if dtype not in MERGE_DTYPES:
        raise UnsupportedExport(f"dtype {dtype!r} is not one of {', '.join(MERGE_DTYPES)}")
    base_dir, target = Path(base_dir), Path(target)
    model = _load_merged(base_dir, None if adapter_dir is None else Path(adapter_dir), dtype)
    tokenizer = _load_tokenizer(base_dir if adapter_dir is None else Path(adapter_dir), base_dir)
    with staged_folder(target) as staged:
        _save_model(model, staged)
        tokenizer.save_pretrained(staged)
    return target


def _torch_dtype(dtype: str) -> Any:
    import torch

    return "auto" if dtype == "auto" else getattr(torch, dtype)


def _load_merged(base_dir: Path, adapter_dir: Path | None, dtype: str) -> Any:
    """The model with the adapter folded in, in ``dtype``.

    The merge runs in float32 whatever the requested dtype, then converts once: merging in bf16
    would round the base weights before the (small) LoRA delta is added to them.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if adapter_dir is None:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=_torch_dtype(dtype))
        return model.eval()

    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    stored = _declared_dtype(model)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    out = stored if dtype == "auto" else getattr(torch, dtype)
    merged = merged.to(out)
    merged.config.dtype = out  # what config.json records, so "auto" loads reload it as saved
    return merged.eval()


def _declared_dtype(model: Any) -> Any:
    """The dtype the base's config.json declares (float32 when it declares none)."""
    import torch

    declared = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else torch.float32


def _load_tokenizer(folder: Path, base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    source = folder if any((folder / name).is_file() for name in _TOKENIZER_FILES) else base_dir
    return ensure_chat_template(AutoTokenizer.from_pretrained(source))


def _save_model(model: Any, folder: Path) -> None:
    """Safetensors weights, config.json and generation_config.json.

    transformers 5 always writes safetensors; 4.x needs ``safe_serialization`` (its default
    there, passed anyway so a changed default cannot silently write pickles).
    """
    kwargs: dict[str, Any] = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(folder, **kwargs)
    if not any(folder.glob("*.safetensors")):
        raise RuntimeError(f"save_pretrained wrote no safetensors into {folder}")
