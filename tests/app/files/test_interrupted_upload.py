"""An upload cut off mid-stream leaves nothing behind: no file row, no half file, no temp file."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from tests.conftest import LiveServer

BOUNDARY = "tuna-cut-off-boundary"


def lines(n: int) -> bytes:
    line = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    return (json.dumps(line) + "\n").encode() * n


def test_upload_cut_off_mid_stream_leaves_nothing(server: LiveServer, api_key: str) -> None:
    tmp_dir = server.settings.resolved_storage_dir / "tmp"
    before = set(tmp_dir.iterdir())
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="train.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    sent_body = head + lines(4000)  # ~400 KB of the promised 50 MB
    url = urlparse(server.url)
    request = (
        "POST /v1/files HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()

    with socket.create_connection((url.hostname, url.port)) as conn:
        conn.sendall(request + sent_body)
        partial = wait_for_new_file(tmp_dir, before)  # the server is streaming it to disk
        assert partial.stat().st_size > 0
    # The connection is closed: the server sees the client go away mid-body.

    deadline = time.monotonic() + 15
    while partial.exists():
        assert time.monotonic() < deadline, "the temp file of the cut-off upload was kept"
        time.sleep(0.05)
    with server.http(api_key) as http:
        assert http.get("/v1/files").json()["data"] == []
    assert set(tmp_dir.iterdir()) <= before


def wait_for_new_file(folder: Path, before: set[Path]) -> Path:
    deadline = time.monotonic() + 15
    while True:
        new = set(folder.iterdir()) - before
        if new and max(p.stat().st_size for p in new) > 0:
            return max(new, key=lambda p: p.stat().st_size)
        assert time.monotonic() < deadline, "the server never started writing the upload"
        time.sleep(0.02)
