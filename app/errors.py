"""One error type for the whole API, rendered in OpenAI's envelope by one set of handlers.

Services raise `APIError` subclasses (never `HTTPException`); FastAPI's own 404/405/422 and any
unexpected exception are turned into the same `{"error": {...}}` shape so clients (the official
SDK first) always see one format, and no stack trace leaves the server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("tuna.errors")


class APIError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers
        if status_code is not None:
            self.status_code = status_code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequest(APIError):
    status_code = 400


class AuthenticationFailed(APIError):
    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")


class NotFound(APIError):
    status_code = 404

    def __init__(self, message: str, *, param: str | None = "id", code: str | None = None):
        super().__init__(message, param=param, code=code)


class PayloadTooLarge(APIError):
    status_code = 413


class RateLimited(APIError):
    status_code = 429
    error_type = "rate_limit_exceeded"


class ServerError(APIError):
    status_code = 500
    error_type = "server_error"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


# A step of an error location that names a member of a union (`str`, `list[str]`, `TextPart`,
# `function-after[...]`) rather than a field: request fields are snake_case names.
_UNION_MEMBER = re.compile(r"str|int|float|bool|bytes|none|[A-Z].*|.*[\[\]-].*")


def _is_union_member(part: Any) -> bool:
    return isinstance(part, str) and _UNION_MEMBER.fullmatch(part) is not None


def _param(loc: Iterable[Any]) -> str | None:
    return ".".join(str(p) for p in loc if p not in ("body", "query", "path")) or None


def _describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    cut = next((i for i, part in enumerate(loc) if _is_union_member(part)), len(loc))
    param = _param(loc[:cut])
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        # Inside a union member the missing key is still the parameter: `content.0.text`.
        whole = _param(part for part in loc if not _is_union_member(part))
        return f"Missing required parameter: '{whole}'.", whole
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request.", None
    if cut < len(loc):
        # A value that fits no member of a union fails once per member (`stop.str`,
        # `stop.list[str]`): the parameter is `stop`, and the message names what it accepts.
        members = dict.fromkeys(
            str(e["loc"][cut])
            for e in errors
            if len(e["loc"]) > cut and e["loc"][:cut] == loc[:cut]
        )
        return f"Invalid type for '{param}': expected one of {', '.join(members)}.", param
    return f"Invalid value for '{param}': {msg}.", param


_STATUS_TYPES = {401: "invalid_request_error", 404: "invalid_request_error"}


class RejectNulBytes:
    """400 for a NUL character in the path or query string, before any handler runs.

    No id, cursor or filter can contain one, and PostgreSQL refuses them in text parameters:
    without this the same request was a 404 on SQLite and a 500 on PostgreSQL.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "")
            or b"%00" in scope.get("query_string", b"")
            or b"\x00" in scope.get("query_string", b"")
        ):
            body = error_body(
                "The request URL contains a NUL character.", "invalid_request_error", None,
                "invalid_url",
            )  # fmt: skip
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(RejectNulBytes)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation_error(exc)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            code: str | None = "unknown_url"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        error_type = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return JSONResponse(
            error_body(message, error_type, None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the schema let through (a NUL character in a JSON
        # string on PostgreSQL, a number beyond a column's range): the request is at fault.
        logger.info("database refused a value on %s %s: %s", request.method, request.url.path, exc)
        message = (
            "The request contains a value that cannot be stored or searched for "
            "(for example a NUL character or a number out of range)."
        )
        return JSONResponse(
            error_body(message, "invalid_request_error", None, "invalid_value"), status_code=400
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("The server had an error while processing your request.", "server_error"),
            status_code=500,
        )
