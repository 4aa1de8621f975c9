"""Tuna's worker: the Celery adapter (``tasks.py``) and the pure training engine (``training/``)."""
