"""The project's Gmail server, driven only by the real google-api-python-client over HTTP."""

from __future__ import annotations

import base64
import email
import json
import mailbox
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.policy import compat32
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import google_auth_httplib2
import httplib2
import pytest
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from pipeline.testing.gmail_mailbox import FORMATS, FakeMailbox, message_resource
from pipeline.testing.gmail_server import Faults, GmailServer, QuotaLedger, QuotaRegime

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "pipeline" / "samples" / "sample.mbox"
ME = "me@example.com"
PST = timezone(timedelta(hours=-8))


# ---------------------------------------------------------------------- helpers


def service(server: GmailServer, user: str = ME, timeout: float | None = None) -> Any:
    creds = Credentials(token=None, refresh_token=server.issue_refresh_token(user), token_uri=server.token_uri,
                        client_id="cid", client_secret="secret")
    http = google_auth_httplib2.AuthorizedHttp(creds, http=httplib2.Http(timeout=timeout))
    return build("gmail", "v1", http=http, static_discovery=True, cache_discovery=False,
                 client_options={"api_endpoint": server.base_url})


def run(request: Any) -> Any:
    return request.execute(num_retries=0)


def error_of(exc: HttpError) -> dict[str, Any]:
    return json.loads(exc.content)["error"]


def sample_box() -> FakeMailbox:
    return FakeMailbox.from_mbox(ME, SAMPLE)


@pytest.fixture()
def sample() -> Iterator[tuple[GmailServer, Any]]:
    with GmailServer(sample_box()) as server:
        yield server, service(server).users()


def sample_messages() -> list[email.message.Message]:
    """The sample as Python's mailbox module reads it: the oracle for bytes and dates."""
    return list(mailbox.mbox(str(SAMPLE)))


def sample_bytes() -> list[bytes]:
    box = mailbox.mbox(str(SAMPLE))
    # mailbox.mbox does not undo mboxrd's ">From " escaping; Takeout (and the server) does.
    return [re.sub(rb"(?m)^>(>*From )", rb"\1", box.get_bytes(key)) for key in box.iterkeys()]


def date_ms(msg: email.message.Message) -> int:
    return int(parsedate_to_datetime(msg["Date"]).timestamp() * 1000)


def list_all(users: Any, **params: Any) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        body = run(users.messages().list(userId="me", pageToken=token, **params))
        ids += [m["id"] for m in body.get("messages", [])]
        token = body.get("nextPageToken")
        if not token:
            return ids


def plain_message(i: int, when: datetime, *, extra: str = "") -> bytes:
    stamp = when.strftime("%a, %d %b %Y %H:%M:%S +0000")
    return (f"From: a{i}@example.org\nTo: {ME}\nSubject: message {i}\nDate: {stamp}\n"
            f"Message-ID: <m{i}@example.org>\n{extra}\nBody {i}\n").encode()


def batch_get(server: GmailServer, users: Any, ids: list[str]) -> dict[str, tuple[Any, Exception | None]]:
    answers: dict[str, tuple[Any, Exception | None]] = {}

    def collect(request_id: str, response: Any, exc: Exception | None) -> None:
        answers[request_id] = (response, exc)

    batch = BatchHttpRequest(callback=collect, batch_uri=server.batch_uri)
    for i, mid in enumerate(ids):
        batch.add(users.messages().get(userId="me", id=mid, format="minimal"), request_id=f"{i}:{mid}")
    batch.execute()
    return answers


# ---------------------------------------------------------------------- loading and profile


def test_profile_of_the_sample(sample: tuple[GmailServer, Any]) -> None:
    _, users = sample
    profile = run(users.getProfile(userId="me"))
    assert profile["emailAddress"] == ME
    assert profile["messagesTotal"] == 51  # every mbox entry, the exact duplicate included
    assert profile["threadsTotal"] == 26
    assert isinstance(profile["historyId"], str) and int(profile["historyId"]) > 0


def test_user_id_may_be_the_address_but_not_another_one(sample: tuple[GmailServer, Any]) -> None:
    _, users = sample
    assert run(users.getProfile(userId=ME))["emailAddress"] == ME
    with pytest.raises(HttpError) as caught:
        run(users.getProfile(userId="someone@example.com"))
    assert caught.value.resp.status == 403


