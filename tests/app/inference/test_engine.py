"""The local engine through the real server: concurrent clients decode in one batch, and a client
that disconnects mid-stream leaves it without disturbing the others."""

from __future__ import annotations

import threading

import openai

from app.inference.engine import LocalEngine
from tests.app.inference.conftest import TINY, ModelFolders, Tenant, publish
from tests.app.inference.test_models import MESSAGES, greedy, wait_until
from tests.conftest import LiveServer


def stream_text(client: openai.OpenAI, model: str, max_tokens: int, stop_after: int = 0) -> str:
    """A streamed greedy answer; with ``stop_after`` the client hangs up after that many
    content chunks."""
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    text, chunks = "", 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            chunks += 1
            if stop_after and chunks >= stop_after:
                stream.close()
                break
    return text


def test_concurrent_streams_share_a_batch_and_a_disconnect_leaves_the_others(
    server: LiveServer, tenant: Tenant, model_folders: ModelFolders
) -> None:
    engine = server.app.state.inference
    assert isinstance(engine, LocalEngine)
    adapter = publish(server, tenant, model_folders.adapter_a)
    alone = {model: greedy(tenant.client, model, max_tokens=60) for model in (TINY, adapter)}

    most_rows = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal most_rows
        while not sampling.is_set():
            most_rows = max(most_rows, engine.stats()["running"])
            sampling.wait(0.005)

    answers: dict[str, str] = {}
    clients = [server.client(tenant.key) for _ in range(3)]  # one connection pool per thread
    jobs = {
        "base": lambda: stream_text(clients[0], TINY, 60),
        "adapter": lambda: stream_text(clients[1], adapter, 60),
        "leaves": lambda: stream_text(clients[2], TINY, 400, stop_after=3),
    }
    threads = [
        threading.Thread(target=lambda name=name, job=job: answers.__setitem__(name, job()))
        for name, job in jobs.items()
    ]
    sampler = threading.Thread(target=sample)
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    sampling.set()
    sampler.join()

    assert answers["base"] == alone[TINY]
    assert answers["adapter"] == alone[adapter]
    assert answers["leaves"] and alone[TINY].startswith(answers["leaves"])
    assert most_rows >= 2  # they really decoded together
    wait_until(lambda: engine.stats()["running"] == 0)  # the hung-up request left the batch
