"""A small synchronous HTTP client for a Tuna (or any OpenAI-compatible) server.

httpx rather than the `openai` SDK: uploads must stream from disk with a progress callback, SSE
is read line by line as it arrives, and every error keeps the server's own message. Only the
OpenAI wire shapes are assumed, so the commands work against any server that speaks them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class APIError(Exception):
    """An error the server answered with (OpenAI's envelope), or a failure to reach it."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param


def normalize_base_url(url: str) -> str:
    """Accept both `http://host:8000` and the SDK-style `http://host:8000/v1`."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def _error_from(response: httpx.Response) -> APIError:
    message = f"HTTP {response.status_code}"
    code = param = None
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = f"{message}: {text[:500]}"
    else:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            code, param = error.get("code"), error.get("param")
        elif isinstance(body, dict) and "detail" in body:
            message = f"{message}: {body['detail']}"
    return APIError(message, status_code=response.status_code, code=code, param=param)


class _ProgressReader:
    """A file wrapper httpx streams from (it reads in chunks) that reports bytes sent."""

    def __init__(self, handle: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._handle = handle
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk:
            self._on_read(len(chunk))
        return chunk

    # httpx sizes the body from these (Content-Length, not chunked) and rewinds before sending.
    def fileno(self) -> int:
        return self._handle.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


class TunaClient:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 60.0) -> None:
        self.base_url = normalize_base_url(base_url)
        headers = {"Accept": "application/json", "User-Agent": "tuna-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise APIError(f"Timed out talking to {self.base_url}: {exc}") from exc
        except httpx.TransportError as exc:
            raise APIError(f"Cannot reach the Tuna server at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        try:
            return response.json()
        except ValueError as exc:
            raise APIError(
                f"The server at {self.base_url} did not answer with JSON "
                f"(HTTP {response.status_code}); is --base-url right?"
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    # -- files ------------------------------------------------------------------------------

    def upload_file(
        self,
        path: Path,
        purpose: str,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Stream `path` as multipart (never read whole into memory); no timeout on the body."""
        with open(path, "rb") as handle:
            body: Any = _ProgressReader(handle, on_progress) if on_progress else handle
            return self.request(  # type: ignore[no-any-return]
                "POST",
                "/v1/files",
                data={"purpose": purpose},
                files={"file": (path.name, body, "application/jsonl")},
                timeout=httpx.Timeout(60.0, write=None, read=None),
            )

    def list_files(self, purpose: str | None = None, limit: int | None = None) -> list[Any]:
        page = self.get("/v1/files", purpose=purpose, limit=limit)
        return list(page.get("data", []))

    # -- models -----------------------------------------------------------------------------

    def download(
        self,
        path: str,
        params: dict[str, str],
        output: Path | None,
        on_start: Callable[[int | None], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Path | dict[str, Any]:
        """GET ``path``: a 200 is streamed to ``output`` (default: the server's file name, in the
        current folder) through a `.part` file, and its path returned; a 202 (an export being
        built) returns its JSON body for the caller to poll again."""
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(60.0, read=None)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                if response.status_code == 202:
                    response.read()
                    return response.json()  # type: ignore[no-any-return]
                target = output or Path(_attachment_name(response) or "model-export")
                if target.is_dir():
                    target = target / (_attachment_name(response) or "model-export")
                length = response.headers.get("content-length")
                if on_start:
                    on_start(int(length) if length else None)
                part = target.with_name(target.name + ".part")
                with part.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
                        if on_progress:
                            on_progress(len(chunk))
                part.replace(target)
                return target
        except httpx.TransportError as exc:
            raise APIError(f"Connection to {self.base_url} failed: {exc}") from exc

    # -- jobs -------------------------------------------------------------------------------

    def list_jobs(self, limit: int = 20) -> list[Any]:
        return list(self.get("/v1/fine_tuning/jobs", limit=limit).get("data", []))

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/v1/fine_tuning/jobs/{job_id}")  # type: ignore[no-any-return]

    def events_page(
        self, job_id: str, after: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        return self.get(  # type: ignore[no-any-return]
            f"/v1/fine_tuning/jobs/{job_id}/events", after=after, limit=limit
        )

    def new_events(self, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
        """Events not in `seen`, oldest first.

        Pages arrive newest first, so paging stops at the first page that reaches an event
        already seen; a first call pages through the whole history.
        """
        fresh: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = self.events_page(job_id, after=after)
            data = page.get("data", [])
            for event in data:
                if event["id"] in seen:
                    return list(reversed(fresh))
                fresh.append(event)
            if not page.get("has_more") or not data:
                return list(reversed(fresh))
            after = data[-1]["id"]

    def checkpoints(self, job_id: str) -> list[Any]:
        page = self.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", limit=100)
        return list(page.get("data", []))

    # -- inference --------------------------------------------------------------------------

    def stream_chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield `chat.completion.chunk` objects as the server sends them (SSE)."""
        try:
            with self._http.stream(
                "POST",
                "/v1/chat/completions",
                json={**body, "stream": True},
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(60.0, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments (": ping"), event names
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and "error" in chunk:
                        error = chunk["error"] or {}
                        raise APIError(str(error.get("message") or error), code=error.get("code"))
                    yield chunk
        except httpx.TransportError as exc:
            raise APIError(f"Connection to {self.base_url} failed: {exc}") from exc


def _attachment_name(response: httpx.Response) -> str | None:
    """The file name of a `Content-Disposition: attachment; filename="..."` (base name only)."""
    match = re.search(r'filename="([^"/\\]+)"', response.headers.get("content-disposition", ""))
    return match.group(1) if match else None


def env_api_key() -> str | None:
    return os.environ.get("TUNA_API_KEY") or os.environ.get("OPENAI_API_KEY")
