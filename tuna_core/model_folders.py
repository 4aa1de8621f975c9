"""What a fine-tuned model's folder holds besides its weights: `tuna_model.json`.

The training engine writes it with every model and checkpoint; an import writes it for the
folder it registers. Continuing a model reads it to know its base and whether it is a LoRA
adapter (peft's files) or a full model (transformers' files).
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_INFO_FILE = "tuna_model.json"


def write_model_info(folder: Path, base_model: str, training_type: str) -> None:
    info = {"base_model": base_model, "training_type": training_type}
    (folder / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
