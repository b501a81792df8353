"""Who may call the web API: bearer tokens scoped to one account, and signed sync triggers.

Tokens. `mailpipe accounts token ACCOUNT` makes one: "mpt_" and 32 random bytes (base64url), shown once.
Only its SHA-256 is stored; a plain hash is enough for a secret of 256 random bits (no guessing to slow
down), and a lookup by hash compares nothing secret in Python. A token reaches its own account's data
and nothing else; revoking it takes effect at the next request.

Signed triggers (webhooks). `POST /v1/accounts/{account}/sync` may instead carry
`X-Mailpipe-Timestamp: <unix seconds>` and `X-Mailpipe-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>">` keyed with the account's webhook secret (`mailpipe accounts webhook-secret ACCOUNT`).
A timestamp more than the tolerance (5 minutes) away from the server's clock is refused, and each
signature is accepted once: it is remembered (Redis with an expiry when there is Redis, else the
`seen_signatures` table) for as long as its timestamp stays inside the tolerance.

The webhook secret is derived, not stored: HMAC-SHA256(MAILPIPE_SECRET_KEY, "mailpipe webhook v1" + the
account's address). Derivation means (1) a signature is verified without reading the database, so a
flood of forged requests is turned away before it costs PostgreSQL anything, (2) no second secret per
account to store encrypted and back up, (3) rotation follows the secret key's: with
MAILPIPE_SECRET_KEY=new,old, signatures made with either derived secret pass until the old key is
dropped. The price: one account's webhook secret cannot be revoked alone (rotate the key; tokens,
which can, are per account). The label keeps the Fernet key from ever being used as an HMAC key
directly, and the address in the derivation gives every account its own secret, so a signature for one
account is worthless for any other.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from sqlalchemy import Connection, Engine, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipeline.errors import AuthError, ConfigError
from pipeline.settings import Settings
from pipeline.storage.db import reading, transaction
from pipeline.storage.models import ApiToken, SeenSignature

TOKEN_PREFIX = "mpt_"
WEBHOOK_SECRET_PREFIX = "mpw_"
TIMESTAMP_HEADER = "X-Mailpipe-Timestamp"
SIGNATURE_HEADER = "X-Mailpipe-Signature"
_DERIVATION_LABEL = b"mailpipe webhook v1\x00"


# ---------------------------------------------------------------- bearer tokens


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: int
    account_id: int
    token: str  # shown once; only its hash is kept
    prefix: str
    name: str


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def issue_token(engine: Engine, account_id: int, name: str = "") -> IssuedToken:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    prefix = token[:10]
    with transaction(engine) as s:
        token_id = s.execute(
            pg_insert(ApiToken).values(account_id=account_id, token_hash=token_digest(token), prefix=prefix, name=name)
            .returning(ApiToken.id)
        ).scalar_one()
    return IssuedToken(int(token_id), account_id, token, prefix, name)


def list_tokens(engine: Engine, account_id: int) -> list[dict[str, Any]]:
    with transaction(engine) as s:
        rows = s.execute(select(ApiToken).where(ApiToken.account_id == account_id).order_by(ApiToken.id)).scalars()
        return [{"id": t.id, "prefix": t.prefix, "name": t.name, "created_at": t.created_at.isoformat(),
                 "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None} for t in rows]


def revoke_token(engine: Engine, account_id: int, token_id: int) -> bool:
    with transaction(engine) as s:
        done = s.execute(
            update(ApiToken).where(ApiToken.id == token_id, ApiToken.account_id == account_id,
                                   ApiToken.revoked_at.is_(None))
            .values(revoked_at=func.now()).returning(ApiToken.id)
        ).scalar()
    return done is not None


# Built once: it runs before every request, and building it anew was a fifth of the check's time in
# the web server (py-spy, api-scale at 1M).
_LIVE_TOKEN_ACCOUNT = select(ApiToken.account_id).where(ApiToken.token_hash == bindparam("digest"),
                                                        ApiToken.revoked_at.is_(None))


def account_for_token(bind: Engine | Connection, token: str) -> int:
    """The account a bearer token belongs to; AuthError when it is not a live token. One statement, no
    transaction around it (it runs before every request); on the given connection, if one is given."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        raise AuthError("not a mailpipe API token")
    with reading(bind) as conn:
        account_id = conn.execute(_LIVE_TOKEN_ACCOUNT, {"digest": token_digest(token)}).scalar()
    if account_id is None:
        raise AuthError("unknown or revoked API token")
    return int(account_id)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is no such header."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return value.strip()


# ---------------------------------------------------------------- signed triggers


def _secret_keys(settings: Settings) -> list[str]:
    keys = [k.strip() for k in (settings.secret_key or "").split(",") if k.strip()]
    if not keys:
        raise ConfigError("signed triggers need MAILPIPE_SECRET_KEY (their secrets are derived from it)")
    return keys


def _derive(key: str, email: str) -> str:
    digest = hmac.new(key.encode(), _DERIVATION_LABEL + email.strip().lower().encode(), hashlib.sha256)
    return WEBHOOK_SECRET_PREFIX + digest.hexdigest()


def webhook_secret(settings: Settings, email: str) -> str:
    """The account's current webhook secret (from the newest secret key)."""
    return _derive(_secret_keys(settings)[0], email)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Mailpipe-Signature value for a body sent at `timestamp`: what a caller computes."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    digest: bytes  # names this signature in the replay store
    remember_seconds: float  # how long its timestamp stays acceptable, so how long a replay must be refused


