"""A merged model as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

Written with the ``gguf`` package (llama.cpp's own writer) following ``convert_hf_to_gguf.py``,
so no llama.cpp checkout or binary is needed.  The file is streamed: tensor infos are planned
from the safetensors headers, then each tensor is loaded, converted and written in turn, so
memory holds one tensor at a time, not the model twice.

Types (``GGUF_TYPES``, the one list of accepted names): ``f16``, ``bf16``, ``q8_0`` (8-bit blocks
of 32 with a scale), ``q4_0`` (4-bit blocks of 32).  As in llama.cpp, 1-D tensors and norms stay
float32, and a matrix whose rows do not split into blocks falls back to f16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuna_core.exports import GGUF_TYPES  # the one list of names, shared with the API
from worker.export.atomic import staged_file
from worker.export.errors import UnsupportedExport
from worker.export.gguf_llama import (
    LlamaShape,
    SourceTensor,
    add_llama_hparams,
    llama_tensors,
    load_llama_tensor,
    read_llama_config,
)
from worker.export.gguf_vocab import add_bpe_vocab


def write_gguf(model_dir: Path, target: Path, quantization: str) -> Path:
    """Convert the merged transformers folder ``model_dir`` into the file ``target``.

    ``quantization`` is one of ``GGUF_TYPES``.  The folder must be of the llama family
    (``LlamaForCausalLM``: Llama, SmolLM2...) with a byte-level BPE tokenizer; anything else
    raises ``UnsupportedExport`` naming what is unsupported, before anything is written.  The
    file carries the tokenizer and the chat template, so it runs with no other file.  It appears
    at ``target`` complete or not at all (written beside it, then renamed).  Returns ``target``.
    """
    import gguf

    if quantization not in GGUF_TYPES:
        raise UnsupportedExport(f"GGUF type {quantization!r} is not one of {', '.join(GGUF_TYPES)}")
    model_dir, target = Path(model_dir), Path(target)
    shape = read_llama_config(model_dir)
    tensors = llama_tensors(model_dir, shape)
    file_type, matrix_type = _types(quantization)

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    add_llama_hparams(writer, shape)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_bpe_vocab(writer, model_dir, shape.vocab_size)
    plan = [(tensor, _tensor_type(tensor, matrix_type)) for tensor in tensors]
    for tensor, qtype in plan:
        dtype, byte_shape = _stored(tensor.shape, qtype)
        nbytes = int(dtype.itemsize) * _product(byte_shape)
        writer.add_tensor_info(tensor.gguf_name, byte_shape, dtype, nbytes, raw_dtype=qtype)

    with staged_file(target) as staged:
        try:
            writer.write_header_to_file(path=staged)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for tensor, qtype in plan:
                writer.write_tensor_data(_converted(tensor, shape, qtype))
        finally:
            writer.close()
    return target


def _types(quantization: str) -> tuple[Any, Any]:
    """(general.file_type, the type of the quantizable matrices) for a ``GGUF_TYPES`` name."""
    import gguf

    return {
        "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
        "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
        "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, gguf.GGMLQuantizationType.Q4_0),
    }[quantization]


def _tensor_type(tensor: SourceTensor, matrix_type: Any) -> Any:
    """llama.cpp's rule: vectors and norms in float32 (its kernels expect it); matrices in the
    file's type, or f16 where a row does not divide into the type's blocks."""
    import gguf

    if len(tensor.shape) <= 1 or tensor.gguf_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    block_size, _ = gguf.GGML_QUANT_SIZES[matrix_type]
    if tensor.shape[-1] % block_size:
        return gguf.GGMLQuantizationType.F16
    return matrix_type


def _stored(shape: tuple[int, ...], qtype: Any) -> tuple[Any, tuple[int, ...]]:
    """The numpy dtype and shape ``gguf.quants.quantize`` returns for ``shape`` in ``qtype``."""
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.dtype(np.float32), shape
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.dtype(np.float16), shape
    return np.dtype(np.uint8), gguf.quant_shape_to_byte_shape(shape, qtype)


def _converted(tensor: SourceTensor, shape: LlamaShape, qtype: Any) -> Any:
    import gguf

    return gguf.quants.quantize(load_llama_tensor(tensor, shape), qtype)


def _product(dims: tuple[int, ...]) -> int:
    total = 1
    for dim in dims:
        total *= int(dim)
    return total