def test_takeout_labels_become_system_and_user_labels(sample: tuple[GmailServer, Any]) -> None:
    _, users = sample
    labels = run(users.labels().list(userId="me"))["labels"]
    by_name = {label["name"]: label for label in labels}
    assert by_name["INBOX"]["type"] == "system"
    assert by_name["Travel"]["type"] == "user" and re.fullmatch(r"Label_\d+", by_name["Travel"]["id"])
    assert "Opened" not in by_name and "Archived" not in by_name  # Takeout's "no label" spellings
    sent = list_all(users, labelIds=["SENT"])
    assert len(sent) == 16
    unread_inbox = list_all(users, labelIds=["INBOX", "UNREAD"])
    for mid in unread_inbox:
        assert {"INBOX", "UNREAD"} <= set(run(users.messages().get(userId="me", id=mid, format="minimal"))["labelIds"])
    assert 0 < len(unread_inbox) < len(list_all(users, labelIds=["INBOX"]))
    with pytest.raises(HttpError) as caught:
        run(users.messages().list(userId="me", labelIds=["NoSuchLabel"]))
    assert caught.value.resp.status == 400


def test_generated_mailbox_keeps_the_generator_ids() -> None:
    from bench.generate import iter_messages

    box = FakeMailbox.from_generated(ME, 40, seed=3)
    assert sorted(box.ids()) == sorted(m.gmail_message_id for m in iter_messages(40, seed=3, account=ME))


# ---------------------------------------------------------------------- listing