def verify_signature(settings: Settings, email: str, timestamp: str | None, signature: str | None, body: bytes,
                     now: float) -> VerifiedSignature:
    """Check a signed trigger's timestamp and signature (constant time); AuthError on anything wrong.

    It does not check replay: pass the result to a ReplayGuard.
    """
    if not timestamp or not signature:
        raise AuthError(f"a signed request needs both {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}")
    try:
        ts = int(timestamp.strip())
    except ValueError:
        raise AuthError(f"{TIMESTAMP_HEADER} must be whole unix seconds") from None
    tolerance = settings.web_signature_tolerance_seconds
    if abs(now - ts) > tolerance:
        raise AuthError(f"{TIMESTAMP_HEADER} is more than {tolerance} s from the server's clock (expired or "
                        "clock skew): sign the request again")
    scheme, _, given = signature.strip().partition("=")
    if scheme != "sha256" or not given:
        raise AuthError(f"{SIGNATURE_HEADER} must be 'sha256=<hex>'")
    given = given.strip().lower()
    try:
        keys = _secret_keys(settings)
    except ConfigError:
        raise AuthError("signed requests are not enabled on this server (no MAILPIPE_SECRET_KEY)") from None
    # Every key is tried (rotation) and every comparison made, so timing tells nothing about which matched.
    matched = False
    for key in keys:
        expected = sign(_derive(key, email), ts, body).partition("=")[2]
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise AuthError("signature does not match")
    digest = hashlib.sha256(email.strip().lower().encode() + b"\x00" + given.encode()).digest()
    return VerifiedSignature(digest, max(1.0, ts + tolerance - now + 1.0))


class ReplayGuard(Protocol):
    def first_use(self, signature: VerifiedSignature) -> bool:
        """Record the signature; False when it was already recorded (a replay)."""
        ...


def check_replay(guard: ReplayGuard, signature: VerifiedSignature) -> None:
    if not guard.first_use(signature):
        raise AuthError("this signature was already used: sign every request anew")


class RedisReplayGuard:
    """Seen signatures as Redis keys that expire when their timestamp leaves the tolerance."""

    def __init__(self, client: redis.Redis, prefix: str = "mailpipe:seen-signature:") -> None:
        self.client, self.prefix = client, prefix

    def first_use(self, signature: VerifiedSignature) -> bool:
        key = self.prefix + signature.digest.hex()
        return bool(self.client.set(key, b"1", nx=True, px=int(signature.remember_seconds * 1000)))


class PostgresReplayGuard:
    """Seen signatures in `seen_signatures`; expired rows are purged now and then by the inserts."""

    PURGE_ONE_IN = 50

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def first_use(self, signature: VerifiedSignature) -> bool:
        with transaction(self.engine) as s:
            expires = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, signature.remember_seconds)
            stmt = pg_insert(SeenSignature).values(digest=signature.digest, expires_at=expires)
            fresh = s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[SeenSignature.digest], set_={"expires_at": stmt.excluded.expires_at},
                    where=SeenSignature.expires_at < func.now(),
                ).returning(SeenSignature.digest)
            ).first()
            if random.randrange(self.PURGE_ONE_IN) == 0:
                s.execute(delete(SeenSignature).where(SeenSignature.expires_at < func.now()))
        return fresh is not None


# ---------------------------------------------------------------- Gmail push (Pub/Sub)


def verify_push(settings: Settings, token: str | None, authorization: str | None) -> None:
    """Authenticate a Pub/Sub push: the subscription URL's ?token= against MAILPIPE_PUSH_TOKEN (constant time),
    and, when MAILPIPE_PUSH_AUDIENCE is set, the OIDC token Pub/Sub sends as a bearer.

    That token's signature is checked with google-auth (`id_token.verify_token`) only when
    MAILPIPE_PUSH_JWT_CERTS_URL says where the signing certificates are (Google's:
    https://www.googleapis.com/oauth2/v1/certs); without it only its audience is compared, which proves
    nothing by itself: the ?token= secret is then what authenticates the request.
    """
    expected = settings.push_token.get_secret_value() if settings.push_token else None
    if not expected:
        raise AuthError("Gmail push is not enabled on this server (no MAILPIPE_PUSH_TOKEN)")
    if not hmac.compare_digest((token or "").encode(), expected.encode()):
        raise AuthError("push token missing or wrong")
    jwt_token = bearer_token(authorization)
    if jwt_token is None:
        if settings.push_audience:
            raise AuthError("push requests must carry Pub/Sub's OIDC token (MAILPIPE_PUSH_AUDIENCE is set)")
        return
    claims = _push_claims(settings, jwt_token)
    if settings.push_audience and claims.get("aud") != settings.push_audience:
        raise AuthError("the push token's audience is not this endpoint's")


def _push_claims(settings: Settings, jwt_token: str) -> dict[str, Any]:
    from google.auth import exceptions as google_exceptions
    from google.auth import jwt

    try:
        if settings.push_jwt_certs_url:
            import google.auth.transport.requests
            from google.oauth2 import id_token

            request = google.auth.transport.requests.Request()
            return dict(id_token.verify_token(jwt_token, request, audience=settings.push_audience,
                                              certs_url=settings.push_jwt_certs_url))
        return dict(jwt.decode(jwt_token, verify=False))
    except (ValueError, google_exceptions.GoogleAuthError) as exc:
        raise AuthError(f"the push OIDC token is not valid: {exc}") from None


__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "IssuedToken",
    "PostgresReplayGuard",
    "RedisReplayGuard",
    "ReplayGuard",
    "VerifiedSignature",
    "account_for_token",
    "bearer_token",
    "check_replay",
    "issue_token",
    "list_tokens",
    "revoke_token",
    "sign",
    "token_digest",
    "verify_push",
    "verify_signature",
    "webhook_secret",
]
