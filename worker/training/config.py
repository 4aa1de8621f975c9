"""The typed config a training run is handed, and how "auto" hyperparameters are chosen.

The engine never reads the environment: everything a run depends on is in ``TrainingConfig``, so
a run can be reproduced from its JSON (``to_dict``) alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from tuna_core import hyperparameters as hp
from tuna_core.devices import DEVICES, Device
from tuna_core.hyperparameters import (
    BATCH_SIZE_RANGE,
    DEFAULT_BETA,
    Method,
    Precision,
    Quantization,
    TrainingType,
)

Compile = Literal["auto", "on", "off"]
COMPILE_CHOICES: tuple[str, ...] = get_args(Compile)

# Peak learning rates before the multiplier.  LoRA adapters start at zero and need a large step;
# full fine-tuning moves every pretrained weight, so an order of magnitude less keeps it stable.
BASE_LEARNING_RATE: dict[str, float] = {"lora": 2e-4, "full": 2e-5}

_PATH_FIELDS = ("model_cache_dir", "training_file", "validation_file", "output_dir")


@dataclass
class TrainingConfig:
    """Everything one training run needs.  ``None`` hyperparameters mean "auto".

    Defaults worth knowing: LoRA on every attention and MLP projection with the rank, alpha and
    dropout of `tuna_core.hyperparameters`.  Warmup is 3% of steps, then cosine decay to
    ``min_lr_ratio`` of the peak.
    """

    base_model: str
    model_cache_dir: Path
    training_file: Path
    output_dir: Path
    local_models: dict[str, Path] = field(default_factory=dict)
    validation_file: Path | None = None
    # "supervised" (chat or prompt/completion examples) or "dpo" (preference pairs).
    method: Method = "supervised"
    # DPO's beta; None: "auto" (DEFAULT_BETA).  Only a DPO run may set it.
    beta: float | None = None
    # Continue training a fine-tuned model: a folder the engine wrote (a job's ``final`` or a
    # checkpoint), whose ``tuna_model.json`` names ``base_model``.  None: start from the base.
    init_from: Path | None = None
    training_type: TrainingType = hp.EXTENSION_DEFAULTS["training_type"]
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    lora_rank: int = hp.EXTENSION_DEFAULTS["lora_rank"]
    lora_alpha: int = hp.EXTENSION_DEFAULTS["lora_alpha"]
    lora_dropout: float = hp.EXTENSION_DEFAULTS["lora_dropout"]
    # "4bit": QLoRA, the base held in 4-bit NF4 (CUDA and bitsandbytes; see quantization.py).
    quantization: Quantization = hp.EXTENSION_DEFAULTS["quantization"]
    seed: int = 0
    max_seq_len: int | None = None  # None: the base model's context length
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    device: Device = "auto"
    # torch.compile the decoder layers. "auto": on a GPU always; on a CPU when a C++ compiler is
    # installed and the run is long enough to win back the compile time (see loop._use_compile).
    compile: Compile = "auto"
    # Matmul precision over float32 master weights. "auto": bf16 autocast where the hardware has
    # bf16 matmuls (most GPUs; CPUs with AVX512-BF16 or AMX), float32 elsewhere.
    precision: Precision = "auto"
    # Memory a step's activations may take. None: what the device has free once the model,
    # gradients and optimizer state are in place. Batches that would need more are split into
    # rows that fit, and longer examples checkpoint layers (see memory.py).
    activation_memory_gib: float | None = None
    resume_from_checkpoint: Path | None = None
    keep_checkpoints: int = 3
    checkpoint_every_epoch: bool = True
    # Validation loss on one validation batch every this many steps (None: about 20 per run).
    eval_every_steps: int | None = None

    def __post_init__(self) -> None:
        for name in (*_PATH_FIELDS, "resume_from_checkpoint", "init_from"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        self.local_models = {k: Path(v) for k, v in (self.local_models or {}).items()}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.method not in hp.METHODS:
            raise ValueError(f"method must be one of {', '.join(hp.METHODS)}, not {self.method!r}")
        for key in hp.keys_for(self.method):
            value = getattr(self, key)
            if value is not None:  # None: "auto", chosen from the data
                hp.check_value(key, value, auto=False)
        hp.check_combination(
            {"training_type": self.training_type, "quantization": self.quantization}
        )
        if self.beta is not None and "beta" not in hp.keys_for(self.method):
            raise ValueError(f"beta is a DPO hyperparameter; a {self.method} run cannot set it")
        hp.check_precision(self.precision)
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile must be auto, on or off, not {self.compile!r}")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ValueError("max_seq_len must be at least 8")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.activation_memory_gib is not None and not self.activation_memory_gib > 0:
            raise ValueError("activation_memory_gib must be > 0")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1")
        if self.eval_every_steps is not None and self.eval_every_steps < 1:
            raise ValueError("eval_every_steps must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Build from JSON-shaped data; unknown keys are an error (a typo must not be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown training config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths become strings."""
        out: dict[str, Any] = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        out["local_models"] = {k: str(v) for k, v in self.local_models.items()}
        return out


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """The numbers a run actually uses (shown on the job once "auto" is resolved)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    beta: float | None = None  # DPO only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auto_n_epochs(n_examples: int) -> int:
    """OpenAI's public heuristic: 3 epochs, more for tiny sets, fewer for huge ones.

    Aims at roughly 100..25000 example-passes in total.
    """
    n = max(1, n_examples)
    if 3 * n < 100:
        return min(25, 100 // n)
    if 3 * n > 25000:
        return max(1, 25000 // n)
    return 3


def auto_batch_size(n_examples: int) -> int:
    """About 0.2% of the examples, clamped to 1..256 (what OpenAI's "auto" is observed to pick).

    Small sets (under ~750 examples) train one example per step: with few examples, more, noisier
    steps learn more than fewer averaged ones.
    """
    return max(BATCH_SIZE_RANGE[0], min(BATCH_SIZE_RANGE[1], round(n_examples * 0.002)))


def auto_learning_rate_multiplier(batch_size: int) -> float:
    """Square-root scaling with batch size, capped at 4.

    A batch of b examples averages b gradients, reducing the noise by sqrt(b); the step can grow
    by the same factor.  Batch 1 gets exactly the base learning rate.
    """
    return min(4.0, math.sqrt(batch_size))


def resolve_hyperparameters(
    n_examples: int, n_tokens: int, cfg: TrainingConfig
) -> ResolvedHyperparameters:
    """Fill in every "auto" from the training set's size; explicit values are kept.

    ``n_tokens`` is accepted so a token-based rule can replace the example-based one without
    changing callers; the current rules depend on the example count only.
    """
    del n_tokens
    n_epochs = cfg.n_epochs if cfg.n_epochs is not None else auto_n_epochs(n_examples)
    batch_size = cfg.batch_size if cfg.batch_size is not None else auto_batch_size(n_examples)
    multiplier = (
        cfg.learning_rate_multiplier
        if cfg.learning_rate_multiplier is not None
        else auto_learning_rate_multiplier(batch_size)
    )
    beta = None
    if cfg.method == "dpo":
        beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA
    return ResolvedHyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=multiplier,
        learning_rate=BASE_LEARNING_RATE[cfg.training_type] * multiplier,
        beta=beta,
    )
