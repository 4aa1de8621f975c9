"""Bearer API keys -> the project (tenant) every request acts for."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Annotated, Protocol

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import get_session
from app.errors import AuthenticationFailed, RateLimited
from app.ids import new_id
from app.orm import ApiKey, Project

logger = logging.getLogger("tuna.auth")

KEY_PREFIX = "sk-tuna-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _hint(key: str) -> str:
    return f"{key[:8]}...{key[-4:]}" if len(key) > 12 else "***"


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=new_id("proj_"), name=name)
        session.add(project)
        session.flush()
    return project


def add_key(session: Session, project: Project, key: str | None = None) -> str:
    """Store a key's hash for the project (a given key is kept if already known); returns it."""
    key = key or generate_key()
    digest = hash_key(key)
    if session.scalar(select(ApiKey).where(ApiKey.key_hash == digest)) is None:
        session.add(
            ApiKey(id=new_id("key_"), project_id=project.id, key_hash=digest, key_hint=_hint(key))
        )
        session.flush()
    return key


def project_has_keys(session: Session, project: Project) -> bool:
    return session.scalar(select(ApiKey.id).where(ApiKey.project_id == project.id)) is not None


def authenticate(session: Session, authorization: str | None) -> Project:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    key = authorization[7:].strip()
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The lookup is by digest; the constant-time compare keeps timing flat on the last step too.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        raise AuthenticationFailed(f"Incorrect API key provided: {_hint(key)}.")
    project = session.get(Project, row.project_id)
    if project is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {_hint(key)}.")
    return project


# scope="function": the transaction ends (commit or rollback) before the response is sent, so a
# client never gets a 200 for a write it cannot read back yet; FastAPI's default "request"
# scope would commit only after the response.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


class Limiter(Protocol):
    per_minute: int

    def hit(self, digest: str) -> float | None:
        """Count one request; None if allowed, else the seconds until the window resets."""
        ...


class RateLimiter:
    """Fixed one-minute windows per key digest, counted in this process.

    With several API processes each counts on its own; `RedisRateLimiter` shares the count.
    """

    WINDOW = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, digest: str) -> float | None:
        """Count one request; None if allowed, else the seconds until the window resets."""
        now = self.clock()
        window = int(now // self.WINDOW)
        with self._lock:
            start, count = self._windows.get(digest, (window, 0))
            if start != window:
                count = 0
                if len(self._windows) > 10_000:  # forget keys idle since an earlier window
                    self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
            if count >= self.per_minute:
                return (window + 1) * self.WINDOW - now
            self._windows[digest] = (window, count + 1)
            return None


class RedisRateLimiter:
    """The same fixed windows, counted in Redis: every API process shares one count per key.

    One INCR per request on a key that expires with its window. Wall-clock windows, so that all
    processes agree on when a window starts. If Redis cannot be reached the request is let
    through (and logged): an outage of the limiter must not become an outage of the API.
    """

    WINDOW = 60

    def __init__(self, url: str, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        import redis

        self.per_minute = per_minute
        self.clock = clock
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def hit(self, digest: str) -> float | None:
        now = self.clock()
        window = int(now // self.WINDOW)
        key = f"tuna-rate:{digest}:{window}"
        try:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.expire(key, self.WINDOW + 5)
            count = int(pipe.execute()[0])
        except Exception:
            logger.warning("rate limiter unreachable; request let through", exc_info=True)
            return None
        if count > self.per_minute:
            return (window + 1) * self.WINDOW - now
        return None


def make_rate_limiter(settings: Settings) -> Limiter | None:
    per_minute = settings.requests_per_minute_per_key
    if not per_minute:
        return None
    url = settings.rate_limit_url
    if url is None and settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        url = settings.resolved_broker_url
    return RedisRateLimiter(url, per_minute) if url else RateLimiter(per_minute)


def current_project(request: Request, session: SessionDep) -> Project:
    authorization = request.headers.get("authorization")
    project = authenticate(session, authorization)
    limiter: Limiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None and authorization:
        retry_after = limiter.hit(hash_key(authorization[7:].strip()))
        if retry_after is not None:
            seconds = max(1, math.ceil(retry_after))
            raise RateLimited(
                f"Rate limit reached: {limiter.per_minute} requests per minute for this API key. "
                f"Try again in {seconds}s.",
                code="rate_limit_exceeded",
                headers={"retry-after": str(seconds)},
            )
    return project


CurrentProject = Annotated[Project, Depends(current_project)]
