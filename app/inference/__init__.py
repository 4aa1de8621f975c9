"""Inference: `/v1/chat/completions`, `/v1/completions`, deleting `ft:` models, the engines."""
