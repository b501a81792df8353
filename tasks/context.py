"""Per-process resources for workers: settings, the engine, the embedder, the insight LLM (made after fork,
lazily)."""

from __future__ import annotations

import os
from collections import OrderedDict
from functools import cache
from typing import Any

from sqlalchemy import Engine

from pipeline.settings import Settings, get_settings
from pipeline.stages.embed import EmbeddingTools, tools_for
from pipeline.stages.insight import InsightTools, insight_tools_for
from pipeline.storage.db import database_url, engine_for


@cache
def resolved_database_url() -> str:
    return database_url(get_settings())


def settings() -> Settings:
    return get_settings()


def engine() -> Engine:
    return engine_for(resolved_database_url(), pool_size=2)


@cache
def embedding_tools() -> EmbeddingTools:
    s = get_settings()
    # Worker children share the cores; one torch thread each keeps them from fighting.
    threads = max(1, (os.cpu_count() or 1) // max(1, s.worker_concurrency))
    tools = tools_for(s, engine(), threads=threads)
    if tools is None:
        raise RuntimeError("embedding tools asked for with MAILPIPE_EMBEDDER=none")
    return tools


@cache
def insight_tools() -> InsightTools:
    """The insight stage's settings and, in LLM mode, its chat model client (one per process)."""
    return insight_tools_for(get_settings(), engine())


# Accounts whose Gmail clients one process keeps. Every account's windows share the ingest processes, so
# a process that kept one client built another for nearly every window of a multi-account sync: each
# new client refreshes its access token (an HTTP call) and opens its connection before its first get.
GMAIL_CLIENTS_KEPT = 16
_gmail_clients: OrderedDict[tuple[int, bytes], Any] = OrderedDict()


def gmail_client(account_id: int) -> Any:
    """This process's GmailClient for the account (httplib2 connections are per process).

    Keyed by the stored grant too: a re-connected account gets a new client, never the old one's.
    """
    from sqlalchemy import select

    from pipeline.accounts import gmail_client as make_client
    from pipeline.storage.db import transaction
    from pipeline.storage.models import Account

    with transaction(engine()) as s:
        blob = s.execute(select(Account.gmail_credentials).where(Account.id == account_id)).scalar() or b""
    key = (account_id, blob)
    client = _gmail_clients.get(key)
    if client is not None:
        _gmail_clients.move_to_end(key)
        return client
    forget_gmail_client(account_id)  # the account's client for a grant it no longer has
    client = _gmail_clients[key] = make_client(engine(), get_settings(), account_id)
    while len(_gmail_clients) > GMAIL_CLIENTS_KEPT:
        _gmail_clients.popitem(last=False)  # the least recently used
    return client


def forget_gmail_client(account_id: int) -> None:
    """Drop the account's client (after an error, so a reset connection or new grant is used afresh)."""
    for key in [k for k in _gmail_clients if k[0] == account_id]:
        del _gmail_clients[key]
