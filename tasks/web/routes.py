"""The routes: each authenticates, calls one domain function in `pipeline/`, and answers JSON.

Route handlers are plain `def` (their database work is synchronous, so they run in the server's thread
pool); only reading the body is async. Every /v1 read is scoped to the bearer token's account.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from pipeline.api_auth import (
    account_for_token,
    bearer_token,
    check_replay,
    verify_push,
    verify_signature,
)
from pipeline.errors import AuthError, BadInputError
from pipeline.pages import SEARCH_MAX_PAGE, contacts_page, search_page, thread_page, threads_page, windows_page
from pipeline.push import handle_push, parse_push
from pipeline.reports import run_detail
from pipeline.search import make_filters
from pipeline.storage.db import reading
from pipeline.triggers import parse_mode, trigger_sync
from tasks.metrics import exposition
from tasks.syncs import publish_sync
from tasks.web.resources import BROKER_PING_TIMEOUT, Resources


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class TriggerAnswer(BaseModel):
    run_id: int
    account_id: int
    account: str
    status: str = Field(description="The run's status: queued or running.")
    coalesced: bool = Field(description="True when the trigger was answered with a run that already existed.")
    links: dict[str, str]


router = APIRouter()
bearer_scheme = HTTPBearer(auto_error=False, description="An API token: `mailpipe accounts token ACCOUNT`.")
BIGINT = 2**63 - 1
Bearer = Annotated[Any, Depends(bearer_scheme)]  # declares the scheme for /docs; the header is read below

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid credentials", "model": ErrorBody},
    404: {"description": "Unknown, or another account's (the two look the same)", "model": ErrorBody},
    422: {"description": "Malformed request", "model": ErrorBody},
}


def _res(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


async def read_body(request: Request) -> bytes:
    """The request body (the size limit applies while it is read)."""
    return await request.body()


class BearerToken(HTTPBearer):
    """The request's bearer token as a string; 401 (in mailpipe's error body) without one, before any
    parameter is judged malformed. A security scheme itself, so /docs shows it with no dependency of its
    own: each level of dependencies costs FastAPI's solving on every request (docs/PERFORMANCE.md). It
    is async: a synchronous dependency took a trip through the thread pool of its own. The token is
    checked against the database by `_scope` or `_scoped`, in the endpoint's worker thread."""

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise AuthError("missing credentials: send Authorization: Bearer <token>")
        return token


def _scope(request: Request, token: str) -> int:
    """The account the bearer token is scoped to; 401 if it is not a valid token."""
    return account_for_token(_res(request).engine, token)


@contextmanager
def _scoped(request: Request, token: str) -> Iterator[tuple[Connection, int]]:
    """A connection outside any transaction and the token's account, checked on it: a page read after the
    check takes no second connection from the pool (pipeline.storage.db.reading)."""
    with reading(_res(request).engine) as conn:
        yield conn, account_for_token(conn, token)


Body = Annotated[bytes, Depends(read_body)]
# The same scheme as `Bearer` in the OpenAPI document (one name), for the routes that only take a token.
Token = Annotated[str, Depends(BearerToken(auto_error=False, scheme_name="HTTPBearer",
                                           description=bearer_scheme.model.description))]


def _ok(content: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=headers)


# ---------------------------------------------------------------- sync triggers


