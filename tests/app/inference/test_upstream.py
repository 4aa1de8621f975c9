"""`UpstreamEngine` against a real OpenAI-compatible server: another Tuna (local engine).

The proxy authenticates and resolves models itself, then forwards generation; greedy answers
must be the ones the upstream gives directly, streamed or not.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from app.bootstrap import prepare
from app.inference.upstream import UpstreamEngine
from app.main import create_app
from tests.app.inference.conftest import TINY, Tenant, new_tenant
from tests.conftest import LiveServer, make_settings, serve_in_thread

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
