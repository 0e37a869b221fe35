"""Every API error is a catalog entry as JSON: ``{code, message, causes, actions, ...}``.

Unexpected exceptions become InternalError with a reference that is also in the
log next to the traceback; the response never carries the traceback itself.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kluis.catalog import KluisError

log = logging.getLogger("kluis.vault")


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def error_body(exc: KluisError) -> dict[str, Any]:
    """The JSON body of an error: the catalog dict plus its parameters (so clients can rebuild it)."""
    body = exc.to_dict()
    body["params"] = {k: _json_safe(v) for k, v in exc.params.items()}
    if exc.detail:
        body["detail"] = exc.detail
    return body


def error_response(exc: KluisError, status: int | None = None) -> JSONResponse:
    """A JSON response for a catalog error, with the entry's HTTP status unless overridden."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == "AuthTokenInvalid" else None
    return JSONResponse(error_body(exc), status_code=status or exc.entry.http_status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is malformed"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a catalog JSON body."""

    @app.exception_handler(KluisError)
    async def _kluis(_request: Request, exc: KluisError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(KluisError("ValidationFailed", reason=_describe_validation(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(KluisError("ResourceNotFound", kind="path", name=request.url.path))
        if exc.status_code == 405:
            reason = f"{request.method} is not allowed on {request.url.path}"
            return error_response(KluisError("ValidationFailed", reason=reason), status=405)
        reason = str(exc.detail) if exc.detail else f"HTTP {exc.status_code}"
        return error_response(KluisError("ValidationFailed", reason=reason), status=exc.status_code)

    app.add_middleware(CatchAll)


class CatchAll:
    """Turns an unexpected exception into InternalError (logged with a reference) and ends there.

    A plain ``Exception`` handler would sit in Starlette's outermost middleware, which
    re-raises after answering and makes the server drop the connection; this one answers
    and is done.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            ref = secrets.token_hex(6)
            log.error("internal error %s on %s %s", ref, scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise  # half a response is out; only closing the connection is left
            await error_response(KluisError("InternalError", ref=ref))(scope, receive, send)
