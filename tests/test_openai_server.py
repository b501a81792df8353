"""The project's OpenAI server, driven only by the real openai client over HTTP."""

from __future__ import annotations

import base64
import json
import math
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel

from pipeline.testing.openai_server import (
    FAULT_KINDS,
    Faults,
    OpenAIServer,
    count_tokens,
    embedding_vector,
)

ROOT = Path(__file__).resolve().parents[1]
CHAT = "gpt-4o-mini"
EMBED = "text-embedding-3-small"


# ---------------------------------------------------------------------- helpers


def client(server: OpenAIServer, *, timeout: float = 5.0, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=max_retries, timeout=timeout)


def ask(api: openai.OpenAI, text: str = "hello there", **kwargs: Any) -> Any:
    return api.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": text}], **kwargs)


def outcome(api: openai.OpenAI) -> str:
    try:
        ask(api)
    except openai.APIStatusError as exc:
        return f"{type(exc).__name__}:{exc.status_code}"
    return "ok"


@pytest.fixture()
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture()
def api(server: OpenAIServer) -> openai.OpenAI:
    return client(server)


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# ---------------------------------------------------------------------- endpoints


def test_lifecycle_binds_a_free_local_port_and_start_returns_self() -> None:
    srv = OpenAIServer()
    assert srv.start() is srv
    try:
        assert srv.host == "127.0.0.1" and srv.port > 0
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert ask(client(srv)).choices[0].message.content
    finally:
        srv.stop()
    with pytest.raises(openai.APIConnectionError):
        ask(client(srv, timeout=2))


def test_chat_completion_has_openai_shape_usage_and_headers(server: OpenAIServer, api: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    raw = api.chat.completions.with_raw_response.create(model=CHAT, messages=messages)  # type: ignore[arg-type]
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == CHAT
    choice = reply.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content
    assert content is not None and "hello there" in content
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == count_tokens("Be brief.") + count_tokens("hello there")
    assert reply.usage.completion_tokens == count_tokens(content)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    # Deterministic: the same question gets the same answer, another question another one.
    replies = [reply, ask(api), ask(api), ask(api, "something else")]
    assert [r.choices[0].message.content == content for r in replies] == [True, True, True, False]
    stats = server.stats()
    assert stats["calls"]["chat.completions"] == 4 and stats["successes"] == 4
    assert stats["prompt_tokens"] == sum(r.usage.prompt_tokens for r in replies)
    assert stats["completion_tokens"] == sum(r.usage.completion_tokens for r in replies)


def test_custom_responder_gets_the_request_body_and_n_choices() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body)
        return "fixed answer"

    with OpenAIServer(responder=responder) as srv:
        reply = ask(client(srv), "question", temperature=0.2, n=2)
    assert [c.message.content for c in reply.choices] == ["fixed answer", "fixed answer"]
    assert [c.index for c in reply.choices] == [0, 1]
    assert seen[0]["messages"] == [{"role": "user", "content": "question"}]
    assert seen[0]["temperature"] == 0.2 and seen[0]["model"] == CHAT


def test_max_tokens_truncates_with_finish_reason_length() -> None:
    with OpenAIServer(responder=lambda body: "word " * 100) as srv:
        reply = ask(client(srv), max_completion_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == ("word " * 100)[:20]
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_json_object_reply_parses(api: openai.OpenAI) -> None:
    reply = ask(api, "summarise this", response_format={"type": "json_object"})
    content = reply.choices[0].message.content
    assert content is not None
    parsed = json.loads(content)
    assert isinstance(parsed, dict) and parsed["reply"] == "summarise this"


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 20},
        "category": {"type": "string", "enum": ["newsletter", "personal", "work"]},
        "needs_reply": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "score": {"type": "number"},
        "actions": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/action"}},
        "due": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
        "optional": {"type": "string"},
    },
    "required": ["summary", "category", "needs_reply", "priority", "score", "actions", "due"],
    "additionalProperties": False,
    "$defs": {"action": {"type": "object", "properties": {"text": {"type": "string"}, "owner": {"const": "me"}},
                         "required": ["text", "owner"], "additionalProperties": False}},
}


