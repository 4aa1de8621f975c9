"""Server memory during one large streamed upload to `POST /v1/files`.

The real app runs in its own process (uvicorn, SQLite and files under a temporary data dir) so
that its resident memory can be measured alone. The client builds the multipart body by hand
from a generator and sends it chunked, so neither side needs the file in memory. The server's
RSS is sampled every 20 ms while the upload runs; where Linux allows, the kernel's high-water
mark (VmHWM) is also reset just before the upload and read after it, and the larger of the two
peaks counts, so a spike between samples is not missed.

    python bench/upload_memory.py                      # 1 GiB of user_data
    python bench/upload_memory.py --size-mb 256 --purpose fine-tune

The last line is `memory_growth_mb X.X`; the goal is growth under 100 MB whatever the size.
Memory, unlike time, does not depend on the machine's speed, so tests may assert on it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MIB = 1024 * 1024
CHUNK = MIB
GOAL_MB = 100.0
SAMPLE_SECONDS = 0.02


@dataclass
class Result:
    purpose: str
    size_mb: float
    status_code: int
    seconds: float
    throughput_mb_s: float
    baseline_rss_mb: float
    peak_rss_mb: float
    memory_growth_mb: float
    peak_source: str  # "sampled", or "max of samples and VmHWM" (kernel high-water mark)
    samples: int

    @property
    def under_goal(self) -> bool:
        return self.memory_growth_mb < GOAL_MB


# --- the server's memory -------------------------------------------------------------------


def _proc_status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int:
    """Current RSS, from /proc (same source as VmHWM) where there is one, else psutil."""
    kb = _proc_status_kb(pid, "VmRSS")
    if kb is not None:
        return kb * 1024
    try:
        import psutil
    except ImportError:
        raise RuntimeError("cannot read the server's RSS (no /proc, no psutil)") from None
    return int(psutil.Process(pid).memory_info().rss)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return _proc_status_kb(pid, "VmHWM") is not None
    except OSError:
        return False


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
                self.samples += 1
            except Exception:
                return
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`uvicorn app.main:create_app --factory` in a child process, configured via TUNA_*."""

    def __init__(self, data_dir: Path, max_upload_bytes: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith("TUNA_"):
                del self.env[name]  # only what this bench sets
        self.env.update(
            TUNA_DATA_DIR=str(data_dir),
            TUNA_MAX_UPLOAD_BYTES=str(max_upload_bytes),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONPATH=str(REPO_ROOT) + os.pathsep + self.env.get("PYTHONPATH", ""),
        )
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def prepare_and_key(self) -> str:
        """Schema and a key, through the same code `tuna serve` / `tuna keys create` use."""
        from app.bootstrap import create_key, prepare
        from app.config import Settings

        settings = Settings(data_dir=self.data_dir)
        prepare(settings)
        return create_key(settings, f"bench-{uuid.uuid4().hex[:8]}")

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log_path.read_text()[-4000:])
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + self.log_path.read_text()[-4000:])
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the upload ----------------------------------------------------------------------------


