"""GGUF files read back, by transformers' GGUF loader and by llama.cpp, as the merged model.

transformers' loader is an independent reader of the format (its own config mapping, tokenizer
converter and q/k un-permutation), so a file it reads back exactly is laid out as llama.cpp
expects; llama.cpp itself (llama-cpp-python) is checked when installed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.export.conftest import NEW_TOKENS, Exported, greedy, logits
from tests.worker.training.helpers import EDGE_CASE_TEXTS
from worker.export import GGUF_TYPES, UnsupportedExport, write_gguf

# How close each type's logits stay to the merged float32 model's, on the prompt and its greedy
# continuation.  The tiny model has random embeddings: its logits lie within about +-1 and the
# top two are often 0.01 apart, so argmax flips easily, and 4-bit blocks of its 64-wide rows
# lose much of the signal.  Measured: max |error| f16 3e-3, bf16 3e-2, q8_0 0.1, q4_0 0.9;
# argmax agreement 1.0, 0.94, 0.9, 0.27; mean centered cosine 1.0, 0.9999, 0.9989, 0.87.
# An f16 file written without the q/k row permutation scores error 1.0, agreement 0.12 and
# cosine 0.54: below every bound.  (Whether q4_0 is *read* right is checked exactly by
# test_weights_read_back_exactly, and against llama.cpp.)
LOGIT_ATOL = {"f16": 1e-2, "bf16": 0.1, "q8_0": 0.3, "q4_0": 2.0}
ARGMAX_AGREEMENT = {"f16": 1.0, "bf16": 0.85, "q8_0": 0.75, "q4_0": 0.15}
SIMILARITY = {"f16": 0.99999, "bf16": 0.9995, "q8_0": 0.995, "q4_0": 0.7}
FILE_TYPES = {"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}  # llama.cpp's LlamaFileType


def _load_gguf_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"gguf_file": path.name, "dtype": torch.float32}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # transformers 4.x: gguf_file= alone dequantizes
        pass
    return AutoModelForCausalLM.from_pretrained(path.parent, **kwargs).eval()


@pytest.fixture(scope="session")
def gguf_model(gguf_file: Callable[[str], Path]) -> Callable[[str], Any]:
    """``gguf_model(type)``: the file read back by transformers (once per type)."""
    loaded: dict[str, Any] = {}

    def get(quantization: str) -> Any:
        if quantization not in loaded:
            loaded[quantization] = _load_gguf_model(gguf_file(quantization))
        return loaded[quantization]

    return get


@pytest.fixture(scope="session")
def sequence(exported: Exported) -> torch.Tensor:
    """The prompt and the merged model's greedy continuation: what logits are compared on."""
    tokens = greedy(exported.merged, exported.prompt_ids)
    return torch.cat([exported.prompt_ids, torch.tensor([tokens])], dim=1)


def _field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


