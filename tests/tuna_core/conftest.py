"""The tiny test model and its tokenizer, for the rendering and registry tests."""

from tests.model_fixtures import model_cache, tiny_dir, tokenizer

__all__ = ["model_cache", "tiny_dir", "tokenizer"]
