"""Helpers the throughput benchmarks share: memory probes, the machine's name, synthetic chats.

Peak memory on the CPU is measured as resident memory (RSS), because tracemalloc does not see
torch's allocations.  A background thread samples ``/proc/self/statm`` every few milliseconds
while the code under test runs (torch releases the GIL in its kernels, so the sampler keeps
running); before each measured window glibc is asked to hand freed heap pages back
(``malloc_trim``), so one window's leftovers do not hide the next window's growth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MIB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# --- memory -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def hwm_bytes() -> int | None:
    """The kernel's resident high-water mark (VmHWM) for this process, where there is one."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_LIBC: Any = None


def trim_heap() -> None:
    """Give freed malloc memory back to the OS (glibc only; elsewhere a no-op)."""
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class PeakRSS:
    """Samples RSS in a thread; ``window()`` starts a new measurement, ``peak`` is its maximum."""

    def __init__(self, interval: float = 0.003) -> None:
        self.interval = interval
        self._start = rss_bytes()
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_bytes()
            if value > self._peak:
                self._peak = value
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def window(self) -> None:
        """Start a new window: trim the heap, then peak = start = RSS now."""
        trim_heap()
        self._start = self._peak = rss_bytes()

    def growth(self) -> int:
        """Peak minus start of the current window (includes one last reading)."""
        self._peak = max(self._peak, rss_bytes())
        return self._peak - self._start


# --- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    """``lscpu``'s model name, else platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


# --- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[index])


# --- synthetic chat text ----------------------------------------------------------------------

# Common English words: almost every one is a single token (with its leading space) in
# SmolLM2's BPE vocabulary, so a target token count is hit by choosing a word count.
_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no "
    "will more about can said them what other some time could these two may first then do "
    "any like my now over such our man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long here get both "
    "between life being under never day same another know while last might us great old year "
    "off come since against go came right used take three model data training answer "
    "question example value function system number result process change point group order"
)
WORDS = tuple(_WORD_TEXT.split(" "))
PUNCT = (".", ",", "?", "!", ";", ":")


def words(rng: random.Random, n: int) -> str:
    """About ``n`` tokens of sentence-like text."""
    out: list[str] = []
    for i in range(max(1, n)):
        word = rng.choice(WORDS)
        if i == 0 or out[-1][-1] in ".?!":
            word = word.capitalize()
        if i and rng.random() < 0.08:
            word += rng.choice(PUNCT)
        out.append(word)
    return " ".join(out) + "."


def lognormal_length(
    rng: random.Random, median_tokens: float, sigma: float, lo: int, hi: int
) -> int:
    """A length from a lognormal with the given median, clipped to ``lo..hi``."""
    return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median_tokens), sigma)))))


def chat_example(rng: random.Random, total_tokens: int, prompt_share: float) -> dict[str, Any]:
    """One chat example of about ``total_tokens`` tokens, ``prompt_share`` of them the prompt.

    The template's own tokens (SmolLM2 adds a default system message of ~20 tokens and ~5
    markers per turn) count as prompt, so the user message gets what is left of the prompt share.
    A quarter of the examples carry their own short system message.
    """
    overhead = 30
    prompt = max(1, round(total_tokens * prompt_share) - overhead)
    answer = max(1, total_tokens - prompt - overhead)
    messages = []
    if rng.random() < 0.25:
        messages.append({"role": "system", "content": words(rng, rng.randint(5, 20))})
    messages.append({"role": "user", "content": words(rng, prompt)})
    messages.append({"role": "assistant", "content": words(rng, answer)})
    return {"messages": messages}
