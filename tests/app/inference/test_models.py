"""Fine-tuned models: resolution per tenant, adapters and full models, deletion, the engine's
adapter cache, the bounded queue, and no bleeding between concurrent requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from sqlalchemy import select

from app.orm import FineTunedModel
from tests.app.inference.conftest import (
    TINY,
    ModelFolders,
    SmallServer,
    Tenant,
    new_tenant,
    publish,
)
from tests.conftest import LiveServer

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def greedy(client: openai.OpenAI, model: str, max_tokens: int = 8) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
    )
    assert reply.model == model
    return reply.choices[0].message.content or ""


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_adapter_full_and_checkpoint_ids_answer(
    server: LiveServer, tenant: Tenant, model_folders: ModelFolders
) -> None:
    base = greedy(tenant.client, TINY)
    lora = publish(server, tenant, model_folders.adapter_a)
    checkpoint = publish(server, tenant, model_folders.adapter_b, checkpoint_step=3)
    full = publish(server, tenant, model_folders.full, training_type="full")
    assert checkpoint.endswith(":ckpt-step-3")

    answers = {name: greedy(tenant.client, name) for name in (lora, checkpoint, full)}
    assert len({base, *answers.values()}) == 4  # each model really is a different model
    # Streaming serves the same model too.
    chunks = tenant.client.chat.completions.create(
        model=checkpoint,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == (answers[checkpoint])
    )
    # Legacy completions resolve the same ids.
    text = tenant.client.completions.create(model=lora, prompt="Hello", max_tokens=3)
    assert text.model == lora and text.choices[0].finish_reason in ("length", "stop")
    assert greedy(tenant.client, TINY) == base  # the base is unchanged by its adapters


def test_another_projects_model_is_404(
    server: LiveServer, tenant: Tenant, other_tenant: Tenant, model_folders: ModelFolders
) -> None:
    model = publish(server, tenant, model_folders.adapter_a)
    with pytest.raises(openai.NotFoundError) as caught:
        greedy(other_tenant.client, model)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        other_tenant.client.completions.create(model=model, prompt="x", max_tokens=2)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        other_tenant.client.models.delete(model)
    assert caught.value.code == "model_not_found"
    assert greedy(tenant.client, model)  # untouched for its owner
    assert server.app.state.storage.path(_key(model, server)).is_dir()


def _key(model_id: str, server: LiveServer) -> str:
    with server.app.state.db.session_scope() as session:
        key = session.scalar(
            select(FineTunedModel.storage_key).where(FineTunedModel.id == model_id)
        )
    assert key
    return key


def test_delete_model(server: LiveServer, tenant: Tenant, model_folders: ModelFolders) -> None:
    model = publish(server, tenant, model_folders.adapter_a)
    keep = publish(server, tenant, model_folders.adapter_b, checkpoint_step=2)
    folder = server.app.state.storage.path(_key(model, server))
    greedy(tenant.client, model)  # loaded into the engine
    engine = server.app.state.inference
    assert model in engine.stats()["cached"]

    deleted = tenant.client.models.delete(model)
    assert (deleted.id, deleted.object, deleted.deleted) == (model, "model", True)
    wait_until(lambda: not folder.exists())
    wait_until(lambda: model not in engine.stats()["cached"])
    with pytest.raises(openai.NotFoundError):
        greedy(tenant.client, model)
    with pytest.raises(openai.NotFoundError):
        tenant.client.models.delete(model)
    assert model not in {m.id for m in tenant.client.models.list()}
    assert greedy(tenant.client, keep)  # other models of the tenant still answer

    with pytest.raises(openai.PermissionDeniedError):
        tenant.client.models.delete(TINY)
    assert greedy(tenant.client, TINY)


def test_a_deleted_checkpoint_is_no_longer_listed_as_callable(
    server: LiveServer, tenant: Tenant, model_folders: ModelFolders
) -> None:
    checkpoint = publish(server, tenant, model_folders.adapter_b, checkpoint_step=2)
    with server.app.state.db.session_scope() as session:
        job_id = session.scalar(
            select(FineTunedModel.job_id).where(FineTunedModel.id == checkpoint)
        )
    jobs = tenant.client.fine_tuning.jobs
    listed = [c.fine_tuned_model_checkpoint for c in jobs.checkpoints.list(job_id)]
    assert listed == [checkpoint]

    tenant.client.models.delete(checkpoint)
    assert list(jobs.checkpoints.list(job_id)) == []
    with pytest.raises(openai.NotFoundError):
        greedy(tenant.client, checkpoint)


def test_concurrent_requests_never_bleed(
    server: LiveServer, tenant: Tenant, model_folders: ModelFolders
) -> None:
    """Parallel requests at two adapters and the base each get exactly their solo answer."""
    models = [
        TINY,
        publish(server, tenant, model_folders.adapter_a),
        publish(server, tenant, model_folders.adapter_b),
    ]
    alone = {m: greedy(tenant.client, m) for m in models}
    assert len(set(alone.values())) == 3
    clients = [server.client(tenant.key) for _ in range(3)]  # one connection pool per thread
    jobs = [(clients[i % 3], models[i % 3]) for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda job: (job[1], greedy(*job)), jobs))
    for model, answer in answers:
        assert answer == alone[model], model


def test_adapter_cache_is_bounded_by_bytes(
    small_server: SmallServer, model_folders: ModelFolders
) -> None:
    """A cache that holds one adapter: each switch evicts the other, answers stay right."""
    live, engine = small_server.live, small_server.engine
    tenant = new_tenant(live)
    a = publish(live, tenant, model_folders.adapter_a)
    b = publish(live, tenant, model_folders.adapter_b)
    first_a = greedy(tenant.client, a)
    assert engine.stats()["cached"] == [a]
    first_b = greedy(tenant.client, b)
    assert engine.stats()["cached"] == [b]
    assert engine.stats()["cached_bytes"] <= engine.adapter_cache_bytes
    assert greedy(tenant.client, TINY) != first_a  # the unwrapped base is the plain base again
    assert greedy(tenant.client, a) == first_a
    assert greedy(tenant.client, b) == first_b
    assert engine.stats()["bases"] == [TINY]


def test_full_queue_answers_429(small_server: SmallServer) -> None:
    """Queue of one: one request running, one waiting, the next is refused with retry-after."""
    live, engine = small_server.live, small_server.engine
    tenant = new_tenant(live)
    greedy(tenant.client, TINY, max_tokens=1)  # model loaded: the long request starts at once

    long_stream = tenant.client.completions.create(
        model=TINY, prompt="a b c", max_tokens=1500, temperature=0, stream=True
    )
    next(iter(long_stream))  # it is running (it streams), so the queue is empty
    waiting_result: list[str] = []
    waiter = threading.Thread(
        target=lambda: waiting_result.append(greedy(tenant.client, TINY, max_tokens=2))
    )
    waiter.start()
    wait_until(lambda: engine.stats()["waiting"] == 1)

    with pytest.raises(openai.RateLimitError) as caught:
        greedy(tenant.client, TINY, max_tokens=2)
    assert caught.value.status_code == 429
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    with pytest.raises(openai.RateLimitError):  # streaming is refused before it starts
        tenant.client.chat.completions.create(
            model=TINY,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=2,
            stream=True,
        )

    long_stream.close()  # the client leaves: generation stops, the waiting request runs
    waiter.join(timeout=60)
    assert waiting_result and isinstance(waiting_result[0], str)
    assert greedy(tenant.client, TINY, max_tokens=2) == waiting_result[0]
