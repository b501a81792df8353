"""The web API against a real `mailpipe serve` (uvicorn in a subprocess) on a loopback port, with the
session's real PostgreSQL and Redis: auth (tokens, signatures, replay), coalescing, tenant isolation,
pagination, push, errors and health."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, func, select, text, update
from typer.testing import CliRunner

from pipeline.accounts import connect_account
from pipeline.api_auth import issue_token, revoke_token, sign, webhook_secret
from pipeline.credentials import OAuthGrant, TokenCipher
from pipeline.pages import SEARCH_MAX_RESULTS
from pipeline.push import start_requested_sync
from pipeline.reports import top_contacts
from pipeline.resilience.quota import budget_for
from pipeline.runs import ensure_account, record_failure
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import SyncRun, Thread
from pipeline.testing.gmail_mailbox import FakeMailbox
from pipeline.testing.gmail_server import Faults, GmailServer, QuotaLedger
from tests.conftest import REDIS_URL, CeleryProcess
from tests.web_support import WebServer, free_port, mail, purge_sync_queue, seed_account, sync_messages

pytestmark = pytest.mark.integration

A, B = "alice@example.com", "bob@example.com"
PUSH_TOKEN = "push-secret-0123456789"
BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def server(mailpipe_env: dict[str, str], redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**mailpipe_env, "MAILPIPE_EMBEDDER": "none", "MAILPIPE_PUSH_TOKEN": PUSH_TOKEN,
           "MAILPIPE_WEB_MAX_BODY_BYTES": str(BODY_LIMIT)}
    web = WebServer(env, tmp_path_factory.mktemp("web") / "server.log").start()
    yield web.base_url
    web.stop()
    purge_sync_queue(REDIS_URL)


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture
def two_tenants(engine: Engine) -> dict[str, Any]:
    """Alice and Bob, each with mail, contacts, threads, a finished import run and a token."""
    purge_sync_queue(REDIS_URL)
    a, a_run = seed_account(engine, A, [
        mail("a1", "Invoice for June", "The invoice for June is attached, alpha.", sender="Ann Lee <ann@example.org>",
             to=A, day=1),
        mail("a2", "Re: Invoice for June", "Thanks, the invoice is paid.", sender=f"Alice <{A}>",
             to="ann@example.org", day=2, reply_to="a1"),
        mail("a3", "Re: Invoice for June", "Great, invoice received.", sender="Ann Lee <ann@example.org>", to=A,
             day=3, reply_to="a2"),
    ])
    b, b_run = seed_account(engine, B, [
        mail("b1", "Invoice zebra secret", "Bob's private invoice about the zebraproject.",
             sender="Zed Secret <zed@secret.example>", to=B, day=4),
    ])
    return {"a": a, "b": b, "a_run": a_run, "b_run": b_run,
            "a_token": issue_token(engine, a, "test").token, "b_token": issue_token(engine, b, "test").token}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    return dict(body["error"])


def signed(email: str, body: bytes = b"", *, at: int | None = None, secret: str | None = None) -> dict[str, str]:
    ts = int(time.time()) if at is None else at
    key = secret or webhook_secret(Settings(), email)
    return {"X-Mailpipe-Timestamp": str(ts), "X-Mailpipe-Signature": sign(key, ts, body)}


def runs_of(engine: Engine, account_id: int) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(
            text("SELECT id, status FROM sync_runs WHERE account_id = :a AND source NOT LIKE 'test:%' ORDER BY id"),
            {"a": account_id})]


# ---------------------------------------------------------------- docs and health


def test_openapi_and_docs_are_served(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    assert {"/v1/accounts/{account}/sync", "/v1/runs/{run_id}", "/v1/gmail/push", "/v1/search", "/v1/contacts",
            "/v1/threads/{thread_id}", "/healthz"} <= set(spec["paths"])
    assert list(spec["components"]["securitySchemes"]) == ["HTTPBearer"]  # one scheme, however it is read
    for path in ("/v1/runs/{run_id}", "/v1/contacts", "/v1/threads/{thread_id}"):
        assert spec["paths"][path]["get"]["security"] == [{"HTTPBearer": []}], path
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_healthz_checks_the_database_and_the_broker(api: httpx.Client) -> None:
    response = api.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_metrics_expose_the_operational_series(api: httpx.Client, engine: Engine,
                                               two_tenants: dict[str, Any]) -> None:
    # A trigger queues a sync: its queue's depth is then at least one (nothing consumes the sync queue here).
    assert api.post(f"/v1/accounts/{A}/sync", headers=bearer(two_tenants["a_token"])).status_code == 202
    response = api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    series = {line.split("{")[0].split(" ")[0] for line in response.text.splitlines() if line and line[0] != "#"}
    assert {"mailpipe_queue_depth", "mailpipe_breaker_state"} <= series, sorted(series)
    depth = [line for line in response.text.splitlines() if line.startswith('mailpipe_queue_depth{queue="sync"}')]
    assert depth and float(depth[0].rsplit(" ", 1)[1]) >= 1, depth


# ---------------------------------------------------------------- triggers: tokens and coalescing


def test_a_token_triggers_a_sync_answered_with_its_queued_run(api: httpx.Client, engine: Engine,
                                                               two_tenants: dict[str, Any]) -> None:
    response = api.post(f"/v1/accounts/{A}/sync", headers=bearer(two_tenants["a_token"]))
    assert response.status_code == 202, response.text
    body = response.json()
    run_id = body["run_id"]
    assert body["status"] == "queued" and body["coalesced"] is False and body["account"] == A
    assert response.headers["location"] == f"/v1/runs/{run_id}"
    assert runs_of(engine, two_tenants["a"]) == [(run_id, "queued")]
    assert sync_messages(REDIS_URL) == [[two_tenants["a"]]]  # the task, published once, after the commit
    # The queued run is readable at once.
    run = api.get(f"/v1/runs/{run_id}", headers=bearer(two_tenants["a_token"])).json()
    assert run["run_id"] == run_id and run["status"] == "queued" and run["failures"]["total"] == 0

    # Started (the sync task adopts it), a trigger joins the running run; once it is over, a new one is queued.
    assert start_requested_sync(engine, two_tenants["a"]) == (run_id, "auto")
    again = api.post(f"/v1/accounts/{A}/sync", headers=bearer(two_tenants["a_token"])).json()
    assert (again["run_id"], again["status"], again["coalesced"]) == (run_id, "running", True)
    with transaction(engine) as s:
        s.execute(update(SyncRun).where(SyncRun.id == run_id).values(status="done"))
    fresh = api.post(f"/v1/accounts/{A}/sync", headers=bearer(two_tenants["a_token"]), json={"mode": "full"}).json()
    assert fresh["run_id"] != run_id and fresh["status"] == "queued"
    assert runs_of(engine, two_tenants["a"]) == [(run_id, "done"), (fresh["run_id"], "queued")]
    with engine.connect() as conn:
        assert conn.execute(select(SyncRun.mode).where(SyncRun.id == fresh["run_id"])).scalar() == "full"


def test_a_thousand_concurrent_triggers_make_exactly_one_run(server: str, engine: Engine,
                                                             two_tenants: dict[str, Any]) -> None:
    headers = bearer(two_tenants["a_token"])
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with httpx.Client(base_url=server, timeout=60, limits=limits) as client, ThreadPoolExecutor(32) as pool:
        started = time.monotonic()
        responses = list(pool.map(lambda _: client.post(f"/v1/accounts/{A}/sync", headers=headers), range(1000)))
        seconds = time.monotonic() - started
    assert [r.status_code for r in responses] == [202] * 1000
    run_ids = {r.json()["run_id"] for r in responses}
    assert len(run_ids) == 1
    assert sum(1 for r in responses if not r.json()["coalesced"]) == 1
    assert runs_of(engine, two_tenants["a"]) == [(run_ids.pop(), "queued")]
    assert sync_messages(REDIS_URL) == [[two_tenants["a"]]]
    print(f"1000 triggers in {seconds:.2f} s ({1000 / seconds:.0f}/s)")


# ---------------------------------------------------------------- signed triggers


def test_a_signed_trigger_is_accepted_once_within_the_tolerance(api: httpx.Client, engine: Engine,
                                                                 two_tenants: dict[str, Any]) -> None:
    body = b'{"mode": "auto"}'
    headers = signed(A, body)
    first = api.post(f"/v1/accounts/{A}/sync", content=body, headers=headers)
    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    # The same signature again is a replay, whatever the body's fate.
    assert "already used" in assert_error(api.post(f"/v1/accounts/{A}/sync", content=body, headers=headers),
                                          401, "unauthorized")["message"]
    # Its memory expires with the timestamp's tolerance (5 minutes), in Redis (the broker here).
    client = redis.Redis.from_url(REDIS_URL)
    ttls = [client.pttl(k) for k in client.scan_iter("mailpipe:seen-signature:*")]
    client.close()
    assert ttls and all(0 < t <= 302_000 for t in ttls)
    # A newly signed request (another timestamp) coalesces into the same run.
    later = api.post(f"/v1/accounts/{A}/sync", content=body, headers=signed(A, body, at=int(time.time()) + 1))
    assert later.status_code == 202 and later.json()["run_id"] == run_id and later.json()["coalesced"]

    now = int(time.time())
    refused = {
        "expired": signed(A, body, at=now - 301),
        # int() drops up to a second and the requests before it take time: +301 could arrive 299.9 s
        # ahead on a loaded machine (it did, once) and be accepted. Well past the tolerance instead.
        "from the future": signed(A, body, at=now + 330),
        "another body": signed(A, b'{"mode": "full"}', at=now - 5),
        "another account's secret": signed(A, body, at=now - 6, secret=webhook_secret(Settings(), B)),
        "made with a guess": signed(A, body, at=now - 7, secret="mpw_guess"),
        "no signature": {"X-Mailpipe-Timestamp": str(now)},
        "no timestamp": {"X-Mailpipe-Signature": signed(A, body)["X-Mailpipe-Signature"]},
        "not sha256": {"X-Mailpipe-Timestamp": str(now),
                       "X-Mailpipe-Signature": "sha1=" + signed(A, body)["X-Mailpipe-Signature"][7:]},
        "not a number": {"X-Mailpipe-Timestamp": "yesterday", "X-Mailpipe-Signature": "sha256=00"},
    }
    for why, bad in refused.items():
        response = api.post(f"/v1/accounts/{A}/sync", content=body, headers=bad)
        assert response.status_code == 401, (why, response.text)
        assert response.json()["error"]["code"] == "unauthorized", why
    # Bob's signature is worthless on Alice's URL and the reverse: the secret is per account.
    assert api.post(f"/v1/accounts/{B}/sync", content=body, headers=signed(A, body, at=now - 8)).status_code == 401
    assert runs_of(engine, two_tenants["a"]) == [(run_id, "queued")]
    assert runs_of(engine, two_tenants["b"]) == []


# ---------------------------------------------------------------- auth and tenant isolation


def test_missing_or_bad_credentials_are_401_on_every_route(api: httpx.Client, engine: Engine,
                                                             two_tenants: dict[str, Any]) -> None:
    revoked = issue_token(engine, two_tenants["a"], "old")
    assert revoke_token(engine, two_tenants["a"], revoked.id)
    routes = [("POST", f"/v1/accounts/{A}/sync"), ("GET", f"/v1/runs/{two_tenants['a_run']}"),
              ("GET", f"/v1/runs/{two_tenants['a_run']}/windows"), ("GET", "/v1/search?q=invoice"),
              ("GET", "/v1/contacts"), ("GET", "/v1/threads"), ("GET", "/v1/threads/1")]
    for headers in ({}, bearer("mpt_not-a-real-token"), bearer(revoked.token), {"Authorization": "Basic YTpi"},
                    bearer(two_tenants["a_token"] + "x")):
        for method, path in routes:
            response = api.request(method, path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        # Bad credentials are reported before a malformed body.
        assert_error(api.post(f"/v1/accounts/{A}/sync", headers=headers, content=b"not json"), 401, "unauthorized")
    # Missing credentials, before malformed parameters.
    for path in ("/v1/contacts?limit=0", "/v1/threads?cursor=bad", "/v1/threads/0", "/v1/runs/0/windows"):
        assert_error(api.get(path), 401, "unauthorized")
    assert runs_of(engine, two_tenants["a"]) == []


def test_one_accounts_token_never_reaches_anothers_data(api: httpx.Client, engine: Engine,
                                                        two_tenants: dict[str, Any]) -> None:
    alice = bearer(two_tenants["a_token"])
    b_run = two_tenants["b_run"]
    with engine.connect() as conn:
        b_thread = conn.execute(select(Thread.id).where(Thread.account_id == two_tenants["b"])).scalar_one()
        missing_run = conn.execute(select(func.max(SyncRun.id))).scalar_one() + 1000
        missing_thread = b_thread + 1000
    # Another tenant's account, run, windows and thread look exactly like ones that do not exist.
    pairs = [(f"/v1/accounts/{B}/sync", "/v1/accounts/nobody@example.com/sync", "POST"),
             (f"/v1/runs/{b_run}", f"/v1/runs/{missing_run}", "GET"),
             (f"/v1/runs/{b_run}/windows", f"/v1/runs/{missing_run}/windows", "GET"),
             (f"/v1/threads/{b_thread}", f"/v1/threads/{missing_thread}", "GET")]
    for foreign, missing, method in pairs:
        got_foreign = api.request(method, foreign, headers=alice)
        got_missing = api.request(method, missing, headers=alice)
        assert_error(got_foreign, 404, "not_found")
        assert got_foreign.json() == got_missing.json()
    assert runs_of(engine, two_tenants["b"]) == []
    # Reads return Alice's mail only: Bob's invoice matches the query but is not hers.
    hits = api.get("/v1/search", params={"q": "invoice", "limit": 50}, headers=alice).json()["items"]
    assert hits and all("zebra" not in json.dumps(h).lower() for h in hits)
    assert api.get("/v1/search", params={"q": "zebraproject"}, headers=alice).json()["items"] == []
    assert [h["subject"] for h in api.get("/v1/search", params={"q": "zebraproject"},
                                          headers=bearer(two_tenants["b_token"])).json()["items"]] == [
        "Invoice zebra secret"]
    contacts = api.get("/v1/contacts", headers=alice).json()["items"]
    assert [c["email"] for c in contacts] == ["ann@example.org"]
    threads = api.get("/v1/threads", headers=alice).json()["items"]
    assert threads and b_thread not in {t["id"] for t in threads}
    own = api.get(f"/v1/runs/{two_tenants['a_run']}", headers=alice)
    assert own.status_code == 200 and own.json()["run_id"] == two_tenants["a_run"]


# ---------------------------------------------------------------- other errors


def test_paused_account_is_429_with_retry_after(api: httpx.Client, engine: Engine,
                                                two_tenants: dict[str, Any]) -> None:
    budget = budget_for(Settings(), engine)
    key = f"account:{two_tenants['a']}"
    budget.pause(key, time.time() + 30)
    try:
        response = api.post(f"/v1/accounts/{A}/sync", headers=bearer(two_tenants["a_token"]))
        assert_error(response, 429, "account_paused")
        assert 25 <= int(response.headers["retry-after"]) <= 30
        assert runs_of(engine, two_tenants["a"]) == []
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        client.delete("mailpipe:quota:" + key)
        client.close()
    assert api.post(f"/v1/accounts/{A}/sync", headers=bearer(two_tenants["a_token"])).status_code == 202


def test_an_oversized_body_is_413_declared_or_streamed(api: httpx.Client, engine: Engine,
                                                       two_tenants: dict[str, Any]) -> None:
    big = b"{" + b" " * BODY_LIMIT + b"}"
    headers = bearer(two_tenants["a_token"])
    assert_error(api.post(f"/v1/accounts/{A}/sync", content=big, headers=headers), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: caught while reading
        for _ in range(10):
            yield b" " * 1024

    response = api.post(f"/v1/accounts/{A}/sync", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert_error(api.post(f"/v1/gmail/push?token={PUSH_TOKEN}", content=big), 413, "payload_too_large")
    assert runs_of(engine, two_tenants["a"]) == []


def test_malformed_requests_are_422(api: httpx.Client, two_tenants: dict[str, Any]) -> None:
    alice = bearer(two_tenants["a_token"])
    cases = [
        ("POST", f"/v1/accounts/{A}/sync", {"content": b"not json"}),
        ("POST", f"/v1/accounts/{A}/sync", {"json": {"mode": "sideways"}}),
        ("POST", f"/v1/accounts/{A}/sync", {"json": ["auto"]}),
        ("GET", "/v1/search", {}),
        ("GET", "/v1/search", {"params": {"q": "invoice", "after": "last tuesday"}}),
        ("GET", "/v1/search", {"params": {"q": "invoice", "after": "2026-06-02", "before": "2026-06-01"}}),
        ("GET", "/v1/search", {"params": {"q": "invoice", "limit": 0}}),
        ("GET", "/v1/search", {"params": {"q": "invoice", "cursor": "garbage!"}}),
        ("GET", "/v1/contacts", {"params": {"limit": 1000}}),
        ("GET", "/v1/contacts", {"params": {"cursor": "eyJrIjoidGhyZWFkcyIsInYiOlsxLDJdfQ"}}),  # a threads cursor
        ("GET", "/v1/threads/abc", {}),
        ("GET", "/v1/runs/0", {}),
    ]
    for method, path, kwargs in cases:
        response = api.request(method, path, headers=alice, **kwargs)
        assert_error(response, 422, "invalid_request")
    assert_error(api.post(f"/v1/gmail/push?token={PUSH_TOKEN}", content=b"{}"), 422, "invalid_request")
    assert_error(api.post(f"/v1/gmail/push?token={PUSH_TOKEN}", content=b"[1"), 422, "invalid_request")
    assert_error(api.get("/v1/nothing-here"), 404, "not_found")


def test_a_mailbox_file_account_is_not_syncable(api: httpx.Client, engine: Engine) -> None:
    account = ensure_account(engine, "files@example.com", [], kind="mbox")
    token = issue_token(engine, account).token
    assert_error(api.post("/v1/accounts/files@example.com/sync", headers=bearer(token)), 409, "not_syncable")


# ---------------------------------------------------------------- pages


def _all_pages(api: httpx.Client, path: str, headers: dict[str, str], **params: Any) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        response = api.get(path, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        assert body["has_more"] == (body["next_cursor"] is not None)
        if not body["has_more"]:
            return pages
        cursor = body["next_cursor"]


def test_keyset_pages_of_contacts_threads_and_messages(api: httpx.Client, engine: Engine) -> None:
    me = "carol@example.com"
    raws = [mail(f"c{i}", f"Topic {i}", f"Message number {i}.", sender=f"Person {i} <p{i}@corp{i}.example>", to=me,
                 day=1 + i) for i in range(7)]
    raws += [mail(f"t{i}", "Long thread", f"Reply {i} in the long thread.", sender="Pat <pat@corp.example>", to=me,
                  day=10, hour=i, reply_to=f"t{i - 1}" if i else None) for i in range(5)]
    account, _ = seed_account(engine, me, raws)
    headers = bearer(issue_token(engine, account).token)

    pages = _all_pages(api, "/v1/contacts", headers, limit=3)
    assert [len(p) for p in pages] == [3, 3, 2]
    emails = [c["email"] for p in pages for c in p]
    assert emails == [c.email for c in top_contacts(engine, account, 100, Settings().contact_half_life_days)]
    assert len(set(emails)) == 8

    pages = _all_pages(api, "/v1/threads", headers, limit=3)
    threads = [t for p in pages for t in p]
    assert [len(p) for p in pages] == [3, 3, 2] and len({t["id"] for t in threads}) == 8
    assert [t["last_at"] for t in threads] == sorted((t["last_at"] for t in threads), reverse=True)

    long_id = next(t["id"] for t in threads if t["subject"] == "Long thread")
    first = api.get(f"/v1/threads/{long_id}", headers=headers, params={"limit": 2}).json()
    assert first["subject"] == "Long thread" and first["message_count"] == 5 and first["insight"] is not None
    pages = _all_pages(api, f"/v1/threads/{long_id}", headers, limit=2)
    assert [m["text"].strip() for p in pages for m in p] == [f"Reply {i} in the long thread." for i in range(5)]
    assert [len(p) for p in pages] == [2, 2, 1]
    # A cursor belongs to its list: one of this thread's is refused for another thread.
    other = next(t["id"] for t in threads if t["id"] != long_id)
    assert_error(api.get(f"/v1/threads/{other}", headers=headers, params={"cursor": first["next_cursor"]}),
                 422, "invalid_request")


def test_search_pages_are_offsets_into_a_bounded_ranking(api: httpx.Client, engine: Engine) -> None:
    me = "dave@example.com"
    raws = [mail(f"s{i}", f"Budget review {i}", f"The budget review number {i} needs your numbers.",
                 sender=f"Boss {i} <boss{i}@corp.example>", to=me, day=1 + i) for i in range(7)]
    account, _ = seed_account(engine, me, raws)
    headers = bearer(issue_token(engine, account).token)
    whole = api.get("/v1/search", params={"q": "budget review", "limit": 50}, headers=headers).json()
    assert len(whole["items"]) == 7 and whole["has_more"] is False and whole["next_cursor"] is None
    pages = _all_pages(api, "/v1/search", headers, q="budget review", limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [h["message_id"] for p in pages for h in p] == [h["message_id"] for h in whole["items"]]
    # Filters narrow it, and a cursor is tied to its query and filters.
    filtered = api.get("/v1/search", params={"q": "budget review", "from": "boss3@corp.example"}, headers=headers)
    assert [h["subject"] for h in filtered.json()["items"]] == ["Budget review 3"]
    first = api.get("/v1/search", params={"q": "budget review", "limit": 3}, headers=headers).json()
    assert_error(api.get("/v1/search", params={"q": "numbers", "limit": 3, "cursor": first["next_cursor"]},
                         headers=headers), 422, "invalid_request")
    assert SEARCH_MAX_RESULTS == 200


def test_run_progress_shows_stages_windows_and_failures_by_class(api: httpx.Client, engine: Engine,
                                                                 two_tenants: dict[str, Any]) -> None:
    run_id = two_tenants["a_run"]
    with transaction(engine) as s:
        window_id = s.execute(text("SELECT id FROM windows WHERE run_id = :r"), {"r": run_id}).scalar_one()
        record_failure(s, two_tenants["a"], run_id, window_id, "offset:x:9", "ingest", "parse", "unreadable")
        record_failure(s, two_tenants["a"], run_id, window_id, "offset:x:8", "ingest", "gone", "deleted")
    run = api.get(f"/v1/runs/{run_id}", headers=bearer(two_tenants["a_token"])).json()
    assert run["status"] == "done" and run["windows"] == 1 and run["windows_finished"] == 1
    assert run["stages"]["normalize"] == {"messages_done": 3, "failed_windows": 0, "windows": {"done": 1}}
    assert run["failures"] == {"total": 2, "by_class": {"parse": 1, "gone": 1},
                               "by_stage": {"ingest": {"parse": 1, "gone": 1}}}
    windows = api.get(f"/v1/runs/{run_id}/windows", headers=bearer(two_tenants["a_token"])).json()
    assert windows["has_more"] is False and [w["seq"] for w in windows["items"]] == [0]
    assert windows["items"][0]["stages"] == {"ingest": "done", "normalize": "done", "contacts": "done",
                                             "embed": "done", "insight": "done"}


# ---------------------------------------------------------------- Gmail push


def _push(email: str, history_id: int) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"emailAddress": email, "historyId": history_id}).encode()).decode()
    return {"message": {"data": data, "messageId": "1"}, "subscription": "projects/p/subscriptions/s"}


def test_push_is_verified_by_its_token_and_handed_to_the_coalescing_sync(api: httpx.Client, engine: Engine,
                                                                         two_tenants: dict[str, Any]) -> None:
    assert_error(api.post("/v1/gmail/push", json=_push(A, 10)), 401, "unauthorized")
    assert_error(api.post("/v1/gmail/push?token=wrong", json=_push(A, 10)), 401, "unauthorized")
    assert runs_of(engine, two_tenants["a"]) == []
    # An address we do not hold is acknowledged (Pub/Sub would redeliver a refusal forever).
    unknown = api.post(f"/v1/gmail/push?token={PUSH_TOKEN}", json=_push("stranger@example.com", 10))
    assert unknown.status_code == 200 and unknown.json() == {"status": "unknown_account", "run_id": None}
    first = api.post(f"/v1/gmail/push?token={PUSH_TOKEN}", json=_push(A, 10)).json()
    assert first["status"] == "queued" and runs_of(engine, two_tenants["a"]) == [(first["run_id"], "queued")]
    burst = [api.post(f"/v1/gmail/push?token={PUSH_TOKEN}", json=_push(A, 11 + i)).json() for i in range(5)]
    assert {(b["status"], b["run_id"]) for b in burst} == {("coalesced", first["run_id"])}
    assert sync_messages(REDIS_URL) == [[two_tenants["a"]]]
    # A web trigger coalesces into the run the push queued.
    trig = api.post(f"/v1/accounts/{A}/sync", headers=bearer(two_tenants["a_token"])).json()
    assert trig["run_id"] == first["run_id"] and trig["coalesced"]


# ---------------------------------------------------------------- the CLI's token


def test_a_token_made_by_the_cli_reads_its_account(api: httpx.Client, engine: Engine,
                                                   two_tenants: dict[str, Any]) -> None:
    from tasks.cli import app

    result = CliRunner().invoke(app, ["accounts", "token", A, "--name", "ci", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["account"] == A and made["token"].startswith("mpt_") and made["name"] == "ci"
    with engine.connect() as conn:  # only the hash is stored
        stored = conn.execute(text("SELECT token_hash, prefix FROM api_tokens WHERE id = :i"), {"i": made["id"]}).one()
    assert made["token"].encode() not in bytes(stored[0]) and made["token"].startswith(stored[1])
    assert api.get("/v1/contacts", headers=bearer(made["token"])).status_code == 200
    listed = CliRunner().invoke(app, ["accounts", "tokens", A, "--json"])
    assert made["id"] in [t["id"] for t in json.loads(listed.stdout)["tokens"]]
    assert CliRunner().invoke(app, ["accounts", "revoke-token", A, str(made["id"])]).exit_code == 0
    assert_error(api.get("/v1/contacts", headers=bearer(made["token"])), 401, "unauthorized")
    secret = CliRunner().invoke(app, ["accounts", "webhook-secret", A, "--json"])
    assert json.loads(secret.stdout)["secret"] == webhook_secret(Settings(), A)


# ---------------------------------------------------------------- a server whose broker is down


AUDIENCE = "https://mailpipe.example/v1/gmail/push"


@pytest.fixture(scope="module")
def push_keys() -> Iterator[dict[str, Any]]:
    """An RSA key whose public half a loopback server publishes as OIDC signing certificates (as Google's
    https://www.googleapis.com/oauth2/v1/certs does), and a second key nobody publishes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def pem(key: Any) -> tuple[str, str]:
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return private, public

    good_private, good_public = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    bad_private, _ = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    certs = json.dumps({"k1": good_public}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(certs)))
            self.end_headers()
            self.wfile.write(certs)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}/certs", "good": good_private, "bad": bad_private}
    httpd.shutdown()


