"""`/v1/models`: the base models this server offers and each project's fine-tuned models."""
