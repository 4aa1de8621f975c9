"""What a fine-tuned model can be downloaded as: the one definition the API, the CLI and the
worker share.

* ``adapter``: the peft adapter folder (LoRA models only), as a tar archive;
* ``merged``: a full transformers folder (the adapter merged into its base, or a full fine-tune
  as trained) in safetensors with the tokenizer and its chat template, as a tar archive;
* ``gguf``: one `.gguf` file for llama.cpp and its kin, at one of ``GGUF_TYPES``, with the chat
  template in its metadata.

A LoRA model's adapter and a full model's own folder are streamed straight from storage; the
others are built once by a worker (merging and converting takes minutes on a large model) and
kept beside the model until it is deleted.
"""

from __future__ import annotations

import re

EXPORT_FORMATS = ("adapter", "merged", "gguf")
# f16/bf16 keep the weights as trained (bf16 is the safer range, f16 what most runtimes prefer);
# q8_0 is llama.cpp's 8-bit block quantization: half the size, answers nearly identical; q4_0
# its 4-bit blocks: a quarter of f16, for small machines, at a visible cost in quality.
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0")
DEFAULT_GGUF_TYPE = "f16"


def export_key(export_format: str, gguf_type: str | None = None) -> str:
    """The name of one artifact of a model: ``adapter``, ``merged``, ``gguf-q8_0``."""
    return f"gguf-{gguf_type or DEFAULT_GGUF_TYPE}" if export_format == "gguf" else export_format


def parse_export_key(key: str) -> tuple[str, str | None]:
    """(format, GGUF type or None): the inverse of ``export_key``."""
    export_format, _, gguf_type = key.partition("-")
    return export_format, gguf_type or None


def download_name(model_id: str, key: str) -> str:
    """A file name for the download: the model id with ':' and '/' made safe, then the kind."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-")
    export_format, gguf_type = parse_export_key(key)
    return f"{stem}.{gguf_type}.gguf" if export_format == "gguf" else f"{stem}.{key}.tar"


def needs_build(export_format: str, training_type: str) -> bool:
    """Whether the artifact must be built by a worker, or is a folder Tuna already stores."""
    if export_format == "adapter":
        return False
    if export_format == "merged":
        return training_type != "full"
    return True
