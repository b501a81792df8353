"""Error classes of real exceptions (Gmail, OpenAI, databases, the OS), and the backoff they get."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httplib2
import httpx2
import openai
import psycopg
import pytest
import sqlalchemy.exc as sa_exc
from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.errors import HttpError

from pipeline.errors import ParseError
from pipeline.resilience.classify import (
    AUTH,
    ERROR_CLASSES,
    GONE,
    PERMANENT,
    POLICIES,
    QUOTA,
    RATE_LIMIT,
    TIMEOUT,
    TRANSIENT,
    ClassifiedError,
    backoff_seconds,
    classify,
    gmail_error_class,
    http_error_parts,
    is_retried,
    openai_error_class,
    outage_backoff_seconds,
)
from pipeline.testing.openai_server import Faults, OpenAIServer

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------- Gmail

GMAIL_TABLE = [
    (429, "rateLimitExceeded", "Rate Limit Exceeded", RATE_LIMIT),
    (403, "userRateLimitExceeded", "User-rate limit exceeded.  Retry after 2026-01-01T00:00:00.000Z", RATE_LIMIT),
    (403, "rateLimitExceeded", "Rate Limit Exceeded", RATE_LIMIT),
    (429, "", "", RATE_LIMIT),
    (403, "dailyLimitExceeded", "Daily Limit Exceeded. The quota will be reset at midnight Pacific Time (PT).", QUOTA),
    (403, "quotaExceeded", "Quota exceeded", QUOTA),
    (403, "", "Daily Limit Exceeded", QUOTA),
    (500, "backendError", "Backend Error", TRANSIENT),
    (502, "", "Bad Gateway", TRANSIENT),
    (503, "backendError", "The service is currently unavailable.", TRANSIENT),
    (504, "", "Gateway Timeout", TRANSIENT),
    (401, "authError", "Request had invalid authentication credentials.", AUTH),
    (400, "invalid_grant", "Token has been expired or revoked.", AUTH),
    (404, "notFound", "Requested entity was not found.", GONE),
    (403, "domainPolicy", "The domain administrators have disabled Gmail apps.", PERMANENT),
    (403, "insufficientPermissions", "Insufficient Permission", PERMANENT),
    (400, "failedPrecondition", "Mail service not enabled", PERMANENT),
    (400, "invalidArgument", "Invalid label: Label_9", PERMANENT),
    (403, "forbidden", "Delegation denied for me@example.com", PERMANENT),
]


@pytest.mark.parametrize(("status", "reason", "message", "expected"), GMAIL_TABLE)
def test_gmail_error_class_table(status: int, reason: str, message: str, expected: str) -> None:
    assert gmail_error_class(status, reason, message) == expected


def google_http_error(status: int, reason: str, message: str, domain: str = "global") -> HttpError:
    """An HttpError as googleapiclient raises it: httplib2's response and Google's error JSON."""
    body = {"error": {"code": status, "message": message, "errors": [{"message": message, "domain": domain,
                                                                       "reason": reason}],
                      "status": "UNKNOWN"}}
    resp = httplib2.Response({"status": str(status), "content-type": "application/json; charset=UTF-8"})
    return HttpError(resp, json.dumps(body).encode(), uri="https://gmail.googleapis.com/gmail/v1/users/me/profile")


@pytest.mark.parametrize(("status", "reason", "message", "expected"), GMAIL_TABLE)
def test_google_http_errors_classify_by_their_json(status: int, reason: str, message: str, expected: str) -> None:
    exc = google_http_error(status, reason, message)
    assert http_error_parts(exc) == (status, reason, message)
    assert classify(exc) == expected


def test_google_oauth_and_non_json_bodies() -> None:
    oauth = HttpError(httplib2.Response({"status": "400"}),
                      b'{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}')
    assert http_error_parts(oauth)[:2] == (400, "invalid_grant")
    assert classify(oauth) == AUTH
    html = HttpError(httplib2.Response({"status": "502"}), b"<html><body>502 Bad Gateway</body></html>")
    assert http_error_parts(html)[:2] == (502, "")
    assert classify(html) == TRANSIENT
    assert classify(RefreshError("invalid_grant: Token has been expired or revoked.")) == AUTH
    assert classify(TransportError("connection refused")) == TRANSIENT
    assert classify(httplib2.ServerNotFoundError("Unable to find the server at gmail.googleapis.com")) == TRANSIENT


# ---------------------------------------------------------------------- OpenAI: the pure table

OPENAI_TABLE = [
    (429, "rate_limit_exceeded", "requests", "Rate limit reached for gpt-4o-mini ... on requests per min", RATE_LIMIT),
    (429, "rate_limit_exceeded", "tokens", "Rate limit reached for gpt-4o-mini ... on tokens per min", RATE_LIMIT),
    (429, "", "", "", RATE_LIMIT),
    (429, "insufficient_quota", "insufficient_quota", "You exceeded your current quota, please check your plan",
     QUOTA),
    (429, "credit_balance_exhausted", "insufficient_quota", "You have no credits remaining.", QUOTA),
    (401, "invalid_api_key", "invalid_request_error", "Incorrect API key provided: te**.", AUTH),
    (403, "unsupported_country_region_territory", "request_forbidden", "Country not supported", AUTH),
    (400, "context_length_exceeded", "invalid_request_error", "This model's maximum context length is", PERMANENT),
    (400, "invalid_value", "invalid_request_error", "Invalid value for 'n'", PERMANENT),
    (404, "model_not_found", "invalid_request_error", "The model `gpt-typo` does not exist", PERMANENT),
    (422, "", "invalid_request_error", "Unprocessable", PERMANENT),
    (409, "", "", "Lock timeout", TRANSIENT),
    (408, "", "", "Request timeout", TIMEOUT),
    (500, "", "server_error", "The server had an error while processing your request.", TRANSIENT),
    (502, "", "server_error", "Bad gateway.", TRANSIENT),
    (503, "", "server_error", "The server is overloaded or not ready yet.", TRANSIENT),
    (504, "", "", "", TRANSIENT),
]


@pytest.mark.parametrize(("status", "code", "type_", "message", "expected"), OPENAI_TABLE)
def test_openai_error_class_table(status: int, code: str, type_: str, message: str, expected: str) -> None:
    assert openai_error_class(status, code, type_, message) == expected


# ---------------------------------------------------------------------- OpenAI: real exceptions from the server


@pytest.fixture(scope="module")
def ai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(context_tokens=100, reject_unknown_models=True) as srv:
        yield srv


def openai_exception(server: OpenAIServer, faults: dict[str, Any], *, text: str = "hi", model: str = "gpt-4o-mini",
                     timeout: float = 5.0) -> openai.OpenAIError:
    server.faults = Faults(**faults)
    api = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=timeout)
    try:
        api.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    except openai.OpenAIError as exc:
        return exc
    finally:
        server.faults = Faults()
    raise AssertionError("the call succeeded")


SERVER_CASES: list[tuple[str, dict[str, Any], dict[str, Any], type[openai.OpenAIError], str]] = [
    ("rate_limited", {"rate_limit_rate": 1.0}, {}, openai.RateLimitError, RATE_LIMIT),
    ("rpm_limited", {"requests_per_minute": 0}, {}, openai.RateLimitError, RATE_LIMIT),
    ("insufficient_quota", {"insufficient_quota": True}, {}, openai.RateLimitError, QUOTA),
    ("5xx", {"error_rate": 1.0}, {}, openai.InternalServerError, TRANSIENT),
    ("down_503", {"down": True}, {}, openai.InternalServerError, TRANSIENT),
    ("down_reset", {"down": True, "down_mode": "reset"}, {}, openai.APIConnectionError, TRANSIENT),
    ("stall", {"stall": 5.0}, {"timeout": 0.2}, openai.APITimeoutError, TIMEOUT),
    ("unauthorized", {"unauthorized": True}, {}, openai.AuthenticationError, AUTH),
    ("context_length", {}, {"text": "x" * 1000}, openai.BadRequestError, PERMANENT),
    ("unknown_model", {}, {"model": "gpt-typo"}, openai.NotFoundError, PERMANENT),
]


@pytest.mark.parametrize(("name", "faults", "call", "error", "expected"), SERVER_CASES,
                         ids=[c[0] for c in SERVER_CASES])
def test_openai_exceptions_from_the_server(ai_server: OpenAIServer, name: str, faults: dict[str, Any],
                                           call: dict[str, Any], error: type[openai.OpenAIError],
                                           expected: str) -> None:
    exc = openai_exception(ai_server, faults, **call)
    assert type(exc) is error
    assert classify(exc) == expected


def status_error(cls: type[openai.APIStatusError], status: int, error: dict[str, Any] | None,
                 content: bytes | None = None) -> openai.APIStatusError:
    """A status error built the way the client builds it: an httpx2 response, the `error` object as body."""
    request = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions")
    if content is None:
        response = httpx2.Response(status, json={"error": error}, request=request)
    else:
        response = httpx2.Response(status, content=content, request=request)
    return cls(f"Error code: {status} - {error}", response=response, body=error)


def api_error(type_: str, code: str | None, message: str = "m") -> dict[str, Any]:
    return {"message": message, "type": type_, "param": None, "code": code}


CONSTRUCTED = [
    (status_error(openai.PermissionDeniedError, 403, api_error("request_forbidden", "unsupported_country")), AUTH),
    (status_error(openai.ConflictError, 409, api_error("invalid_request_error", None)), TRANSIENT),
    (status_error(openai.UnprocessableEntityError, 422, api_error("invalid_request_error", None)), PERMANENT),
    (status_error(openai.NotFoundError, 404, api_error("invalid_request_error", "model_not_found")), PERMANENT),
    (status_error(openai.BadRequestError, 400, api_error("invalid_request_error", "context_length_exceeded")),
     PERMANENT),
    (status_error(openai.RateLimitError, 429, api_error("insufficient_quota", "insufficient_quota")), QUOTA),
    (status_error(openai.RateLimitError, 429, api_error("tokens", "rate_limit_exceeded")), RATE_LIMIT),
    # A Cloudflare HTML page instead of OpenAI's JSON: no code, the status decides.
    (status_error(openai.InternalServerError, 502, None, b"<html>502 Bad Gateway</html>"), TRANSIENT),
    (openai.APITimeoutError(request=httpx2.Request("POST", "https://api.openai.com/v1/embeddings")), TIMEOUT),
    (openai.APIConnectionError(request=httpx2.Request("POST", "https://api.openai.com/v1/embeddings")), TRANSIENT),
]


@pytest.mark.parametrize(("exc", "expected"), CONSTRUCTED, ids=[type(e).__name__ for e, _ in CONSTRUCTED])
def test_constructed_openai_exceptions(exc: openai.OpenAIError, expected: str) -> None:
    assert classify(exc) == expected


def test_api_timeout_is_a_connection_error_subclass_yet_timeout() -> None:
    exc = openai.APITimeoutError(request=httpx2.Request("GET", "https://api.openai.com/v1/models"))
    assert isinstance(exc, openai.APIConnectionError)
    assert classify(exc) == TIMEOUT


# ---------------------------------------------------------------------- databases, the OS, our own errors


class SoftTimeLimitExceeded(Exception):
    """Billiard's class is matched by name, so a look-alike stands in for Celery here."""


