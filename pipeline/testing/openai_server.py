"""An OpenAI-compatible HTTP server for tests, demos and benchmarks: OpenAI's wire format and faults.

It answers the real `openai` client where api.openai.com would: point one at it with
`openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)` (`base_url` ends in `/v1`).
Served: `POST /v1/chat/completions` (not streaming), `POST /v1/embeddings`, `GET /v1/models` and
`GET /v1/models/{id}`. Successes and errors use OpenAI's JSON shapes and headers (`x-request-id`,
`x-ratelimit-*`, `retry-after` / `retry-after-ms` on 429s), so the client raises the class it would
raise against OpenAI: 400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError, 5xx InternalServerError, a dropped connection APIConnectionError, a stall longer than
the client's timeout APITimeoutError.

Each API call passes, in order: `latency`; `down` (503, or the connection reset); authentication
(a missing bearer token, a key outside `api_keys`, or `unauthorized`: 401); `insufficient_quota`
(429 that no client should retry; like OpenAI it carries no `x-should-retry`, so the openai client's
own retries, when enabled, do retry it: only `max_retries=0` clients see it at once); the
requests-per-minute window; the seeded fault roll (injected 429, injected 5xx, stall); then the
endpoint itself, which validates the request (context length included) and answers.

Decisions:
- Replies are deterministic. Chat content comes from `responder(request_body)`; the default one
  answers `response_format` json_object with a small JSON object, json_schema with an instance of the
  schema (required properties filled with type-appropriate placeholders), and anything else with a
  short text built from the last user message. Embeddings are unit vectors derived from a hash of
  each input alone (`embedding_vector`), so equal inputs get equal vectors under any model; a
  smaller `dimensions` gives the renormalised prefix of the larger vector (Matryoshka-like).
- Every API call's body is kept (`received()`, the last REQUEST_LOG_SIZE), so a test can inspect exactly
  what a client sent, including calls refused by faults.
- Tokens are counted as `len(text) // 4 + 1` per text (`count_tokens`): approximate, deterministic.
- Every call that reaches the fault roll draws the same four numbers from the seeded RNG whatever the
  settings, so a seed fixes the sequence of faults of a sequential client exactly.
- The requests-per-minute window counts calls it admitted (refusals are free, as in gmail_server);
  injected faults after it still consume the slot, as a real rate limiter counts them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import math
import random
import secrets
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from pipeline.testing.http import Handler, Served, ServerThread, serve_until_signal

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
)
# Native sizes; other models get DEFAULT_EMBEDDING_DIMENSIONS. ada-002 refuses `dimensions`, as OpenAI's does.
EMBEDDING_DIMENSIONS: dict[str, int] = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                                        "text-embedding-ada-002": 1536}
FIXED_DIMENSION_MODELS = frozenset({"text-embedding-ada-002"})
DEFAULT_EMBEDDING_DIMENSIONS = 1536
DEFAULT_CONTEXT_TOKENS = 128_000
DEFAULT_EMBEDDING_CONTEXT_TOKENS = 8_192
MAX_EMBEDDING_INPUTS = 2_048
REQUEST_LOG_SIZE = 10_000  # request bodies kept for `received()`; the oldest are dropped beyond this
UNLIMITED_REQUESTS = 10_000  # what x-ratelimit-limit-requests announces without a requests_per_minute limit
TOKENS_PER_MINUTE = 10_000_000  # announced in x-ratelimit-*-tokens; never enforced
ENDPOINTS = ("chat.completions", "embeddings", "models")
FAULT_KINDS = ("down", "unauthorized", "insufficient_quota", "rpm_limited", "rate_limited", "injected_5xx",
               "stalled")
_JSON = "application/json"
log = logging.getLogger(__name__)

DownMode = Literal["503", "reset"]
Responder = Callable[[dict[str, Any]], str]


def count_tokens(text: str) -> int:
    """The server's token count of one text: approximate (4 characters a token) and deterministic."""
    return len(text) // 4 + 1