@router.post(
    "/v1/accounts/{account}/sync", status_code=202, tags=["sync"],
    responses={**_ERRORS, 202: {"description": "The run answering the trigger", "model": TriggerAnswer},
               409: {"description": "Not a Gmail account, or it must be connected again", "model": ErrorBody},
               413: {"description": "Body too large", "model": ErrorBody},
               429: {"description": "Account paused (see Retry-After)", "model": ErrorBody},
               503: {"description": "The broker, Redis or the database is unavailable", "model": ErrorBody}},
)
def trigger(
    request: Request,
    body: Body,
    _bearer: Bearer,
    account: str = Path(description="The account's email address."),
    x_mailpipe_timestamp: str | None = Header(None, description="Signed triggers: unix seconds when signed."),
    x_mailpipe_signature: str | None = Header(
        None, description='Signed triggers: "sha256=" + hex HMAC-SHA256(webhook secret, timestamp + "." + body).'),
) -> JSONResponse:
    """Sync the account now. Answers 202 with the run: a new queued one, or the queued or running run this
    trigger coalesces into (any number of triggers before a sync finishes make one run).

    Optional body: `{"mode": "auto" | "full" | "incremental"}`. Authenticate with a bearer token of this
    account, or sign the request with the account's webhook secret (each signature once, within 5 minutes).
    """
    res = _res(request)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        if x_mailpipe_signature is None and x_mailpipe_timestamp is None:
            raise AuthError("missing credentials: send Authorization: Bearer <token>, or sign the request")
        # Made with this account's own secret, a valid signature authenticates the caller for it.
        verified = verify_signature(res.settings, account, x_mailpipe_timestamp, x_mailpipe_signature, body,
                                    time.time())
        check_replay(res.replay, verified)
    try:
        mode = parse_mode(_json(body) if body.strip() else None)
    except BadInputError:
        if token is not None:
            account_for_token(res.engine, token)  # bad credentials are 401 before a bad body is 422
        raise
    triggered = trigger_sync(
        res.engine, account, publish_sync, token=token, paused_for=res.paused_for, mode=mode,
        queued_stale_seconds=res.settings.sync_queued_stale_seconds,
        running_stale_seconds=res.settings.run_stale_seconds,
    )
    location = f"/v1/runs/{triggered.run_id}"
    return _ok({**triggered.as_dict(), "links": {"run": location}}, 202, {"Location": location})


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise BadInputError("the body is not JSON") from None


@router.post("/v1/gmail/push", tags=["sync"], responses={401: _ERRORS[401], 422: _ERRORS[422]})
def gmail_push(
    request: Request,
    body: Body,
    token: str | None = Query(None, description="The push subscription's secret (MAILPIPE_PUSH_TOKEN)."),
) -> JSONResponse:
    """A Gmail notification pushed by Pub/Sub: queues one sync per burst. An address we do not hold is
    acknowledged (200) and dropped: Pub/Sub would redeliver a refusal forever."""
    res = _res(request)
    verify_push(res.settings, token, request.headers.get("authorization"))
    notice = parse_push(_json(body))
    outcome = handle_push(res.engine, notice, publish_sync,
                          queued_stale_seconds=res.settings.sync_queued_stale_seconds,
                          running_stale_seconds=res.settings.run_stale_seconds)
    return _ok({"status": outcome.status, "run_id": outcome.run_id})


# ---------------------------------------------------------------- runs


@router.get("/v1/runs/{run_id}", tags=["runs"], responses=_ERRORS)
def run(request: Request, token: Token, run_id: int = Path(ge=1, le=BIGINT)) -> JSONResponse:
    """A run's progress: messages through each stage and its windows by state; failures by class."""
    account_id = _scope(request, token)
    return _ok(run_detail(_res(request).engine, run_id, account_id))


@router.get("/v1/runs/{run_id}/windows", tags=["runs"], responses=_ERRORS)
def run_windows(request: Request, token: Token, run_id: int = Path(ge=1, le=BIGINT),
                limit: int = Query(50, ge=1, le=200), cursor: str | None = Query(None)) -> JSONResponse:
    """The run's windows in order, each with its stages' states, a page at a time."""
    with _scoped(request, token) as (conn, account_id):
        page = windows_page(conn, account_id, run_id, limit, cursor)
    return _ok(page.as_dict())


# ---------------------------------------------------------------- reads


