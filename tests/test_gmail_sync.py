"""Gmail sync end to end: the real google-api-python-client over HTTP against the project's Gmail
server, a real Celery worker, real Redis and Postgres. After each scenario the synced set must
equal the server's mailbox exactly (by message key, Gmail id and labels).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from pipeline.accounts import connect_account, gmail_client
from pipeline.credentials import OAuthGrant, TokenCipher
from pipeline.importing import import_mbox
from pipeline.resilience.breakers import REDIS_PREFIX as BREAKER_PREFIX
from pipeline.resilience.breakers import breaker_states
from pipeline.resilience.classify import ERROR_CLASSES, is_retried
from pipeline.resilience.quota import CostTable, RedisQuotaBudget
from pipeline.settings import Settings
from pipeline.sources.gmail import FetchOutcome, GmailClient, GmailConfig, Profile
from pipeline.stages.ingest import identify
from pipeline.syncing import SyncSummary, sync_account
from pipeline.testing.gmail_mailbox import FakeMailbox
from pipeline.testing.gmail_server import Faults, GmailServer, QuotaLedger, QuotaRegime
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration

EMAIL = "me@example.com"
RETRIED_CLASSES = frozenset(c for c in ERROR_CLASSES if is_retried(c))
HIDDEN = {"SPAM", "TRASH"}


@pytest.fixture
def gmail(gmail_server: GmailServer, engine: Engine, worker: object, sample_mbox: Path) -> Iterator[GmailServer]:
    """The session's Gmail server, holding a fresh copy of the sample mailbox, no faults, no quota."""
    gmail_server.mailboxes = {EMAIL: FakeMailbox.from_mbox(EMAIL, sample_mbox)}
    gmail_server.faults = Faults()
    gmail_server.quota = QuotaLedger(None)
    gmail_server.reset_stats()
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in ("mailpipe:quota:*", f"{BREAKER_PREFIX}*"):
        for key in client.scan_iter(pattern):
            client.delete(key)  # no pause, empty bucket or open breaker carried over from another test
    yield gmail_server


def _connect(engine: Engine, server: GmailServer, email: str = EMAIL) -> int:
    grant = OAuthGrant(refresh_token=server.issue_refresh_token(email), client_id="cid", client_secret="secret",
                       token_uri=server.token_uri)
    return connect_account(engine, TokenCipher.from_settings(Settings()), email, grant)


def _sync(engine: Engine, account_id: int, mode: str = "auto") -> SyncSummary:
    from tasks.chains import dispatch_window

    settings = Settings()
    return sync_account(engine, settings, account_id, gmail_client(engine, settings, account_id), dispatch_window,
                        mode=mode)


def _visible(box: FakeMailbox) -> list[str]:
    return [i for i in box.ids() if HIDDEN.isdisjoint(box.get(i).label_ids)]


def assert_exact(engine: Engine, account_id: int, box: FakeMailbox) -> None:
    """What we hold is what the server's mailbox holds: same messages, Gmail ids and labels."""
    server_keys = {identify(box.get(i).raw)[0] for i in _visible(box)}
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_key, gmail_id, labels FROM messages WHERE account_id = :a"),
                            {"a": account_id}).all()
    assert {r[0] for r in rows} == server_keys
    for _, gmail_id, labels in rows:
        assert gmail_id is not None and gmail_id in box.ids()
        assert sorted(labels) == sorted(box.get(gmail_id).label_ids)
    unprocessed = conn_scalar(engine, "SELECT count(*) FROM messages WHERE account_id = :a AND "
                                      "(normalized_at IS NULL OR contacts_at IS NULL)", a=account_id)
    assert unprocessed == 0


