"""The llama architecture family in GGUF: its hyperparameters and its tensors.

llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``) is the reference for what a llama GGUF
must hold; readers (llama.cpp, Ollama, transformers' GGUF loader) rely on these conventions:

* hyperparameters under ``llama.*`` (context, embedding, block count, feed-forward, heads, KV
  heads, RMS epsilon, rope base and dimensions, vocab size);
* tensor names from gguf's own map (``blk.N.attn_q.weight``...), never spelled here;
* q_proj and k_proj rows permuted: transformers rotates the two halves of each head
  (rotate_half), llama.cpp rotates adjacent pairs, so each head's rows are interleaved
  (k_proj with the KV head count: grouped-query attention);
* tied embeddings (SmolLM2) write no ``output.weight``; readers reuse ``token_embd``.

Anything whose numbers would come out wrong without more code (rope scaling, biases, another
architecture) is refused with ``UnsupportedExport`` rather than written approximately.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.export.errors import UnsupportedExport

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


@dataclass(frozen=True)
class LlamaShape:
    """The numbers of a llama config that the GGUF header and the tensor permutation need."""

    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    head_dim: int | None  # written only when config.json states it (as llama.cpp does)
    rms_norm_eps: float
    rope_theta: float
    vocab_size: int
    tie_word_embeddings: bool

    @property
    def rope_dimension_count(self) -> int:
        return self.head_dim or self.embedding_length // self.head_count


def read_llama_config(model_dir: Path) -> LlamaShape:
    """``config.json`` of a llama-family folder; ``UnsupportedExport`` for anything else."""
    try:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedExport(f"No readable config.json in {model_dir}: {exc}") from exc
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    architecture = str(architectures[0])
    if architecture not in SUPPORTED_ARCHITECTURES or config.get("model_type") != "llama":
        raise UnsupportedExport(
            f"GGUF export supports the llama architecture family "
            f"({', '.join(SUPPORTED_ARCHITECTURES)}), not {architecture}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise UnsupportedExport(f"GGUF export does not support llama models with {flag}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedExport(f"GGUF export does not support rope scaling {rope_type!r}")
    heads = int(config["num_attention_heads"])
    return LlamaShape(
        context_length=int(config.get("max_position_embeddings") or 2048),
        embedding_length=int(config["hidden_size"]),
        block_count=int(config["num_hidden_layers"]),
        feed_forward_length=int(config["intermediate_size"]),
        head_count=heads,
        head_count_kv=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config["head_dim"]) if config.get("head_dim") else None,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        vocab_size=int(config["vocab_size"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def add_llama_hparams(writer: Any, shape: LlamaShape) -> None:
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.embedding_length)
    writer.add_block_count(shape.block_count)
    writer.add_feed_forward_length(shape.feed_forward_length)
    writer.add_head_count(shape.head_count)
    writer.add_head_count_kv(shape.head_count_kv)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.rope_dimension_count)
    writer.add_vocab_size(shape.vocab_size)
    if shape.head_dim is not None:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)


@dataclass(frozen=True)
class SourceTensor:
    """One tensor to write: where it is in the safetensors files, and its GGUF name."""

    file: Path
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]


def llama_tensors(model_dir: Path, shape: LlamaShape) -> list[SourceTensor]:
    """Every tensor of the folder under its GGUF name (shapes only: nothing is loaded)."""
    import gguf
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedExport(f"GGUF export needs safetensors weights; {model_dir} has none")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape.block_count)
    out: list[SourceTensor] = []
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as part:
            for hf_name in part.keys():  # noqa: SIM118 (safe_open is not iterable)
                if hf_name.endswith(".rotary_emb.inv_freq"):
                    continue  # a cache, recomputed from rope.freq_base
                if hf_name == "lm_head.weight" and shape.tie_word_embeddings:
                    continue  # tied: the reader reuses token_embd
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UnsupportedExport(f"GGUF export cannot place the tensor {hf_name!r}")
                dims = tuple(part.get_slice(hf_name).get_shape())
                out.append(SourceTensor(file, hf_name, gguf_name, dims))
    return out


def load_llama_tensor(tensor: SourceTensor, shape: LlamaShape) -> Any:
    """The tensor as float32 numpy, q/k rows permuted for llama.cpp's rope."""
    import torch
    from safetensors import safe_open

    with safe_open(tensor.file, framework="pt", device="cpu") as part:
        data = part.get_tensor(tensor.hf_name).to(torch.float32)
    if tensor.hf_name.endswith("q_proj.weight"):
        data = _permute(data, shape.head_count)
    elif tensor.hf_name.endswith("k_proj.weight"):
        data = _permute(data, shape.head_count_kv)
    return data.numpy()


def _permute(weights: Any, heads: int) -> Any:
    """Each head's rows from halves order (0..d/2, d/2..d) to interleaved pairs (llama.cpp)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