def real_psycopg_operational_error() -> psycopg.OperationalError:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        psycopg.connect(f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2").close()
    except psycopg.OperationalError as exc:
        return exc
    raise AssertionError("connected to a closed port")


OTHER_CASES: list[tuple[str, BaseException, str]] = [
    ("psycopg_interface", psycopg.InterfaceError("the connection is closed"), TRANSIENT),
    ("sqlalchemy_operational",
     sa_exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection")), TRANSIENT),
    ("sqlalchemy_integrity",
     sa_exc.IntegrityError("INSERT INTO messages", {}, psycopg.errors.UniqueViolation("duplicate key")), PERMANENT),
    ("sqlalchemy_invalidated",
     sa_exc.DBAPIError("SELECT 1", {}, Exception("terminated"), connection_invalidated=True), TRANSIENT),
    ("sqlalchemy_programming", sa_exc.ProgrammingError("SELEC", {}, Exception("syntax error")), PERMANENT),
    ("parse_error", ParseError("not a message"), PERMANENT),
    ("timeout_error", TimeoutError("timed out"), TIMEOUT),
    ("soft_time_limit", SoftTimeLimitExceeded(), TIMEOUT),
    ("connection_reset", ConnectionResetError(104, "Connection reset by peer"), TRANSIENT),
    ("connection_refused", ConnectionRefusedError(111, "Connection refused"), TRANSIENT),
    ("classified", ClassifiedError("paused", RATE_LIMIT), RATE_LIMIT),
    ("classified_default", ClassifiedError("bad"), PERMANENT),
    ("value_error", ValueError("a bug"), PERMANENT),
    ("key_error", KeyError("x"), PERMANENT),
]


@pytest.mark.parametrize(("name", "exc", "expected"), OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_other_exceptions(name: str, exc: BaseException, expected: str) -> None:
    assert classify(exc) == expected


def test_a_real_socket_read_timeout_is_timeout() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(0.01)
        with pytest.raises(OSError) as caught:
            left.recv(1)
    assert classify(caught.value) == TIMEOUT


def test_a_refused_postgres_connection_is_transient() -> None:
    exc = real_psycopg_operational_error()
    assert classify(exc) == TRANSIENT
    assert classify(sa_exc.OperationalError("SELECT 1", {}, exc)) == TRANSIENT


# ---------------------------------------------------------------------- retry policy


def test_every_class_has_a_policy() -> None:
    assert set(POLICIES) == set(ERROR_CLASSES)
    assert {c for c in ERROR_CLASSES if is_retried(c)} == {TRANSIENT, RATE_LIMIT, QUOTA, TIMEOUT}


@pytest.mark.parametrize("error_class", [c for c in ERROR_CLASSES if POLICIES[c].max_retries is not None])
def test_backoff_is_full_jitter_under_a_capped_exponential(error_class: str) -> None:
    policy = POLICIES[error_class]
    assert policy.max_retries is not None
    previous = 0.0
    for retries in range(policy.max_retries):
        ceiling = min(policy.cap_seconds, policy.base_seconds * 2**retries)
        assert ceiling >= previous  # never shrinks
        previous = ceiling
        assert backoff_seconds(error_class, retries, 0.0) == 0.0
        for rand in (0.1, 0.5, 0.999999):
            wait = backoff_seconds(error_class, retries, rand)
            assert wait is not None
            assert wait == pytest.approx(rand * ceiling)
            assert 0.0 <= wait < ceiling <= policy.cap_seconds
    assert backoff_seconds(error_class, policy.max_retries, 0.5) is None  # out of retries
    assert backoff_seconds(error_class, policy.max_retries + 5, 0.5) is None


@pytest.mark.parametrize("error_class", [AUTH, GONE, PERMANENT])
def test_classes_that_are_not_retried_get_no_backoff(error_class: str) -> None:
    assert not is_retried(error_class)
    assert all(backoff_seconds(error_class, retries, 0.5) is None for retries in range(5))


def test_caps_per_class() -> None:
    def longest(error_class: str) -> float:
        max_retries = POLICIES[error_class].max_retries
        assert max_retries is not None
        return max(backoff_seconds(error_class, r, 0.999999) or 0.0 for r in range(max_retries))

    assert longest(TRANSIENT) == pytest.approx(64.0, rel=1e-5)
    assert longest(TIMEOUT) <= 120.0
    # A rate limit can hold for minutes: the cap lets one wait last several of them.
    assert longest(RATE_LIMIT) == pytest.approx(600.0, rel=1e-5)
    assert backoff_seconds(RATE_LIMIT, 8, 0.999999) > 300  # type: ignore[operator]
    assert longest(QUOTA) == pytest.approx(3600.0, rel=1e-5)
    assert backoff_seconds(QUOTA, 0, 0.999999) > backoff_seconds(RATE_LIMIT, 0, 0.999999)  # type: ignore[operator]


def test_classifying_does_not_import_openai_in_a_process_that_never_used_it() -> None:
    code = ("import sys; from pipeline.resilience.classify import classify; "
            "print(classify(ValueError('x')), classify(ConnectionResetError()), 'openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [PERMANENT, TRANSIENT, "False"]


def test_outage_backoff_rides_out_a_restart_whatever_the_draws() -> None:
    # Equal jitter: even the smallest draws wait half of each ceiling, ~95 s over the eight retries.
    smallest = [outage_backoff_seconds(r, 0.0) for r in range(8)]
    assert all(w is not None for w in smallest)
    assert sum(w for w in smallest if w is not None) >= 95.0
    assert outage_backoff_seconds(8, 0.5) is None  # the transient class's retries are spent
    for r in range(8):
        ceiling = backoff_seconds(TRANSIENT, r, 1.0)
        wait = outage_backoff_seconds(r, 0.999)
        assert ceiling is not None and wait is not None and ceiling / 2 <= wait <= ceiling


def test_the_wait_an_ai_endpoint_asks_for_is_read_from_its_429(ai_server: OpenAIServer) -> None:
    from datetime import UTC, datetime

    from pipeline.resilience.quota import retry_after_hint

    exc = openai_exception(ai_server, {"rate_limit_rate": 1.0, "retry_after": 7.5})
    assert isinstance(exc, openai.RateLimitError)
    assert retry_after_hint(exc, datetime.now(UTC)) == 7.5  # retry-after-ms, finer than retry-after: 8
    assert retry_after_hint(ValueError("no response"), datetime.now(UTC)) is None

