"""Running a coroutine to completion from synchronous code (a Celery task, a bench's main)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``; where this thread already runs an event loop (Playwright's sync
    API keeps one for a whole test session), on a thread of its own instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuna-async") as pool:
        return pool.submit(asyncio.run, coro).result()