def embedding_vector(item: str | Sequence[int], dimensions: int) -> list[float]:
    """The unit vector the server returns for one embeddings input (a text or a list of token ids)."""
    key = item.encode("utf-8") if isinstance(item, str) else json.dumps(list(item)).encode()
    raw = struct.unpack(f"<{dimensions}H", hashlib.shake_256(key).digest(2 * dimensions))
    values = [v - 32767.5 for v in raw]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


# ---------------------------------------------------------------------- faults


@dataclass(frozen=True, slots=True)
class Roll:
    """What the seeded RNG decided for one call."""

    rate_limited: bool
    error_status: int | None
    stalled: bool


@dataclass
class Faults:
    """Injected failures, changeable while the server runs.

    Single attribute writes are atomic; `update(**changes)` changes several at once under the lock the
    fault roll takes, so no call sees half of a change.
    """

    error_rate: float = 0.0  # fraction of calls answered 500, 502 or 503 (server_error)
    rate_limit_rate: float = 0.0  # fraction of calls answered 429 rate_limit_exceeded
    retry_after: float = 1.0  # seconds announced by injected 429s (retry-after, retry-after-ms)
    insufficient_quota: bool = False  # every call 429 insufficient_quota (billing; never retry)
    down: bool = False  # every call refused, as `down_mode` says
    down_mode: DownMode = "503"  # "503": a 503 server_error; "reset": the connection is reset, no answer
    latency: float = 0.0  # seconds slept before each call is handled
    stall: float = 0.0  # seconds a stalled call hangs before it is answered (0: no stalls)
    stall_rate: float = 1.0  # fraction of calls that stall while `stall` > 0
    unauthorized: bool = False  # every call 401 invalid_api_key
    requests_per_minute: int | None = None  # rolling 60 s window; calls over it get 429
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._check()

    def _check(self, values: Mapping[str, Any] | None = None) -> None:
        get = values.get if values is not None else (lambda name, default=None: getattr(self, name))
        if get("down_mode", "503") not in ("503", "reset"):
            raise ValueError(f"down_mode must be '503' or 'reset', not {get('down_mode')!r}")
        for name in ("error_rate", "rate_limit_rate", "stall_rate"):
            if not 0.0 <= get(name, 0.0) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")

    def update(self, **changes: Any) -> None:
        """Change several faults at once; unknown names or invalid values change nothing."""
        known = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = sorted(name for name in changes if name not in known)
        if unknown:
            raise TypeError(f"unknown faults: {unknown}")
        self._check(changes)
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)
            if "seed" in changes:
                self._rng = random.Random(self.seed)

    def reseed(self, seed: int) -> None:
        """Restart the fault sequence from `seed`."""
        self.update(seed=seed)

    def roll(self) -> Roll:
        """One call's faults. Always four draws, whatever the rates, so a seed fixes the sequence."""
        with self._lock:
            u_rate, u_error, u_status, u_stall = (self._rng.random() for _ in range(4))
            rate_limited = u_rate < self.rate_limit_rate
            error_status = (500, 502, 503)[int(u_status * 3)] if u_error < self.error_rate else None
            stalled = self.stall > 0 and u_stall < self.stall_rate
            return Roll(rate_limited, error_status, stalled)


# ---------------------------------------------------------------------- requests, responses, errors


@dataclass(frozen=True, slots=True)
class Request:
    verb: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @classmethod
    def build(cls, verb: str, target: str, headers: Mapping[str, str], body: bytes) -> Request:
        return cls(verb.upper(), urlsplit(target).path, {k.lower(): v for k, v in headers.items()}, body)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # no answer: the connection is reset (down_mode "reset")

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": _JSON, **(headers or {})})


