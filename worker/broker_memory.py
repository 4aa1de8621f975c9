"""Whether the broker lost its messages since the last look.

A marker is kept in the broker's own storage: a Redis key next to the queue, or a file in the
folder broker's queue folder. It vanishes exactly when the messages do (a Redis restart without
persistence, a flush, a wiped folder), so "the marker is gone" means "every job waiting in the
broker must be sent again". Setting it is atomic (SET NX, O_EXCL), so of several workers looking
at once exactly one is told, and only that one re-sends.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol

from app.config import Settings

MARKER_NAME = "tuna-broker-marker"


class BrokerMemory(Protocol):
    def forgot(self) -> bool:
        """True once after the marker went missing (and on the very first look)."""
        ...


class RedisMemory:
    def __init__(self, url: str, queue: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        self.key = f"{MARKER_NAME}:{queue}"

    def forgot(self) -> bool:
        return bool(self.client.set(self.key, uuid.uuid4().hex, nx=True))


class FolderMemory:
    def __init__(self, folder: Path) -> None:
        self.path = folder / MARKER_NAME

    def forgot(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # a wiped folder: the sends need it
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        return True


class NoMemory:
    """A broker we cannot look into: only a worker's start re-sends waiting jobs."""

    def forgot(self) -> bool:
        return False


def broker_memory(settings: Settings) -> BrokerMemory:
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisMemory(url, settings.training_queue)
    if url.startswith("filesystem://"):
        return FolderMemory(settings.broker_dir / "queue")
    return NoMemory()
