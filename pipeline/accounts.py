"""Gmail accounts: connecting (the grant, encrypted), listing, removing, needs-reauth, API clients."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipeline.credentials import OAuthGrant, TokenCipher
from pipeline.errors import BadInputError, ConfigError
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import Account, Message

ACTIVE, NEEDS_REAUTH = "active", "needs_reauth"


class AccountNotFound(BadInputError):
    """No account with that address."""


class NeedsReauth(ConfigError):
    """Gmail refused the account's grant; the user has to connect it again."""


@dataclass(frozen=True, slots=True)
class AccountInfo:
    email: str
    kind: str
    status: str
    status_reason: str | None
    messages: int
    history_id: int | None
    last_synced_at: datetime | None
    connected: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def connect_account(engine: Engine, cipher: TokenCipher, email: str, grant: OAuthGrant) -> int:
    """Store (or replace) the account's grant; a re-connected account is active again."""
    email = email.strip().lower()
    blob = cipher.encrypt(grant)
    with transaction(engine) as s:
        stmt = pg_insert(Account).values(email=email, kind="gmail", own_addresses=[email], gmail_credentials=blob)
        return int(s.execute(
            stmt.on_conflict_do_update(
                index_elements=[Account.email],
                set_={"kind": "gmail", "gmail_credentials": blob, "status": ACTIVE, "status_reason": None},
            ).returning(Account.id)
        ).scalar_one())


def list_accounts(engine: Engine) -> list[AccountInfo]:
    with transaction(engine) as s:
        counts = dict(s.execute(select(Message.account_id, func.count()).group_by(Message.account_id)).all())
        return [
            AccountInfo(a.email, a.kind, a.status, a.status_reason, int(counts.get(a.id, 0)), a.history_id,
                        a.last_synced_at, a.gmail_credentials is not None)
            for a in s.execute(select(Account).order_by(Account.email)).scalars()
        ]


def remove_account(engine: Engine, email: str) -> int:
    """Delete the account and everything stored for it; returns the messages removed."""
    account_id = account_id_for(engine, email)
    with transaction(engine) as s:
        n = s.execute(select(func.count()).select_from(Message).where(Message.account_id == account_id)).scalar_one()
        s.execute(delete(Account).where(Account.id == account_id))
    return int(n)


def account_id_for(engine: Engine, email: str) -> int:
    with transaction(engine) as s:
        found = s.execute(select(Account.id).where(Account.email == email.strip().lower())).scalar()
    if found is None:
        raise AccountNotFound(f"no account {email!r}; see `mailpipe accounts list`")
    return int(found)


def load_grant(engine: Engine, cipher: TokenCipher, account_id: int) -> OAuthGrant:
    with transaction(engine) as s:
        account = s.get_one(Account, account_id)
        if account.status == NEEDS_REAUTH:
            raise NeedsReauth(reauth_advice(account.email, account.status_reason))
        if account.gmail_credentials is None:
            raise ConfigError(f"{account.email} is not connected to Gmail; run `mailpipe accounts add {account.email}`")
        blob = account.gmail_credentials
    return cipher.decrypt(blob)


def mark_needs_reauth(engine: Engine, account_id: int, reason: str) -> None:
    with transaction(engine) as s:
        s.execute(update(Account).where(Account.id == account_id).values(status=NEEDS_REAUTH, status_reason=reason))


def reauth_advice(email: str, reason: str | None) -> str:
    return (f"{email} needs to be connected again ({reason or 'Gmail refused its grant'}): "
            f"run `mailpipe accounts add {email} --client-secrets FILE`")


def quota_key(account_id: int) -> str:
    """The account's bucket in the shared Gmail quota budget (`pipeline.resilience.quota`)."""
    return f"account:{account_id}"


def gmail_client(engine: Engine, settings: Settings, account_id: int) -> Any:
    """A GmailClient for the account, spending from the account's shared quota budget."""
    from dataclasses import replace

    from pipeline.resilience.breakers import GMAIL, breakers_for
    from pipeline.resilience.quota import CostTable, budget_for, effective_batch_size
    from pipeline.sources.gmail import GmailClient, GmailConfig

    grant = load_grant(engine, TokenCipher.from_settings(settings), account_id)
    costs = CostTable.for_regime(settings.gmail_regime, settings.gmail_quota_per_minute)
    config = GmailConfig.from_settings(settings)
    config = replace(config, batch_size=effective_batch_size(costs, config.batch_size))
    return GmailClient(grant, config, budget_for(settings, engine), costs, quota_key(account_id),
                       breaker=breakers_for(settings, engine).get(GMAIL))


__all__ = [
    "AccountInfo",
    "AccountNotFound",
    "NeedsReauth",
    "account_id_for",
    "connect_account",
    "gmail_client",
    "list_accounts",
    "load_grant",
    "mark_needs_reauth",
    "quota_key",
    "reauth_advice",
    "remove_account",
]