def user_data_chunks(size: int) -> Iterator[bytes]:
    """`size` bytes of incompressible data from one reused 1 MiB block."""
    block = random.Random(0).randbytes(CHUNK)
    sent = 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def chat_jsonl_chunks(size: int) -> Iterator[bytes]:
    """Valid chat-format JSONL of about `size` bytes (whole lines; the last may overshoot)."""
    rng = random.Random(0)
    words = ["tuna", "swims", "fast", "in", "the", "deep", "blue", "sea", "and", "eats", "fish"]
    lines: list[bytes] = []
    for i in range(256):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))
        example = {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"{i}: {question}?"},
                {"role": "assistant", "content": answer + "."},
            ]
        }
        lines.append(json.dumps(example).encode() + b"\n")
    block = b"".join(lines * max(1, CHUNK // sum(map(len, lines))))
    sent = 0
    while sent < size:
        yield block
        sent += len(block)


def multipart_body(
    boundary: str, purpose: str, filename: str, chunks: Iterator[bytes]
) -> Iterator[bytes]:
    # `purpose` first, as the openai SDK sends it, so fine-tune files are validated in flight.
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from chunks
    yield f"\r\n--{boundary}--\r\n".encode()


class Counted:
    """Wraps the body generator to count what was actually sent."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            yield chunk


def upload(url: str, key: str, purpose: str, size: int) -> tuple[httpx.Response, int, float]:
    boundary = f"tuna-bench-{uuid.uuid4().hex}"
    if purpose == "fine-tune":
        chunks, filename = chat_jsonl_chunks(size), "bench.jsonl"
    else:
        chunks, filename = user_data_chunks(size), "bench.bin"
    body = Counted(multipart_body(boundary, purpose, filename, chunks))
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/files",
        content=iter(body),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        timeout=httpx.Timeout(600.0, connect=10.0),
    )
    return response, body.sent, time.perf_counter() - started


# --- main ----------------------------------------------------------------------------------


def run(size_mb: float = 1024, purpose: str = "user_data", verbose: bool = True) -> Result:
    size = int(size_mb * MIB)
    say = print if verbose else (lambda *_a, **_k: None)
    with tempfile.TemporaryDirectory(prefix="tuna-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        server = Server(data_dir, max_upload_bytes=size + 64 * MIB, log_path=Path(tmp) / "log")
        key = server.prepare_and_key()
        server.start()
        try:
            # Warm up the code paths (imports, DB connection, parser) before the baseline.
            warm, _, _ = upload(server.url, key, purpose, 64 * 1024)
            warm.raise_for_status()
            time.sleep(0.5)
            baseline = rss_bytes(server.pid)
            exact_peak = reset_peak(server.pid)
            say(f"server pid {server.pid}, baseline RSS {baseline / MIB:.1f} MB")
            say(f"uploading {size_mb:g} MB as purpose={purpose} ...")
            with Sampler(server.pid) as sampler:
                response, sent, seconds = upload(server.url, key, purpose, size)
            peak = sampler.peak
            source = "sampled"
            hwm_kb = _proc_status_kb(server.pid, "VmHWM") if exact_peak else None
            if hwm_kb is not None:
                # The kernel updates the high-water mark lazily, so neither source is
                # complete alone: take the larger.
                peak, source = max(peak, hwm_kb * 1024), "max of samples and VmHWM"
            if response.status_code != 200:
                raise RuntimeError(f"upload failed: {response.status_code} {response.text[:500]}")
            stored = response.json()["bytes"]
        finally:
            server.stop()
    result = Result(
        purpose=purpose,
        size_mb=stored / MIB,
        status_code=response.status_code,
        seconds=seconds,
        throughput_mb_s=sent / MIB / seconds,
        baseline_rss_mb=baseline / MIB,
        peak_rss_mb=peak / MIB,
        memory_growth_mb=max(0, peak - baseline) / MIB,
        peak_source=source,
        samples=sampler.samples,
    )
    say(f"stored            {result.size_mb:.1f} MB in {result.seconds:.1f} s")
    say(f"throughput        {result.throughput_mb_s:.1f} MB/s")
    say(f"baseline RSS      {result.baseline_rss_mb:.1f} MB")
    say(f"peak RSS          {result.peak_rss_mb:.1f} MB ({source}, {sampler.samples} samples)")
    say(f"growth            {result.memory_growth_mb:.1f} MB (goal: < {GOAL_MB:g} MB)")
    say(f"under goal        {'yes' if result.under_goal else 'NO'}")
    return result


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="upload size (MiB)")
    parser.add_argument("--purpose", choices=["user_data", "fine-tune"], default="user_data")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args.size_mb, args.purpose)
    if args.json:
        print(json.dumps({**asdict(result), "under_goal": result.under_goal}))
    print(f"memory_growth_mb {result.memory_growth_mb:.1f}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main().under_goal else 1)
