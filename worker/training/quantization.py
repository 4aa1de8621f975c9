"""QLoRA: a LoRA adapter trained over a base model held in 4-bit NF4 (``quantization: "4bit"``).

`loop._load_model` hands a run here when its config asks for a quantized base.  The frozen base
weights are loaded in 4-bit NF4 with double quantization by bitsandbytes (compute in bf16), made
trainable for adapters by peft's `prepare_model_for_kbit_training` (norms and embeddings in
float32, input gradients on), and a LoRA adapter of the run's rank, alpha and dropout goes on
every attention and MLP projection, as for a plain LoRA run.  Only the adapter trains and only the
adapter is saved, so the final model is a normal LoRA adapter over the full-precision base: served,
exported and continued like any other.

bitsandbytes' 4-bit layers train on CUDA only, and bitsandbytes is the optional `gpu` extra
(``pip install 'tuna[gpu]'``): anywhere else the run is refused before any weight is loaded, with
``code: "qlora_needs_cuda"`` on the job.  Whether a worker has a GPU is only known on the worker,
so this is the engine's check, not the API's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from worker.training.config import TrainingConfig
from worker.training.loop import TrainingError, _model_type, lora_config

QLORA_CODE = "qlora_needs_cuda"


def check_qlora_supported(config: TrainingConfig, device: torch.device) -> None:
    """Raise TrainingError (``qlora_needs_cuda``, param ``quantization``) unless this run can
    hold its base in 4 bits here: a CUDA device and bitsandbytes installed."""
    what = f"QLoRA (quantization {config.quantization!r})"
    if device.type != "cuda":
        raise TrainingError(
            f"{what} needs a CUDA GPU: bitsandbytes' 4-bit layers do not train on "
            f"{device.type}, and this worker trains on {device.type}. Run the job on a GPU "
            "worker, or train without quantization (quantization 'none').",
            code=QLORA_CODE,
            param="quantization",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError(
            f"{what} needs the bitsandbytes package on the worker, which is not installed: "
            "install Tuna's GPU extra (pip install 'tuna[gpu]').",
            code=QLORA_CODE,
            param="quantization",
        )


def load_qlora_model(config: TrainingConfig, model_dir: Path, device: torch.device) -> Any:
    """The base in 4-bit NF4 on ``device`` with a trainable LoRA adapter: a new one, or the one
    of ``init_from`` / the checkpoint being resumed.  Already on ``device`` (a 4-bit model cannot
    be moved with ``.to``)."""
    check_qlora_supported(config, device)
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    resume, start = config.resume_from_checkpoint, config.init_from
    if start is not None and _model_type(start, config.base_model) == "full":
        raise TrainingError(
            "A QLoRA run cannot continue a full fine-tune (its adapter could not be served over "
            "the base model); continue it with training_type 'full' and quantization 'none'.",
            code="invalid_training_type",
            param="training_type",
        )
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    index = device.index if device.index is not None else torch.cuda.current_device()
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=quantization,
        dtype=torch.bfloat16,  # the layers bitsandbytes leaves alone; peft makes them float32
        device_map={"": index},
    )
    model.config.use_cache = False
    # The loop plans gradient checkpointing itself (memory.py), so peft does not turn it on.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    source = resume or start
    if source is not None:
        return PeftModel.from_pretrained(model, source, is_trainable=True)
    return get_peft_model(model, lora_config(config))