def conn_scalar(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def permanent_failures(engine: Engine, account_id: int) -> list[tuple[str, str, str]]:
    """The account's recorded failures of a class that is not retried (auth, gone, permanent, poison...)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT item_ref, error_class, reason FROM failures WHERE account_id = :a"),
                            {"a": account_id}).all()
    return [(r[0], r[1], r[2]) for r in rows if r[1] not in RETRIED_CLASSES]


def _contacts_match_rows(engine: Engine) -> None:
    """Counters equal what the participant rows say (deletions recount, never drift)."""
    assert conn_scalar(engine, """
        SELECT count(*) FROM contacts c WHERE c.sent_count <> (
          SELECT count(*) FROM message_participants mp WHERE mp.contact_id = c.id AND mp.direction = 'sent')
        OR c.received_count <> (
          SELECT count(*) FROM message_participants mp WHERE mp.contact_id = c.id
          AND mp.direction = 'received' AND mp.role = 'from')""") == 0


def test_full_sync_of_a_thousand_messages(gmail: GmailServer, engine: Engine) -> None:
    gmail.mailboxes = {EMAIL: FakeMailbox.from_generated(EMAIL, 1000, seed=7)}
    gmail.quota = QuotaLedger(QuotaRegime.legacy())
    account_id = _connect(engine, gmail)
    summary = _sync(engine, account_id)
    assert summary.status == "done", summary
    assert summary.mode == "full" and summary.failed == 0
    box = gmail.mailbox(EMAIL)
    assert_exact(engine, account_id, box)
    assert summary.history_id == box.history_id
    # Quota: gets in batches (never more than 50), and the units spent are reported.
    stats = gmail.stats(EMAIL)
    assert max(stats["batch_items"]) <= 50 and sum(stats["batch_items"]) >= 1000
    # The run reports exactly what the server charged: 1,000 gets, two list pages and a profile.
    assert summary.quota_units == stats["units"] == 1000 * 5 + 2 * 5 + 1
    assert stats["rate_limited"] == 0  # the shared budget kept every worker under the limit

    again = _sync(engine, account_id)
    assert again.mode == "incremental" and again.new_messages == 0 and again.listed == 0


def test_incremental_adds_deletes_and_label_changes(gmail: GmailServer, engine: Engine,
                                                    sample_mbox: Path) -> None:
    account_id = _connect(engine, gmail)
    assert _sync(engine, account_id).status == "done"
    box = gmail.mailbox(EMAIL)
    ids = box.ids()
    new_id = box.add_raw(b"From: Ann <ann@example.org>\r\nTo: me@example.com\r\nSubject: new one\r\n"
                         b"Message-ID: <added-1@example.org>\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\nHello\r\n",
                         labels=["INBOX", "UNREAD"])
    box.delete(ids[0])
    box.delete(ids[1])
    box.modify_labels(ids[2], add=["STARRED"], remove=["UNREAD"])
    box.modify_labels(ids[3], add=["TRASH"])  # trashed: leaves the store like a deletion

    summary = _sync(engine, account_id)
    assert summary.mode == "incremental" and summary.status == "done", summary
    assert summary.new_messages == 1 and summary.deleted >= 2
    assert_exact(engine, account_id, box)
    assert conn_scalar(engine, "SELECT count(*) FROM messages WHERE gmail_id = :g", g=new_id) == 1
    _contacts_match_rows(engine)

    box.modify_labels(ids[3], remove=["TRASH"])  # untrashed: fetched again
    assert _sync(engine, account_id).status == "done"
    assert_exact(engine, account_id, box)


def test_expired_cursor_catches_up_without_skipping(gmail: GmailServer, engine: Engine) -> None:
    account_id = _connect(engine, gmail)
    assert _sync(engine, account_id).status == "done"
    box = gmail.mailbox(EMAIL)
    newest = box.ids()[0]
    box.add_raw(b"From: Bob <bob@example.org>\r\nTo: me@example.com\r\nSubject: while away\r\n"
                b"Message-ID: <away-1@example.org>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHi\r\n",
                labels=["INBOX"])
    box.delete(newest)
    box.expire_history(keep_last=0)

    summary = _sync(engine, account_id)
    assert summary.mode == "catchup" and summary.status == "done", summary
    assert summary.new_messages == 1
    assert_exact(engine, account_id, box)
    assert summary.history_id == box.history_id


def test_a_catch_up_sees_changes_older_than_its_range(gmail: GmailServer, engine: Engine) -> None:
    account_id = _connect(engine, gmail)
    assert _sync(engine, account_id).status == "done"
    box = gmail.mailbox(EMAIL)
    oldest, restored = box.ids()[-1], box.ids()[-2]
    box.modify_labels(restored, add=["TRASH"])
    assert _sync(engine, account_id).mode == "incremental"
    assert conn_scalar(engine, "SELECT count(*) FROM messages WHERE gmail_id = :g", g=restored) == 0
    # While the cursor expires: an old message deleted, the trashed one brought back.
    box.delete(oldest)
    box.modify_labels(restored, remove=["TRASH"])
    box.expire_history(keep_last=0)
    gmail.reset_stats()

    summary = _sync(engine, account_id)
    assert summary.mode == "catchup" and summary.status == "done", summary
    assert summary.deleted == 1 and summary.new_messages == 1
    assert_exact(engine, account_id, box)
    # Gets: the restored message and the unlisted id (confirmed gone before it was deleted); the
    # sample's second Gmail id of one Message-ID is known as an alias, so it is not fetched again.
    copies = len(_visible(box)) - len({identify(box.get(i).raw)[0] for i in _visible(box)})
    assert copies == 1
    assert gmail.stats(EMAIL)["calls"].get("messages.get", 0) == 2


def test_one_message_under_two_gmail_ids_is_kept_until_both_are_gone(gmail: GmailServer, engine: Engine) -> None:
    account_id = _connect(engine, gmail)
    box = gmail.mailbox(EMAIL)
    raw = (b"From: Me <me@example.com>\r\nTo: me@example.com\r\nSubject: note to self\r\n"
           b"Message-ID: <self-1@example.com>\r\nDate: Mon, 23 Nov 2026 08:00:00 +0000\r\n\r\nremember\r\n")
    sent = box.add_raw(raw, labels=["SENT"])
    received = box.add_raw(raw, labels=["INBOX", "UNREAD"])
    assert _sync(engine, account_id).status == "done"

    def held() -> list[tuple[str, list[str]]]:
        with engine.connect() as conn:
            return [(r[0], sorted(r[1])) for r in conn.execute(text(
                "SELECT gmail_id, labels FROM messages WHERE rfc_message_id = 'self-1@example.com'")).all()]

    first = held()
    assert len(first) == 1 and first[0][0] in (sent, received)
    other = received if first[0][0] == sent else sent
    assert conn_scalar(engine, "SELECT count(*) FROM gmail_aliases WHERE gmail_id = :g", g=other) == 1
    gmail.reset_stats()
    assert _sync(engine, account_id, mode="full").listed == 0  # both ids known: nothing fetched again
    assert gmail.stats(EMAIL)["calls"].get("messages.get", 0) == 0

    box.modify_labels(other, add=["STARRED"])
    box.delete(first[0][0])  # the id the row carries goes: the message stays, under the other id
    summary = _sync(engine, account_id)
    assert summary.mode == "incremental" and summary.deleted == 0, summary
    assert held() == [(other, sorted(box.get(other).label_ids))]
    assert_exact(engine, account_id, box)

    box.delete(other)
    assert _sync(engine, account_id).deleted == 1
    assert held() == []
    assert_exact(engine, account_id, box)


@pytest.mark.parametrize("error_rate", [0.2, 0.3])
def test_batch_partial_failures_lose_nothing(gmail: GmailServer, engine: Engine, error_rate: float) -> None:
    gmail.faults = Faults(error_rate=error_rate, seed=3)
    account_id = _connect(engine, gmail)
    summary = _sync(engine, account_id)
    assert summary.status == "done" and summary.failed == 0, summary
    assert gmail.stats(EMAIL)["injected_5xx"] > 0
    assert permanent_failures(engine, account_id) == []
    assert_exact(engine, account_id, gmail.mailbox(EMAIL))


def test_a_gmail_outage_opens_the_shared_breaker_and_the_sync_resumes(gmail: GmailServer, engine: Engine) -> None:
    # Once fetching starts, Gmail fails every call for 8 s: batches come back with every part 503.
    outage_until = [0.0]

    def outage(method: str, _n: int) -> None:
        if method == "messages.get" and not outage_until[0]:
            outage_until[0] = time.monotonic() + 8
            gmail.faults.error_rate = 1.0
        elif outage_until[0] and time.monotonic() > outage_until[0]:
            gmail.faults.error_rate = 0.0

    seen: set[str] = set()
    stop = threading.Event()

    def watch_breakers() -> None:
        while not stop.is_set():
            seen.update(b.state for b in breaker_states(Settings(), engine) if b.name == "gmail")
            stop.wait(0.2)

    gmail.faults = Faults(on_call=outage, seed=5)
    watcher = threading.Thread(target=watch_breakers, daemon=True)
    watcher.start()
    account_id = _connect(engine, gmail)
    try:
        summary = _sync(engine, account_id)
    finally:
        stop.set()
        watcher.join()
    assert summary.status == "done" and summary.failed == 0, summary
    assert "open" in seen, seen
    assert gmail.stats(EMAIL)["injected_5xx"] > 0
    assert_exact(engine, account_id, gmail.mailbox(EMAIL))


def test_a_429_storm_pauses_and_then_finishes(gmail: GmailServer, engine: Engine) -> None:
    # The server allows an eighth of what the client's (legacy) budget assumes, counted over 5-second
    # windows so that each pause is short: every worker fetching the account runs into 429s, again and again.
    gmail.mailboxes = {EMAIL: FakeMailbox.from_generated(EMAIL, 200, seed=11)}
    gmail.quota = QuotaLedger(QuotaRegime.legacy(per_user_per_minute=150, window_seconds=5))
    account_id = _connect(engine, gmail)
    summary = _sync(engine, account_id)
    assert summary.status == "done" and summary.failed == 0, summary
    stats = gmail.stats(EMAIL)
    assert stats["rate_limited"] > 0
    # Once a 429 has reached the client, no worker of the account calls again before the time it named
    # (calls already on their way when it was sent are not counted: see GmailServer.deliver).
    assert stats["calls_during_pause"] == 0, stats
    assert permanent_failures(engine, account_id) == []
    assert_exact(engine, account_id, gmail.mailbox(EMAIL))


def test_a_429_pauses_the_account_before_the_batch_is_saved(redis_url: str, redis_prefix: str) -> None:
    """Two workers of one account, on the real client and a shared Redis budget: while the first saves
    the batch that came back with 429s, the second must already be held by the pause."""
    box = FakeMailbox.from_generated(EMAIL, 15, seed=5)
    regime = QuotaRegime.legacy(per_user_per_minute=50, window_seconds=3)  # 10 gets per 3 s
    budget = RedisQuotaBudget(redis.Redis.from_url(redis_url), 1000.0, 250.0, prefix=redis_prefix)
    with GmailServer(box, quota=regime) as server:

        def worker() -> GmailClient:
            grant = OAuthGrant(refresh_token=server.issue_refresh_token(EMAIL), client_id="cid",
                               client_secret="secret", token_uri=server.token_uri)
            return GmailClient(grant, GmailConfig(server.base_url, 10.0, 50, 100), budget, CostTable.legacy(),
                               "account:1")

        first, second = worker(), worker()
        profiles: list[Profile] = []
        other = threading.Thread(target=lambda: profiles.append(second.profile()))
        saved: list[str] = []

        def save(outcome: FetchOutcome) -> None:
            if other.ident is None:  # the first batch, refused in part: another worker calls while it is saved
                other.start()
                other.join(0.5)
            saved.extend(m.id for m in outcome.fetched)

        first.fetch(box.ids(), save)
        other.join(30)
        stats = server.stats(EMAIL)
    assert sorted(saved) == sorted(box.ids()) and len(profiles) == 1
    assert stats["rate_limited"] > 0
    assert stats["calls_during_pause"] == 0, stats


def test_a_message_deleted_between_list_and_get_is_recorded_as_gone(gmail: GmailServer, engine: Engine) -> None:
    box = gmail.mailbox(EMAIL)
    victim = box.ids()[5]
    gmail.faults = Faults(delete_on_get={victim})
    account_id = _connect(engine, gmail)
    summary = _sync(engine, account_id)
    assert summary.status == "done" and summary.gone == 1 and summary.failed == 0, summary
    assert conn_scalar(engine, "SELECT count(*) FROM failures WHERE error_class = 'gone' AND item_ref = :r",
                       r=f"gmail:{victim}") == 1
    assert_exact(engine, account_id, box)


def test_changes_arriving_mid_sync_are_caught_by_the_next_incremental(gmail: GmailServer, engine: Engine) -> None:
    box = gmail.mailbox(EMAIL)
    ids = box.ids()

    def meddle(method: str, number: int) -> None:
        if method == "messages.get" and number == 10:
            box.add_raw(b"From: Cy <cy@example.org>\r\nTo: me@example.com\r\nSubject: mid-sync\r\n"
                        b"Message-ID: <mid-1@example.org>\r\nDate: Mon, 23 Nov 2026 11:00:00 +0000\r\n\r\nx\r\n",
                        labels=["INBOX"])
            box.delete(ids[-1])
            box.modify_labels(ids[-2], add=["STARRED"])

    gmail.faults = Faults(on_call=meddle)
    account_id = _connect(engine, gmail)
    first = _sync(engine, account_id)
    assert first.status == "done", first
    second = _sync(engine, account_id)
    assert second.mode == "incremental" and second.status == "done", second
    assert_exact(engine, account_id, box)
    _contacts_match_rows(engine)


def test_invalid_grant_marks_the_account_and_says_what_to_do(gmail: GmailServer, engine: Engine) -> None:
    from pipeline.reports import status

    gmail.faults = Faults(invalid_grant=True)
    account_id = _connect(engine, gmail)
    summary = _sync(engine, account_id)
    assert summary.status == "abandoned" and "auth" in (summary.error or "")
    assert gmail.stats()["token_refreshes"] <= 3
    report = next(a for a in status(engine) if a["email"] == EMAIL)
    assert report["status"] == "needs_reauth"
    assert "mailpipe accounts add" in report["action"]
    # Connecting again clears it.
    gmail.faults = Faults()
    _connect(engine, gmail)
    assert _sync(engine, account_id).status == "done"


def test_takeout_backfill_then_api_catch_up_has_no_duplicates(gmail: GmailServer, engine: Engine,
                                                              sample_mbox: Path) -> None:
    from tasks.chains import dispatch_window

    imported = import_mbox(engine, Settings(), sample_mbox, EMAIL, dispatch_window)
    assert imported.status == "done"
    held = conn_scalar(engine, "SELECT count(*) FROM messages")
    account_id = _connect(engine, gmail)
    summary = _sync(engine, account_id)
    assert summary.status == "done", summary
    # The catch-up listed from the newest Takeout date, not the whole mailbox, and added nothing new.
    assert summary.listed < len(gmail.mailbox(EMAIL).ids())
    assert summary.new_messages == 0
    assert conn_scalar(engine, "SELECT count(*) FROM messages") == held


def test_a_worker_process_keeps_a_client_for_each_account(gmail: GmailServer, engine: Engine) -> None:
    # Every account's windows share the ingest processes: a process that kept one client built another
    # (refreshing its access token first) for nearly every window of a multi-account sync.
    from tasks import context

    gmail.mailboxes["other@example.com"] = FakeMailbox("other@example.com")
    first, second = _connect(engine, gmail), _connect(engine, gmail, "other@example.com")
    try:
        mine, other = context.gmail_client(first), context.gmail_client(second)
        assert context.gmail_client(first) is mine and context.gmail_client(second) is other
        _connect(engine, gmail)  # re-connected: a new grant, so a new client, never the old one's
        renewed = context.gmail_client(first)
        assert renewed is not mine and context.gmail_client(second) is other
        context.forget_gmail_client(second)  # after an error: that account's client only
        assert context.gmail_client(second) is not other and context.gmail_client(first) is renewed
    finally:
        context.forget_gmail_client(first)
        context.forget_gmail_client(second)
