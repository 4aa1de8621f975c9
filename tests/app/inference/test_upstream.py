"""`UpstreamEngine` against a real OpenAI-compatible server: another Tuna (local engine).

The proxy authenticates and resolves models itself, then forwards generation; greedy answers
must be the ones the upstream gives directly, streamed or not.

The LoRA tests put `VLLMStandIn` between the proxy and that Tuna: vLLM's runtime LoRA registry
(load / unload, 404 for an unknown LoRA, "already been loaded"), which can restart (forget every
adapter) or hold several replicas behind one URL, as a restarted or load-balanced vLLM does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from app.bootstrap import prepare
from app.inference.upstream import UpstreamEngine
from app.main import create_app
from tests.app.inference.conftest import TINY, ModelFolders, Tenant, new_tenant, publish
from tests.conftest import LiveServer, free_port, make_settings, serve_in_thread

MESSAGES = [{"role": "user", "content": "Count to five."}]


@pytest.fixture
def proxy(
    server: LiveServer, tenant: Tenant, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("tuna-proxy"), None)
    prepare(settings)
    app = create_app(settings)
    app.state.inference = UpstreamEngine(f"{server.url}/v1", api_key=tenant.key)
    url, stop = serve_in_thread(app)
    yield LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    stop()


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_upstream_engine_forwards(proxy: LiveServer, tenant: Tenant) -> None:
    direct = tenant.client
    via = new_tenant(proxy).client
    kwargs = {"model": TINY, "messages": MESSAGES, "max_tokens": 5, "temperature": 0}
    expected = direct.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    got = via.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert got.choices[0].finish_reason == "length"
    assert got.usage == expected.usage

    chunks = list(
        via.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5

    prompt = {"model": TINY, "prompt": ["one two", "three"], "max_tokens": 3, "temperature": 0}
    assert [c.text for c in via.completions.create(**prompt).choices] == [  # type: ignore[call-overload]
        c.text
        for c in direct.completions.create(**prompt).choices  # type: ignore[call-overload]
    ]
    with pytest.raises(openai.BadRequestError) as caught:  # the upstream's 400 comes through
        via.chat.completions.create(**{**kwargs, "max_tokens": 5000})  # type: ignore[call-overload]
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):  # resolved by the proxy itself
        via.chat.completions.create(**{**kwargs, "model": "ft:nope:x:y:z"})  # type: ignore[call-overload]


# -- a vLLM stand-in that can forget its adapters ---------------------------------------------


class VLLMStandIn:
    """What `vllm serve --enable-lora` with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` shows Tuna.

    Its wire behaviour follows vLLM's `OpenAIServingModels` / `OpenAIServing._check_model`:
    `POST /v1/load_lora_adapter` registers a folder under a name (400 "The lora adapter '...'
    has already been loaded." for a name it holds); a request for a LoRA name it does not hold is
    a 404 "The model `...` does not exist." (`legacy_errors`: the top-level error shape of older
    vLLM releases).  Generation is forwarded to a real Tuna (`backend`), where each loaded folder
    is published as a model of `tenant`, so a LoRA answers with that adapter's output.

    `restart()` forgets the adapters of the replica in use; `replicas` > 1 puts several behind
    the one URL and `route_to(i)` sends what follows to replica i; `refuse` answers every LoRA
    request 404 even right after a load (a balancer that always picks a replica without it).
    """

    def __init__(self, backend: LiveServer, tenant: Tenant, *, replicas: int = 1) -> None:
        self.backend = backend
        self.tenant = tenant
        self.replicas: list[dict[str, str]] = [{} for _ in range(replicas)]  # name -> backend id
        self.active = 0
        self.refuse = False
        self.legacy_errors = False
        self.loads: list[tuple[int, str]] = []  # every load_lora_adapter call: (replica, name)
        self.requests: list[tuple[int, str]] = []  # every generation request: (replica, model)
        self._published: dict[str, str] = {}  # adapter folder -> its model id on the backend
        self._lock = threading.Lock()  # one at a time, like vLLM's per-name lock
        self.app = self._make_app()

    def restart(self) -> None:
        with self._lock:
            self.replicas[self.active].clear()

    def route_to(self, replica: int) -> None:
        with self._lock:
            self.active = replica

    def loads_of(self, name: str) -> int:
        return sum(1 for _, n in self.loads if n == name)

    def requests_for(self, name: str) -> int:
        return sum(1 for _, n in self.requests if n == name)

    def _error(
        self, message: str, err_type: str, status: int, param: str | None = None
    ) -> Response:
        fields = {"message": message, "type": err_type, "param": param, "code": status}
        if self.legacy_errors:  # older vLLM: no envelope, and `param` always null
            return JSONResponse({"object": "error", **fields, "param": None}, status_code=status)
        return JSONResponse({"error": fields}, status_code=status)

    def _load(self, body: dict[str, Any]) -> Response:
        name, path = str(body.get("lora_name") or ""), str(body.get("lora_path") or "")
        if not name or not path:
            return self._error(
                "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400
            )
        with self._lock:
            replica = self.replicas[self.active]
            self.loads.append((self.active, name))
            if name in replica:
                return self._error(
                    f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400
                )
            if not (Path(path) / "adapter_config.json").is_file():
                return self._error(f"No adapter found for {path}", "NotFoundError", 404)
            if path not in self._published:
                self._published[path] = publish(self.backend, self.tenant, Path(path))
            replica[name] = self._published[path]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, body: dict[str, Any]) -> Response:
        name = str(body.get("lora_name") or "")
        with self._lock:
            if self.replicas[self.active].pop(name, None) is None:
                return self._error(
                    f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404
                )
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def _generate(self, path: str, body: dict[str, Any]) -> Response:
        name = str(body.get("model"))
        with self._lock:
            self.requests.append((self.active, name))
            backend_id = name if name == TINY else self.replicas[self.active].get(name)
            if self.refuse and name != TINY:
                backend_id = None
        if backend_id is None:
            return self._error(
                f"The model `{name}` does not exist.", "NotFoundError", 404, param="model"
            )
        http = httpx.AsyncClient(
            base_url=self.backend.url,
            headers={"Authorization": f"Bearer {self.tenant.key}"},
            timeout=120,
        )
        request = http.build_request("POST", path, json={**body, "model": backend_id})
        answer = await http.send(request, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()
                await http.aclose()

        return StreamingResponse(
            relay(),
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/load_lora_adapter")
        def load(body: dict[str, Any]) -> Response:
            return self._load(body)

        @app.post("/v1/unload_lora_adapter")
        def unload(body: dict[str, Any]) -> Response:
            return self._unload(body)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._generate("/v1/chat/completions", await request.json())

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._generate("/v1/completions", await request.json())

        return app


def serve_plain(app: FastAPI) -> tuple[str, Callable[[], None]]:
    """Like `serve_in_thread` without the OpenAI wire check: vLLM's errors carry an int `code`."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the vLLM stand-in did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


ASK = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0}


@dataclass
class LoraRig:
    vllm: VLLMStandIn
    proxy: LiveServer
    client: openai.OpenAI  # a tenant of the proxy
    model: str  # the adapter's ft: id on the proxy
    expected: str  # the adapter's greedy answer to ASK, straight from the backend Tuna

    def ask(self, *, stream: bool = False) -> str:
        if stream:
            chunks = self.client.chat.completions.create(model=self.model, stream=True, **ASK)  # type: ignore[call-overload]
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reply = self.client.chat.completions.create(model=self.model, **ASK)  # type: ignore[call-overload]
        return str(reply.choices[0].message.content)


def make_rig(
    server: LiveServer,
    tenant: Tenant,
    model_folders: ModelFolders,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    replicas: int = 1,
) -> Iterator[LoraRig]:
    vllm = VLLMStandIn(server, tenant, replicas=replicas)
    vllm_url, stop_vllm = serve_plain(vllm.app)
    data_dir = tmp_path_factory.mktemp("tuna-proxy-lora")
    storage_root = make_settings(data_dir, None).resolved_storage_dir
    settings = make_settings(
        data_dir,
        None,
        inference_backend="upstream",
        inference_upstream_url=f"{vllm_url}/v1",
        inference_upstream_adapter_root=storage_root,  # the proxy and "vLLM" share a disk
    )
    prepare(settings)
    app = create_app(settings)
    assert isinstance(app.state.inference, UpstreamEngine)
    url, stop = serve_in_thread(app)
    proxy = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    proxy_tenant = new_tenant(proxy)
    model = publish(proxy, proxy_tenant, model_folders.adapter_a)
    direct = publish(server, tenant, model_folders.adapter_a)
    expected = tenant.client.chat.completions.create(model=direct, **ASK)  # type: ignore[call-overload]
    yield LoraRig(vllm, proxy, proxy_tenant.client, model, str(expected.choices[0].message.content))
    stop()
    stop_vllm()


@pytest.fixture
def rig(
    server: LiveServer,
    tenant: Tenant,
    model_folders: ModelFolders,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LoraRig]:
    yield from make_rig(server, tenant, model_folders, tmp_path_factory)


@pytest.fixture
def two_replicas(
    server: LiveServer,
    tenant: Tenant,
    model_folders: ModelFolders,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LoraRig]:
    yield from make_rig(server, tenant, model_folders, tmp_path_factory, replicas=2)


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_reloads_adapter_after_restart(rig: LoraRig, tenant: Tenant, stream: bool) -> None:
    base = tenant.client.chat.completions.create(model=TINY, **ASK)  # type: ignore[call-overload]
    assert rig.expected != base.choices[0].message.content  # the answer shows the adapter

    assert rig.ask(stream=stream) == rig.expected
    assert rig.vllm.loads_of(rig.model) == 1
    assert rig.ask(stream=stream) == rig.expected  # remembered: no second load
    assert rig.vllm.loads_of(rig.model) == 1

    rig.vllm.restart()
    assert rig.ask(stream=stream) == rig.expected
    assert rig.vllm.loads_of(rig.model) == 2  # 404, loaded again, retried
    assert rig.vllm.requests_for(rig.model) == 4
    assert rig.model in rig.vllm.replicas[0]

    rig.vllm.restart()  # text completions take the same path
    prompt = {"model": rig.model, "prompt": ["one two"], "max_tokens": 3, "temperature": 0}
    first = rig.client.completions.create(**prompt)  # type: ignore[call-overload]
    assert first.choices[0].text
    assert rig.vllm.loads_of(rig.model) == 3


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_upstream_loads_adapter_on_each_replica(two_replicas: LoraRig) -> None:
    rig = two_replicas
    assert rig.ask() == rig.expected
    assert rig.vllm.loads == [(0, rig.model)]

    rig.vllm.route_to(1)  # the balancer now picks a replica that never saw the adapter
    assert rig.ask(stream=True) == rig.expected
    assert rig.vllm.loads == [(0, rig.model), (1, rig.model)]

    rig.vllm.route_to(0)  # both hold it now: nothing to load
    assert rig.ask() == rig.expected
    rig.vllm.route_to(1)
    assert rig.ask() == rig.expected
    assert len(rig.vllm.loads) == 2


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("legacy", [False, True], ids=["error-envelope", "legacy-error"])
def test_upstream_that_keeps_refusing_fails_after_one_retry(
    rig: LoraRig, stream: bool, legacy: bool
) -> None:
    rig.vllm.refuse = True
    rig.vllm.legacy_errors = legacy
    for attempt in (1, 2):
        with pytest.raises(openai.NotFoundError) as caught:
            rig.ask(stream=stream)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["message"] == f"The model `{rig.model}` does not exist."
        assert error["param"] == (None if legacy else "model")
        assert error["code"] is None  # vLLM's int `code` (the status) is not OpenAI's
        # the first load, then per request one reload ("already been loaded") and one retry
        assert rig.vllm.requests_for(rig.model) == 2 * attempt
        assert rig.vllm.loads_of(rig.model) == 1 + attempt
    rig.vllm.refuse = False
    assert rig.ask(stream=stream) == rig.expected


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_upstream_concurrent_requests_after_restart(rig: LoraRig) -> None:
    assert rig.ask() == rig.expected
    rig.vllm.restart()
    callers = 6
    with ThreadPoolExecutor(callers) as pool:
        answers = list(pool.map(lambda i: rig.ask(stream=bool(i % 2)), range(callers)))
    assert answers == [rig.expected] * callers
    reloads = rig.vllm.loads_of(rig.model) - 1
    assert 1 <= reloads <= callers  # each caller reloads at most once
    assert rig.vllm.requests_for(rig.model) <= 1 + 2 * callers  # and retries at most once
    loads = len(rig.vllm.loads)
    assert rig.ask() == rig.expected
    assert len(rig.vllm.loads) == loads  # loaded again and remembered
