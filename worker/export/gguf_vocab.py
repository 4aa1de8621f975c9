"""A byte-level BPE tokenizer as GGUF metadata (``tokenizer.ggml.*``, ``tokenizer.chat_template``).

A GGUF file is self-contained: llama.cpp tokenizes with the tokens, types and merges stored
here, so they must reproduce the transformers tokenizer id for id.  The conventions are
llama.cpp's ``convert_hf_to_gguf.py`` (``get_vocab_base``, ``_set_vocab_gpt2``):

* model ``gpt2``; tokens in id order (holes become ``[PAD<i>]``, type UNUSED); added tokens are
  CONTROL when special (or ``<|...|>``-shaped), USER_DEFINED otherwise; the rest NORMAL.
* ``tokenizer.ggml.pre`` names the pre-tokenizer (the regex that splits text before BPE).
  llama.cpp identifies it by hashing the ids of a probe text; an unknown hash would make
  llama.cpp split text differently from transformers, so it is refused rather than guessed.
* merges, special ids, and whether to add BOS/EOS come from ``gguf.SpecialVocab``; the add flags
  are then overwritten with what the tokenizer actually does, and the chat template with the one
  training used (``ensure_chat_template``), so the file always carries a template.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path
from typing import Any

from tuna_core.chat_template import ensure_chat_template
from worker.export.errors import UnsupportedExport

# llama.cpp's probe text (convert_hf_to_gguf.py, get_vocab_base_pre); the hash of its ids names
# the pre-tokenizer.  Byte for byte: any change breaks every hash below.
_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) "
    "\U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 \U0001f999\U0001f999 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
    "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# Hash of the probe's ids -> llama.cpp's pre-tokenizer name, for the llama-family BPE tokenizers.
_KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM(2)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


def add_bpe_vocab(writer: Any, model_dir: Path, vocab_size: int) -> str:
    """Write ``model_dir``'s tokenizer into ``writer``; returns the chat template written."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(model_dir))
    _check_byte_level(model_dir)
    tokens, types = _tokens_and_types(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise UnsupportedExport(f"The tokenizer in {model_dir} has no BPE merges")
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = bool(probe) and probe[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = bool(probe) and probe[-1] == tokenizer.eos_token_id
    template = _template_text(tokenizer.chat_template)
    special.chat_template = template
    special.add_to_gguf(writer, quiet=True)
    return template


def _check_byte_level(model_dir: Path) -> None:
    """SentencePiece-style BPE (byte fallback, Metaspace: Llama 2, Mistral) needs llama.cpp's
    ``llama`` tokenizer model, which this exporter does not write."""
    import json

    try:
        spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedExport(f"No readable tokenizer.json in {model_dir}: {exc}") from exc
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else model.get("type")
        raise UnsupportedExport(f"GGUF export supports byte-level BPE tokenizers, not {kind}")


def _tokens_and_types(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    vocab: dict[str, int] = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedExport(
            f"The tokenizer has ids up to {max(vocab.values())}, beyond the model's "
            f"vocab_size {vocab_size}"
        )
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = i in decoder and decoder[i].special
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(
                gguf.TokenType.CONTROL if special or looks_special else gguf.TokenType.USER_DEFINED
            )
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for the pre-tokenizer; hashed as llama.cpp does (special tokens on)."""
    digest = sha256(str(tokenizer.encode(_PROBE)).encode()).hexdigest()
    name = _KNOWN_PRE.get(digest)
    if name is None:
        raise UnsupportedExport(
            "GGUF export does not recognize this tokenizer's pre-tokenizer (probe hash "
            f"{digest}); llama.cpp would split text differently from the trained model"
        )
    return name


def _template_text(template: Any) -> str:
    """A single template; of several named ones (a dict), the default."""
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    if not isinstance(template, str) or not template:
        raise UnsupportedExport("The tokenizer has no usable chat template")
    return template
