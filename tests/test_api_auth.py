"""The web API's domain pieces without a server: signatures, the PostgreSQL replay store, tokens, push
verification without certificates, cursors."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text

from pipeline.api_auth import (
    PostgresReplayGuard,
    VerifiedSignature,
    account_for_token,
    bearer_token,
    check_replay,
    issue_token,
    revoke_token,
    sign,
    verify_push,
    verify_signature,
    webhook_secret,
)
from pipeline.credentials import new_key
from pipeline.errors import AuthError, BadInputError
from pipeline.pages import decode_cursor, encode_cursor
from pipeline.runs import ensure_account
from pipeline.settings import Settings

EMAIL = "me@example.com"


@pytest.fixture
def settings() -> Settings:
    return Settings(secret_key=new_key(), web_signature_tolerance_seconds=300)


def test_a_signature_verifies_only_for_its_account_body_and_time(settings: Settings) -> None:
    now = time.time()
    ts = int(now)
    secret = webhook_secret(settings, EMAIL)
    assert secret.startswith("mpw_") and secret != webhook_secret(settings, "other@example.com")
    good = sign(secret, ts, b"{}")
    verified = verify_signature(settings, EMAIL, str(ts), good, b"{}", now)
    assert 300 <= verified.remember_seconds <= 302
    # The address is case-insensitive, like the accounts table.
    assert verify_signature(settings, "Me@Example.com", str(ts), good, b"{}", now).digest == verified.digest
    for email, body, at in (("other@example.com", b"{}", now), (EMAIL, b"{ }", now), (EMAIL, b"{}", now + 301),
                            (EMAIL, b"{}", now - 301)):
        with pytest.raises(AuthError):
            verify_signature(settings, email, str(ts), good, body, at)


def test_a_rotated_key_keeps_old_signatures_valid_until_dropped(settings: Settings) -> None:
    old = settings.secret_key or ""
    rotated = Settings(secret_key=f"{new_key()},{old}")
    now = time.time()
    signature = sign(webhook_secret(settings, EMAIL), int(now), b"")
    verify_signature(rotated, EMAIL, str(int(now)), signature, b"", now)  # old secret: still accepted
    assert webhook_secret(rotated, EMAIL) != webhook_secret(settings, EMAIL)  # new one handed out
    with pytest.raises(AuthError):
        verify_signature(Settings(secret_key=new_key()), EMAIL, str(int(now)), signature, b"", now)
    with pytest.raises(AuthError, match="not enabled"):
        verify_signature(Settings(secret_key=None), EMAIL, str(int(now)), signature, b"", now)


def test_the_postgres_replay_store_accepts_a_signature_once_until_it_expires(engine: Engine) -> None:
    guard = PostgresReplayGuard(engine)
    signature = VerifiedSignature(b"\x01" * 32, 300.0)
    check_replay(guard, signature)
    with pytest.raises(AuthError, match="already used"):
        check_replay(guard, signature)
    assert guard.first_use(VerifiedSignature(b"\x02" * 32, 300.0))
    with engine.begin() as conn:  # past its window the row no longer blocks (the timestamp check refuses it first)
        conn.execute(text("UPDATE seen_signatures SET expires_at = now() - interval '1 second'"))
    assert guard.first_use(signature)
    assert not guard.first_use(signature)


def test_tokens_are_stored_hashed_scoped_and_revocable(engine: Engine) -> None:
    a = ensure_account(engine, "a@example.com", [], kind="gmail")
    b = ensure_account(engine, "b@example.com", [], kind="gmail")
    token_a, token_b = issue_token(engine, a, "ci"), issue_token(engine, b)
    assert account_for_token(engine, token_a.token) == a and account_for_token(engine, token_b.token) == b
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM api_tokens ORDER BY id")).scalars().all()
    assert all(len(h) == 32 and token_a.token.encode() not in h for h in stored)
    assert not revoke_token(engine, b, token_a.id)  # one account cannot revoke another's token
    assert revoke_token(engine, a, token_a.id)
    for bad in (token_a.token, "mpt_" + "x" * 43, "not-a-token"):
        with pytest.raises(AuthError):
            account_for_token(engine, bad)


@pytest.mark.parametrize("header,expected", [(None, None), ("Bearer abc", "abc"), ("bearer  abc ", "abc")])
def test_bearer_header_parsing(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Token abc"])
def test_a_non_bearer_authorization_is_refused(header: str) -> None:
    with pytest.raises(AuthError):
        bearer_token(header)


def _unsigned_jwt(aud: str) -> str:
    import base64
    import json

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part({'aud': aud, 'exp': int(time.time()) + 60})}.c2ln"


def test_push_without_certificates_checks_the_token_and_the_audience_only() -> None:
    assert_refused = pytest.raises(AuthError)
    with assert_refused:
        verify_push(Settings(push_token=None), "anything", None)  # not enabled: nothing is accepted
    plain = Settings(push_token="s3cret")
    verify_push(plain, "s3cret", None)
    with pytest.raises(AuthError):
        verify_push(plain, "s3cre", None)
    strict = Settings(push_token="s3cret", push_audience="https://me.example/push")
    verify_push(strict, "s3cret", "Bearer " + _unsigned_jwt("https://me.example/push"))
    for authorization in (None, "Bearer " + _unsigned_jwt("https://other.example/push"), "Bearer junk"):
        with pytest.raises(AuthError):
            verify_push(strict, "s3cret", authorization)


def test_cursors_round_trip_and_refuse_other_lists() -> None:
    cursor = encode_cursor("contacts", [1.2345678901234567, 42])
    assert decode_cursor(cursor, "contacts", 2) == [1.2345678901234567, 42]
    assert decode_cursor(None, "contacts", 2) is None
    for bad, kind in ((cursor, "threads"), (cursor + "!!", "contacts"), ("e30", "contacts"), ("", "contacts")):
        with pytest.raises(BadInputError):
            decode_cursor(bad, kind, 2)