class ApiError(Exception):
    """An answer in OpenAI's error JSON. `fault` names the injected fault it counts as, else `kind`
    names the (non-injected) error counter it bumps."""

    def __init__(self, status: int, message: str, type_: str | None, code: str | None = None, *,
                 param: str | None = None, headers: Mapping[str, str] | None = None, kind: str = "",
                 fault: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = dict(headers or {})
        self.kind, self.fault = kind, fault

    def response(self) -> Response:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return Response.json(self.status, {"error": error}, self.headers)


def _invalid(message: str, *, param: str | None = None, code: str | None = None,
             kind: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param=param, kind=kind)


def _missing(name: str) -> ApiError:
    return _invalid(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def _model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error", "model_not_found", kind="model_not_found")


def _server_error(status: int, *, fault: str = "", kind: str = "") -> ApiError:
    message = {500: "The server had an error while processing your request. Sorry about that!",
               502: "Bad gateway.",
               503: "The server is overloaded or not ready yet."}.get(status, "Internal server error.")
    return ApiError(status, message, "server_error", None, fault=fault, kind=kind)


def _unauthorized(key: str, *, fault: str = "", kind: str = "") -> ApiError:
    shown = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else key[:2] + "**"
    return ApiError(401, f"Incorrect API key provided: {shown}. You can find your API key at "
                         "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error", "invalid_api_key", fault=fault, kind=kind)


def _no_api_key() -> ApiError:
    return ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                         "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
                         "(with blank username) if you're accessing the API from your browser and are prompted for "
                         "a username and password. You can obtain an API key from "
                         "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error", None, kind="missing_api_key")


def _insufficient_quota() -> ApiError:
    return ApiError(429, "You exceeded your current quota, please check your plan and billing details. For more "
                         "information on this error, read the docs: "
                         "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                    "insufficient_quota", "insufficient_quota", fault="insufficient_quota")


def _rate_limited(model: str, limit: int, wait: float, *, fault: str) -> ApiError:
    wait = max(wait, 0.001)
    message = (f"Rate limit reached for {model or 'default'} in organization org-test on requests per min (RPM): "
               f"Limit {limit}, Used {limit}, Requested 1. Please try again in {_duration(wait)}. "
               "Visit https://platform.openai.com/account/rate-limits to learn more.")
    headers = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, round(wait * 1000))),
               **_ratelimit_headers(limit, 0, wait)}
    return ApiError(429, message, "requests", "rate_limit_exceeded", headers=headers, fault=fault)


def _duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: "20ms", "1s", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{text}s" if minutes else f"{text}s"


def _ratelimit_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-remaining-requests": str(max(0, remaining)),
            "x-ratelimit-reset-requests": _duration(reset),
            "x-ratelimit-limit-tokens": str(TOKENS_PER_MINUTE),
            "x-ratelimit-remaining-tokens": str(TOKENS_PER_MINUTE), "x-ratelimit-reset-tokens": "0s"}


# ---------------------------------------------------------------------- default replies