def test_list_is_newest_first_and_pages_without_gaps_or_duplicates() -> None:
    box = FakeMailbox(ME)
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    # Every third message shares its date with the previous one: ties are broken by id.
    for i in range(30):
        box.add_raw(plain_message(i, start + timedelta(minutes=i - i % 3 // 2)), record_history=False)
    expected = sorted(box.ids(), key=lambda mid: (box.get(mid).internal_date, int(mid, 16)), reverse=True)
    with GmailServer(box) as server:
        users = service(server).users()
        pages = []
        token = None
        while True:
            body = run(users.messages().list(userId="me", maxResults=7, pageToken=token))
            pages.append([m["id"] for m in body["messages"]])
            token = body.get("nextPageToken")
            if not token:
                break
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [mid for page in pages for mid in page] == expected


def test_page_tokens_survive_changes_to_the_mailbox() -> None:
    box = FakeMailbox(ME)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    for i in range(20):
        box.add_raw(plain_message(i, start + timedelta(hours=i)), record_history=False)
    with GmailServer(box) as server:
        users = service(server).users()
        first = run(users.messages().list(userId="me", maxResults=5))
        seen = [m["id"] for m in first["messages"]]
        newest_new = box.add_raw(plain_message(99, start + timedelta(days=30)))
        gone = box.ids()[12]
        box.delete(gone)
        rest: list[str] = []
        token = first["nextPageToken"]
        while token:
            body = run(users.messages().list(userId="me", maxResults=5, pageToken=token))
            rest += [m["id"] for m in body.get("messages", [])]
            token = body.get("nextPageToken")
    everything = seen + rest
    assert len(everything) == len(set(everything)) == 19
    assert gone not in everything and newest_new not in everything


def test_query_after_and_before_with_dates_and_epoch_seconds(sample: tuple[GmailServer, Any]) -> None:
    _, users = sample
    dates = [date_ms(m) for m in sample_messages()]
    # Gmail reads dates as midnight PST.
    low = int(datetime(2024, 3, 8, tzinfo=PST).timestamp() * 1000)
    high = int(datetime(2024, 3, 18, tzinfo=PST).timestamp() * 1000)
    expected = sum(low <= d < high for d in dates)
    assert 0 < expected < len(dates)
    assert len(list_all(users, q="after:2024/03/08 before:2024/03/18")) == expected
    assert len(list_all(users, q=f"in:anywhere after:{low // 1000} before:{high // 1000}")) == expected
    assert len(list_all(users, q="after:2024/03/08")) == sum(d >= low for d in dates)
    assert len(list_all(users, q="before:2024/03/18")) == sum(d < high for d in dates)


def test_spam_and_trash_are_listed_only_when_asked() -> None:
    box = sample_box()
    trashed = box.ids()[0]
    box.modify_labels(trashed, add=["TRASH"], remove=["INBOX"])
    with GmailServer(box) as server:
        users = service(server).users()
        assert trashed not in list_all(users)
        assert trashed in list_all(users, includeSpamTrash=True)
        assert list_all(users, labelIds=["TRASH"]) == [trashed]


def test_empty_list_has_no_messages_key() -> None:
    with GmailServer(FakeMailbox(ME)) as server:
        body = run(service(server).users().messages().list(userId="me"))
    assert body == {"resultSizeEstimate": 0}


# ---------------------------------------------------------------------- get and threads


def test_get_in_all_four_formats(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    box = server.mailbox(ME)
    multipart = next(m for m in box.ids() if b"multipart/mixed" in box.get(m).raw)
    raw = run(users.messages().get(userId="me", id=multipart, format="raw"))
    assert base64.urlsafe_b64decode(raw["raw"]) == box.get(multipart).raw
    assert raw["internalDate"] == str(box.get(multipart).internal_date) and "payload" not in raw

    minimal = run(users.messages().get(userId="me", id=multipart, format="minimal"))
    assert {"id", "threadId", "snippet", "historyId", "internalDate", "sizeEstimate"} <= set(minimal)
    assert "payload" not in minimal and "raw" not in minimal

    metadata = run(users.messages().get(userId="me", id=multipart, format="metadata",
                                        metadataHeaders=["Subject", "from"]))
    assert {h["name"].lower() for h in metadata["payload"]["headers"]} == {"subject", "from"}

    full = run(users.messages().get(userId="me", id=multipart, format="full"))
    payload = full["payload"]
    parsed = email.message_from_bytes(box.get(multipart).raw, policy=compat32)
    assert payload["partId"] == "" and payload["mimeType"] == "multipart/mixed"
    assert {"name": "Message-ID", "value": parsed["Message-ID"]} in payload["headers"]
    assert [p["partId"] for p in payload["parts"]] == [str(i) for i in range(len(parsed.get_payload()))]
    attachment = next(p for p in payload["parts"] if p["filename"])
    data = run(users.messages().attachments().get(userId="me", messageId=multipart,
                                                  id=attachment["body"]["attachmentId"]))
    expected = parsed.get_payload()[int(attachment["partId"])].get_payload(decode=True)
    assert base64.urlsafe_b64decode(data["data"]) == expected and data["size"] == len(expected)


def test_a_message_is_parsed_once_and_answers_alike_in_every_format(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    box = server.mailbox(ME)
    box.prepare_contents()
    mid = next(m for m in box.ids() if b"multipart/mixed" in box.get(m).raw)
    kept = box.content(box.get(mid))
    assert box.content(box.get(mid)) is kept
    box.modify_labels(mid, add=["STARRED"])  # a new StoredMessage, the same bytes: the same content
    msg = box.get(mid)
    assert "STARRED" in msg.label_ids and box.content(msg) is kept
    for fmt in FORMATS:
        assert message_resource(msg, fmt, ["Subject"], kept) == message_resource(msg, fmt, ["Subject"])
        answered = run(users.messages().get(userId="me", id=mid, format=fmt, metadataHeaders=["Subject"]))
        assert answered == message_resource(msg, fmt, ["Subject"])


def test_full_format_decodes_text_and_headers(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    box = server.mailbox(ME)
    first = b"Message-ID: <CAKp3vQx7nWm2r5FtB9dZk1LhQe8s0Gq@mail.gmail.com>"
    mid = next(m for m in box.ids() if first in box.get(m).raw)
    full = run(users.messages().get(userId="me", id=mid))
    cc = next(h["value"] for h in full["payload"]["headers"] if h["name"] == "Cc")
    assert "Łukasz Wiśniewski" in cc
    text = base64.urlsafe_b64decode(full["payload"]["body"]["data"]).decode("utf-8")
    assert "Łukasz from Baltic Labs" in text  # quoted-printable decoded
    assert full["snippet"].startswith("Hi Alex, We&#39;d like to run the database migration")


def test_raw_is_the_original_bytes_for_every_message(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    fetched = {base64.urlsafe_b64decode(run(users.messages().get(userId="me", id=mid, format="raw"))["raw"])
               for mid in server.mailbox(ME).ids()}
    assert fetched == set(sample_bytes())


def test_unknown_message_is_404_with_gmail_error(sample: tuple[GmailServer, Any]) -> None:
    _, users = sample
    with pytest.raises(HttpError) as caught:
        run(users.messages().get(userId="me", id="0123456789abcdef"))
    assert caught.value.resp.status == 404
    assert error_of(caught.value)["errors"][0]["reason"] == "notFound"
    with pytest.raises(HttpError) as caught:
        run(users.messages().get(userId="me", id="not-an-id"))
    assert caught.value.resp.status == 400


def test_thread_without_gm_thrid_is_joined_by_references(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    subject = "Database migration: orders to PostgreSQL 16"
    expected = sorted(date_ms(m) for m in sample_messages() if subject in str(m["Subject"]))
    hits = [m for m in sample_messages() if subject in str(m["Subject"])]
    assert len(hits) == 7 and not any(m["X-GM-THRID"] for m in hits)
    mid = next(m for m in server.mailbox(ME).ids() if b"Subject: Database migration" in server.mailbox(ME).get(m).raw)
    thread_id = run(users.messages().get(userId="me", id=mid, format="minimal"))["threadId"]
    thread = run(users.threads().get(userId="me", id=thread_id, format="metadata", metadataHeaders=["Subject"]))
    assert thread["id"] == thread_id and len(thread["messages"]) == 7
    assert [int(m["internalDate"]) for m in thread["messages"]] == expected  # oldest first
    assert thread["messages"][0]["id"] == thread_id  # a thread's id is its first message's id
    assert int(thread["historyId"]) == max(int(m["historyId"]) for m in thread["messages"])


# ---------------------------------------------------------------------- history


def test_history_after_add_label_change_and_delete(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    box = server.mailbox(ME)
    start = run(users.getProfile(userId="me"))["historyId"]
    added = box.add_raw(plain_message(1, datetime(2024, 6, 1, tzinfo=UTC)))
    box.modify_labels(added, add=["STARRED"], remove=["UNREAD"])
    old = box.ids()[-1]
    box.delete(old)
    body = run(users.history().list(userId="me", startHistoryId=start))
    records = body["history"]
    assert body["historyId"] == str(box.history_id) and "nextPageToken" not in body
    assert [int(r["id"]) for r in records] == sorted(int(r["id"]) for r in records)
    new = {"id": added, "threadId": added, "labelIds": ["INBOX", "UNREAD"]}
    assert records[0]["messagesAdded"][0]["message"] == new
    assert records[1]["labelsAdded"][0]["labelIds"] == ["STARRED"]
    assert records[1]["labelsRemoved"][0]["labelIds"] == ["UNREAD"]
    assert records[2]["messagesDeleted"][0]["message"]["id"] == old

    only_deletes = run(users.history().list(userId="me", startHistoryId=start, historyTypes=["messageDeleted"]))
    assert [r["id"] for r in only_deletes["history"]] == [records[2]["id"]]
    starred = run(users.history().list(userId="me", startHistoryId=start, labelId="STARRED"))
    assert [r["id"] for r in starred["history"]] == [records[1]["id"]]

    paged: list[str] = []
    token = None
    while True:
        page = run(users.history().list(userId="me", startHistoryId=start, maxResults=1, pageToken=token))
        paged += [r["id"] for r in page.get("history", [])]
        token = page.get("nextPageToken")
        if not token:
            break
    assert paged == [r["id"] for r in records]
    assert "history" not in run(users.history().list(userId="me", startHistoryId=body["historyId"]))


def test_expired_start_history_id_is_404(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    box = server.mailbox(ME)
    start = run(users.getProfile(userId="me"))["historyId"]
    with pytest.raises(HttpError) as caught:  # older than the initial load: nothing recorded
        run(users.history().list(userId="me", startHistoryId=str(int(start) - 1)))
    assert caught.value.resp.status == 404
    for mid in box.ids()[:3]:
        box.modify_labels(mid, add=["STARRED"])
    assert len(run(users.history().list(userId="me", startHistoryId=start))["history"]) == 3
    box.expire_history(keep_last=1)
    with pytest.raises(HttpError) as caught:
        run(users.history().list(userId="me", startHistoryId=start))
    assert caught.value.resp.status == 404 and error_of(caught.value)["status"] == "NOT_FOUND"
    assert box.oldest_valid_history_id > int(start)
    current = run(users.history().list(userId="me", startHistoryId=str(box.oldest_valid_history_id)))
    assert len(current["history"]) == 1


def test_history_retention_by_count() -> None:
    box = FakeMailbox(ME, history_retention=2)
    first = box.history_id
    ids = [box.add_raw(plain_message(i, datetime(2024, 1, 1 + i, tzinfo=UTC))) for i in range(3)]
    with GmailServer(box) as server:
        users = service(server).users()
        with pytest.raises(HttpError) as caught:
            run(users.history().list(userId="me", startHistoryId=str(first)))
        assert caught.value.resp.status == 404
        body = run(users.history().list(userId="me", startHistoryId=str(first + 1)))
    assert [r["messagesAdded"][0]["message"]["id"] for r in body["history"]] == ids[1:]


# ---------------------------------------------------------------------- batch


def test_batch_of_50_succeeds_and_51_is_refused(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    ids = server.mailbox(ME).ids()
    answers = batch_get(server, users, ids[:50])
    assert len(answers) == 50 and all(exc is None for _, exc in answers.values())
    assert all(resp["id"] == key.split(":")[1] for key, (resp, _) in answers.items())
    with pytest.raises(HttpError) as caught:
        batch_get(server, users, ids[:51])
    assert caught.value.resp.status == 400
    assert "Inner request count exceeds the limit. Received: 51, Limit: 50" in error_of(caught.value)["message"]
    stats = server.stats(ME)
    assert stats["batch_requests"] == 1 and stats["batch_items"] == [50]
    assert stats["calls"]["messages.get"] == 50  # the refused batch ran nothing


def test_batch_items_fail_on_their_own(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    ids = server.mailbox(ME).ids()[:4]
    server.faults.delete_on_get.add(ids[1])
    answers = batch_get(server, users, [ids[0], ids[1], "0123456789abcdef", ids[2]])
    statuses = {key: exc.resp.status if isinstance(exc, HttpError) else 200 for key, (_, exc) in answers.items()}
    assert statuses == {f"0:{ids[0]}": 200, f"1:{ids[1]}": 404, "2:0123456789abcdef": 404, f"3:{ids[2]}": 200}


def test_latency_is_per_http_request_not_per_batch_item(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    server.faults.latency = 0.2
    began = time.perf_counter()
    run(users.getProfile(userId="me"))
    single = time.perf_counter() - began
    began = time.perf_counter()
    batch_get(server, users, server.mailbox(ME).ids()[:20])
    batched = time.perf_counter() - began
    assert single >= 0.2 and 0.2 <= batched < 0.2 * 3


# ---------------------------------------------------------------------- quota


def test_burst_over_the_user_limit_gets_429_and_refusals_are_not_charged() -> None:
    regime = QuotaRegime.legacy(per_user_per_minute=100)  # messages.get costs 5: 20 calls fit
    with GmailServer(sample_box(), quota=regime) as server:
        users = service(server).users()
        mid = server.mailbox(ME).ids()[0]
        for _ in range(20):
            run(users.messages().get(userId="me", id=mid, format="minimal"))
        for _ in range(3):
            with pytest.raises(HttpError) as caught:
                run(users.messages().get(userId="me", id=mid, format="minimal"))
        stats = server.stats(ME)
    exc = caught.value
    error = error_of(exc)
    assert exc.resp.status == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    assert error["errors"][0] == {"message": error["message"], "domain": "usageLimits", "reason": "rateLimitExceeded"}
    assert re.match(r"User-rate limit exceeded\.  Retry after \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$",
                    error["message"])
    assert 1 <= int(exc.resp["retry-after"]) <= 60
    assert stats["units"] == 100 and stats["rate_limited"] == 3
    assert stats["calls"]["messages.get"] == 23


def test_rate_limit_as_403_user_rate_limit_exceeded() -> None:
    regime = QuotaRegime.y2026(per_user_per_minute=40, rate_status=403)  # messages.get costs 20
    with GmailServer(sample_box(), quota=regime) as server:
        users = service(server).users()
        mid = server.mailbox(ME).ids()[0]
        run(users.messages().get(userId="me", id=mid))
        run(users.messages().get(userId="me", id=mid))
        with pytest.raises(HttpError) as caught:
            run(users.messages().get(userId="me", id=mid))
    error = error_of(caught.value)
    assert caught.value.resp.status == 403 and error["status"] == "PERMISSION_DENIED"
    assert error["errors"][0]["reason"] == "userRateLimitExceeded" and "Retry after" in error["message"]
    assert caught.value.resp["retry-after"]


def test_daily_limit_is_403_daily_limit_exceeded() -> None:
    regime = QuotaRegime.legacy(daily_limit=3)
    with GmailServer(sample_box(), quota=regime) as server:
        users = service(server).users()
        for _ in range(3):
            run(users.getProfile(userId="me"))
        with pytest.raises(HttpError) as caught:
            run(users.getProfile(userId="me"))
    assert caught.value.resp.status == 403
    assert error_of(caught.value)["errors"][0]["reason"] == "dailyLimitExceeded"


def test_batch_items_are_charged_and_limited_one_by_one() -> None:
    regime = QuotaRegime.legacy(per_user_per_minute=50)  # 10 gets of 5 units
    with GmailServer(sample_box(), quota=regime) as server:
        users = service(server).users()
        answers = batch_get(server, users, server.mailbox(ME).ids()[:12])
        stats = server.stats(ME)
    statuses = [exc.resp.status if isinstance(exc, HttpError) else 200 for _, exc in answers.values()]
    assert statuses.count(200) == 10 and statuses.count(429) == 2
    assert stats["units"] == 50


def test_pacing_at_exactly_the_limit_is_never_refused() -> None:
    now = [0.0]
    ledger = QuotaLedger(QuotaRegime.legacy(per_user_per_minute=100), clock=lambda: now[0])
    for step in range(200):  # 5 units every 3 s is 100 units a minute, for 10 minutes
        now[0] = step * 3.0
        assert ledger.admit(ME, "messages.get", charge=True) == 5
    with pytest.raises(Exception, match="Retry after"):
        ledger.admit(ME, "messages.get", charge=True)  # one more in the same instant is a burst


def retry_after(exc: HttpError) -> datetime:
    """The deadline a rate-limit answer announces in its message."""
    announced = re.search(r"Retry after (\S+)", error_of(exc)["message"])
    assert announced is not None
    return datetime.fromisoformat(announced.group(1))


def _full_window(server: GmailServer) -> tuple[list[float], str]:
    """Two gets fill a 10-unit window at (fake) time 0; at time 59 it frees again in 1 s."""
    now = [0.0]
    server.quota = QuotaLedger(QuotaRegime.legacy(per_user_per_minute=10), clock=lambda: now[0])
    users = service(server).users()
    mid = server.mailbox(ME).ids()[0]
    for _ in range(2):
        run(users.messages().get(userId="me", id=mid, format="minimal"))
    now[0] = 59.0
    return now, mid


def test_calls_before_a_rate_limit_deadline_count_as_calls_during_pause() -> None:
    with GmailServer(sample_box()) as server:
        now, mid = _full_window(server)
        users = service(server).users()
        with pytest.raises(HttpError) as caught:
            run(users.messages().get(userId="me", id=mid, format="minimal"))
        assert caught.value.resp.status == 429 and server.stats(ME)["calls_during_pause"] == 0
        deadline = retry_after(caught.value)
        assert timedelta(0) < deadline - datetime.now(UTC) <= timedelta(seconds=1.001)  # rounded up to the ms
        # Before the deadline every call of the user counts, whatever the method or its answer.
        with pytest.raises(HttpError):
            run(users.messages().get(userId="me", id=mid, format="minimal"))
        with pytest.raises(HttpError) as caught:
            run(users.getProfile(userId="me"))
        assert server.stats(ME)["calls_during_pause"] == 2
        # After the last deadline announced (each refusal announces its own), none.
        time.sleep(max(0.0, (retry_after(caught.value) - datetime.now(UTC)).total_seconds()) + 0.01)
        now[0] = 60.0
        run(users.messages().get(userId="me", id=mid, format="minimal"))
        assert server.stats(ME)["calls_during_pause"] == 2
        assert server.stats()["calls_during_pause"] == 2
        run(users.messages().get(userId="me", id=mid, format="minimal"))  # the window is full again
        with pytest.raises(HttpError):
            run(users.messages().get(userId="me", id=mid, format="minimal"))  # a rate limit of 60 s
        server.reset_stats()  # forgets the rate limits sent, too
        with pytest.raises(HttpError):
            run(users.getProfile(userId="me"))
        assert server.stats(ME)["calls_during_pause"] == 0


def test_calls_received_before_the_rate_limit_was_sent_do_not_count() -> None:
    with GmailServer(sample_box()) as server:
        _, mid = _full_window(server)
        received, release = threading.Event(), threading.Event()

        def hold_profile(method: str, _number: int) -> None:
            if method == "getProfile" and not release.is_set():
                received.set()
                release.wait(10)

        server.faults.on_call = hold_profile
        early: list[BaseException] = []

        def call_profile() -> None:
            try:
                run(service(server).users().getProfile(userId="me"))
            except HttpError as exc:
                early.append(exc)

        # Another client's call arrives first and is held; meanwhile this one gets the rate limit.
        other = threading.Thread(target=call_profile)
        other.start()
        assert received.wait(10)
        users = service(server).users()
        with pytest.raises(HttpError) as caught:
            run(users.messages().get(userId="me", id=mid, format="minimal"))
        assert caught.value.resp.status == 429
        release.set()
        other.join(10)
        assert [e.resp.status for e in early if isinstance(e, HttpError)] == [429]  # served after, refused
        assert server.stats(ME)["calls_during_pause"] == 0  # but it was received before the 429 went out
        # A batch is received at once: parts refused after the first 429 of the batch do not count either.
        answers = batch_get(server, users, server.mailbox(ME).ids()[:3])
        assert [exc.resp.status for _, exc in answers.values() if isinstance(exc, HttpError)] == [429] * 3
        assert server.stats(ME)["calls_during_pause"] == 3  # the batch came after the 429: all three count


# ---------------------------------------------------------------------- faults


def test_injected_5xx_are_backend_errors_and_not_charged() -> None:
    with GmailServer(sample_box(), quota=QuotaRegime.legacy(), faults=Faults(error_rate=1.0, seed=1)) as server:
        users = service(server).users()
        seen = set()
        for _ in range(8):
            with pytest.raises(HttpError) as caught:
                run(users.getProfile(userId="me"))
            seen.add(caught.value.resp.status)
            assert error_of(caught.value)["errors"][0]["reason"] == "backendError"
        server.faults.error_rate = 0.0
        run(users.getProfile(userId="me"))
        stats = server.stats(ME)
    assert seen <= {500, 503} and seen
    assert stats["injected_5xx"] == 8 and stats["units"] == 1


def test_unauthorized_next_forces_a_refresh_then_succeeds(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    run(users.getProfile(userId="me"))
    server.faults.unauthorized_next = 1
    assert run(users.getProfile(userId="me"))["emailAddress"] == ME  # the client refreshed and retried
    stats = server.stats(ME)
    assert stats["unauthorized"] == 1 and stats["token_refreshes"] == 2
    server.faults.unauthorized_next = 5  # more 401s than the client's refresh attempts
    with pytest.raises(HttpError) as caught:
        run(users.getProfile(userId="me"))
    assert caught.value.resp.status == 401 and error_of(caught.value)["status"] == "UNAUTHENTICATED"
    server.faults.unauthorized_next = 0
    server.faults.expire_tokens()
    assert run(users.getProfile(userId="me"))["emailAddress"] == ME


def test_unauthorized_inside_a_batch_is_retried_by_the_client(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    run(users.getProfile(userId="me"))
    server.faults.unauthorized_next = 2
    answers = batch_get(server, users, server.mailbox(ME).ids()[:5])
    assert all(exc is None for _, exc in answers.values())
    assert server.stats(ME)["unauthorized"] == 2


def test_invalid_grant_is_a_refresh_error(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    server.faults.invalid_grant = True
    with pytest.raises(RefreshError, match="invalid_grant"):
        run(users.getProfile(userId="me"))


def test_unknown_refresh_token_is_invalid_grant(sample: tuple[GmailServer, Any]) -> None:
    server, _ = sample
    creds = Credentials(token=None, refresh_token="1//never-issued", token_uri=server.token_uri,
                        client_id="cid", client_secret="secret")
    users = build("gmail", "v1", credentials=creds, static_discovery=True, cache_discovery=False,
                  client_options={"api_endpoint": server.base_url}).users()
    with pytest.raises(RefreshError, match="Token has been expired or revoked"):
        run(users.getProfile(userId="me"))


def test_delete_on_get_is_404_and_recorded_in_history(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    start = run(users.getProfile(userId="me"))["historyId"]
    victim = list_all(users)[3]
    server.faults.delete_on_get.add(victim)
    with pytest.raises(HttpError) as caught:
        run(users.messages().get(userId="me", id=victim))
    assert caught.value.resp.status == 404
    assert victim not in list_all(users)
    history = run(users.history().list(userId="me", startHistoryId=start))["history"]
    assert history[0]["messagesDeleted"][0]["message"]["id"] == victim


def test_on_call_hook_can_change_the_mailbox_mid_sync(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    box = server.mailbox(ME)
    calls: list[tuple[str, int]] = []
    added: list[str] = []

    def hook(method: str, number: int) -> None:
        calls.append((method, number))
        if method == "messages.list" and not added:
            added.append(box.add_raw(plain_message(7, datetime(2030, 1, 1, tzinfo=UTC))))

    server.faults.on_call = hook
    first = run(users.messages().list(userId="me", maxResults=1))
    run(users.getProfile(userId="me"))
    assert first["messages"][0]["id"] == added[0]
    assert [m for m, _ in calls] == ["messages.list", "getProfile"]
    assert calls[1][1] == calls[0][1] + 1


def test_stall_makes_the_client_time_out() -> None:
    with GmailServer(sample_box(), faults=Faults(timeout_rate=1.0, timeout_seconds=1.0)) as server:
        users = service(server, timeout=0.3).users()
        with pytest.raises((TimeoutError, OSError)):
            run(users.getProfile(userId="me"))
        server.faults.timeout_rate = 0.0
        assert server.stats(ME)["timeouts"] == 1


def test_watch_and_stop(sample: tuple[GmailServer, Any]) -> None:
    server, users = sample
    before = time.time() * 1000
    body = run(users.watch(userId="me", body={"topicName": "projects/p/topics/gmail", "labelIds": ["INBOX"]}))
    assert body["historyId"] == str(server.mailbox(ME).history_id)
    assert int(body["expiration"]) - before == pytest.approx(7 * 86400 * 1000, abs=60_000)
    with pytest.raises(HttpError) as caught:
        run(users.watch(userId="me", body={"topicName": "gmail"}))
    assert caught.value.resp.status == 400
    run(users.stop(userId="me"))
    assert server.mailbox(ME).watch_state is None


# ---------------------------------------------------------------------- command line


def test_command_line_serves_until_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.testing.gmail_server", "--mbox", str(SAMPLE),
                             "--regime", "2026"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        creds = Credentials(token=None, refresh_token=info["refresh_token"], token_uri=info["token_uri"],
                            client_id=info["client_id"], client_secret=info["client_secret"])
        users = build("gmail", "v1", credentials=creds, static_discovery=True, cache_discovery=False,
                      client_options={"api_endpoint": info["base_url"]}).users()
        assert run(users.getProfile(userId="me"))["messagesTotal"] == 51
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