@pytest.mark.parametrize("quantization", GGUF_TYPES)
def test_metadata_follows_llama_cpp(
    exported: Exported, gguf_file: Callable[[str], Path], quantization: str
) -> None:
    import gguf
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(gguf_file(quantization))
    config = json.loads((exported.merged_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(exported.merged_dir)
    expected = {
        "general.architecture": "llama",
        "general.file_type": FILE_TYPES[quantization],
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_token_id,
        "tokenizer.ggml.add_bos_token": False,  # SmolLM2 adds no BOS
        "tokenizer.chat_template": tokenizer.chat_template,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(100000.0)
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)

    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == config["vocab_size"]
    vocab = tokenizer.get_vocab()
    assert all(tokens[i] == token for token, i in vocab.items())
    assert types[vocab["<|im_start|>"]] == gguf.TokenType.CONTROL
    assert types[vocab["Paris"]] == gguf.TokenType.NORMAL
    merges = json.loads((exported.merged_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(merges)

    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in kinds  # tied embeddings: readers reuse token_embd
    assert len(kinds) == 2 + 9 * config["num_hidden_layers"]
    matrix = getattr(gguf.GGMLQuantizationType, quantization.upper())
    for name, kind in kinds.items():
        want = gguf.GGMLQuantizationType.F32 if name.endswith("norm.weight") else matrix
        assert kind == want, name


@pytest.mark.parametrize("quantization", GGUF_TYPES)
def test_weights_read_back_exactly(
    exported: Exported, gguf_model: Callable[[str], Any], quantization: str
) -> None:
    """Every weight transformers reads back is the merged weight after exactly one round of the
    type's quantization: names, shapes, the q/k row permutation and block layout all right."""
    import gguf
    from safetensors.torch import load_file

    qtype = getattr(gguf.GGMLQuantizationType, quantization.upper())
    state = gguf_model(quantization).state_dict()
    source = load_file(exported.merged_dir / "model.safetensors")
    for name, weight in source.items():
        data = weight.float().numpy()
        if weight.dim() == 2:
            data = gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype)
        assert torch.equal(state[name], torch.from_numpy(data).reshape(weight.shape)), name


def _centered_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per position, the cosine of the two logit vectors around their means (their shape
    over the vocabulary, which is what sampling sees)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize("quantization", GGUF_TYPES)
def test_logits_match_the_merged_model(
    exported: Exported,
    gguf_model: Callable[[str], Any],
    sequence: torch.Tensor,
    quantization: str,
) -> None:
    want = logits(exported.merged, sequence)
    got = logits(gguf_model(quantization), sequence)
    error = (got - want).abs().max().item()
    agreement = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    similarity = _centered_cosine(got, want).mean().item()
    print(f"{quantization}: max |error| {error:.2e}, argmax {agreement:.3f}, sim {similarity:.5f}")
    assert error <= LOGIT_ATOL[quantization]
    assert agreement >= ARGMAX_AGREEMENT[quantization]
    assert similarity >= SIMILARITY[quantization]
    # Where the merged model's choice leads by more than the type's error, it must be kept.
    top2 = want.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * error
    assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


def _near_ties(reference: Any, prompt: list[int], tokens: list[int], tolerance: float) -> bool:
    """Whether each of ``tokens`` (a greedy continuation of ``prompt`` by another model) is
    ``reference``'s top choice after the same prefix, or within ``tolerance`` of it."""
    path = torch.tensor([prompt + tokens])
    scores = logits(reference, path)[len(prompt) - 1 : -1]
    chosen = scores.gather(-1, torch.tensor(tokens)[:, None])[:, 0]
    return bool((chosen >= scores.max(-1).values - tolerance).all())


@pytest.mark.parametrize("quantization", ["f16", "bf16", "q8_0"])
def test_greedy_continuation_is_the_merged_models(
    exported: Exported,
    gguf_model: Callable[[str], Any],
    sequence: torch.Tensor,
    quantization: str,
) -> None:
    """f16 continues exactly as the merged model; the others may part ways at a near-tie
    (bf16 does, at the 9th token), but never for a clearly better token."""
    prompt = exported.prompt_ids[0].tolist()
    tokens = greedy(gguf_model(quantization), exported.prompt_ids)
    if quantization == "f16":
        assert tokens == sequence[0, len(prompt) :].tolist()
    assert _near_ties(exported.merged, prompt, tokens, 2 * LOGIT_ATOL[quantization])
    assert tokens[:2] == sequence[0, len(prompt) : len(prompt) + 2].tolist()


def test_tokenizer_reads_back_from_the_file(
    exported: Exported, gguf_file: Callable[[str], Path]
) -> None:
    from transformers import AutoTokenizer

    path = gguf_file("f16")
    source = AutoTokenizer.from_pretrained(exported.merged_dir)
    read = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [*EDGE_CASE_TEXTS, exported.prompt]:
        ids = source(text, add_special_tokens=True)["input_ids"]
        assert read(text, add_special_tokens=True)["input_ids"] == ids, text
        assert read.decode(ids) == source.decode(ids), text
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(read, attribute) == getattr(source, attribute), attribute


def _folder_like(exported: Exported, folder: Path, **config_changes: Any) -> Path:
    """A copy of the merged folder with config.json changed."""
    shutil.copytree(exported.merged_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "Qwen2ForCausalLM"),
        ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "Mistral"),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
            "llama3",
        ),
        ({"attention_bias": True}, "attention_bias"),
    ],
    ids=["qwen2", "mistral", "llama3-rope", "bias"],
)
def test_unsupported_models_are_refused_by_name(
    exported: Exported, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    folder = _folder_like(exported, tmp_path / "model", **changes)
    with pytest.raises(UnsupportedExport, match=message):
        write_gguf(folder, tmp_path / "out" / "model.gguf", "f16")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sentencepiece_style_tokenizer_is_refused(exported: Exported, tmp_path: Path) -> None:
    folder = _folder_like(exported, tmp_path / "model")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = True
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UnsupportedExport, match="SentencePiece"):
        write_gguf(folder, tmp_path / "model.gguf", "q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing written


def test_unknown_type_is_refused(exported: Exported, tmp_path: Path) -> None:
    assert issubclass(UnsupportedExport, ValueError)
    with pytest.raises(UnsupportedExport, match="q5_k"):
        write_gguf(exported.merged_dir, tmp_path / "model.gguf", "q5_k")


def test_rewriting_replaces_the_file(
    exported: Exported, gguf_file: Callable[[str], Path], tmp_path: Path
) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"stale")
    write_gguf(exported.merged_dir, target, "q8_0")
    assert target.read_bytes() == gguf_file("q8_0").read_bytes()  # deterministic, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