def test_json_schema_reply_fills_required_properties(api: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "insight", "schema": SCHEMA, "strict": True}}
    content = ask(api, response_format=response_format).choices[0].message.content
    assert content is not None
    value = json.loads(content)
    assert set(value) == set(SCHEMA["required"])  # required ones only
    assert isinstance(value["summary"], str) and len(value["summary"]) >= 20
    assert value["category"] == "newsletter"
    assert value["needs_reply"] is False
    assert isinstance(value["priority"], int) and value["priority"] >= 1
    assert isinstance(value["score"], float)
    assert value["actions"] == [{"text": value["actions"][0]["text"], "owner": "me"}] * 2
    assert value["due"] == "2024-01-01"


class Action(BaseModel):
    text: str
    done: bool


class Insight(BaseModel):
    summary: str
    category: Literal["newsletter", "personal", "work"]
    priority: int
    actions: list[Action]
    due: str | None


def test_structured_output_parse_with_a_pydantic_model(api: openai.OpenAI) -> None:
    reply = api.chat.completions.parse(model=CHAT, messages=[{"role": "user", "content": "x"}],
                                       response_format=Insight)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Insight)
    assert parsed.category == "newsletter" and parsed.actions == [] and isinstance(parsed.priority, int)


def test_embeddings_are_deterministic_unit_vectors(server: OpenAIServer, api: openai.OpenAI) -> None:
    single = api.embeddings.create(model=EMBED, input="hello")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 1536
    assert math.fsum(v * v for v in single.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    many = api.embeddings.create(model=EMBED, input=["hello", "world", "hello"])
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.data[0].embedding == many.data[2].embedding == single.data[0].embedding
    assert many.data[0].embedding != many.data[1].embedding
    assert many.usage.prompt_tokens == many.usage.total_tokens == 2 * count_tokens("hello") + count_tokens("world")
    assert many.model == EMBED
    # The client asks for base64 unless told otherwise; floats and base64 carry the same float32 values.
    floats = api.embeddings.create(model=EMBED, input="hello", encoding_format="float").data[0].embedding
    assert floats == pytest.approx(single.data[0].embedding, abs=1e-6)
    assert single.data[0].embedding == pytest.approx(embedding_vector("hello", 1536), abs=1e-6)
    assert server.stats()["calls"]["embeddings"] == 3


def test_embedding_dimensions_and_token_inputs(api: openai.OpenAI) -> None:
    small = api.embeddings.create(model=EMBED, input="hello", dimensions=256).data[0].embedding
    assert len(small) == 256
    assert math.fsum(v * v for v in small) == pytest.approx(1.0, abs=1e-5)
    large = api.embeddings.create(model="text-embedding-3-large", input="hello").data[0].embedding
    assert len(large) == 3072
    # The shorter vector is the renormalised prefix of the longer one.
    norm = math.sqrt(math.fsum(v * v for v in large[:256]))
    assert small == pytest.approx([v / norm for v in large[:256]], abs=1e-5)
    tokens = api.embeddings.create(model=EMBED, input=[[1, 2, 3], [4, 5]], dimensions=8)
    assert [len(d.embedding) for d in tokens.data] == [8, 8]
    assert tokens.usage.prompt_tokens == 5
    with pytest.raises(openai.BadRequestError) as caught:
        api.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    assert caught.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError):
        api.embeddings.create(model=EMBED, input="x", dimensions=5000)
    with pytest.raises(openai.BadRequestError):
        api.embeddings.create(model=EMBED, input="")


