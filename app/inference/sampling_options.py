"""The request options that shape what tokens may come and what is reported about them:
`response_format`, `logit_bias`, `logprobs` / `top_logprobs`, checked with their exact `param`,
and the `logprobs` objects of OpenAI's chat and text completions.

The checks here need no model: a schema's JSON Schema keywords are checked when the engine
compiles it for the model's tokenizer (`app.inference.constraints`), and a token id against the
model's vocabulary when the request is admitted; both are 400s naming the same params.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from app.errors import InvalidRequest
from app.inference.types import ResponseFormat, TokenLogprob

# OpenAI's limits.
SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_BIAS = 100.0
MAX_TOP_LOGPROBS = 20


def response_format_of(value: Any) -> ResponseFormat | None:
    """`response_format` -> the grammar the engine decodes under (None: free text)."""
    param = "response_format"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected an object.", param=param)
    kind = value.get("type")
    allowed = {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"}}
    if kind not in allowed:
        raise InvalidRequest(
            f"Invalid value for '{param}.type': {json.dumps(kind)}. Expected 'text', "
            "'json_object' or 'json_schema'.",
            param=f"{param}.type",
        )
    _only(value, allowed[kind], param)
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(None)
    spec = value.get("json_schema")
    where = f"{param}.json_schema"
    if not isinstance(spec, dict):
        raise InvalidRequest(f"Missing required parameter: '{where}'.", param=where)
    _only(spec, {"name", "description", "schema", "strict"}, where)
    name = spec.get("name")
    if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
        raise InvalidRequest(
            f"Invalid '{where}.name': expected 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'.",
            param=f"{where}.name",
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"Invalid type for '{where}.schema': expected a JSON Schema object.",
            param=f"{where}.schema",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(
            f"Invalid type for '{where}.strict': expected a boolean.", param=f"{where}.strict"
        )
    return ResponseFormat(json.dumps(schema), strict=bool(strict))


def logit_bias_of(value: Any) -> tuple[tuple[int, float], ...]:
    """`logit_bias` (`{"token id": bias}`, bias from -100 to 100) -> (id, bias) pairs."""
    param = "logit_bias"
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected an object.", param=param)
    pairs = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise InvalidRequest(
                f"Invalid key in '{param}': {json.dumps(key)} is not a token id (a "
                "non-negative integer as a string).",
                param=param,
            )
        number = isinstance(bias, int | float) and not isinstance(bias, bool)
        if not (number and math.isfinite(bias) and -MAX_BIAS <= bias <= MAX_BIAS):
            raise InvalidRequest(
                f"Invalid value for '{param}.{key}': expected a number from -100 to 100.",
                param=param,
            )
        pairs.append((int(key), float(bias)))
    return tuple(pairs)


def chat_logprobs_of(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """Chat's `logprobs` / `top_logprobs` -> alternatives per token, or None for none."""
    if top_logprobs is not None and not logprobs:
        raise InvalidRequest(
            "Invalid 'top_logprobs': it may only be set when 'logprobs' is true.",
            param="top_logprobs",
        )
    return (top_logprobs or 0) if logprobs else None


def _only(value: dict[str, Any], allowed: set[str], param: str) -> None:
    for key in value:
        if key not in allowed:
            raise InvalidRequest(f"Unknown parameter: '{param}.{key}'.", param=f"{param}.{key}")


# -- what the answers show ----------------------------------------------------------------------


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs`: `{"content": [...], "refusal": null}`."""
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.bytes),
                "top_logprobs": [
                    {"token": token, "logprob": logprob, "bytes": list(raw)}
                    for token, raw, logprob in t.top
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    """A text completion's `logprobs` (the legacy shape); ``offset``: characters before the
    first token (the echoed prompt, or what earlier chunks showed)."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{token: logprob for token, _, logprob in t.top} for t in tokens],
        "text_offset": offsets,
    }