# llama.cpp against transformers on the same file: they differ only in arithmetic (llama.cpp
# multiplies quantized weights with activations quantized to 8 bits).  Measured max |error|:
# f16 2e-3, bf16 8e-3, q8_0 3e-2, q4_0 9e-2; similarity 1.0, 0.9999, 0.9995, 0.993.
LLAMA_CPP_ATOL = {"f16": 1e-2, "bf16": 3e-2, "q8_0": 0.1, "q4_0": 0.3}
LLAMA_CPP_SIMILARITY = {"f16": 0.9999, "bf16": 0.999, "q8_0": 0.995, "q4_0": 0.97}


@pytest.fixture
def llama_cpp_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], Any]]:
    """Open GGUF files with llama-cpp-python (a dev dependency: the test needs it)."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    # ggml's AMX weight repacking ("extra buffer types") segfaults on this machine's CPU with
    # quantized tensors, files from llama.cpp's own quantizer included: use plain CPU buffers.
    defaults = lib.llama_model_default_params

    def plain_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(lib, "llama_model_default_params", plain_buffers)
    opened: list[Any] = []

    def open_model(path: Path) -> Any:
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False
        )
        opened.append(llm)
        return llm

    yield open_model
    for llm in opened:
        llm.close()


@pytest.mark.parametrize("quantization", GGUF_TYPES)
def test_llama_cpp_runs_the_file_as_transformers_does(
    exported: Exported,
    gguf_file: Callable[[str], Path],
    gguf_model: Callable[[str], Any],
    llama_cpp_model: Callable[[Path], Any],
    sequence: torch.Tensor,
    quantization: str,
) -> None:
    """llama.cpp tokenizes the chat prompt to the same ids, computes the same logits as
    transformers on the same file, and continues the prompt greedily with transformers' choices
    (exactly, for f16; elsewhere wherever a choice leads by more than the arithmetic's error)."""
    import numpy as np

    llm = llama_cpp_model(gguf_file(quantization))
    reference = gguf_model(quantization)
    prompt_ids = exported.prompt_ids[0].tolist()
    assert llm.tokenize(exported.prompt.encode(), add_bos=False, special=True) == prompt_ids

    llm.eval(sequence[0].tolist())
    got = torch.from_numpy(np.array(llm.scores[: sequence.shape[1]])).float()
    want = logits(reference, sequence)
    error = (got - want).abs().max().item()
    similarity = _centered_cosine(got, want).min().item()
    print(f"llama.cpp {quantization}: max |error| {error:.2e}, sim {similarity:.5f}")
    assert error <= LLAMA_CPP_ATOL[quantization]
    assert similarity >= LLAMA_CPP_SIMILARITY[quantization]

    llm.reset()
    tokens: list[int] = []
    for token in llm.generate(prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if len(tokens) == NEW_TOKENS:
            break
    if quantization == "f16":
        assert tokens == greedy(reference, exported.prompt_ids)
    assert _near_ties(reference, prompt_ids, tokens, 2 * LLAMA_CPP_ATOL[quantization])
    assert len(set(tokens)) > 6
