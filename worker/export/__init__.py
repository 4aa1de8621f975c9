"""Exporting a fine-tuned model: a merged transformers folder, and a single GGUF file from it.

A library like the training engine: it imports ``tuna_core`` and torch's stack (torch,
transformers, peft, gguf) only, never the web stack or the database, so it runs on a GPU machine
that has nothing else.  torch and transformers take seconds to import, so each function imports
them when called.

* ``write_merged`` (``merge.py``): base + LoRA adapter -> one safetensors folder with its
  tokenizer, chat template and generation config, loadable by plain ``from_pretrained``.
* ``write_gguf`` (``gguf.py``): a merged llama-family folder -> one ``.gguf`` file (llama.cpp,
  Ollama, LM Studio), in one of ``GGUF_TYPES``.
"""

from __future__ import annotations

from worker.export.errors import UnsupportedExport
from worker.export.gguf import GGUF_TYPES, write_gguf
from worker.export.merge import MERGE_DTYPES, write_merged

__all__ = ["GGUF_TYPES", "MERGE_DTYPES", "UnsupportedExport", "write_gguf", "write_merged"]
