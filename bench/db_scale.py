"""Database scale (issue #7, `db-scale`): every hot query of the product over 1M messages in 100 accounts.

    python -m bench.db_scale --messages 1000000 --accounts 100 [--data DIR] [--reps 100] \\
        [--shared-buffers-mb N] [--report docs/PERFORMANCE.md] [--json]

**Data.** The schema is made by the Alembic migrations (`pipeline.storage.db.migrate`), then filled with
psycopg 3 `COPY ... FROM STDIN (FORMAT BINARY)`, account after account: each account's mail is a
`bench.generate` stream of its own (seeded by the account: its own correspondents, threads, labels,
bodies, raw RFC 5322 bytes, dates over three years), stored the way the stages store it: sync runs and
windows of `--window-size` messages (a Gmail account's full sync, then one small incremental run per
sync; an mbox account's import), window items (raw dropped once ingested), duplicates and failed
items, threads, messages, contacts with their counters and rank, message participants, contact
threads, one embedding chunk per ~1000 characters (384-dim vectors clustered as a model would place
them: a centre per topic, a point per thread near it, each chunk near its thread), rules insights for
40% of the threads, and failures: failed items, and on every tenth account windows whose embed or
insight stage an AI outage left owed (the enrichment sweep's work). Every twentieth account has a
run still going, with open windows in each state (ingest pending, ingest running and stalled, embed
pending, contacts and embed running) for the back-pressure, watchdog and stage-limit queries.
Secondary indexes are dropped for the load and built after it from their own definitions (the HNSW
index last, with more `maintenance_work_mem`), then `VACUUM ANALYZE`, as after any bulk load.
`--data DIR` keeps the database; a rerun reuses it (and applies any newer migration to it).
`--shared-buffers-mb`: the server's shared buffers when this run starts it (default: the product's for
the embedded server, a quarter of the memory up to 1 GB; a server holding 1M messages is sized by its
operator, and the report states the value used).

**Queries.** Each case calls the product's own function (`pipeline.reports.status`, `run_progress`,
the driver's and the stages' claim/dispatch queries, `owed_enrichment`, `top_contacts`,
`thread_detail`, `insight_rows`, `pipeline.search.search` with an embedder returning a known vector)
with parameters drawn at random from the data (accounts, runs, windows, threads, query vectors near
stored chunks with words of their message's subject). Timing: `--reps` calls after a warm-up
(wall clock of the whole function: its round trips included). Plans: the statements of
`--explain-reps` further calls are captured with a SQLAlchemy `before_cursor_execute` listener and
replayed, in one transaction rolled back afterwards, as `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`
with their own parameters; every plan is searched for sequential scans of the large tables.
`pg_stat_statements` is used when the server has it; otherwise the top statements come from the same
listener's client-side timings of the timed calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import Engine, event, text

from bench.generate import GeneratedMessage, iter_messages
from bench.report import write_section
from pipeline.contacts import combine_log, company_for, is_role_address, rank_key, rank_log_increment
from pipeline.counts import REBUILD_SQL
from pipeline.storage.models import EMBEDDING_DIMENSIONS

# Tables whose size grows with the mail: a sequential scan of one in a hot query is a finding. The issue's
# six, and the three others that grow with it (threads ~0.4 per message, their insights, contact threads).
LARGE_TABLES = ("messages", "embedding_chunks", "windows", "window_items", "message_participants", "contacts",
                "threads", "insights", "contact_threads")
TARGET_MS = 10.0
SEARCH_TARGET_MS = 50.0
MODEL = "all-MiniLM-L6-v2"  # the chunks' model name, which search filters on (the local embedder's)
CHUNK_CHARS = 1000  # ~256 tokens of mail text
RUNNING_EVERY, OWED_EVERY, GMAIL_EVERY = 20, 10, 3  # accounts with a run going / owed enrichment / Gmail
INSIGHT_SHARE = 0.4
FAILED_ITEM_RATE = 0.002
CENTRE_NOISE, THREAD_NOISE, CHUNK_NOISE = 0.05, 0.05, 0.025  # per dimension (unit vectors: ~0.051 each)
STALL_SECONDS = 300.0
HNSW_MEMORY = "3GB"  # 1M chunks' graph is ~2.2 GB: one that does not fit is built far slower, on disk
NOW = datetime.now(UTC).replace(microsecond=0)

# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class LoadSpec:
    messages: int
    accounts: int
    seed: int
    window_size: int


@dataclass(slots=True)
class LoadInfo:
    spec: LoadSpec
    seconds: float = 0.0
    index_seconds: float = 0.0
    hnsw_seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    sizes_mb: dict[str, float] = field(default_factory=dict)


# Column lists of the COPY statements, with the binary type of each value.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "accounts": [("id", "int4"), ("email", "text"), ("kind", "text"), ("own_addresses", "text[]"),
                 ("status", "text"), ("history_id", "int8"), ("last_synced_at", "timestamptz")],
    "sync_runs": [("id", "int8"), ("account_id", "int4"), ("mode", "text"), ("source", "text"), ("status", "text"),
                  ("reading_done", "bool"), ("entries", "int4"), ("windows_total", "int4"), ("history_id", "int8"),
                  ("driver", "text"), ("started_at", "timestamptz"), ("heartbeat_at", "timestamptz"),
                  ("finished_at", "timestamptz")],
    "windows": [("id", "int8"), ("run_id", "int8"), ("seq", "int4"), ("size", "int4"), ("ingest", "text"),
                ("normalize", "text"), ("contacts", "text"), ("embed", "text"), ("insight", "text"),
                ("finished", "bool"), ("attempts", "jsonb"), ("error", "text"), ("new_messages", "int4"),
                ("duplicates", "int4"), ("failed", "int4"), ("chunks_embedded", "int4"), ("quota_units", "int4"),
                ("fetch_seconds", "float8"), ("created_at", "timestamptz"), ("updated_at", "timestamptz")],
    "window_items": [("window_id", "int8"), ("position", "int4"), ("source_ref", "text"), ("raw", "bytea"),
                     ("gmail_id", "text"), ("gmail_thread_id", "text"), ("labels", "text[]"), ("message_id", "int8"),
                     ("outcome", "text")],
    "threads": [("id", "int8"), ("account_id", "int4"), ("thread_key", "text"), ("subject", "text"),
                ("message_count", "int4"), ("first_at", "timestamptz"), ("last_at", "timestamptz")],
    "messages": [("id", "int8"), ("account_id", "int4"), ("message_key", "text"), ("rfc_message_id", "text"),
                 ("source_ref", "text"), ("gmail_id", "text"), ("gmail_thread_id", "text"), ("labels", "text[]"),
                 ("raw", "bytea"), ("size", "int4"), ("content_hash", "text"), ("thread_id", "int8"),
                 ("sent_at", "timestamptz"), ("subject", "text"), ("from_email", "text"), ("from_name", "text"),
                 ("recipients", "jsonb"), ("in_reply_to", "text"), ("references", "text[]"),
                 ("content_type", "text"), ("category", "text"), ("from_me", "bool"), ("is_bulk", "bool"),
                 ("full_text", "text"), ("stripped_text", "text"), ("attachments", "jsonb"), ("defects", "text[]"),
                 ("normalized_at", "timestamptz"), ("contacts_at", "timestamptz"), ("embedded_at", "timestamptz"),
                 ("insight_at", "timestamptz")],
    "contacts": [("id", "int8"), ("account_id", "int4"), ("email", "text"), ("name", "text"), ("names", "text[]"),
                 ("company", "text"), ("sent_count", "int4"), ("received_count", "int4"), ("thread_count", "int4"),
                 ("first_seen", "timestamptz"), ("last_seen", "timestamptz"), ("rank_log", "float8"),
                 ("rank_key", "float8")],
    "message_participants": [("message_id", "int8"), ("contact_id", "int8"), ("role", "text"),
                             ("direction", "text")],
    "contact_threads": [("contact_id", "int8"), ("thread_id", "int8")],
    "embedding_chunks": [("id", "int8"), ("message_id", "int8"), ("account_id", "int4"), ("chunk_index", "int4"),
                         ("content_hash", "text"), ("model", "text"), ("text", "text"), ("embedding", "vector")],
    "insights": [("thread_id", "int8"), ("account_id", "int4"), ("category", "text"), ("needs_reply", "text"),
                 ("summary", "text"), ("action_items", "jsonb"), ("source", "text"), ("updated_at", "timestamptz"),
                 ("summarized_messages", "int4")],
    "failures": [("account_id", "int4"), ("run_id", "int8"), ("window_id", "int8"), ("item_ref", "text"),
                 ("stage", "text"), ("error_class", "text"), ("reason", "text"), ("created_at", "timestamptz")],
}
# COPY order: every row's references are loaded before it (foreign keys are not checked during the load).
LOAD_ORDER = ("sync_runs", "windows", "threads", "messages", "window_items", "contacts", "message_participants",
              "contact_threads", "embedding_chunks", "insights", "failures")
SERIAL_TABLES = ("accounts", "sync_runs", "windows", "threads", "messages", "contacts", "embedding_chunks")

_KIND_CATEGORY = {"conversation": "personal", "newsletter": "newsletter", "notification": "notification",
                  "receipt": "receipt", "bounce": "bounce"}
_CONTENT_TYPE = {"text": "text/plain", "alternative": "multipart/alternative", "html": "text/html",
                 "report": "multipart/report"}
_NEEDS_REPLY = (("to_reply", 15), ("awaiting_reply", 10), ("fyi", 55), ("done", 20))
_ROLE_ORDER = {"from": 0, "reply_to": 1, "to": 2, "cc": 3}


class Ids:
    """The next id of each table: rows get explicit ids, so references are known before they are loaded."""

    def __init__(self) -> None:
        self._next: dict[str, int] = defaultdict(int)

    def __call__(self, table: str) -> int:
        self._next[table] += 1
        return self._next[table]


@dataclass(slots=True)
class _Contact:
    id: int
    email: str
    names: set[str] = field(default_factory=set)
    name: str = ""
    sent: int = 0
    received: int = 0
    threads: set[int] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None
    rank_log: float | None = None


@dataclass(slots=True)
class _Thread:
    id: int
    key: str
    subject: str
    topic: str
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    category: str = "personal"
    insight_done: bool = False
    last_text: str = ""


@dataclass(slots=True)
class _WindowPlan:
    """One window to store: its messages and the state of each of its stages."""

    run_id: int
    seq: int
    messages: list[GeneratedMessage]
    states: dict[str, str]
    finished: bool
    at: datetime
    gmail: bool
    attempts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    stalled: bool = False


class AccountBuilder:
    """The rows of one account, built in memory (one account's mail is ~10k messages) and then COPYed."""

    def __init__(self, index: int, account_id: int, count: int, spec: LoadSpec, ids: Ids) -> None:
        self.index, self.account_id, self.spec, self.ids = index, account_id, spec, ids
        self.email = account_email(index)
        self.gmail = index % GMAIL_EVERY == 0
        self.running = index % RUNNING_EVERY == 0
        self.owed = index % OWED_EVERY == 1
        self.rng = random.Random(spec.seed * 100_003 + index)
        self.np_rng = np.random.default_rng(spec.seed * 100_003 + index)
        self.messages = list(iter_messages(count, seed=spec.seed * 1000 + index, account=self.email))
        self.rows: dict[str, list[list[Any]]] = defaultdict(list)
        self.keys: dict[str, int] = {}
        self.threads: dict[str, _Thread] = {}
        self.contacts: dict[str, _Contact] = {}
        self.chunk_threads: list[str] = []  # per chunk row, its thread key (for its vector)

    # -- plan the runs and windows

    def build(self) -> dict[str, list[list[Any]]]:
        for plan in self._plan_windows():
            self._store_window(plan)
        self._store_threads_contacts_insights()
        self._store_vectors()
        return self.rows

    def _plan_windows(self) -> Iterator[_WindowPlan]:
        msgs, w = self.messages, self.spec.window_size
        tail = min(4 * w, len(msgs) // 4) if self.running else 0
        head, running = msgs[: len(msgs) - tail], msgs[len(msgs) - tail:]
        done = dict.fromkeys(("ingest", "normalize", "contacts", "embed", "insight"), "done")
        full = head if not self.gmail else head[: int(len(head) * 0.7)]
        if full:
            run_id = self._run("full" if self.gmail else "import", full, finished=True)
            slices = [full[i: i + w] for i in range(0, len(full), w)]
            owed = self._owed_windows(len(slices))
            for seq, part in enumerate(slices):
                states, error = dict(done), None
                if seq in owed:
                    stage, klass = owed[seq]
                    states[stage], error = "failed", f"{stage}: {klass}: the AI endpoint did not answer"
                yield _WindowPlan(run_id, seq, part, states, True, _last_date(part) + timedelta(minutes=5),
                                  self.gmail, error=error)
        rest = head[len(full):]
        while rest:  # Gmail: one small incremental sync per push or poll after the full one
            part = rest[: self.rng.randint(1, 40)]
            rest = rest[len(part):]
            run_id = self._run("incremental", part, finished=True)
            yield _WindowPlan(run_id, 0, part, dict(done), True, _last_date(part) + timedelta(minutes=2), True)
        if running:
            run_id = self._run("incremental" if self.gmail else "import", running, finished=False)
            quarter = max(1, len(running) // 4)
            parts = [running[i * quarter: (i + 1) * quarter] for i in range(3)] + [running[3 * quarter:]]
            pending = dict.fromkeys(("ingest", "normalize", "contacts", "embed", "insight"), "pending")
            kinds = [
                ({**pending}, {}, False),
                ({**pending, "ingest": "running"}, {"ingest": 1}, True),  # its task lost: the watchdog finds it
                ({**done, "embed": "pending", "insight": "pending"}, {}, False),
                ({**done, "contacts": "running", "embed": "running"}, {"contacts": 1, "embed": 1}, False),
            ]
            for seq, (part, (states, attempts, stalled)) in enumerate(zip(parts, kinds, strict=True)):
                if part:
                    yield _WindowPlan(run_id, seq, part, states, False, NOW - timedelta(minutes=2), self.gmail,
                                      attempts=attempts, stalled=stalled)

    def _owed_windows(self, windows: int) -> dict[int, tuple[str, str]]:
        if not self.owed:
            return {}
        kinds = [("embed", "transient"), ("insight", "quota"), ("embed", "rate_limit"),
                 ("embed", "permanent")]  # the last is not owed: a permanent failure is never re-opened
        kinds = kinds[: min(len(kinds), max(1, windows // 8))]
        return dict(zip(self.rng.sample(range(windows), len(kinds)), kinds, strict=True))

    def _run(self, mode: str, part: list[GeneratedMessage], *, finished: bool) -> int:
        run_id = self.ids("sync_runs")
        w = self.spec.window_size
        windows = 1 if mode == "incremental" and finished else math.ceil(len(part) / w)
        started = (_last_date(part) if finished else NOW - timedelta(minutes=30))
        self.rows["sync_runs"].append([
            run_id, self.account_id, mode, "gmail" if self.gmail else "/home/me/Takeout/Mail/All mail.mbox",
            "done" if finished else "running", finished, len(part), windows if finished else 0,
            self.rng.randint(10**6, 10**8) if self.gmail else None, None if finished else "bench-host:1",
            started, NOW - timedelta(seconds=5) if not finished else started + timedelta(minutes=20),
            started + timedelta(minutes=20) if finished else None,
        ])
        return run_id

    # -- store a window: its row, items, messages

    def _store_window(self, plan: _WindowPlan) -> None:
        window_id = self.ids("windows")
        ingested = plan.states["ingest"] == "done"
        counters = Counter[str]()
        for position, g in enumerate(plan.messages):
            key = f"mid:{g.meta.message_id}" if g.meta.message_id else f"sha:{hashlib.sha256(g.raw).hexdigest()}"
            ref = g.gmail_message_id if plan.gmail else str(g.meta.index)
            message_id: int | None = None
            outcome: str | None = None
            if ingested:
                if key in self.keys:
                    outcome, message_id = "duplicate", self.keys[key]
                elif self.rng.random() < FAILED_ITEM_RATE:
                    gone = plan.gmail and self.rng.random() < 0.5
                    outcome = "gone" if gone else "failed"
                    self.rows["failures"].append([
                        self.account_id, plan.run_id, window_id, ref, "ingest", "gone" if gone else "permanent",
                        "404: message deleted before it was fetched" if gone else "parse: no header block",
                        plan.at])
                else:
                    outcome, message_id = "new", self._store_message(g, key, ref, plan)
                counters[outcome] += 1
            raw = None if ingested or plan.gmail else g.raw  # a Gmail item's raw arrives with its fetch
            self.rows["window_items"].append([
                window_id, position, ref, raw, g.gmail_message_id if plan.gmail else None,
                g.api_thread_id if plan.gmail else None, list(g.labels), message_id, outcome])
        size = len(plan.messages)
        updated = plan.at - timedelta(hours=1) if plan.stalled else plan.at
        self.rows["windows"].append([
            window_id, plan.run_id, plan.seq, size, plan.states["ingest"], plan.states["normalize"],
            plan.states["contacts"], plan.states["embed"], plan.states["insight"], plan.finished, plan.attempts,
            plan.error, counters["new"], counters["duplicate"], counters["failed"] + counters["gone"],
            plan.states["embed"] == "done" and counters["new"] or 0,
            5 * size if plan.gmail and ingested else 0,
            round(size * self.rng.uniform(0.02, 0.08), 3) if plan.gmail and ingested else 0.0,
            plan.at - timedelta(minutes=3), updated])
        if plan.error:
            stage, klass = plan.error.split(": ")[:2]
            self.rows["failures"].append([self.account_id, plan.run_id, window_id, "window", stage, klass,
                                          plan.error.split(": ", 2)[2], plan.at])

    def _store_message(self, g: GeneratedMessage, key: str, ref: str, plan: _WindowPlan) -> int:
        meta = g.meta
        message_id = self.ids("messages")
        self.keys[key] = message_id
        thread_key = f"gm:{g.api_thread_id}"
        thread = self.threads.get(thread_key)
        if thread is None:
            thread = self.threads[thread_key] = _Thread(self.ids("threads"), thread_key, meta.subject, meta.topic)
        category = _KIND_CATEGORY.get(meta.kind, "personal")
        thread.count += 1
        thread.first = min(thread.first or meta.date, meta.date)
        if thread.last is None or meta.date >= thread.last:
            thread.last, thread.category, thread.last_text = meta.date, category, meta.new_text
        states = plan.states
        mark = plan.at
        normalized = mark if states["normalize"] == "done" else None
        contacts = mark if states["contacts"] == "done" else None
        embedded = mark if states["embed"] == "done" else None
        insight = mark if states["insight"] == "done" else None
        thread.insight_done = thread.insight_done or insight is not None
        from_me = meta.direction == "sent"
        full = meta.new_text + (f"\n\n-- \n{meta.signature}" if meta.signature else "")
        self.rows["messages"].append([
            message_id, self.account_id, key, meta.message_id, ref, g.gmail_message_id if plan.gmail else None,
            g.api_thread_id if plan.gmail else None, list(g.labels), g.raw, len(g.raw),
            hashlib.sha256(g.raw).hexdigest(), thread.id, meta.date, meta.subject, meta.sender.canonical,
            meta.sender.name, {"to": [[p.name, p.canonical] for p in meta.to], "cc": [[p.name, p.canonical]
                                                                                     for p in meta.cc]},
            meta.in_reply_to, list(meta.references) or None, _CONTENT_TYPE.get(meta.structure, "text/plain"),
            category, from_me, meta.is_bulk, full, meta.new_text,
            [{"filename": "document.pdf", "content_type": "application/pdf", "size": 48213}]
            if meta.has_attachment else [], [], normalized, contacts, embedded, insight])
        if contacts is not None:
            self._store_participants(g, message_id, thread)
        if embedded is not None:
            body = f"Subject: {meta.subject}\nFrom: {meta.sender.name} <{meta.sender.canonical}>\n\n"
            texts = [meta.new_text[i: i + CHUNK_CHARS] for i in range(0, max(1, len(meta.new_text)), CHUNK_CHARS)]
            for index, part in enumerate(texts):
                chunk = body + part
                digest = hashlib.sha256(f"{MODEL}\n{chunk}".encode()).hexdigest()
                self.rows["embedding_chunks"].append(
                    [self.ids("embedding_chunks"), message_id, self.account_id, index, digest, MODEL, chunk, None])
                self.chunk_threads.append(thread_key)
        return message_id

    def _store_participants(self, g: GeneratedMessage, message_id: int, thread: _Thread) -> None:
        meta = g.meta
        if meta.is_bulk or meta.is_role_sender:
            return  # bulk and automated mail yields no participants (pipeline.contacts)
        sent = meta.direction == "sent"
        seen: dict[str, tuple[str, str]] = {}
        for role, parties in (("from", (meta.sender,)), ("to", meta.to), ("cc", meta.cc)):
            for p in parties:
                email = p.canonical.lower()
                if email == self.email or is_role_address(email):
                    continue
                if email not in seen or _ROLE_ORDER[role] < _ROLE_ORDER[seen[email][0]]:
                    seen[email] = (role, p.name)
        for email, (role, name) in seen.items():
            c = self.contacts.get(email)
            if c is None:
                c = self.contacts[email] = _Contact(self.ids("contacts"), email)
            direction = "sent" if sent else "received"
            counted = "sent" if sent else ("received" if role == "from" else None)
            if counted == "sent":
                c.sent += 1
            elif counted == "received":
                c.received += 1
            if counted:
                c.rank_log = combine_log(c.rank_log, rank_log_increment(counted, meta.date))
            if name:
                c.names.add(name)
                if c.last is None or meta.date >= c.last:
                    c.name = name
            c.first = min(c.first or meta.date, meta.date)
            c.last = max(c.last or meta.date, meta.date)
            c.threads.add(thread.id)
            self.rows["message_participants"].append([message_id, c.id, role, direction])

    def _store_threads_contacts_insights(self) -> None:
        for t in self.threads.values():
            self.rows["threads"].append([t.id, self.account_id, t.key, t.subject, t.count, t.first, t.last])
            if t.insight_done and self.rng.random() < INSIGHT_SHARE:
                needs = self.rng.choices([n for n, _ in _NEEDS_REPLY], [w for _, w in _NEEDS_REPLY])[0]
                if t.category != "personal":
                    needs = "fyi"
                items = ([{"what": f"Reply about {t.subject[:60]}", "who": "me", "due": ""}]
                         if needs == "to_reply" else [])
                summary = " ".join(f"{t.subject}: {t.last_text}".split())[:240]
                self.rows["insights"].append([t.id, self.account_id, t.category, needs, summary, items, "rules",
                                              t.last, 0])
        for c in self.contacts.values():
            self.rows["contacts"].append([
                c.id, self.account_id, c.email, c.name, sorted(c.names), _company(c.email), c.sent, c.received,
                len(c.threads), c.first, c.last, c.rank_log, rank_key(c.rank_log, c.sent > 0 and c.received > 0)])
            for thread_id in sorted(c.threads):
                self.rows["contact_threads"].append([c.id, thread_id])

    def _store_vectors(self) -> None:
        """Clustered unit vectors: topic centre, then a point per thread near it, then each chunk near that."""
        rows = self.rows["embedding_chunks"]
        if not rows:
            return
        keys = sorted(set(self.chunk_threads))
        thread_index = {k: i for i, k in enumerate(keys)}
        centres = np.stack([topic_centre(self.threads[k].topic, self.spec.seed) for k in keys])
        threads = _unit(centres + self.np_rng.normal(0, THREAD_NOISE, centres.shape))
        per_chunk = threads[[thread_index[k] for k in self.chunk_threads]]
        vectors = _unit(per_chunk + self.np_rng.normal(0, CHUNK_NOISE, per_chunk.shape)).astype(np.float32)
        for row, vector in zip(rows, vectors, strict=True):
            row[-1] = vector


@cache
def topic_centre(topic: str, seed: int) -> np.ndarray:
    """A topic's centre: the same for every account (mail about invoices is near mail about invoices)."""
    rng = np.random.default_rng(zlib.crc32(f"{seed}:{topic}".encode()))
    centre = rng.normal(0, 1, EMBEDDING_DIMENSIONS)
    # Topics share a common direction, as a sentence model's vectors do (no two mails are orthogonal).
    common = np.random.default_rng(seed).normal(0, 1, EMBEDDING_DIMENSIONS)
    mixed = centre / np.linalg.norm(centre) + CENTRE_NOISE * 10 * common / np.linalg.norm(common)
    return np.asarray(mixed / np.linalg.norm(mixed))


def _unit(m: np.ndarray) -> np.ndarray:
    return np.asarray(m / np.linalg.norm(m, axis=1, keepdims=True))


@lru_cache(maxsize=65536)
def _company(email: str) -> str | None:
    return company_for(email)


def _last_date(part: Sequence[GeneratedMessage]) -> datetime:
    return max(g.meta.date for g in part)


def account_email(index: int) -> str:
    return f"user{index:03d}@example.com"


def plain_url(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _copy(conn: psycopg.Connection[Any], table: str, rows: list[list[Any]]) -> None:
    if not rows:
        return
    columns = COLUMNS[table]
    names = ", ".join(f'"{c}"' for c, _ in columns)
    with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([t for _, t in columns])
        for row in rows:
            copy.write_row(row)


def _secondary_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """(name, definition, table) of every index not backing a constraint, HNSW last."""
    rows = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.relname "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY 1",
        (list(COLUMNS),)).fetchall()
    return sorted(((str(a), str(b), str(c)) for a, b, c in rows), key=lambda r: " hnsw " in r[1])


def load(url: str, spec: LoadSpec, log: Callable[[str], None], *, hnsw_memory: str = HNSW_MEMORY,
         hnsw_workers: int = 1) -> LoadInfo:
    """Fill an empty, migrated database with `spec`'s mail (see the module docstring)."""
    from pgvector.psycopg import register_vector

    info = LoadInfo(spec)
    started = time.monotonic()
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM accounts").fetchone() != (0,):
            raise RuntimeError("the database already holds accounts: load into an empty one")
        register_vector(conn)
        indexes = _secondary_indexes(conn)
        for name, _, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        # Foreign keys are not checked during the load (the rows are consistent by construction).
        conn.execute("SET session_replication_role = replica")
        ids = Ids()
        per_account, extra = divmod(spec.messages, spec.accounts)
        accounts = []
        for a in range(spec.accounts):
            gmail = a % GMAIL_EVERY == 0
            accounts.append([ids("accounts"), account_email(a), "gmail" if gmail else "mbox", [account_email(a)],
                             "active", 10**7 + a if gmail else None, NOW - timedelta(hours=1) if gmail else None])
        with conn.transaction():
            _copy(conn, "accounts", accounts)
        totals: Counter[str] = Counter()
        for a in range(spec.accounts):
            builder = AccountBuilder(a, a + 1, per_account + (1 if a < extra else 0), spec, ids)
            rows = builder.build()
            with conn.transaction():
                for table in LOAD_ORDER:
                    _copy(conn, table, rows[table])
            totals.update({t: len(r) for t, r in rows.items()})
            if a % max(1, spec.accounts // 20) == 0 or a == spec.accounts - 1:
                log(f"account {a + 1}/{spec.accounts}: {totals['messages']} messages, "
                    f"{totals['embedding_chunks']} chunks, {time.monotonic() - started:.0f} s")
        for table in SERIAL_TABLES:
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"greatest((SELECT max(id) FROM {table}), 1))")
        conn.execute("SET session_replication_role = origin")
        info.seconds = round(time.monotonic() - started, 1)
        log(f"rows loaded in {info.seconds} s; building {len(indexes)} indexes ...")
        t0 = time.monotonic()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for name, definition, _ in indexes:
            if " hnsw " in definition:
                info.index_seconds = round(time.monotonic() - t0, 1)
                t1 = time.monotonic()
                conn.execute(f"SET maintenance_work_mem = '{hnsw_memory}'")
                conn.execute(f"SET max_parallel_maintenance_workers = {int(hnsw_workers)}")
                log(f"building {name} (maintenance_work_mem {hnsw_memory}, {hnsw_workers} parallel worker(s)) ...")
                conn.execute(definition)
                info.hnsw_seconds = round(time.monotonic() - t1, 1)
                log(f"{name}: {info.hnsw_seconds} s")
            else:
                conn.execute(definition)
        if not info.index_seconds:
            info.index_seconds = round(time.monotonic() - t0, 1)
        conn.execute("RESET maintenance_work_mem")
        log("VACUUM ANALYZE ...")
        conn.execute("VACUUM ANALYZE")
        # The count triggers (migration 0012) did not fire with session_replication_role = replica:
        # the per-account counts of `mailpipe status` are computed from the loaded rows instead.
        with conn.transaction():
            for statement in REBUILD_SQL:
                conn.execute(statement)
        conn.execute("VACUUM ANALYZE account_count_deltas")
    return info


def table_stats(url: str) -> tuple[dict[str, int], dict[str, float]]:
    """Rows (exact) and total size in MB (indexes and TOAST included) of the loaded tables."""
    rows: dict[str, int] = {}
    sizes: dict[str, float] = {}
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        for table in ("accounts", *LOAD_ORDER):
            got = conn.execute(f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}").fetchone()
            assert got is not None
            rows[table], sizes[table] = int(got[0]), round(int(got[1]) / 2**20, 1)
    return rows, sizes


# ---------------------------------------------------------------------------------------------
# Plans: capture, EXPLAIN, sequential scans


@dataclass(frozen=True, slots=True)
class ExplainedStatement:
    sql: str
    plan: dict[str, Any] | None  # EXPLAIN's JSON document ({"Plan": ..., "Execution Time": ...}); None: not explained
    note: str = ""


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with their parameters) that the engine sends while the block runs."""
    statements: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not executemany:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def explain_statements(engine: Engine, statements: Sequence[tuple[str, Any]]) -> list[ExplainedStatement]:
    """EXPLAIN (ANALYZE, BUFFERS) each statement with its parameters, in order, in one transaction that is
    rolled back: writes (a claim's UPDATE) change nothing, and settings a call made with SET LOCAL
    (search's HNSW settings) are in force for the statements after it, as they were in the call."""
    out: list[ExplainedStatement] = []
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            with raw.cursor() as cur:
                for sql, params in statements:
                    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
                    if head in ("SET", "RESET"):  # the session's state for the statements after it
                        cur.execute(sql, params)
                        out.append(ExplainedStatement(sql, None, f"{head}: executed, not explained"))
                        continue
                    if head not in ("SELECT", "WITH", "UPDATE", "DELETE", "INSERT"):
                        out.append(ExplainedStatement(sql, None, f"{head}: not explained"))
                        continue
                    cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
                    row = cur.fetchone()
                    doc = row[0] if row else None
                    if isinstance(doc, str):
                        doc = json.loads(doc)
                    out.append(ExplainedStatement(sql, doc[0] if doc else None))
        finally:
            raw.rollback()
    return out


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan (a node dict, or EXPLAIN's document holding one under "Plan")."""
    node = plan.get("Plan", plan)
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def seq_scans(plan: dict[str, Any], tables: Sequence[str] = LARGE_TABLES) -> list[str]:
    """The tables of `tables` that the plan reads by sequential scan (parallel ones included)."""
    return [str(n["Relation Name"]) for n in plan_nodes(plan)
            if n.get("Node Type") == "Seq Scan" and n.get("Relation Name") in tables]


def _node_label(n: dict[str, Any]) -> str:
    label = str(n.get("Node Type", "?"))
    if n.get("Index Name"):
        label += f" {n['Index Name']}"
    elif n.get("Relation Name"):
        label += f" {n['Relation Name']}"
    if n.get("Node Type") == "Bitmap Heap Scan":
        used = sorted({str(c["Index Name"]) for c in plan_nodes(n) if c.get("Index Name")})
        label += f" ({' + '.join(used)})" if used else ""
    return label


def _total_ms(n: dict[str, Any]) -> float:
    return float(n.get("Actual Total Time", 0.0)) * float(n.get("Actual Loops", 1) or 1)


def key_node(plans: Sequence[dict[str, Any]]) -> str:
    """The scan that took longest by itself (its time less its children's: a scan's subplans, such as
    status's per-account counts, are its children) across the statements of a call."""
    best, best_ms = "", -1.0
    for plan in plans:
        for n in plan_nodes(plan):
            kind = str(n.get("Node Type", ""))
            if not n.get("Relation Name") or kind == "Bitmap Index Scan":  # a bitmap's heap scan names its indexes
                continue
            children = [c for c in n.get("Plans", []) if c.get("Node Type") != "Bitmap Index Scan"]
            own = _total_ms(n) - sum(_total_ms(c) for c in children)
            if own > best_ms:
                best, best_ms = _node_label(n), own
    return best


def buffers(plan: dict[str, Any]) -> tuple[int, int]:
    """Shared buffers hit and read by the statement's execution (its top node counts its children's)."""
    top = plan.get("Plan", {})
    return int(top.get("Shared Hit Blocks", 0)), int(top.get("Shared Read Blocks", 0))


# ---------------------------------------------------------------------------------------------
# The cases: each calls the product's own function with parameters drawn from the data


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    function: str
    target_ms: float | None  # None: shown for context, no target (not a query a user waits on each time)
    call: Callable[[random.Random], object]
    reps: int | None = None  # fewer repetitions (and warm-up calls) than --reps and --warmup: a long call
    explain_reps: int | None = None
    before: Callable[[], object] | None = None  # before each call, not timed


def forget_cached_progress(engine: Engine) -> None:
    """Every run's cached figures deleted, then the table vacuumed, so that each call meets the cache as
    the first call after a change would: without the dead rows of the hundreds of calls before it (each
    deletes and stores ~170 rows; left to autovacuum, the DELETE of those rows took 19 ms a call at 1M)."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM run_progress_cache"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM run_progress_cache"))


class FixedEmbedder:
    """A query embedder that returns the vector it was given: no model in the measurement."""

    name = MODEL
    dimensions = EMBEDDING_DIMENSIONS

    def __init__(self) -> None:
        self.vector: list[float] = [0.0] * EMBEDDING_DIMENSIONS

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.vector for _ in texts]


@dataclass(frozen=True, slots=True)
class Probe:
    """A stored chunk to search near: its account, vector, and its message's subject, sender and date."""

    account_id: int
    vector: np.ndarray
    words: list[str]
    sender: str
    sent_at: datetime


@dataclass(slots=True)
class Fixture:
    accounts: list[int]
    owed_accounts: list[int]
    runs: list[int]
    running_runs: list[int]
    open_windows: list[tuple[int, str]]  # (window id, a stage it still owes)
    max_window: int
    max_thread: int
    probes: list[Probe]


_WORDS = re.compile(r"[^\W\d_]{4,}", re.UNICODE)
_STOP = {"your", "with", "from", "this", "that", "have", "will", "about", "re", "fwd"}


def fixture(engine: Engine, seed: int) -> Fixture:
    rng = random.Random(seed)
    with engine.begin() as conn:
        accounts = [int(r) for r in conn.execute(text("SELECT id FROM accounts ORDER BY id")).scalars()]
        owed = [int(r) for r in conn.execute(text(
            "SELECT DISTINCT r.account_id FROM failures f JOIN sync_runs r ON r.id = f.run_id "
            "WHERE f.item_ref = 'window' ORDER BY 1")).scalars()]
        runs = [int(r) for r in conn.execute(text(
            "(SELECT id FROM sync_runs WHERE mode <> 'incremental' ORDER BY random() LIMIT 300) UNION ALL "
            "(SELECT id FROM sync_runs WHERE mode = 'incremental' ORDER BY random() LIMIT 300)")).scalars()]
        running = [int(r) for r in conn.execute(text(
            "SELECT id FROM sync_runs WHERE status = 'running' ORDER BY id")).scalars()]
        open_rows = conn.execute(text(
            "SELECT id, CASE WHEN ingest <> 'done' THEN 'ingest' WHEN embed <> 'done' THEN 'embed' "
            "ELSE 'insight' END FROM windows WHERE NOT finished ORDER BY id")).all()
        max_window = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM windows")).scalar_one())
        max_thread = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM threads")).scalar_one())
        max_chunk = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM embedding_chunks")).scalar_one())
        picks = sorted({rng.randint(1, max(1, max_chunk)) for _ in range(400)})
        probe_rows = conn.execute(text(
            "SELECT c.account_id, c.embedding::text, m.subject, m.from_email, m.sent_at "
            "FROM embedding_chunks c JOIN messages m ON m.id = c.message_id WHERE c.id = ANY(:ids)"),
            {"ids": picks}).all()
    probes = []
    for account_id, vector, subject, sender, sent_at in probe_rows:
        words = [w for w in _WORDS.findall(subject or "") if w.lower() not in _STOP]
        probes.append(Probe(int(account_id), np.array(json.loads(vector), dtype=np.float64), words,
                            str(sender or ""), sent_at))
    return Fixture(accounts, owed, runs, running, [(int(w), str(s)) for w, s in open_rows], max_window,
                   max_thread, probes)


def cases(engine: Engine, url: str, fx: Fixture) -> list[Case]:
    from pipeline.enrichment import owed_enrichment
    from pipeline.insights.views import insight_rows, thread_detail
    from pipeline.reports import status, top_contacts
    from pipeline.runs import (
        claim_stage,
        fill_progress_cache,
        maybe_finish_run,
        open_window_ids,
        run_progress,
        stalled_windows,
        window_backlog,
    )
    from pipeline.search import SearchFilters, search
    from pipeline.settings import Settings
    from pipeline.stages.workload import window_limits

    settings = Settings(database_url=url, broker_url=None)
    embedder = FixedEmbedder()
    stages = ("ingest", "normalize", "contacts", "embed", "insight")
    running = fx.running_runs or fx.runs

    def query_of(rng: random.Random) -> tuple[Probe, str]:
        probe = rng.choice(fx.probes)
        noisy = probe.vector + np.random.default_rng(rng.randrange(2**32)).normal(0, CHUNK_NOISE, len(probe.vector))
        embedder.vector = [float(x) for x in noisy / np.linalg.norm(noisy)]
        words = probe.words[:]
        rng.shuffle(words)
        return probe, " ".join(words[: rng.randint(1, 2)]) or "meeting"

    def do_search(rng: random.Random, how: str) -> object:
        probe, query = query_of(rng)
        filters = None
        if how == "from":
            filters = SearchFilters(sender=probe.sender)
        elif how == "dates":
            filters = SearchFilters(after=probe.sent_at - timedelta(days=45), before=probe.sent_at + timedelta(days=45))
        return search(engine, query, account_id=probe.account_id, limit=10, embedder=embedder, filters=filters)

    open_ids = {w for w, _ in fx.open_windows}

    def finished_window(rng: random.Random) -> int:
        while True:
            window_id = rng.randint(1, max(1, fx.max_window))
            if window_id not in open_ids:
                return window_id

    def owed_account(rng: random.Random) -> int:
        return rng.choice(fx.owed_accounts) if fx.owed_accounts and rng.random() < 0.5 else rng.choice(fx.accounts)

    return [
        Case("mailpipe status (every account)", "reports.status", TARGET_MS, lambda rng: status(engine),
             explain_reps=1),  # no parameter to vary: one call's statements explained
        Case("run progress", "runs.run_progress", TARGET_MS, lambda rng: run_progress(engine, rng.choice(fx.runs))),
        Case("back-pressure: open windows", "runs.window_backlog", TARGET_MS,
             lambda rng: window_backlog(engine, rng.choice(running))),
        Case("re-dispatch: open window ids", "runs.open_window_ids", TARGET_MS,
             lambda rng: open_window_ids(engine, rng.choice(running))),
        Case("watchdog: stalled windows", "runs.stalled_windows", TARGET_MS,
             lambda rng: stalled_windows(engine, rng.choice(running), STALL_SECONDS)),
        Case("run completion check", "runs.maybe_finish_run", TARGET_MS,
             lambda rng: maybe_finish_run(engine, rng.choice(running))),
        # Finished windows only: the claim's UPDATE then matches nothing (its stage is terminal) and the
        # data stays as loaded; the plan (primary key, then the run) is the one every claim runs.
        Case("claim a window's stage", "runs.claim_stage", TARGET_MS,
             lambda rng: claim_stage(engine, finished_window(rng), rng.choice(stages))),
        Case("stage time limits (work owed)", "stages.workload.window_limits", TARGET_MS,
             lambda rng: window_limits(engine, settings, *(rng.choice(fx.open_windows) if fx.open_windows
                                                            else (rng.randint(1, fx.max_window), "embed")))),
        Case("enrichment sweep: owed (all accounts)", "enrichment.owed_enrichment", TARGET_MS,
             lambda rng: owed_enrichment(engine)),
        Case("enrichment owed (one account)", "enrichment.owed_enrichment(account_id)", TARGET_MS,
             lambda rng: owed_enrichment(engine, account_id=owed_account(rng))),
        Case("contacts page (top 20)", "reports.top_contacts", TARGET_MS,
             lambda rng: top_contacts(engine, rng.choice(fx.accounts), 20, 180.0)),
        Case("a thread", "insights.views.thread_detail", TARGET_MS,
             lambda rng: thread_detail(engine, rng.randint(1, fx.max_thread))),
        Case("insights list (latest 20)", "insights.views.insight_rows", TARGET_MS,
             lambda rng: insight_rows(engine, rng.choice(fx.accounts), 20)),
        Case("insights --needs-reply", "insights.views.insight_rows(needs_reply)", TARGET_MS,
             lambda rng: insight_rows(engine, rng.choice(fx.accounts), 20, needs_reply="to_reply")),
        Case("search", "search.search", SEARCH_TARGET_MS, lambda rng: do_search(rng, "")),
        Case("search --from address", "search.search(sender)", SEARCH_TARGET_MS, lambda rng: do_search(rng, "from")),
        Case("search --after/--before (90 days)", "search.search(dates)", SEARCH_TARGET_MS,
             lambda rng: do_search(rng, "dates")),
        # Last, because they write: the hundreds of deletes and stores of the second left the cases after
        # it a server checkpointing and vacuuming (search's p95 64 ms after it, 29 without it:
        # docs/PERFORMANCE.md, eleventh round).
        # What a worker's start, or the command that upgraded the schema, does when every finished run's
        # figures are missing from the cache (after an upgrade that changed their layout, or for runs that
        # finished before the cache existed): they are aggregated and cached, so that the first `status`
        # reads them as the first case does. Once per upgrade: for context, no target.
        Case("upgrade: every finished run's progress cached", "runs.fill_progress_cache", None,
             lambda rng: _filled(fill_progress_cache(engine)), reps=10, explain_reps=1,
             before=lambda: forget_cached_progress(engine)),
        # The first call that meets them all uncached, were the cache not filled first (the case above):
        # it aggregates them, then caches them (pipeline.progress_cache). For context since the fill.
        Case("mailpipe status, progress not cached", "reports.status", None, lambda rng: status(engine),
             explain_reps=1, before=lambda: forget_cached_progress(engine)),
    ]


def _filled(cached: int | None) -> int:
    if not cached:  # None: another process held the lock; 0: nothing was measured
        raise RuntimeError(f"the fill cached nothing ({cached!r}): every finished run was uncached before it")
    return cached


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass(slots=True)
class CaseResult:
    name: str
    function: str
    target_ms: float | None
    reps: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    statements: float  # per call
    key_node: str
    hit: float  # shared buffers per call (mean over explained calls)
    read: float
    seq_scans: list[str]
    explained: int

    @property
    def met(self) -> bool:
        return (self.target_ms is None or self.p95_ms <= self.target_ms) and not self.seq_scans

    @property
    def target(self) -> str:
        if self.target_ms is None:
            return "context" + ("" if self.met else ", seq scan")
        return f"{self.target_ms:g} ms {'met' if self.met else 'NOT met'}"


class StatementTimes:
    """Client-side time per query case and statement text (what pg_stat_statements would hold, round trips
    included)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.total_ms: Counter[tuple[str, str]] = Counter()
        self._started: dict[int, float] = {}

    @contextmanager
    def listening(self, engine: Engine, label: str = "") -> Iterator[None]:
        def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            self._started[id(cursor)] = time.perf_counter()

        def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            began = self._started.pop(id(cursor), None)
            if began is not None:
                key = (label, normalize_sql(statement))
                self.calls[key] += 1
                self.total_ms[key] += (time.perf_counter() - began) * 1000

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        try:
            yield
        finally:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)


def normalize_sql(sql: str) -> str:
    return " ".join(sql.split())


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(engine: Engine, case: Case, *, reps: int, explain_reps: int, warmup: int, budget_s: float,
            seed: int, times: StatementTimes | None = None,
            log: Callable[[str], None] = lambda _: None) -> tuple[CaseResult, list[ExplainedStatement]]:
    rng = random.Random(seed)
    before = case.before or (lambda: None)
    for _ in range(min(case.reps, warmup) if case.reps else warmup):
        before()
        case.call(rng)
    wanted = min(case.reps, reps) if case.reps else reps
    elapsed: list[float] = []
    began = time.monotonic()
    listening = times.listening(engine, case.name) if times else _nothing()
    with listening:
        while len(elapsed) < wanted and (len(elapsed) < 10 or time.monotonic() - began < budget_s):
            before()
            t0 = time.perf_counter()
            case.call(rng)
            elapsed.append((time.perf_counter() - t0) * 1000)
    explained: list[ExplainedStatement] = []
    hit = read = 0
    statement_count = 0
    plans: list[dict[str, Any]] = []
    scans: set[str] = set()
    n_explained = min(case.explain_reps, explain_reps) if case.explain_reps else explain_reps
    for _ in range(n_explained):
        before()
        with captured(engine) as statements:
            case.call(rng)
        statement_count += len(statements)
        for e in explain_statements(engine, statements):
            explained.append(e)
            if e.plan is None:
                continue
            plans.append(e.plan)
            h, r = buffers(e.plan)
            hit, read = hit + h, read + r
            scans.update(f"{t} ({_excerpt(e.sql)})" for t in seq_scans(e.plan))
    result = CaseResult(
        name=case.name, function=case.function, target_ms=case.target_ms, reps=len(elapsed),
        p50_ms=round(percentile(elapsed, 0.5), 2), p95_ms=round(percentile(elapsed, 0.95), 2),
        max_ms=round(max(elapsed), 2), statements=round(statement_count / max(1, n_explained), 1),
        key_node=key_node(plans), hit=round(hit / max(1, n_explained), 1), read=round(read / max(1, n_explained), 1),
        seq_scans=sorted(scans), explained=n_explained)
    log(f"{case.name}: p50 {result.p50_ms} ms, p95 {result.p95_ms} ms, max {result.max_ms} ms "
        f"({result.reps} calls, {result.statements} statements each); {result.key_node}; "
        f"buffers {result.hit}/{result.read}; seq scans: {', '.join(result.seq_scans) or 'none'}")
    return result, explained


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _excerpt(sql: str, width: int = 90) -> str:
    flat = normalize_sql(sql)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def pg_stat_statements(engine: Engine) -> tuple[bool, str]:
    """Whether pg_stat_statements can be used (created if missing), and why not when it cannot."""
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_stat_statements_reset()"))
        return True, ""
    except Exception as exc:  # the extension is not installed, or not in shared_preload_libraries
        return False, " ".join(str(getattr(exc, "orig", exc)).split())[:300]


def top_statements_server(engine: Engine, limit: int = 10) -> list[list[str]]:
    with engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT query, calls, total_exec_time, mean_exec_time, shared_blks_hit, shared_blks_read "
            "FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT :n"), {"n": limit}).all()
    return [["—", f"`{statement_excerpt(q)}`", str(c), f"{t:.0f}", f"{m:.3f}", f"{h}/{r}"]
            for q, c, t, m, h, r in rows]


def top_statements_client(times: StatementTimes, limit: int = 10) -> list[list[str]]:
    ranked = sorted(times.total_ms, key=lambda k: -times.total_ms[k])[:limit]
    return [[k[0], f"`{statement_excerpt(k[1])}`", str(times.calls[k]), f"{times.total_ms[k]:.0f}",
             f"{times.total_ms[k] / times.calls[k]:.3f}", "—"] for k in ranked]


def statement_excerpt(sql: str, head: int = 60, where: int = 110) -> str:
    """The statement's start and its WHERE clause: what tells statements of one shape apart."""
    flat = normalize_sql(sql)
    at = flat.find(" WHERE ")
    if at < 0 or len(flat) <= head + where:
        return _excerpt(flat, head + where)
    return _excerpt(flat[:at], head) + " " + _excerpt(flat[at + 1:], where)


# ---------------------------------------------------------------------------------------------
# Main


def loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def prepare(data: Path, spec: LoadSpec, log: Callable[[str], None], *, hnsw_memory: str,
            hnsw_workers: int, shared_buffers_mb: int | None = None) -> tuple[str, LoadInfo]:
    """Start the server in `data`, migrate, and load `spec` unless `data` holds it already.
    `shared_buffers_mb`: the product's default (pipeline.storage.embedded) unless given."""
    from pipeline.storage.db import migrate
    from pipeline.storage.embedded import start_embedded_postgres

    data.mkdir(parents=True, exist_ok=True)
    url = start_embedded_postgres(data / "pgdata", shared_buffers_mb=shared_buffers_mb)
    migrate(url)
    marker = data / "db_scale.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        info = LoadInfo(LoadSpec(**saved.pop("spec")), **saved)
        if info.spec != spec:
            raise RuntimeError(f"{data} holds another load ({info.spec}); use another --data folder")
        log(f"reusing {data} ({spec.messages} messages over {spec.accounts} accounts)")
        with psycopg.connect(plain_url(url), autocommit=True) as conn:
            conn.execute("ANALYZE")  # a migration since may have added an index
        return url, info
    info = load(url, spec, log, hnsw_memory=hnsw_memory, hnsw_workers=hnsw_workers)
    info.rows, info.sizes_mb = table_stats(url)
    marker.write_text(json.dumps(asdict(info)))
    return url, info


def run(args: argparse.Namespace, data: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from pipeline.storage.db import engine_for

    spec = LoadSpec(args.messages, args.accounts, args.seed, args.window_size)
    url, info = prepare(data, spec, log, hnsw_memory=args.hnsw_memory, hnsw_workers=args.hnsw_workers,
                        shared_buffers_mb=args.shared_buffers_mb)
    engine = engine_for(url)
    with engine.begin() as conn:
        settings = {k: str(conn.execute(text(f"SHOW {k}")).scalar_one())
                    for k in ("server_version", "shared_buffers", "work_mem", "effective_cache_size")}
        db_mb = round(int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()) / 2**20)
    pgss, pgss_error = pg_stat_statements(engine)
    fx = fixture(engine, args.seed)
    times = StatementTimes()
    load_before = loadavg()
    results: list[CaseResult] = []
    all_cases = cases(engine, url, fx)
    if args.only:
        all_cases = [c for c in all_cases if any(o.lower() in c.name.lower() for o in args.only)]
    for i, case in enumerate(all_cases):
        result, _ = measure(engine, case, reps=args.reps, explain_reps=args.explain_reps, warmup=args.warmup,
                            budget_s=args.budget, seed=args.seed * 1000 + i, times=times, log=log)
        results.append(result)
    load_after = loadavg()
    top = top_statements_server(engine) if pgss else top_statements_client(times)
    engine.dispose()
    return {
        "spec": asdict(spec), "load": asdict(info), "server": settings, "database_mb": db_mb,
        "pg_stat_statements": pgss, "pg_stat_statements_error": pgss_error,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "results": [asdict(r) for r in results], "top_statements": top,
    }


def report(path: Path, command: str, out: dict[str, Any]) -> None:
    results = [CaseResult(**r) for r in out["results"]]
    header = ["query", "function", "calls", "p50 ms", "p95 ms", "max ms", "target", "plan's key node",
              "buffers hit/read per call", "statements per call", "seq scans on large tables"]
    rows = [[r.name, f"`{r.function}`", str(r.reps), f"{r.p50_ms}", f"**{r.p95_ms}**", f"{r.max_ms}",
             r.target, r.key_node, f"{r.hit:g}/{r.read:g}",
             f"{r.statements:g}", "; ".join(r.seq_scans) or "none"] for r in results]
    spec, load_info = out["spec"], out["load"]
    missed = [r.name for r in results if r.target_ms is not None and r.p95_ms > r.target_ms]
    scans = [r.name for r in results if r.seq_scans]
    rows_loaded = load_info.get("rows", {})
    verdict = (
        f"{spec['messages']:,} messages over {spec['accounts']} accounts, windows of {spec['window_size']} "
        f"(rows: {', '.join(f'{t} {n:,}' for t, n in rows_loaded.items())}; database {out['database_mb']:,} MB). "
        f"Loaded by COPY in {load_info['seconds']} s, secondary indexes built in {load_info['index_seconds']} s, "
        f"HNSW in {load_info['hnsw_seconds']} s. PostgreSQL {out['server']['server_version']} (embedded, "
        f"shared_buffers {out['server']['shared_buffers']}, work_mem {out['server']['work_mem']}). "
        f"Load average (1/5/15 min) before the timed calls {out['loadavg_before']}, after {out['loadavg_after']}. "
        f"Targets p95 ≤ {TARGET_MS:g} ms, search ≤ {SEARCH_TARGET_MS:g} ms: "
        + (f"missed by {', '.join(missed)}. " if missed else "all met. ")
        + ("Rows whose target reads \"context\" have none: " + ", ".join(r.name for r in results if r.target_ms is None)
           + ". " if any(r.target_ms is None for r in results) else "")
        + ("Sequential scans of large tables in: " + ", ".join(scans) + "." if scans
           else "No sequential scan of a large table in any plan.")
        + (" pg_stat_statements: in use." if out["pg_stat_statements"] else
           f" pg_stat_statements: not available on this server ({out['pg_stat_statements_error']}); the top "
           "statements below are timed on the client by the same listener.")
    )
    write_section(path, "db-scale", command, header, rows, verdict)
    write_section(path, "db-scale-top-statements", command,
                  ["query", "statement", "calls", "total ms", "mean ms", "buffers hit/read"], out["top_statements"],
                  "The statements that took the most time over all timed calls above "
                  + ("(pg_stat_statements)." if out["pg_stat_statements"] else
                     "(client-side: execute to result, round trip included; pg_stat_statements is not available)."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--window-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reps", type=int, default=100, help="timed calls per query (after --warmup)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--explain-reps", type=int, default=10, help="calls per query whose statements are explained")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of timed calls per query at most")
    parser.add_argument("--only", nargs="*", default=None, help="only the queries whose name contains one of these")
    parser.add_argument("--hnsw-memory", default=HNSW_MEMORY, help="maintenance_work_mem for the HNSW build")
    parser.add_argument("--hnsw-workers", type=int, default=1, help="parallel maintenance workers for HNSW")
    parser.add_argument("--shared-buffers-mb", type=int, default=None,
                        help="the embedded server's shared_buffers (default: the product's, a quarter of the "
                             "memory up to 1 GB); applies when this run starts the server")
    parser.add_argument("--data", type=Path, default=None,
                        help="Keep the database here and reuse it on the next run (default: a temporary folder).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="Write the figures into this Markdown file.")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-db-") as tmp:
        out = run(args, args.data or Path(tmp), log)
    command = (f"python -m bench.db_scale --messages {args.messages} --accounts {args.accounts} "
               f"--reps {args.reps} --explain-reps {args.explain_reps}")
    # Every option the figures depend on, when not its default: the report gives the exact command.
    for option in ("window_size", "seed", "warmup", "budget", "hnsw_memory", "hnsw_workers", "shared_buffers_mb"):
        if getattr(args, option) != parser.get_default(option):
            command += f" --{option.replace('_', '-')} {getattr(args, option)}"
    if args.data:
        command += " --data DIR"
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    if args.report and not args.only:
        report(args.report, command, out)
    results = [CaseResult(**r) for r in out["results"]]
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