def default_responder(body: dict[str, Any]) -> str:
    """The default chat reply: valid JSON for json_object / json_schema, else text from the last user message."""
    snippet = " ".join(_last_user_text(body.get("messages") or []).split())[:80]
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return json.dumps({"reply": snippet, "length": len(snippet)})
    if kind == "json_schema" and isinstance(response_format, dict):
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return json.dumps(schema_instance(schema or {"type": "object"}))
    digest = hashlib.sha256(snippet.encode()).hexdigest()[:8]
    return f"Reply {digest}: {snippet}" if snippet else f"Reply {digest}."


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only the text ones count
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def schema_instance(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A small value valid for a JSON schema (the subset Structured Outputs allows): required properties
    filled with type-appropriate placeholders, enums and consts honoured, $ref, anyOf/oneOf/allOf followed."""
    root = schema if root is None else root
    if depth > 32:
        return None
    if "$ref" in schema:
        return schema_instance(_resolve(root, str(schema["$ref"])), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if options:
            # Prefer a non-null branch: a placeholder says more than null.
            chosen = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
            return schema_instance(chosen, root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part)
        return schema_instance(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: schema_instance(props.get(name) or {}, root, depth + 1) for name in schema.get("required") or []}
    if kind == "array":
        items = schema.get("items") or {}
        return [schema_instance(items, root, depth + 1) for _ in range(int(schema.get("minItems") or 0))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value = max(0, math.ceil(low)) if low is not None else 0
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value += 1
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string_placeholder(schema)


def _string_placeholder(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2024-01-01T00:00:00Z"
    if fmt == "date":
        return "2024-01-01"
    if fmt == "email":
        return "someone@example.com"
    if fmt == "uuid":
        return "00000000-0000-4000-8000-000000000000"
    text = "placeholder"
    low = int(schema.get("minLength") or 0)
    if low > len(text):
        text = (text * (low // len(text) + 1))[:low]
    high = schema.get("maxLength")
    return text[:int(high)] if high is not None else text


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


# ---------------------------------------------------------------------- statistics


@dataclass
class _Counters:
    calls: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    successes: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": {name: self.calls[name] for name in ENDPOINTS},
            "calls_total": sum(self.calls.values()),
            "successes": self.successes,
            "statuses": dict(self.statuses),
            "faults": {kind: self.faults[kind] for kind in FAULT_KINDS},
            "errors": dict(self.errors),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


# ---------------------------------------------------------------------- the server


class OpenAIServer(Served):
    """OpenAI's chat completions, embeddings and models endpoints over HTTP, with faults and statistics."""

    def __init__(self, *, faults: Faults | None = None, responder: Responder | None = None,
                 host: str = "127.0.0.1", port: int = 0, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                 embedding_context_tokens: int = DEFAULT_EMBEDDING_CONTEXT_TOKENS,
                 models: Sequence[str] = DEFAULT_MODELS, reject_unknown_models: bool = False,
                 api_keys: Collection[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.faults = faults if faults is not None else Faults()
        self.responder: Responder = responder if responder is not None else default_responder
        self.host, self.port = host, port
        self.context_tokens = context_tokens
        self.embedding_context_tokens = embedding_context_tokens
        self.models = list(models)
        self.reject_unknown_models = reject_unknown_models
        self.api_keys = frozenset(api_keys) if api_keys is not None else None  # None: any non-empty key
        self._clock = clock
        self._created = int(time.time())
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._window: deque[float] = deque()  # admission times within the last 60 s (requests_per_minute)
        self._received: deque[tuple[str, bytes]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._serial = 0
        self._stopping = threading.Event()
        self._http = ServerThread(_Handler, self, "fake-openai")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> OpenAIServer:
        if not self._http.running:
            self._stopping.clear()
            self.port = self._http.start(self.host, self.port)
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled calls
        self._http.stop()

    @property
    def base_url(self) -> str:
        """What the openai client takes as base_url."""
        return self.url + "/v1"

    # ------------------------------------------------------------------ statistics

    def stats(self) -> dict[str, Any]:
        """calls (per endpoint), calls_total, successes, statuses (0: connection reset, no answer), faults
        (every FAULT_KINDS key, injected ones only), errors (refusals that were not injected, by kind),
        prompt_tokens, completion_tokens (of successes), in_flight (being served now), max_in_flight."""
        with self._lock:
            return self._counters.as_dict()

    def received(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies of the API calls that reached the server (faults or not), oldest first; those of
        one endpoint ("chat.completions", "embeddings") when given. What a test inspects to prove what
        left the client, e.g. that no secret did. A body that is not a JSON object is {"_raw": text}."""
        with self._lock:
            log_copy = list(self._received)
        out: list[dict[str, Any]] = []
        for name, body in log_copy:
            if endpoint is not None and name != endpoint:
                continue
            text = body.decode("utf-8", "replace")
            try:
                value = json.loads(text) if text else {}
            except ValueError:
                value = None
            out.append(value if isinstance(value, dict) else {"_raw": text})
        return out

    def received_text(self, endpoint: str | None = None) -> str:
        """Every received body of `endpoint` (all when None) as raw text, joined by newlines."""
        with self._lock:
            log_copy = list(self._received)
        return "\n".join(b.decode("utf-8", "replace") for name, b in log_copy if endpoint in (None, name))

    def clear_received(self) -> None:
        with self._lock:
            self._received.clear()

    def reset_stats(self) -> None:
        """Forget every counter; in_flight keeps counting the calls being served now."""
        with self._lock:
            in_flight = self._counters.in_flight
            self._counters = _Counters(in_flight=in_flight, max_in_flight=in_flight)

    # ------------------------------------------------------------------ HTTP entry point

    def handle(self, req: Request) -> Response:
        """One HTTP request. Counted in flight from the moment it is read until its answer is ready."""
        routed = _route(req)
        if routed is None:
            with self._lock:
                self._counters.errors["invalid_url"] += 1
                self._counters.statuses[404] += 1
            return ApiError(404, f"Invalid URL ({req.verb} {req.path})", "invalid_request_error").response()
        endpoint, arg = routed
        with self._lock:
            counters = self._counters
            counters.calls[endpoint] += 1
            if req.body:
                self._received.append((endpoint, req.body))
            counters.in_flight += 1
            counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
            self._serial += 1
            serial = self._serial
        started = time.monotonic()
        usage = (0, 0)
        try:
            response, usage = self._call(endpoint, arg, req)
        except ApiError as exc:
            response = exc.response()
            self._note_error(exc)
        except Exception as exc:
            # A bug here (or in a test's responder) must show up as itself, not as a dropped connection
            # that a client would retry as a network error.
            log.exception("fake OpenAI: %s failed", endpoint)
            error = ApiError(500, f"Internal error in the fake server: {exc!r}", "server_error", kind="server_bug")
            response = error.response()
            self._note_error(error)
        finally:
            with self._lock:
                self._counters.in_flight -= 1
        if not response.reset:
            response.headers.setdefault("x-request-id", f"req_{serial:08x}{secrets.token_hex(8)}")
            response.headers.setdefault("openai-version", "2020-10-01")
            response.headers.setdefault("openai-organization", "org-test")
            response.headers.setdefault("openai-processing-ms", str(round((time.monotonic() - started) * 1000)))
        with self._lock:
            counters = self._counters
            if response.reset:
                counters.statuses[0] += 1
            else:
                counters.statuses[response.status] += 1
            if 200 <= response.status < 300 and not response.reset:
                counters.successes += 1
                counters.prompt_tokens += usage[0]
                counters.completion_tokens += usage[1]
        return response

    def _note_error(self, exc: ApiError) -> None:
        with self._lock:
            if exc.fault:
                self._counters.faults[exc.fault] += 1
            elif exc.kind:
                self._counters.errors[exc.kind] += 1

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._counters.faults[kind] += 1

    # ------------------------------------------------------------------ one API call

    def _call(self, endpoint: str, arg: str, req: Request) -> tuple[Response, tuple[int, int]]:
        """Faults in order, then the endpoint. Returns the response and its (prompt, completion) tokens."""
        faults = self.faults
        if faults.latency > 0:
            self._stopping.wait(faults.latency)
        if faults.down:
            if faults.down_mode == "reset":
                self._count_fault("down")
                return Response(0, reset=True), (0, 0)
            raise _server_error(503, fault="down")
        self._authenticate(req)
        if faults.insufficient_quota:
            raise _insufficient_quota()
        body = _json_body(req) if req.verb == "POST" else {}
        model = str(body.get("model") or "")
        limit, remaining, reset = self._admit(model)
        roll = faults.roll()
        if roll.rate_limited:
            raise _rate_limited(model, limit, faults.retry_after, fault="rate_limited")
        if roll.error_status is not None:
            raise _server_error(roll.error_status, fault="injected_5xx")
        if roll.stalled:
            self._count_fault("stalled")
            self._stopping.wait(faults.stall)
        if endpoint == "chat.completions":
            payload, usage = self._chat(body)
        elif endpoint == "embeddings":
            payload, usage = self._embeddings(body)
        else:
            payload, usage = self._models(arg), (0, 0)
        headers = _ratelimit_headers(limit, remaining, reset) if endpoint != "models" else {}
        return Response.json(200, payload, headers), usage

    def _authenticate(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key:
            raise _no_api_key()
        if self.faults.unauthorized:
            raise _unauthorized(key, fault="unauthorized")
        if self.api_keys is not None and key not in self.api_keys:
            raise _unauthorized(key, kind="invalid_api_key")

    def _admit(self, model: str) -> tuple[int, int, float]:
        """The requests-per-minute window: (limit, remaining, seconds to the next free slot), or a 429."""
        rpm = self.faults.requests_per_minute
        with self._lock:
            now = self._clock()
            while self._window and self._window[0] <= now - 60.0:
                self._window.popleft()
            if rpm is None:
                return UNLIMITED_REQUESTS, UNLIMITED_REQUESTS - 1, 0.0
            if len(self._window) >= rpm:
                wait = self._window[len(self._window) - rpm] + 60.0 - now if rpm > 0 else 60.0
                raise _rate_limited(model, rpm, wait, fault="rpm_limited")
            self._window.append(now)
            reset = self._window[0] + 60.0 - now if len(self._window) >= rpm else 0.0
            return rpm, rpm - len(self._window), reset

    # ------------------------------------------------------------------ endpoints

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not model or not isinstance(model, str):
            raise _missing("model")
        if self.reject_unknown_models and model not in self.models:
            raise _model_not_found(model)
        return model

    def _chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        model = self._check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _missing("messages") if messages is None else _invalid(
                f"Invalid value for 'messages': expected a non-empty array, got {json.dumps(messages)}.",
                param="messages", code="invalid_value")
        if body.get("stream"):
            raise _invalid("This test server does not stream; send stream=false.", param="stream",
                           code="unsupported_value")
        _check_response_format(body.get("response_format"))
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise _invalid(f"{n!r} is not a valid value for 'n'.", param="n", code="invalid_value")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise _invalid(f"Invalid 'max_tokens': {max_tokens!r}.", param="max_tokens", code="invalid_value")
        prompt = sum(count_tokens(_content_text(m.get("content")) if isinstance(m, dict) else "") for m in messages)
        self._check_context(prompt, max_tokens)
        content = self.responder(body)
        if not isinstance(content, str):
            raise TypeError(f"the responder returned {type(content).__name__}, not str")
        completion, finish = count_tokens(content), "stop"
        if max_tokens is not None and completion > max_tokens:
            content, completion, finish = content[:max_tokens * 4], max_tokens, "length"
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
        choices: list[dict[str, Any]] = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                                         for i in range(n)]
        completion *= n
        payload = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}},
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }
        return payload, (prompt, completion)

    def _check_context(self, prompt: int, max_tokens: int | None) -> None:
        limit = self.context_tokens
        if max_tokens is not None and prompt + max_tokens > limit:
            message = (f"This model's maximum context length is {limit} tokens. However, you requested "
                       f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion). "
                       "Please reduce the length of the messages or completion.")
        elif prompt > limit:
            message = (f"This model's maximum context length is {limit} tokens. However, your messages resulted "
                       f"in {prompt} tokens. Please reduce the length of the messages.")
        else:
            return
        raise _invalid(message, param="messages", code="context_length_exceeded", kind="context_length_exceeded")

    def _embeddings(self, body: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        model = self._check_model(body)
        items = _embedding_inputs(body)
        native = EMBEDDING_DIMENSIONS.get(model, DEFAULT_EMBEDDING_DIMENSIONS)
        dimensions = body.get("dimensions")
        if dimensions is None:
            dimensions = native
        elif model in FIXED_DIMENSION_MODELS:
            raise _invalid("This model does not support specifying dimensions.", param="dimensions")
        elif not isinstance(dimensions, int) or not 1 <= dimensions <= native:
            raise _invalid(f"Invalid value for 'dimensions' = {dimensions!r}. Must be between 1 and {native}.",
                           param="dimensions", code="invalid_value")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _invalid(f"Invalid value for 'encoding_format': {encoding!r}. Supported values are: 'float' "
                           "and 'base64'.", param="encoding_format", code="invalid_value")
        tokens = [count_tokens(item) if isinstance(item, str) else len(item) for item in items]
        longest = max(tokens)
        if longest > self.embedding_context_tokens:
            raise _invalid(f"This model's maximum context length is {self.embedding_context_tokens} tokens, however "
                           f"you requested {longest} tokens ({longest} in your prompt; 0 for the completion). Please "
                           "reduce your prompt; or completion length.", param="input",
                           code="context_length_exceeded", kind="context_length_exceeded")
        data = []
        for index, item in enumerate(items):
            vector = embedding_vector(item, dimensions)
            encoded: Any = (base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                            if encoding == "base64" else vector)
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        total = sum(tokens)
        payload = {"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": total, "total_tokens": total}}
        return payload, (total, 0)

    def _models(self, model_id: str) -> dict[str, Any]:
        if not model_id:
            return {"object": "list", "data": [self._model(m) for m in self.models]}
        if model_id not in self.models:
            raise _model_not_found(model_id)
        return self._model(model_id)

    def _model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self._created, "owned_by": "system"}


def _route(req: Request) -> tuple[str, str] | None:
    path = req.path.rstrip("/")
    if req.verb == "POST" and path == "/v1/chat/completions":
        return "chat.completions", ""
    if req.verb == "POST" and path == "/v1/embeddings":
        return "embeddings", ""
    if req.verb == "GET" and path == "/v1/models":
        return "models", ""
    if req.verb == "GET" and path.startswith("/v1/models/"):
        return "models", unquote(path[len("/v1/models/"):])
    return None


def _json_body(req: Request) -> dict[str, Any]:
    try:
        body = json.loads(req.body or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _invalid("We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                       "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
                       "valid JSON.)")
    return body


def _check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _invalid(f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and 'json_schema'.",
                       param="response_format.type", code="invalid_value")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise _missing("response_format.json_schema")
        if not spec.get("name"):
            raise _missing("response_format.json_schema.name")


def _embedding_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    raw = body.get("input")
    if raw is None:
        raise _missing("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        items: list[Any] = [raw]  # one text, or one text as token ids
    elif isinstance(raw, list):
        items = raw
    else:
        items = []
    if not items or len(items) > MAX_EMBEDDING_INPUTS:
        raise _invalid(f"'$.input' is invalid: expected 1 to {MAX_EMBEDDING_INPUTS} inputs.", param="input")
    for item in items:
        valid_text = isinstance(item, str) and item != ""
        valid_tokens = isinstance(item, list) and item and all(isinstance(t, int) for t in item)
        if not (valid_text or valid_tokens):
            raise _invalid("'$.input' is invalid. Please check the API reference: "
                           "https://platform.openai.com/docs/api-reference.", param="input")
    return cast(list[str | list[int]], items)


# ---------------------------------------------------------------------- HTTP plumbing


class _Handler(Handler):
    server_version = "fake-openai"

    def serve(self, body: bytes) -> None:
        api = cast(OpenAIServer, self.app)
        resp = api.handle(Request.build(self.command, self.path, dict(self.headers.items()), body))
        if resp.reset:
            self.reset()
        else:
            self.send(resp)


# ---------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.testing.openai_server",
                                     description="Serve a fake OpenAI API over HTTP until SIGTERM/SIGINT.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of calls answered 500/502/503")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, help="fraction of calls answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds announced by injected 429s")
    parser.add_argument("--rpm", type=int, default=None, help="requests per rolling minute before 429s")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument("--stall", type=float, default=0.0, help="seconds a stalled call hangs")
    parser.add_argument("--stall-rate", type=float, default=1.0, help="fraction of calls that stall")
    parser.add_argument("--insufficient-quota", action="store_true")
    parser.add_argument("--unauthorized", action="store_true")
    parser.add_argument("--down", choices=("503", "reset"), default=None, help="refuse every call this way")
    parser.add_argument("--context-tokens", type=int, default=DEFAULT_CONTEXT_TOKENS)
    parser.add_argument("--reject-unknown-models", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    faults = Faults(error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate, retry_after=args.retry_after,
                    requests_per_minute=args.rpm, latency=args.latency, stall=args.stall,
                    stall_rate=args.stall_rate, insufficient_quota=args.insufficient_quota,
                    unauthorized=args.unauthorized, down=args.down is not None,
                    down_mode=cast(DownMode, args.down or "503"), seed=args.seed)
    server = OpenAIServer(faults=faults, host=args.host, port=args.port, context_tokens=args.context_tokens,
                          reject_unknown_models=args.reject_unknown_models)
    return serve_until_signal(server, lambda: {"base_url": server.base_url, "api_key": "test"})


__all__ = ["DEFAULT_MODELS", "ENDPOINTS", "FAULT_KINDS", "ApiError", "Faults", "OpenAIServer", "Request", "Response",
           "Responder", "Roll", "count_tokens", "default_responder", "embedding_vector", "main", "schema_instance"]


if __name__ == "__main__":
    sys.exit(main())