@router.get("/v1/search", tags=["mail"], responses=_ERRORS)
def search(
    request: Request,
    token: Token,
    q: str = Query(min_length=1, max_length=1000, description="Words or a question; hybrid semantic + full text."),
    sender: str | None = Query(None, alias="from", description="An address, or words of a sender's name/address."),
    after: str | None = Query(None, description="Sent on or after (YYYY-MM-DD or ISO 8601, UTC)."),
    before: str | None = Query(None, description="Sent before (YYYY-MM-DD or ISO 8601, UTC)."),
    label: Annotated[list[str] | None, Query(description="Has this label (repeat: all of them).")] = None,
    limit: int = Query(10, ge=1, le=SEARCH_MAX_PAGE),
    cursor: str | None = Query(None),
) -> JSONResponse:
    """The best hit per thread. Pages are offsets into a ranking of at most 200 hits (see `pipeline.pages`)."""
    account_id = _scope(request, token)
    res = _res(request)
    filters = make_filters(sender, after, before, label or [])
    return _ok(search_page(res.engine, account_id, q, filters, limit, cursor, res.embedder()).as_dict())


@router.get("/v1/contacts", tags=["mail"], responses=_ERRORS)
def contacts(request: Request, token: Token, limit: int = Query(50, ge=1, le=200),
             cursor: str | None = Query(None)) -> JSONResponse:
    """The people the account corresponds with, ranked by recent two-way traffic."""
    half_life = _res(request).settings.contact_half_life_days
    with _scoped(request, token) as (conn, account_id):
        page = contacts_page(conn, account_id, limit, cursor, half_life)
    return _ok(page.as_dict())


@router.get("/v1/threads", tags=["mail"], responses=_ERRORS)
def threads(request: Request, token: Token, limit: int = Query(50, ge=1, le=200),
            cursor: str | None = Query(None)) -> JSONResponse:
    """The account's threads, latest first, with their insight's category and needs-reply."""
    with _scoped(request, token) as (conn, account_id):
        page = threads_page(conn, account_id, limit, cursor)
    return _ok(page.as_dict())


@router.get("/v1/threads/{thread_id}", tags=["mail"], responses=_ERRORS)
def thread(request: Request, token: Token, thread_id: int = Path(ge=1, le=BIGINT),
           limit: int = Query(50, ge=1, le=200), cursor: str | None = Query(None)) -> JSONResponse:
    """One thread: summary, action items, category, needs-reply, and its messages in date order."""
    with _scoped(request, token) as (conn, account_id):
        page = thread_page(conn, account_id, thread_id, limit, cursor)
    return _ok(page.as_dict())


# ---------------------------------------------------------------- health


def broker_ping() -> None:
    """Connect to the Celery broker (for Redis that is a PING), giving up after a few seconds."""
    from tasks.app import app as celery_app

    with celery_app.connection_for_write(connect_timeout=BROKER_PING_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=BROKER_PING_TIMEOUT)


@router.get("/metrics", tags=["health"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    """mailpipe's metrics for Prometheus (queue depths, stage rates, task latency, errors by class,
    breakers, quota, worker RSS: tasks/metrics.py). Unauthenticated, like /healthz: serve the API behind a
    proxy that keeps /metrics private."""
    res = _res(request)
    body, content_type = exposition(res.engine, res.settings, res.redis_client)
    return Response(content=body, media_type=content_type)


@router.get("/healthz", tags=["health"], responses={503: {"description": "A dependency is down"}})
def healthz(request: Request) -> JSONResponse:
    """Checks the database (SELECT 1) and the broker (a connection and ping); 503 naming what failed."""
    res = _res(request)
    checks: dict[str, str] = {}
    probes: list[tuple[str, Callable[[], object]]] = [("database", res.check_database), ("broker", broker_ping)]
    if res.redis_client is not None and res.settings.redis_url:
        probes.append(("redis", res.redis_client.ping))
    for name, probe in probes:
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]
    failed = [name for name, state in checks.items() if state != "ok"]
    if failed:
        message = "; ".join(f"{name} unreachable ({checks[name]})" for name in failed)
        return _ok({"error": {"code": "unhealthy", "message": message}, "checks": checks}, 503)
    return _ok({"status": "ok", "checks": checks})
