"""The FastAPI app: the factory, JSON errors and the request-body limit.

`create_app()` builds one app per server process (uvicorn calls it in each worker): one engine, one
Redis client, Celery's producer pool reused for every publish. Every error is a JSON body
`{"error": {"code": ..., "message": ...}}` with its status: 401 bad or missing credentials, 404
unknown (another tenant's looks the same), 409 not syncable, 413 body too large, 422 malformed,
429 account paused (with Retry-After), 503 a dependency down.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import (
    AccountPausedError,
    AuthError,
    BadInputError,
    ConfigError,
    MailpipeError,
    NotFoundError,
    NotSyncableError,
    RunConflictError,
    TooLargeError,
)
from pipeline.settings import Settings, get_settings
from tasks import context
from tasks.web.resources import Resources
from tasks.web.routes import router

log = logging.getLogger(__name__)

# Most specific first.
_STATUS: list[tuple[type[MailpipeError], int, str]] = [
    (AuthError, 401, "unauthorized"),
    (NotFoundError, 404, "not_found"),
    (TooLargeError, 413, "payload_too_large"),
    (AccountPausedError, 429, "account_paused"),
    (NotSyncableError, 409, "not_syncable"),
    (RunConflictError, 409, "conflict"),
    (BadInputError, 422, "invalid_request"),
    (ConfigError, 503, "not_configured"),
]
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status_code=status, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="mailpipe",
        version="1",
        description="Sync triggers, run progress, search, contacts and threads of one account per API token. "
        "Authenticate with `Authorization: Bearer <token>` (`mailpipe accounts token ACCOUNT`); sync triggers "
        "may instead be signed (X-Mailpipe-Timestamp, X-Mailpipe-Signature).",
    )
    app.state.resources = Resources.build(settings, context.resolved_database_url())
    app.add_middleware(BodyLimit, limit=settings.web_max_body_bytes)  # type: ignore[arg-type]
    _install_error_handlers(app)
    app.include_router(router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MailpipeError)
    async def _mailpipe(_: Request, exc: MailpipeError) -> JSONResponse:
        for cls, status, code in _STATUS:
            if isinstance(exc, cls):
                headers: dict[str, str] = {}
                if status == 401:
                    headers["WWW-Authenticate"] = "Bearer"
                if isinstance(exc, AccountPausedError):
                    headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
                return error_response(status, code, str(exc), headers)
        log.exception("unexpected mailpipe error", exc_info=exc)
        return error_response(500, "internal", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('query', 'path', 'header', 'body'))}: "
            f"{e.get('msg', 'invalid')}" for e in exc.errors()
        )
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(kombu.exceptions.OperationalError)
    async def _broker(_: Request, exc: Exception) -> JSONResponse:
        log.warning("broker unavailable: %s", exc)
        return error_response(503, "broker_unavailable", f"the task broker is unavailable: {exc}",
                              {"Retry-After": "5"})

    @app.exception_handler(redis.RedisError)
    async def _redis(_: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return error_response(503, "redis_unavailable", f"Redis is unavailable: {exc}", {"Retry-After": "5"})

    @app.exception_handler(OperationalError)
    async def _database(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return error_response(503, "database_unavailable", "the database is unavailable", {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """Refuse bodies over `limit` bytes: at once from Content-Length, else (chunked, or a lying length) as
    soon as the bytes read pass it, which raises TooLargeError inside the route (413)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise TooLargeError(f"the request body is over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {"code": "payload_too_large",
                                     "message": f"the request body is over {self.limit} bytes"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