def oidc_token(private_pem: str, audience: str, *, expires_in: int = 600) -> str:
    from google.auth import crypt, jwt

    now = int(time.time())
    payload = {"iss": "https://accounts.google.com", "aud": audience, "iat": now, "exp": now + expires_in,
               "email": "pubsub@project.iam.gserviceaccount.com", "email_verified": True}
    return jwt.encode(crypt.RSASigner.from_string(private_pem, "k1"), payload).decode()


@pytest.fixture(scope="module")
def broken_broker(mailpipe_env: dict[str, str], push_keys: dict[str, Any],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose broker cannot be reached (Redis for shared state can), and whose push endpoint
    checks Pub/Sub's OIDC token against the certificates server."""
    env = {**mailpipe_env, "MAILPIPE_EMBEDDER": "none", "MAILPIPE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
           "MAILPIPE_REDIS_URL": REDIS_URL, "MAILPIPE_PUSH_TOKEN": PUSH_TOKEN, "MAILPIPE_PUSH_AUDIENCE": AUDIENCE,
           "MAILPIPE_PUSH_JWT_CERTS_URL": push_keys["url"]}
    web = WebServer(env, tmp_path_factory.mktemp("web-broken") / "server.log").start()
    yield web.base_url
    web.stop()


def test_healthz_fails_naming_the_broker_when_it_is_unreachable(broken_broker: str, engine: Engine) -> None:
    account = ensure_account(engine, A, [], kind="gmail")
    token = issue_token(engine, account).token
    with httpx.Client(base_url=broken_broker, timeout=30) as api:
        started = time.monotonic()
        response = api.get("/healthz")
        assert time.monotonic() - started < 10
        error = assert_error(response, 503, "unhealthy")
        assert "broker" in error["message"] and "database" not in error["message"]
        assert response.json()["checks"]["database"] == "ok" and response.json()["checks"]["redis"] == "ok"
        # The trigger's run is queued, its task cannot be published: 503, and the run says why.
        started = time.monotonic()
        assert_error(api.post(f"/v1/accounts/{A}/sync", headers=bearer(token)), 503, "broker_unavailable")
        assert time.monotonic() - started < 10
    assert [status for _, status in runs_of(engine, account)] == ["abandoned"]
    with engine.connect() as conn:
        assert "could not be queued" in conn.execute(select(SyncRun.error).where(SyncRun.account_id == account)
                                                     ).scalar_one()


def test_push_checks_the_oidc_token_with_the_configured_certificates(broken_broker: str,
                                                                     push_keys: dict[str, Any]) -> None:
    url = f"/v1/gmail/push?token={PUSH_TOKEN}"
    body = _push("stranger@example.com", 10)  # acknowledged without publishing anything
    with httpx.Client(base_url=broken_broker, timeout=30) as api:
        good = api.post(url, json=body, headers=bearer(oidc_token(push_keys["good"], AUDIENCE)))
        assert good.status_code == 200 and good.json()["status"] == "unknown_account"
        refused = {
            "no OIDC token": {},
            "another audience": bearer(oidc_token(push_keys["good"], "https://elsewhere.example/push")),
            "signed by an unknown key": bearer(oidc_token(push_keys["bad"], AUDIENCE)),
            "expired": bearer(oidc_token(push_keys["good"], AUDIENCE, expires_in=-3600)),
            "not a JWT": bearer("abc.def.ghi"),
        }
        for why, headers in refused.items():
            assert api.post(url, json=body, headers=headers).status_code == 401, why
        # The ?token= secret is still required with a valid OIDC token.
        assert api.post("/v1/gmail/push?token=nope", json=body,
                        headers=bearer(oidc_token(push_keys["good"], AUDIENCE))).status_code == 401


# ---------------------------------------------------------------- end to end: the sync task adopts the run


def test_the_triggered_run_is_the_one_the_sync_worker_runs(server: str, engine: Engine, mailpipe_env: dict[str, str],
                                                           gmail_server: GmailServer, sample_mbox: Path,
                                                           tmp_path: Path) -> None:
    """The run id answered at trigger time is the run the `sync` worker drives to the end."""
    email = "me@example.com"
    gmail_server.mailboxes = {email: FakeMailbox.from_mbox(email, sample_mbox)}
    gmail_server.faults = Faults()
    gmail_server.quota = QuotaLedger(None)
    grant = OAuthGrant(refresh_token=gmail_server.issue_refresh_token(email), client_id="cid", client_secret="s",
                       token_uri=gmail_server.token_uri)
    account = connect_account(engine, TokenCipher.from_settings(Settings()), email, grant)
    token = issue_token(engine, account).token
    purge_sync_queue(REDIS_URL)
    worker = CeleryProcess(["worker", "-Q", "sync,ingest,normalize,ai", "-c", "2", "--pool", "prefork", "-l", "INFO",
                            "-n", f"web-e2e-{time.time_ns()}@%h", "--without-gossip", "--without-mingle"],
                           {**mailpipe_env, "MAILPIPE_EMBEDDER": "none"}, tmp_path / "worker.log", ready="ready.")
    with httpx.Client(base_url=server, timeout=30) as api:
        triggered = api.post(f"/v1/accounts/{email}/sync", headers=bearer(token)).json()
        run_id = triggered["run_id"]
        assert triggered["status"] == "queued"
        worker.start()
        try:
            deadline = time.monotonic() + 120
            run: dict[str, Any] = {}
            while time.monotonic() < deadline:
                run = api.get(f"/v1/runs/{run_id}", headers=bearer(token)).json()
                if run["status"] not in ("queued", "running"):
                    break
                time.sleep(0.5)
        finally:
            worker.stop()
        assert run["status"] == "done", (run, (tmp_path / "worker.log").read_text()[-3000:])
        held = len(gmail_server.mailbox(email).ids())
        # The sample holds one message twice (same Message-ID): stored once.
        assert run["mode"] == "full" and run["entries"] == held and run["failures"]["total"] == 0
        assert (run["new_messages"], run["duplicates"]) == (held - 1, 1)
        assert run["stages"]["contacts"]["messages_done"] == held
        assert runs_of(engine, account) == [(run_id, "done")]  # adopted: no second run was made
        hits = api.get("/v1/search", params={"q": "invoice"}, headers=bearer(token)).json()["items"]
        assert hits and all(h["thread_id"] for h in hits)