def test_embeddings_base64_is_little_endian_float32(server: OpenAIServer) -> None:
    status, body = raw_post(server.base_url + "/embeddings", json.dumps(
        {"model": EMBED, "input": "abc", "dimensions": 4, "encoding_format": "base64"}).encode(),
        {"Authorization": "Bearer test", "Content-Type": "application/json"})
    assert status == 200
    decoded = struct.unpack("<4f", base64.b64decode(body["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(embedding_vector("abc", 4), abs=1e-6)


def test_models_list_and_retrieve(api: openai.OpenAI) -> None:
    ids = [m.id for m in api.models.list()]
    assert CHAT in ids and EMBED in ids
    model = api.models.retrieve(CHAT)
    assert model.id == CHAT and model.object == "model" and model.owned_by == "system"
    with pytest.raises(openai.NotFoundError) as caught:
        api.models.retrieve("gpt-nonexistent")
    assert caught.value.code == "model_not_found"


def test_unknown_models_can_be_refused() -> None:
    with OpenAIServer(reject_unknown_models=True) as srv:
        api = client(srv)
        assert ask(api).choices  # a listed model
        with pytest.raises(openai.NotFoundError) as caught:
            api.chat.completions.create(model="gpt-typo", messages=[{"role": "user", "content": "x"}])
        assert caught.value.code == "model_not_found" and "gpt-typo" in caught.value.message
        assert srv.stats()["errors"] == {"model_not_found": 1}


def test_missing_key_unknown_url_and_bad_json_on_the_wire(server: OpenAIServer) -> None:
    status, body = raw_post(server.base_url + "/chat/completions", b"{}", {"Content-Type": "application/json"})
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and "didn't provide an API key" in body["error"]["message"]
    status, body = raw_post(server.url + "/v1/nothing", b"{}", {"Authorization": "Bearer test"})
    assert status == 404 and body["error"]["message"] == "Invalid URL (POST /v1/nothing)"
    status, body = raw_post(server.base_url + "/chat/completions", b"not json", {"Authorization": "Bearer test"})
    assert status == 400 and "could not parse the JSON body" in body["error"]["message"]


def test_api_keys_restrict_who_is_served() -> None:
    with OpenAIServer(api_keys={"sk-good"}) as srv:
        good = openai.OpenAI(base_url=srv.base_url, api_key="sk-good", max_retries=0)
        bad = openai.OpenAI(base_url=srv.base_url, api_key="sk-wrong-key-123", max_retries=0)
        assert ask(good).choices
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(bad)
        assert caught.value.code == "invalid_api_key" and "sk-wrong-key-123" not in caught.value.message
        assert srv.stats()["errors"] == {"invalid_api_key": 1}
        assert srv.stats()["faults"]["unauthorized"] == 0  # refused, not injected


# ---------------------------------------------------------------------- context length


def test_context_length_exceeded_is_openais_400() -> None:
    with OpenAIServer(context_tokens=50) as srv:
        api = client(srv)
        assert ask(api, "x" * 150).choices  # 38 tokens fit
        with pytest.raises(openai.BadRequestError) as caught:
            ask(api, "x" * 400)
        exc = caught.value
        assert exc.status_code == 400 and exc.code == "context_length_exceeded"
        assert exc.type == "invalid_request_error" and exc.param == "messages"
        assert exc.message.startswith("Error code: 400")
        assert "maximum context length is 50 tokens" in exc.message and "101 tokens" in exc.message
        body = exc.response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        with pytest.raises(openai.BadRequestError) as caught:
            ask(api, "x" * 150, max_tokens=20)  # 38 + 20 > 50: the completion counts too
        assert caught.value.code == "context_length_exceeded" and "(38 in the messages, 20 in" in caught.value.message
        assert srv.stats()["errors"]["context_length_exceeded"] == 2


def test_embedding_input_over_the_limit_is_refused() -> None:
    with OpenAIServer(embedding_context_tokens=10) as srv:
        with pytest.raises(openai.BadRequestError) as caught:
            client(srv).embeddings.create(model=EMBED, input=["short", "y" * 100])
        assert caught.value.code == "context_length_exceeded" and caught.value.param == "input"


# ---------------------------------------------------------------------- faults

FAULT_CASES: list[tuple[dict[str, Any], type[openai.APIStatusError], set[int], str | None, str, str]] = [
    ({"error_rate": 1.0}, openai.InternalServerError, {500, 502, 503}, None, "server_error", "injected_5xx"),
    ({"rate_limit_rate": 1.0}, openai.RateLimitError, {429}, "rate_limit_exceeded", "requests", "rate_limited"),
    ({"insufficient_quota": True}, openai.RateLimitError, {429}, "insufficient_quota", "insufficient_quota",
     "insufficient_quota"),
    ({"unauthorized": True}, openai.AuthenticationError, {401}, "invalid_api_key", "invalid_request_error",
     "unauthorized"),
    ({"down": True}, openai.InternalServerError, {503}, None, "server_error", "down"),
]


@pytest.mark.parametrize(("faults", "error", "statuses", "code", "type_", "counter"), FAULT_CASES,
                         ids=[c[-1] for c in FAULT_CASES])
def test_each_fault_raises_the_clients_exception_class(
        server: OpenAIServer, api: openai.OpenAI, faults: dict[str, Any], error: type[openai.APIStatusError],
        statuses: set[int], code: str | None, type_: str, counter: str) -> None:
    server.faults.update(**faults)
    with pytest.raises(error) as caught:
        ask(api)
    exc = caught.value
    assert type(exc) is error
    assert exc.status_code in statuses and exc.code == code and exc.type == type_
    body = exc.response.json()
    assert body == {"error": {"message": body["error"]["message"], "type": type_, "param": None, "code": code}}
    assert exc.body == body["error"]
    stats = server.stats()
    assert stats["faults"] == {kind: int(kind == counter) for kind in FAULT_KINDS}
    assert stats["successes"] == 0 and stats["statuses"] == {exc.status_code: 1}


def test_rate_limit_carries_retry_after_and_ratelimit_headers(server: OpenAIServer, api: openai.OpenAI) -> None:
    server.faults.update(rate_limit_rate=1.0, retry_after=2.5)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(api)
    headers = caught.value.response.headers
    assert headers["retry-after"] == "3" and headers["retry-after-ms"] == "2500"
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-reset-requests"] == "2.5s"
    assert "Please try again in 2.5s" in caught.value.message


def test_insufficient_quota_has_no_retry_after(server: OpenAIServer, api: openai.OpenAI) -> None:
    server.faults.insufficient_quota = True
    with pytest.raises(openai.RateLimitError) as caught:
        ask(api)
    assert "retry-after" not in caught.value.response.headers
    assert "exceeded your current quota" in caught.value.message


def test_openai_client_retries_honour_retry_after_ms(server: OpenAIServer) -> None:
    # Like OpenAI, the server sends no x-should-retry: the client's own retries retry every 429,
    # insufficient_quota included, so mailpipe runs the client with max_retries=0 and classifies.
    server.faults.update(rate_limit_rate=1.0, retry_after=0.2)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        ask(client(server, max_retries=1))
    assert time.monotonic() - started >= 0.2
    assert server.stats()["faults"]["rate_limited"] == 2
    server.reset_stats()
    server.faults.update(rate_limit_rate=0.0, insufficient_quota=True)
    with pytest.raises(openai.RateLimitError):
        ask(client(server, max_retries=1))
    assert server.stats()["faults"]["insufficient_quota"] == 2


def test_down_then_up(server: OpenAIServer, api: openai.OpenAI) -> None:
    assert outcome(api) == "ok"
    server.faults.down = True
    assert outcome(api) == "InternalServerError:503"
    server.faults.down_mode = "reset"
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(api)
    assert type(caught.value) is openai.APIConnectionError  # a reset, not a timeout
    with pytest.raises(openai.APIConnectionError):
        api.embeddings.create(model=EMBED, input="x")
    server.faults.down = False
    assert outcome(api) == "ok"
    stats = server.stats()
    assert stats["faults"]["down"] == 3 and stats["successes"] == 2
    assert stats["statuses"] == {200: 2, 503: 1, 0: 2}  # 0: no answer at all


def test_stall_longer_than_the_client_timeout_is_api_timeout_error() -> None:
    srv = OpenAIServer(faults=Faults(stall=10.0)).start()
    try:
        api = client(srv, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(api)
        assert time.monotonic() - started < 2.0
        assert srv.stats()["faults"]["stalled"] == 1 and srv.stats()["in_flight"] == 1  # still hanging
        srv.faults.stall = 0.0
        assert outcome(api) == "ok"
    finally:
        started = time.monotonic()
        srv.stop()  # wakes the stalled call rather than waiting it out
        assert time.monotonic() - started < 2.0


def test_stall_shorter_than_the_timeout_only_delays(server: OpenAIServer, api: openai.OpenAI) -> None:
    server.faults.update(stall=0.3, stall_rate=1.0)
    started = time.monotonic()
    assert outcome(api) == "ok"
    assert time.monotonic() - started >= 0.3
    assert server.stats()["faults"]["stalled"] == 1


def test_latency_delays_every_call(server: OpenAIServer, api: openai.OpenAI) -> None:
    server.faults.latency = 0.2
    started = time.monotonic()
    api.models.list()
    assert time.monotonic() - started >= 0.2


def test_requests_per_minute_is_a_rolling_window() -> None:
    now = [1000.0]
    with OpenAIServer(faults=Faults(requests_per_minute=3), clock=lambda: now[0]) as srv:
        api = client(srv)
        remaining = []
        for _ in range(3):
            raw = api.chat.completions.with_raw_response.create(model=CHAT, messages=[{"role": "user", "content": "x"}])
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            now[0] += 10
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as caught:
            ask(api)
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["retry-after"] == "30"  # the first call leaves the window at 1060
        now[0] = 1060.0
        assert outcome(api) == "ok"
        assert outcome(api) == "RateLimitError:429"  # the second call (1010) is still in the window
        assert srv.stats()["faults"]["rpm_limited"] == 2


def test_max_in_flight_counts_concurrent_calls(server: OpenAIServer, api: openai.OpenAI) -> None:
    threads_n = 12
    release = threading.Event()

    def gated(body: dict[str, Any]) -> str:  # every call waits inside the server until released
        release.wait(10)
        return "done"

    server.responder = gated
    results: list[str] = []

    def call() -> None:
        try:
            results.append(outcome(api))
        except Exception as exc:  # recorded, so the assertion below shows it
            results.append(repr(exc))

    threads = [threading.Thread(target=call) for _ in range(threads_n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while server.stats()["in_flight"] < threads_n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats()["in_flight"] == threads_n
    release.set()
    for t in threads:
        t.join(10)
    assert results == ["ok"] * threads_n
    stats = server.stats()
    assert stats["max_in_flight"] == threads_n and stats["in_flight"] == 0
    server.reset_stats()
    for _ in range(3):
        outcome(api)
    assert server.stats()["max_in_flight"] == 1


def test_a_seed_makes_the_fault_sequence_reproducible() -> None:
    def sequence(seed: int) -> list[str]:
        with OpenAIServer(faults=Faults(error_rate=0.3, rate_limit_rate=0.2, seed=seed)) as srv:
            api = client(srv)
            return [outcome(api) for _ in range(30)]

    first = sequence(42)
    assert first == sequence(42)
    assert first != sequence(43)
    assert {"ok", "RateLimitError:429"} <= set(first)
    assert any(o.startswith("InternalServerError:5") for o in first)


def test_reseed_restarts_the_sequence(server: OpenAIServer, api: openai.OpenAI) -> None:
    server.faults.update(error_rate=0.5, seed=7)
    first = [outcome(api) for _ in range(12)]
    server.faults.reseed(7)
    assert [outcome(api) for _ in range(12)] == first


def test_faults_update_refuses_bad_values_and_unknown_names() -> None:
    faults = Faults()
    with pytest.raises(ValueError):
        faults.update(error_rate=0.5, rate_limit_rate=1.5)
    assert faults.error_rate == 0.0  # nothing changed
    with pytest.raises(ValueError):
        faults.update(down_mode="refuse")
    with pytest.raises(TypeError):
        faults.update(eror_rate=0.5)
    with pytest.raises(ValueError):
        Faults(down_mode="nope")  # type: ignore[arg-type]


def test_a_responder_bug_is_a_500_not_a_dropped_connection() -> None:
    def broken(body: dict[str, Any]) -> str:
        raise RuntimeError("boom")

    with OpenAIServer(responder=broken) as srv:
        with pytest.raises(openai.InternalServerError) as caught:
            ask(client(srv))
        assert "boom" in caught.value.message
        assert srv.stats()["errors"] == {"server_bug": 1}


def test_reset_stats_forgets_counters(server: OpenAIServer, api: openai.OpenAI) -> None:
    ask(api)
    api.models.list()
    assert server.stats()["calls_total"] == 2
    server.reset_stats()
    stats = server.stats()
    assert stats["calls"] == {"chat.completions": 0, "embeddings": 0, "models": 0}
    assert stats["calls_total"] == stats["successes"] == stats["prompt_tokens"] == stats["max_in_flight"] == 0


# ---------------------------------------------------------------------- command line


def test_command_line_serves_until_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.testing.openai_server", "--port", "0",
                             "--error-rate", "1.0", "--seed", "3"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        info = json.loads(proc.stdout.readline())
        api = openai.OpenAI(base_url=info["base_url"], api_key=info["api_key"], max_retries=0)
        with pytest.raises(openai.InternalServerError):
            ask(api)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        stats = json.loads(proc.stderr.read().strip().splitlines()[-1])["stats"]
        assert stats["faults"]["injected_5xx"] == 1 and stats["calls"]["chat.completions"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
