"""Serving throughput of the local inference engine: a real `tuna serve`, the official SDK as load.

One run:

1. A temporary data dir (SQLite, local files) is prepared with the app's own code
   (``app.bootstrap.prepare``, ``create_key``), and ``--adapters`` (8) LoRA adapters of the base
   model are made with peft directly: Tuna's training defaults (rank 8, alpha 16, no dropout,
   ``all-linear`` targets, as ``worker.training.loop`` builds them), random non-zero weights
   (``init_lora_weights=False``, B scaled down by ``LORA_B_SCALE`` so the model still answers
   sensibly, each adapter differently).  Each is copied into storage and recorded as a succeeded
   job's ``ft:`` model (``FineTuningRepository.publish_model``), as the worker would publish it.
2. The ceiling, measured in this process while no server runs (the machine's cores are never
   shared between the two): a plain transformers static-batch greedy decode loop on the same base
   model (``AutoModelForCausalLM``, float32 on a CPU and bfloat16 on a GPU like the local engine,
   prompts rendered with the chat template and left-padded, ``DynamicCache``, ``--max-tokens``
   new tokens for every row, ``torch.inference_mode``) at each batch size of ``--concurrency``.
   tokens/s = batch x new tokens / (prefill + decode time); best of ``--ceiling-repeats``.
3. ``tuna serve --no-worker`` (the console script; API only, local engine, ``--data-dir`` the
   temporary one, a free ``--port``) is started as a subprocess; the bench waits for /health.
   The engine's own settings stay at their defaults, except ``TUNA_INFERENCE_QUEUE_SIZE``, raised
   to twice the most clients where that is above 64 (a level must not be refused for its size);
   ``--server-env NAME=VALUE`` sets others (``TUNA_INFERENCE_MAX_BATCH_SIZE=16``).
4. Load: ``AsyncOpenAI`` clients (one per simulated user, ``max_retries=0`` so nothing is hidden
   by retries), N at once for each N of ``--concurrency``; each sends streaming chat completions
   back to back (temperature 0, ``max_tokens``, ``stream_options.include_usage``), short prompts
   that differ per request.  Scenarios: ``base`` (the base model), ``one-adapter`` (every client
   the same ``ft:`` id), ``multi-adapter`` (client i uses adapter i % 8).  Before each scenario
   every model it uses answers one short request (loads the models), not counted.  A level runs
   ``--seconds`` (30): each client starts requests until that many seconds have passed (and its
   last one finishes), so a level measures the steady state rather than the ramp of a few
   synchronized rounds; or ``--requests-per-client`` requests per client.
   Per level: completion tokens/s (sum of ``usage.completion_tokens`` / wall time from the first
   request sent to the last one done), p50/p95 time to first token (from sending the request to
   the first chunk with text, or its end if it has none), requests done, errors.

Targets (the serving issue's): 8 clients >= 4x the 1-client rate and 32 clients >= 8x it (each
scenario); 8 different adapters >= 0.8x one adapter at 8 and 32 clients; the server (``base``)
within 0.8x of the static-batch ceiling at the same concurrency.  Only the targets whose levels
were run are checked.  The load generator runs on the same machine as the server and takes some
of its CPU (little: it parses a few hundred SSE chunks a second).

    python bench/serve_throughput.py                                  # SmolLM2-135M, 1,8,32
    python bench/serve_throughput.py --model tuna-tiny-test --concurrency 1,8 --max-tokens 8
    python bench/serve_throughput.py --seconds 20 --scenarios base,multi-adapter
    python bench/serve_throughput.py --server-env TUNA_INFERENCE_MAX_BATCH_SIZE=16

``--json`` prints the whole result as one JSON line; the last line is ``targets_met K/M``.
Exit status 1 if a target is missed or a request failed (``--no-fail``: 0 whatever happened).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (str(REPO_ROOT), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import describe_machine, percentile  # noqa: E402

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_CACHE = REPO_ROOT / "var" / "model-cache"
SCENARIOS = ("base", "one-adapter", "multi-adapter")
# Tuna's LoRA training defaults (tuna_core.hyperparameters.EXTENSION_DEFAULTS).
LORA_RANK = 8
LORA_ALPHA = 16
# peft's init_lora_weights=False draws B like A (kaiming-uniform); at alpha/r = 2 that drowns
# the base model.  Scaled by 0.2 the adapters change the answers but keep them sensible.
LORA_B_SCALE = 0.2
# The targets.
SCALING_TARGETS = {8: 4.0, 32: 8.0}  # clients -> tokens/s multiple of the 1-client rate
ADAPTER_MIX_TARGET = 0.8  # multi-adapter / one-adapter
ADAPTER_MIX_LEVELS = (8, 32)
CEILING_TARGET = 0.8  # server (base) / static-batch ceiling
SERVER_START_SECONDS = 180.0


# --- prompts ----------------------------------------------------------------------------------

_TEMPLATES = (
    "Write a short story about {}.",
    "Explain how {} works, step by step.",
    "Describe {} to a ten-year-old.",
    "Give me three interesting facts about {}.",
    "Write a short poem about {}.",
    "What are the pros and cons of {}?",
    "Write a product description for {}.",
    "Tell me about the history of {}.",
)
_TOPICS = (
    "a lighthouse keeper",
    "the water cycle",
    "a rainy day in Paris",
    "bicycles",
    "honey bees",
    "the moon landing",
    "a small bakery",
    "volcanoes",
    "learning to swim",
    "an old library",
    "the internet",
    "a mountain village",
    "electric cars",
    "coral reefs",
    "a friendly robot",
    "chess",
    "the first day of school",
    "tea",
    "a lost kitten",
    "solar panels",
    "the Roman empire",
    "penguins",
    "a night train",
    "gardening",
    "the human heart",
    "a snowstorm",
    "jazz music",
    "a treasure map",
    "recycling",
    "the northern lights",
    "a street market",
    "octopuses",
)


def prompt_for(*key: object) -> str:
    """A short prompt, the same for the same key (scenario, clients, client, request number)."""
    rng = random.Random(":".join(map(str, key)))
    return rng.choice(_TEMPLATES).format(rng.choice(_TOPICS))


# --- results ----------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    model: str
    latency_s: float
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # None: no usage chunk arrived
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Level:
    scenario: str
    concurrency: int
    requests: int  # done, errors included
    errors: int
    requests_with_usage: int
    completion_tokens: int
    min_completion_tokens: int
    max_completion_tokens: int
    finish_reasons: dict[str, int]
    models: int  # distinct models the clients called
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    latency_p50_s: float
    vs_one_client: float | None = None  # tokens/s over this scenario's 1-client tokens/s
    vs_ceiling: float | None = None  # tokens/s over the static-batch ceiling at this batch size
    first_error: str | None = None


@dataclass
class Target:
    name: str
    value: float
    goal: float
    passed: bool


@dataclass
class Result:
    model: str
    machine: str
    device: str
    max_tokens: int
    concurrency: list[int]
    scenarios: list[str]
    adapters: int
    requests_per_client: int | None
    seconds: float | None
    ceiling_tokens_per_s: dict[str, float] = field(default_factory=dict)  # batch size -> tok/s
    levels: list[Level] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    no_fail: bool = False

    @property
    def errors(self) -> int:
        return sum(level.errors for level in self.levels)

    @property
    def targets_met(self) -> int:
        return sum(target.passed for target in self.targets)

    @property
    def passed(self) -> bool:
        return self.errors == 0 and self.targets_met == len(self.targets)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed or self.no_fail else 1

    def level(self, scenario: str, concurrency: int) -> Level | None:
        for level in self.levels:
            if level.scenario == scenario and level.concurrency == concurrency:
                return level
        return None


# --- models: the adapters and their publication ---------------------------------------------


def make_adapters(base_dir: Path, count: int, root: Path) -> list[Path]:
    """``count`` random LoRA adapters of the base in ``root``, each with its own seed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    folders = []
    for index in range(count):
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(1000 + index)
            config = LoraConfig(
                r=LORA_RANK,
                lora_alpha=LORA_ALPHA,
                lora_dropout=0.0,
                target_modules="all-linear",  # as worker.training.loop: attention + MLP
                init_lora_weights=False,  # random A and B: every adapter answers differently
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(model, config)
            with torch.no_grad():
                for name, param in peft_model.named_parameters():
                    if "lora_B" in name:
                        param.mul_(LORA_B_SCALE)
        target = root / f"adapter-{index}"
        peft_model.save_pretrained(str(target))
        tokenizer.save_pretrained(target)
        folders.append(target)
        del peft_model, model
    return folders


def publish(settings: Any, project: str, base_model: str, folders: Sequence[Path]) -> list[str]:
    """Copy each adapter into storage and record it as a succeeded job's ``ft:`` model."""
    from sqlalchemy import select

    from app.db import Database
    from app.files.storage import LocalStorage
    from app.fine_tuning.repository import FineTuningRepository
    from app.orm import FineTuningJob, Project
    from tuna_core.model_ids import fine_tuned_model_id

    storage = LocalStorage(settings.resolved_storage_dir)
    database = Database(settings.resolved_database_url)
    model_ids = []
    try:
        with database.session_scope() as session:
            project_id = session.scalar(select(Project.id).where(Project.name == project))
            assert project_id is not None, f"project {project} was not created"
            jobs = FineTuningRepository(session)
            for index, folder in enumerate(folders):
                job_id = "ftjob-" + uuid.uuid4().hex[:24]
                model_id = fine_tuned_model_id(base_model, project, f"bench-{index}", job_id)
                key = f"jobs/{job_id}/final"
                shutil.copytree(folder, storage.path(key))
                job = FineTuningJob(
                    id=job_id,
                    project_id=project_id,
                    model=base_model,
                    training_file="file-bench",
                    seed=index,
                    hyperparameters={
                        "training_type": "lora",
                        "lora_rank": LORA_RANK,
                        "lora_alpha": LORA_ALPHA,
                        "lora_dropout": 0.0,
                    },
                    status="succeeded",
                    fine_tuned_model=model_id,
                )
                session.add(job)
                session.flush()
                jobs.publish_model(job, model_id, key, "lora", base_model)
                model_ids.append(model_id)
    finally:
        database.dispose()
    return model_ids


# --- the ceiling: a plain static-batch decode loop --------------------------------------------


def static_batch_tokens_per_s(
    model: Any, prompts: list[list[int]], pad_id: int, new_tokens: int, device: Any
) -> float:
    """Greedy decode of ``new_tokens`` for every left-padded prompt at once; tokens/s."""
    import torch
    from transformers import DynamicCache

    from app.inference.batching import cache_argument  # which keyword this transformers takes

    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor(
        [[0] * (longest - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device
    )
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ones = torch.ones((len(prompts), 1), dtype=mask.dtype, device=device)
    cache_arg = cache_argument(model)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        position = positions[:, -1:]
        for _ in range(new_tokens - 1):
            mask = torch.cat([mask, ones], dim=1)
            position = position + 1
            out = model(
                input_ids=token,
                attention_mask=mask,
                position_ids=position,
                use_cache=True,
                **{cache_arg: cache},
            )
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        token.cpu()
        seconds = time.perf_counter() - started
    return len(prompts) * new_tokens / seconds


def measure_ceiling(
    model_dir: Path,
    batch_sizes: Sequence[int],
    new_tokens: int,
    repeats: int,
    device_name: str,
    say: Any,
) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuna_core.chat_template import ensure_chat_template, render_prompt
    from tuna_core.devices import pick_device

    device = pick_device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # as the local engine
    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(device).eval()
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    ceiling: dict[str, float] = {}
    try:
        for batch in batch_sizes:
            prompts = [
                tokenizer(
                    render_prompt(
                        tokenizer,
                        [{"role": "user", "content": prompt_for("ceiling", batch, i)}],
                    ),
                    add_special_tokens=False,
                )["input_ids"]
                for i in range(batch)
            ]
            static_batch_tokens_per_s(model, prompts, pad_id, min(4, new_tokens), device)  # warm
            best = max(
                static_batch_tokens_per_s(model, prompts, pad_id, new_tokens, device)
                for _ in range(max(1, repeats))
            )
            ceiling[str(batch)] = best
            say(f"  ceiling, batch {batch:>3}: {best:8.1f} tokens/s")
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return ceiling


# --- the server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the bench dies without stopping it (killed outright)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def tuna_command() -> list[str]:
    """The ``tuna`` console script beside this interpreter, else the same entry point via -m."""
    script = Path(sys.executable).with_name("tuna")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


class Server:
    """``tuna serve --no-worker`` in a child process on a temporary data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str], log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import httpx

        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        command = [
            *tuna_command(),
            "serve",
            "--no-worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log_tail())
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + self.log_tail())
            time.sleep(0.1)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def server_env(
    data_dir: Path, cache_dir: Path, device: str, extra: dict[str, str]
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TUNA_")}
    env.update(
        TUNA_DATA_DIR=str(data_dir),
        TUNA_MODEL_CACHE_DIR=str(cache_dir),
        TUNA_ENABLE_TEST_MODELS="1",  # tuna-tiny-test
        TUNA_INFERENCE_BACKEND="local",
        TUNA_INFERENCE_DEVICE=device,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


# --- the load ---------------------------------------------------------------------------------


async def one_request(client: Any, model: str, prompt: str, max_tokens: int) -> RequestRecord:
    import openai

    sent = time.perf_counter()
    record = RequestRecord(model=model, latency_s=0.0)
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            for choice in chunk.choices:
                if record.ttft_s is None and (choice.delta.content or choice.finish_reason):
                    record.ttft_s = time.perf_counter() - sent
                if choice.finish_reason:
                    record.finish_reason = choice.finish_reason
            if chunk.usage is not None:
                record.prompt_tokens = chunk.usage.prompt_tokens
                record.completion_tokens = chunk.usage.completion_tokens
    except openai.APIError as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:500]
    record.latency_s = time.perf_counter() - sent
    return record


def make_clients(url: str, key: str, count: int, timeout: float) -> list[Any]:
    from openai import AsyncOpenAI

    return [
        AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=timeout)
        for _ in range(count)
    ]


async def warm_up(
    url: str, key: str, models: Sequence[str], max_tokens: int, timeout: float
) -> None:
    """One short request per model, at once: every model of the scenario is loaded."""
    clients = make_clients(url, key, len(models), timeout)
    try:
        records = await asyncio.gather(
            *(
                one_request(client, model, "Say hello.", max_tokens)
                for client, model in zip(clients, models, strict=True)
            )
        )
    finally:
        for client in clients:
            await client.close()
    failed = [r for r in records if r.error]
    if failed:
        raise RuntimeError(f"warm-up failed for {failed[0].model}: {failed[0].error}")


async def run_level(
    url: str,
    key: str,
    scenario: str,
    models: Sequence[str],
    concurrency: int,
    max_tokens: int,
    requests_per_client: int | None,
    seconds: float | None,
    timeout: float,
) -> Level:
    clients = make_clients(url, key, concurrency, timeout)
    records: list[RequestRecord] = []
    started = time.perf_counter()
    deadline = started + seconds if seconds else None

    async def user(index: int) -> None:
        model = models[index % len(models)]
        number = 0
        while True:
            if deadline is not None:
                if number and time.perf_counter() >= deadline:
                    return
            elif number >= (requests_per_client or 1):
                return
            prompt = prompt_for(scenario, concurrency, index, number)
            records.append(await one_request(clients[index], model, prompt, max_tokens))
            number += 1

    try:
        await asyncio.gather(*(user(i) for i in range(concurrency)))
    finally:
        wall = time.perf_counter() - started
        for client in clients:
            await client.close()
    return summarize(scenario, concurrency, records, wall)


def summarize(scenario: str, concurrency: int, records: list[RequestRecord], wall: float) -> Level:
    ok = [r for r in records if r.error is None]
    counts = [r.completion_tokens for r in ok if r.completion_tokens is not None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    reasons: dict[str, int] = {}
    for r in ok:
        reasons[str(r.finish_reason)] = reasons.get(str(r.finish_reason), 0) + 1
    errors = [r.error for r in records if r.error is not None]
    tokens = sum(counts)
    return Level(
        scenario=scenario,
        concurrency=concurrency,
        requests=len(records),
        errors=len(errors),
        requests_with_usage=len(counts),
        completion_tokens=tokens,
        min_completion_tokens=min(counts, default=0),
        max_completion_tokens=max(counts, default=0),
        finish_reasons=reasons,
        models=len({r.model for r in records}),
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_ms=percentile(ttfts, 0.5) * 1000,
        ttft_p95_ms=percentile(ttfts, 0.95) * 1000,
        latency_p50_s=percentile([r.latency_s for r in ok], 0.5),
        first_error=errors[0] if errors else None,
    )


# --- targets ----------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def check_targets(result: Result) -> None:
    """Fill in each level's ratios and the targets the levels that ran allow checking."""
    for level in result.levels:
        single = result.level(level.scenario, 1)
        if single is not None:
            level.vs_one_client = ratio(level.tokens_per_s, single.tokens_per_s)
        ceiling = result.ceiling_tokens_per_s.get(str(level.concurrency))
        if ceiling:
            level.vs_ceiling = ratio(level.tokens_per_s, ceiling)

    def add(name: str, value: float, goal: float) -> None:
        result.targets.append(Target(name, value, goal, bool(value >= goal)))

    for scenario in result.scenarios:
        single = result.level(scenario, 1)
        for clients, goal in SCALING_TARGETS.items():
            many = result.level(scenario, clients)
            if single is not None and many is not None:
                add(f"{scenario}: {clients} clients / 1 client", many.vs_one_client or 0.0, goal)
    for clients in ADAPTER_MIX_LEVELS:
        one = result.level("one-adapter", clients)
        multi = result.level("multi-adapter", clients)
        if one is not None and multi is not None:
            add(
                f"{result.adapters} adapters / one adapter at {clients} clients",
                ratio(multi.tokens_per_s, one.tokens_per_s),
                ADAPTER_MIX_TARGET,
            )
    for clients in result.concurrency:
        base = result.level("base", clients)
        if base is not None and base.vs_ceiling is not None:
            add(
                f"base: server / static batch at {clients} clients",
                base.vs_ceiling,
                CEILING_TARGET,
            )


# --- report -----------------------------------------------------------------------------------


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def report(result: Result, say: Any) -> None:
    say("")
    say(
        f"{'scenario':<14} {'clients':>7} {'requests':>8} {'errors':>6} {'tokens':>7} "
        f"{'wall s':>7} {'tokens/s':>9} {'ttft p50':>9} {'ttft p95':>9} "
        f"{'vs 1 client':>11} {'vs ceiling':>10}"
    )
    for lv in result.levels:
        say(
            f"{lv.scenario:<14} {lv.concurrency:>7} {lv.requests:>8} {lv.errors:>6} "
            f"{lv.completion_tokens:>7} {lv.wall_s:>7.1f} {lv.tokens_per_s:>9.1f} "
            f"{lv.ttft_p50_ms:>6.0f} ms {lv.ttft_p95_ms:>6.0f} ms "
            f"{_x(lv.vs_one_client):>11} {_x(lv.vs_ceiling):>10}"
        )
    if result.ceiling_tokens_per_s:
        parts = ", ".join(
            f"batch {batch}: {value:.1f}" for batch, value in result.ceiling_tokens_per_s.items()
        )
        say(f"static-batch ceiling (transformers, tokens/s): {parts}")
    for lv in result.levels:
        if lv.first_error:
            say(f"{lv.scenario} at {lv.concurrency} clients, first error: {lv.first_error}")
    say("")
    say("targets")
    for target in result.targets:
        verdict = "PASS" if target.passed else "FAIL"
        say(f"  {verdict}  {target.name:<48} {target.value:6.2f}x  (goal >= {target.goal:.2f}x)")
    if result.errors:
        say(f"  FAIL  {result.errors} request(s) failed")


# --- main -------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers separated by commas")
    return sorted(set(values))


def _scenario_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are among {', '.join(SCENARIOS)}")
    return [name for name in SCENARIOS if name in names]


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def _quiet_transformers() -> None:
    """No weight-loading progress bars between the bench's own lines."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _finite(value: Any) -> Any:
    """``value`` with NaN / infinity as None, so the JSON line is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run(args: argparse.Namespace) -> Result:
    say = print if not args.quiet else (lambda *_a, **_k: None)
    _quiet_transformers()
    from app.bootstrap import create_key, prepare
    from app.config import Settings
    from app.sync import run_to_completion
    from tuna_core.base_models import resolve_base_model

    result = Result(
        model=args.model,
        machine=describe_machine(),
        device=args.device,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        scenarios=args.scenarios,
        adapters=args.adapters,
        requests_per_client=None if args.seconds else args.requests_per_client,
        seconds=args.seconds,
        no_fail=args.no_fail,
    )
    say(f"serve_throughput: {args.model}, {result.machine}")
    amount = (
        f"{args.seconds:g} s per level"
        if args.seconds
        else f"{args.requests_per_client} requests per client"
    )
    say(
        f"clients {','.join(map(str, args.concurrency))}, max_tokens {args.max_tokens}, "
        f"{amount}, scenarios {','.join(args.scenarios)}"
    )
    cache_dir = args.model_cache_dir.resolve()
    base_dir = resolve_base_model(args.model, cache_dir)
    with tempfile.TemporaryDirectory(prefix="tuna-serve-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        settings = Settings(data_dir=data_dir, model_cache_dir=cache_dir, enable_test_models=True)
        prepare(settings)
        project = f"bench-{uuid.uuid4().hex[:8]}"
        key = create_key(settings, project)
        adapter_ids: list[str] = []
        if {"one-adapter", "multi-adapter"} & set(args.scenarios):
            started = time.perf_counter()
            folders = make_adapters(base_dir, args.adapters, Path(tmp) / "adapters")
            adapter_ids = publish(settings, project, args.model, folders)
            say(
                f"published {len(adapter_ids)} LoRA adapters (r={LORA_RANK}, alpha={LORA_ALPHA}) "
                f"in {time.perf_counter() - started:.1f} s"
            )
        if "base" in args.scenarios and not args.no_ceiling:
            say("ceiling: static-batch greedy decode in this process (no server running)")
            result.ceiling_tokens_per_s = measure_ceiling(
                base_dir, args.concurrency, args.max_tokens, args.ceiling_repeats, args.device, say
            )
        gc.collect()

        extra = dict(args.server_env)
        queue = max(args.concurrency) * 2
        extra.setdefault("TUNA_INFERENCE_QUEUE_SIZE", str(max(64, queue)))
        env = server_env(data_dir, cache_dir, args.device, extra)
        server = Server(data_dir, env, Path(tmp) / "server.log")
        started = time.perf_counter()
        server.start()
        say(f"server up at {server.url} in {time.perf_counter() - started:.1f} s")
        try:
            models_of = {
                "base": [args.model],
                "one-adapter": adapter_ids[:1],
                "multi-adapter": adapter_ids,
            }
            for scenario in args.scenarios:
                models = models_of[scenario]
                started = time.perf_counter()
                run_to_completion(
                    warm_up(server.url, key, models, min(8, args.max_tokens), args.request_timeout)
                )
                say(
                    f"{scenario}: warmed up {len(models)} model(s) in "
                    f"{time.perf_counter() - started:.1f} s"
                )
                for clients in args.concurrency:
                    level = run_to_completion(
                        run_level(
                            server.url,
                            key,
                            scenario,
                            models,
                            clients,
                            args.max_tokens,
                            args.requests_per_client,
                            args.seconds,
                            args.request_timeout,
                        )
                    )
                    result.levels.append(level)
                    say(
                        f"  {clients:>3} clients: {level.requests} requests, "
                        f"{level.completion_tokens} tokens in {level.wall_s:.1f} s = "
                        f"{level.tokens_per_s:.1f} tokens/s, ttft p50 {level.ttft_p50_ms:.0f} ms"
                        + (f", {level.errors} errors" if level.errors else "")
                    )
        except BaseException:
            say("server log (tail):\n" + server.log_tail())
            raise
        finally:
            server.stop()
    check_targets(result)
    report(result, say)
    return result


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model (tuna-tiny-test: quick)")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 32], help="e.g. 1,8,32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="each client starts requests for this long per level (default 30: steady state, "
        "not the ramp of a few synchronized rounds)",
    )
    parser.add_argument(
        "--requests-per-client",
        type=int,
        default=None,
        help="instead of --seconds: requests each client sends per level",
    )
    parser.add_argument(
        "--scenarios", type=_scenario_list, default=list(SCENARIOS), help=",".join(SCENARIOS)
    )
    parser.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds; a request over it fails"
    )
    parser.add_argument("--adapters", type=int, default=8, help="adapters of multi-adapter")
    parser.add_argument("--ceiling-repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the static-batch ceiling")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--model-cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--server-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (e.g. TUNA_INFERENCE_QUEUE_SIZE=128)",
    )
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even if a target is missed")
    parser.add_argument("--quiet", action="store_true", help="print only the last lines")
    args = parser.parse_args(argv)
    if args.requests_per_client is not None:
        args.seconds = None
    if args.max_tokens < 1 or (args.requests_per_client or 1) < 1 or args.adapters < 1:
        parser.error("--max-tokens, --requests-per-client and --adapters must be at least 1")
    result = run(args)
    if args.json:
        print(
            json.dumps(
                _finite(
                    {
                        **asdict(result),
                        "errors": result.errors,
                        "targets_met": result.targets_met,
                        "passed": result.passed,
                    }
                )
            )
        )
    print(f"targets_met {result.targets_met}/{len(result.targets)}")
    return result


if __name__ == "__main__":
    sys.exit(main().exit_code)
