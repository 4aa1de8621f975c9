"""`UpstreamEngine`: forward inference to an OpenAI-compatible server (vLLM with `--enable-lora`).

Tuna still authenticates the caller and resolves `model` against its own database (so tenants
stay isolated); only the generation is forwarded:

* a base model goes out under its upstream name (`inference_upstream_models` maps Tuna's base
  names to the names the upstream serves; default: the same name);
* an `ft:` LoRA model goes out under its own id as the LoRA name.  The upstream either lists it
  at start (`--lora-modules ft:...=/path`) or, with `inference_upstream_adapter_root` set (the
  storage root as the upstream sees it) and vLLM's `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`,
  Tuna loads it on first use with `POST /v1/load_lora_adapter` and unloads it when deleted;
  when the upstream no longer knows it (restarted, or a balancer picked a replica that never
  loaded it) Tuna loads it again and retries the request once (see `_open`);
* a full fine-tune needs its own upstream server: name it in `inference_upstream_models`
  (ft id -> served name), otherwise it is a 400.

Upstream errors keep their status and message; an unreachable upstream is a 502.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import httpx

from app.config import Settings
from app.errors import APIError, InvalidRequest, RateLimited, ServerError
from app.inference.types import (
    ChoiceFinished,
    GenerationEvent,
    GenerationResult,
    ModelTarget,
    SamplingParams,
    Started,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Tools,
    Usage,
    collect,
)

logger = logging.getLogger("tuna.inference")


class UpstreamEngine:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model_names: dict[str, str] | None = None,
        adapter_root: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model_names = dict(model_names or {})
        self.adapter_root = adapter_root.rstrip("/") if adapter_root else None
        self.timeout = timeout
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamEngine:
        url = settings.inference_upstream_url
        if not url:
            raise ValueError("inference_backend 'upstream' needs inference_upstream_url")
        return cls(
            url,
            api_key=settings.inference_upstream_api_key,
            model_names=settings.inference_upstream_models,
            adapter_root=(
                str(settings.inference_upstream_adapter_root)
                if settings.inference_upstream_adapter_root
                else None
            ),
            timeout=settings.inference_upstream_timeout,
        )

    # -- the protocol --------------------------------------------------------------------------

    async def chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: Tools | None = None,
    ) -> GenerationResult:
        async with aclosing(self.stream_chat(target, messages, params, tools)) as events:
            return await collect(events)

    def stream_chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        tools: Tools | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        payload: dict[str, Any] = {"messages": messages}
        if tools is not None:  # the upstream renders and parses them (vLLM: a tool parser)
            payload["tools"] = tools.definitions
            payload["tool_choice"] = tools.openai_choice()
            payload["parallel_tool_calls"] = tools.parallel
        return self._stream("/chat/completions", target, payload, params)

    async def complete(
        self, target: ModelTarget, prompts: list[str], params: SamplingParams
    ) -> GenerationResult:
        async with aclosing(self.stream_complete(target, prompts, params)) as events:
            return await collect(events)

    def stream_complete(
        self, target: ModelTarget, prompts: list[str], params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        return self._stream("/completions", target, {"prompt": prompts}, params)

    def evict(self, model_id: str) -> None:
        with self._lock:
            if model_id not in self._loaded:
                return
            self._loaded.discard(model_id)

        def unload() -> None:
            try:
                with httpx.Client(timeout=30, headers=self.headers) as http:
                    http.post(f"{self.base_url}/unload_lora_adapter", json={"lora_name": model_id})
            except httpx.HTTPError:
                logger.warning("could not unload %s from the upstream", model_id, exc_info=True)

        threading.Thread(target=unload, daemon=True).start()

    def close(self) -> None:
        pass

    # -- forwarding ----------------------------------------------------------------------------

    def _model_name(self, target: ModelTarget) -> str:
        if target.model_id in self.model_names:
            return self.model_names[target.model_id]
        if target.kind == "base":
            return self.model_names.get(target.base_model, target.base_model)
        if target.kind == "lora":
            return target.model_id
        raise InvalidRequest(
            f"The model `{target.model_id}` is a full fine-tune, which this server's upstream "
            "inference backend does not serve.",
            param="model",
            code="model_not_supported",
        )

    def _loads_adapters(self, target: ModelTarget) -> bool:
        return target.kind == "lora" and self.adapter_root is not None

    async def _ensure_adapter(self, http: httpx.AsyncClient, target: ModelTarget) -> None:
        if not self._loads_adapters(target) or target.model_id in self._loaded:
            return
        path = f"{self.adapter_root}/{target.storage_key}"
        response = await http.post(
            f"{self.base_url}/load_lora_adapter",
            json={"lora_name": target.model_id, "lora_path": path},
        )
        # vLLM answers 400 "The lora adapter '...' has already been loaded." when another request
        # (or another Tuna process) loaded it first: the adapter is there, which is all we need.
        if response.status_code >= 400 and "already" not in response.text.lower():
            raise _upstream_error(response.status_code, response.text, response.headers)
        with self._lock:
            self._loaded.add(target.model_id)

    async def _post(
        self, http: httpx.AsyncClient, url: str, body: dict[str, Any], target: ModelTarget
    ) -> httpx.Response:
        await self._ensure_adapter(http, target)
        return await http.send(http.build_request("POST", url, json=body), stream=True)

    async def _open(
        self, http: httpx.AsyncClient, url: str, body: dict[str, Any], target: ModelTarget
    ) -> httpx.Response:
        """Send the request; return the (streaming, still open) response once it answered 2xx.

        `_loaded` is only what this process loaded into the upstream it talked to: a restarted
        vLLM, or another replica behind the same URL, answers 404 ("The model `ft:...` does not
        exist.") for an adapter we think is loaded.  Nothing has been streamed at that point, so
        the adapter is loaded again and the request sent once more; a second failure is the
        caller's error.  Requests racing here each reload and retry at most once (the losers of
        the race get vLLM's "already been loaded", which counts as loaded), so nothing loops.
        """
        response = await self._post(http, url, body, target)
        if response.status_code == 404 and self._loads_adapters(target):
            await response.aclose()
            with self._lock:
                self._loaded.discard(target.model_id)
            logger.info("the upstream does not know %s: loading it again", target.model_id)
            response = await self._post(http, url, body, target)
        if response.status_code >= 400:
            try:
                text = (await response.aread()).decode(errors="replace")
            finally:
                await response.aclose()
            raise _upstream_error(response.status_code, text, response.headers)
        return response

    async def _stream(
        self, path: str, target: ModelTarget, payload: dict[str, Any], params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        body: dict[str, Any] = {
            "model": self._model_name(target),
            **payload,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
            "stop": list(params.stop) or None,
            "seed": params.seed,
            "presence_penalty": params.presence_penalty or None,
            "frequency_penalty": params.frequency_penalty or None,
            "stream": True,
            "stream_options": {"include_usage": True},
            "logit_bias": {str(token): bias for token, bias in params.logit_bias} or None,
            "response_format": _response_format(params),
            **_logprobs_request(path, params),
        }
        body = {k: v for k, v in body.items() if v is not None}
        try:
            async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as http:
                response = await self._open(http, self.base_url + path, body, target)
                try:
                    yield Started(0)
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        for event in _events(json.loads(data)):
                            yield event
                finally:
                    await response.aclose()
        except httpx.HTTPError as exc:
            logger.warning("upstream inference failed: %s", exc)
            raise ServerError(
                "The inference backend is unavailable.", status_code=502, code="upstream_error"
            ) from exc


def _events(chunk: dict[str, Any]) -> list[GenerationEvent]:
    if "error" in chunk:
        error = chunk["error"] or {}
        message = str(error.get("message", "upstream error"))
        raise ServerError(message, code="upstream_error", status_code=502)
    events: list[GenerationEvent] = []
    for choice in chunk.get("choices") or []:
        index = int(choice.get("index", 0))
        delta = choice.get("delta") or {}
        text = delta.get("content") if "delta" in choice else choice.get("text")
        logprobs = _logprobs(choice.get("logprobs"))
        if text or logprobs:
            events.append(TextDelta(index, text or "", logprobs))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            events.append(
                ToolCallDelta(
                    index,
                    int(call.get("index", 0)),
                    id=call.get("id") or None,
                    name=function.get("name") or None,
                    arguments=function.get("arguments") or "",
                )
            )
        if choice.get("finish_reason"):
            reason = choice["finish_reason"]
            known = reason in ("stop", "length", "tool_calls")
            events.append(ChoiceFinished(index, reason if known else "stop"))
    usage = chunk.get("usage")
    if usage:
        events.append(
            Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        )
    return events


def _response_format(params: SamplingParams) -> dict[str, Any] | None:
    """`response_format` as the upstream takes it (it enforces the schema itself)."""
    fmt = params.response_format
    if fmt is None:
        return None
    if fmt.schema is None:
        return {"type": "json_object"}
    schema = {"name": "response", "schema": json.loads(fmt.schema), "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": schema}


def _logprobs_request(path: str, params: SamplingParams) -> dict[str, Any]:
    if params.logprobs is None:
        return {}
    if path.startswith("/chat"):
        return {"logprobs": True, "top_logprobs": params.logprobs}
    return {"logprobs": params.logprobs}


def _logprobs(shown: Any) -> tuple[TokenLogprob, ...]:
    """A chunk's `logprobs` (chat's `content` list or the completions' arrays) as ours."""
    if not isinstance(shown, dict):
        return ()
    if isinstance(shown.get("content"), list):
        return tuple(
            TokenLogprob(
                str(entry.get("token", "")),
                tuple(entry.get("bytes") or str(entry.get("token", "")).encode()),
                float(entry.get("logprob", 0.0)),
                tuple(
                    (
                        str(alt.get("token", "")),
                        tuple(alt.get("bytes") or str(alt.get("token", "")).encode()),
                        float(alt.get("logprob", 0.0)),
                    )
                    for alt in entry.get("top_logprobs") or []
                ),
            )
            for entry in shown["content"]
        )
    tokens = shown.get("tokens") or []
    values = shown.get("token_logprobs") or []
    tops = shown.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        TokenLogprob(
            str(token),
            tuple(str(token).encode()),
            float(value or 0.0),
            tuple((str(t), tuple(str(t).encode()), float(v)) for t, v in (top or {}).items()),
        )
        for token, value, top in zip(tokens, values, tops, strict=False)
    )


def _upstream_error(status: int, text: str, headers: httpx.Headers) -> APIError:
    try:
        parsed = json.loads(text)
        # {"error": {...}} (OpenAI, recent vLLM); older vLLM puts the fields at the top level
        error = parsed.get("error") or (parsed if "message" in parsed else {})
        if isinstance(error, str):
            error = {"message": error}
    except (ValueError, AttributeError):
        error = {"message": text[:500] or f"upstream answered {status}"}
    message = str(error.get("message") or f"upstream answered {status}")
    param, code = error.get("param"), error.get("code")
    param = param if isinstance(param, str) else None
    code = code if isinstance(code, str) else None  # vLLM's `code` is the HTTP status (an int)
    if status == 429:
        retry = headers.get("retry-after", "1")
        return RateLimited(message, code="rate_limit_exceeded", headers={"retry-after": retry})
    if 400 <= status < 500:
        return APIError(message, param=param, code=code, status_code=status)
    return ServerError(message, code="upstream_error", status_code=502)
