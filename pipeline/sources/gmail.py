"""The Gmail API source: listing, history, batch fetch, over the real google-api-python-client.

Every call spends from the account's shared quota budget first (so the workers of one account
together stay under Gmail's per-user limit) and is classified on failure (DESIGN.md §3): rate
limits pause the whole account for the server's Retry-After, transient errors back off, auth
errors stop at once, a 404 on a message means it is gone. Batches carry at most 50 gets; only the
failed items of a batch are sent again, in smaller batches after a rate error; none is dropped.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.credentials import OAuthGrant, credentials_for
from pipeline.resilience.breakers import Breaker, BreakerOpenError
from pipeline.resilience.classify import (
    AUTH,
    GONE,
    PERMANENT,
    QUOTA,
    RATE_LIMIT,
    TRANSIENT,
    ClassifiedError,
    backoff_seconds,
    classify,
    http_error_parts,
)
from pipeline.resilience.quota import CostTable, QuotaBudget, retry_after_seconds
from pipeline.settings import Settings
from pipeline.sources.gmail_payload import message_bytes

log = logging.getLogger(__name__)

GOOGLE_API = "https://gmail.googleapis.com"
# Like Gmail's own listing, mailpipe keeps no spam or trash: a message moved there leaves the store,
# and comes back (fetched again) if it is moved out.
HIDDEN_LABELS = frozenset({"SPAM", "TRASH"})
MAX_ATTEMPTS = 8  # per call or per batch item, before the caller's own retry (the stage's) takes over


class GmailError(ClassifiedError):
    """A Gmail call failed for good at this level; `error_class` says what to do next."""


class CursorExpired(GmailError):
    """history.list answered 404: the stored historyId is older than Gmail keeps history."""

    error_class = GONE


@dataclass(frozen=True, slots=True)
class GmailConfig:
    api_url: str | None
    timeout: float
    batch_size: int
    page_size: int
    fetch_attachments: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> GmailConfig:
        return cls(settings.gmail_api_url, settings.gmail_timeout, settings.gmail_batch_size,
                   settings.gmail_list_page_size, settings.gmail_fetch_attachments)

    @property
    def message_format(self) -> str:
        return "raw" if self.fetch_attachments else "full"

    @property
    def batch_uri(self) -> str:
        return (self.api_url or GOOGLE_API).rstrip("/") + "/batch/gmail/v1"


@dataclass(frozen=True, slots=True)
class Profile:
    email: str
    history_id: int
    messages_total: int


@dataclass(frozen=True, slots=True)
class MessageRef:
    id: str
    thread_id: str


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    id: str
    thread_id: str
    label_ids: tuple[str, ...]
    internal_date_ms: int
    raw: bytes


@dataclass
class HistoryDelta:
    """The net effect of history records in order: what to fetch, delete and relabel."""

    latest_history_id: int
    added: dict[str, MessageRef] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    labels_added: dict[str, set[str]] = field(default_factory=dict)
    labels_removed: dict[str, set[str]] = field(default_factory=dict)

    def apply(self, record: dict[str, Any]) -> None:
        for item in record.get("messagesAdded", []):
            m = item["message"]
            self.deleted.discard(m["id"])
            if HIDDEN_LABELS.isdisjoint(m.get("labelIds", [])):
                self.added[m["id"]] = MessageRef(m["id"], m.get("threadId", m["id"]))
        for item in record.get("messagesDeleted", []):
            mid = item["message"]["id"]
            self.added.pop(mid, None)
            self.deleted.add(mid)
        for item in record.get("labelsAdded", []):
            self._relabel(item["message"]["id"], set(item.get("labelIds", [])), set())
        for item in record.get("labelsRemoved", []):
            self._relabel(item["message"]["id"], set(), set(item.get("labelIds", [])))

    def hidden(self) -> set[str]:
        """Messages now in spam or trash: they leave the store."""
        return {mid for mid, labels in self.labels_added.items() if labels & HIDDEN_LABELS}

    def revealed(self) -> list[MessageRef]:
        """Messages taken out of spam or trash: fetched again unless we still hold them."""
        return [MessageRef(mid, mid) for mid, labels in sorted(self.labels_removed.items())
                if labels & HIDDEN_LABELS and mid not in self.hidden()]

    def _relabel(self, mid: str, add: set[str], remove: set[str]) -> None:
        if mid in self.added:
            if add & HIDDEN_LABELS:
                del self.added[mid]  # trashed before we fetched it
            return  # otherwise fetched after this record, so it arrives with its current labels
        plus, minus = self.labels_added.setdefault(mid, set()), self.labels_removed.setdefault(mid, set())
        plus.difference_update(remove)
        minus.difference_update(add)
        plus.update(add)
        minus.update(remove)


@dataclass
class FetchOutcome:
    fetched: list[FetchedMessage] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # permanent per-message errors


OnBatch = Callable[[FetchOutcome], None]


class GmailClient:
    """One account's Gmail API, used by one thread at a time (httplib2 is not thread-safe)."""

    def __init__(self, grant: OAuthGrant, config: GmailConfig, budget: QuotaBudget, costs: CostTable,
                 account_key: str, *, sleep: Callable[[float], None] = time.sleep,
                 breaker: Breaker | None = None) -> None:
        self.config = config
        self.budget = budget
        # Shared by every worker: when Gmail itself is failing, calls stop everywhere and the
        # stage is re-scheduled for the breaker's reset instead of burning its retries.
        self.breaker = breaker
        self.costs = costs
        self.key = account_key
        self._sleep = sleep
        self._service = _build_service(grant, config)
        self._users_resource: Any = None
        self._messages_resource: Any = None
        self.units_spent = 0
        self.calls = 0

    # ------------------------------------------------------------------ single calls

    def profile(self) -> Profile:
        body = self._call("getProfile", lambda: self._users().getProfile(userId="me"))
        return Profile(body["emailAddress"], int(body["historyId"]), int(body.get("messagesTotal", 0)))

    def list_pages(self, query: str | None = None, label_ids: Sequence[str] | None = None,
                   include_spam_trash: bool = False) -> Iterator[list[MessageRef]]:
        """Message refs, newest first, a page at a time (the caller persists each page)."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"userId": "me", "maxResults": self.config.page_size,
                                      "includeSpamTrash": include_spam_trash}
            if query:
                params["q"] = query
            if label_ids:
                params["labelIds"] = list(label_ids)
            if token:
                params["pageToken"] = token
            body = self._call("messages.list", lambda p=params: self._messages().list(**p))  # type: ignore[misc]
            yield [MessageRef(m["id"], m.get("threadId", m["id"])) for m in body.get("messages", [])]
            token = body.get("nextPageToken")
            if not token:
                return

    def history(self, start_history_id: int) -> HistoryDelta:
        """Every change since `start_history_id`, netted; raises CursorExpired on Gmail's 404."""
        delta = HistoryDelta(latest_history_id=start_history_id)
        token: str | None = None
        while True:
            params: dict[str, Any] = {"userId": "me", "startHistoryId": str(start_history_id), "maxResults": 500,
                                      "historyTypes": ["messageAdded", "messageDeleted", "labelAdded",
                                                       "labelRemoved"]}
            if token:
                params["pageToken"] = token
            try:
                body = self._call("history.list", lambda p=params: self._users().history().list(**p))  # type: ignore[misc]
            except GmailError as exc:
                if exc.error_class == GONE:
                    raise CursorExpired(f"history from {start_history_id} has expired") from exc
                raise
            for record in body.get("history", []):
                delta.apply(record)
            delta.latest_history_id = max(delta.latest_history_id, int(body.get("historyId", 0)))
            token = body.get("nextPageToken")
            if not token:
                return delta

    def watch(self, topic: str, label_ids: Sequence[str] = ("INBOX",)) -> tuple[int, datetime]:
        body = self._call("watch", lambda: self._users().watch(
            userId="me", body={"topicName": topic, "labelIds": list(label_ids)}))
        expires = datetime.fromtimestamp(int(body["expiration"]) / 1000, UTC)
        return int(body["historyId"]), expires

    def stop_watch(self) -> None:
        self._call("stop", lambda: self._users().stop(userId="me"))

    # ------------------------------------------------------------------ batch fetch

    def gone(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids Gmail no longer has (404 on a minimal get, the cheapest proof)."""
        found: set[str] = set()

        def collect(outcome: FetchOutcome) -> None:
            found.update(outcome.gone)

        self.fetch(ids, collect, fmt="minimal")
        return found

    def fetch(self, ids: Sequence[str], on_batch: OnBatch, *, fmt: str | None = None) -> None:
        """Fetch every id through batches; `on_batch` receives each batch's outcome to persist.

        `fmt`: the messages.get format, by default raw or full as configured (minimal has no bytes).

        Returns when every id was fetched, found gone, or failed permanently; raises GmailError when
        some could not be fetched after MAX_ATTEMPTS (those already handed to `on_batch` are kept).
        """
        pending = list(ids)
        attempts: dict[str, int] = {}
        size = self.config.batch_size
        while pending:
            chunk, pending = pending[:size], pending[size:]
            retry, worst = self._fetch_batch(chunk, on_batch, attempts, fmt or self.config.message_format)
            if not retry:
                size = min(self.config.batch_size, size * 2)  # recover after a rate error passed
                continue
            for mid in retry:
                attempts[mid] = attempts.get(mid, 0) + 1
                if attempts[mid] >= MAX_ATTEMPTS:
                    raise GmailError(f"message {mid} not fetched after {MAX_ATTEMPTS} attempts ({worst})",
                                     worst)
            if worst in (RATE_LIMIT, QUOTA):
                size = max(1, len(chunk) // 2)
            # Failed items go behind the fresh ones: a 5xx blip costs no waiting while other work
            # remains; only an item failing again waits (backoff by its own attempts).
            pending = pending + retry
            self._sleep(self._wait(worst, max(attempts[mid] for mid in retry) - 1))

    def _fetch_batch(self, chunk: list[str], on_batch: OnBatch, attempts: Mapping[str, int],
                     fmt: str) -> tuple[list[str], str]:
        """One batch; returns (ids to retry, their worst class). `attempts`: the ids' failed attempts so far."""
        from googleapiclient.http import BatchHttpRequest

        outcome = FetchOutcome()
        retry: list[str] = []
        unserved: list[str] = []
        classes: list[str] = []
        retry_after = 0.0

        def collect(request_id: str, response: Any, exc: Exception | None) -> None:
            nonlocal retry_after
            if exc is None:
                try:
                    outcome.fetched.append(_fetched(response))
                except (ValueError, KeyError, TypeError) as bad:  # binascii.Error is a ValueError
                    outcome.failed[request_id] = f"undecodable message from the API: {bad}"[:500]
                return
            error_class = classify(exc)
            if _unserved(exc):
                unserved.append(request_id)
            if error_class == GONE:
                outcome.gone.append(request_id)
            elif error_class in (TRANSIENT, RATE_LIMIT, QUOTA) or error_class == "timeout":
                retry.append(request_id)
                classes.append(error_class)
                retry_after = max(retry_after, self._retry_after(exc) or 0.0)
            elif error_class == AUTH:
                raise GmailError(f"Gmail refused the account's credentials: {exc}", AUTH)
            else:
                outcome.failed[request_id] = _reason(exc)

        batch = BatchHttpRequest(callback=collect, batch_uri=self.config.batch_uri)
        for mid in chunk:
            batch.add(self._messages().get(userId="me", id=mid, format=fmt),
                      request_id=mid)
        # Spent once the batch is built, just before it is sent: a pause another worker sets meanwhile
        # then still holds this one back.
        self._spend("messages.get", len(chunk))

        def execute() -> None:
            batch.execute()
            if len(retry) == len(chunk) and all(c in (TRANSIENT, "timeout") for c in classes):
                # Every part failed on Gmail's side: to the breaker that is an outage, although the
                # batch request itself came back 200.
                raise _BatchFailed(f"all {len(chunk)} parts of a batch failed ({_worst(classes)})")

        try:
            self._through_breaker(execute)
        except _BatchFailed:
            pass  # `collect` has already put every part up for retry
        except BreakerOpenError:
            self._refund("messages.get", len(chunk))  # nothing was sent
            raise
        except GmailError:
            raise
        except Exception as exc:  # the whole batch failed: every item is retried
            error_class = classify(exc)
            if error_class == AUTH:
                raise GmailError(f"Gmail refused the account's credentials: {exc}", AUTH) from exc
            if error_class not in (TRANSIENT, RATE_LIMIT, QUOTA, "timeout"):
                raise GmailError(f"batch request failed: {_reason(exc)}", error_class) from exc
            retry, classes = list(chunk), [error_class]
            retry_after = self._retry_after(exc) or 0.0
            if _unserved(exc):
                unserved = list(chunk)
        if RATE_LIMIT in classes or QUOTA in classes:
            # At once: refunding the refused calls and saving the batch take time, and the refund gives
            # tokens back, that another worker of the account would spend calling while Gmail says to wait.
            self._pause(_worst(classes), retry_after, max(attempts.get(mid, 0) for mid in retry))
        self._refund("messages.get", len(unserved))
        on_batch(outcome)
        if not retry:
            self.budget.adapt_rate(self.key, "success")
            return [], ""
        return retry, _worst(classes)

    # ------------------------------------------------------------------ plumbing

    def _users(self) -> Any:
        # Each users()/messages() call builds a Resource with every method and its docstring: ~0.9 ms
        # of CPU per call, more than the rest of preparing a get. Built once, reused (one thread each).
        if self._users_resource is None:
            self._users_resource = self._service.users()
        return self._users_resource

    def _messages(self) -> Any:
        if self._messages_resource is None:
            self._messages_resource = self._users().messages()
        return self._messages_resource

    def _spend(self, method: str, count: int = 1) -> None:
        units = self.costs.cost(method) * count
        self.budget.acquire(self.key, units)
        self.units_spent += units
        self.calls += count

    def _refund(self, method: str, count: int) -> None:
        # Gmail's own errors (5xx) and its refusals (429) did no work; our server charges neither,
        # and a budget that counted them would run below the ceiling whenever faults occur.
        if count:
            units = self.costs.cost(method) * count
            self.budget.refund(self.key, units)
            self.units_spent -= units

    def _call(self, method: str, make: Callable[[], Any]) -> Any:
        for attempt in range(MAX_ATTEMPTS):
            self._spend(method)
            try:
                return self._through_breaker(lambda: make().execute(num_retries=0))
            except BreakerOpenError:
                self._refund(method, 1)
                raise
            except Exception as exc:
                error_class = classify(exc)
                if error_class in (RATE_LIMIT, QUOTA):
                    self._pause(error_class, self._retry_after(exc) or 0.0, attempt)  # before the refund
                if _unserved(exc):
                    self._refund(method, 1)
                if error_class not in (TRANSIENT, RATE_LIMIT, QUOTA, "timeout"):
                    raise GmailError(f"{method}: {_reason(exc)}", error_class) from exc
                log.info("gmail %s: %s (attempt %d); retrying", method, error_class, attempt + 1)
                self._sleep(self._wait(error_class, attempt))
        raise GmailError(f"{method}: no success after {MAX_ATTEMPTS} attempts", TRANSIENT)

    def _through_breaker(self, call: Callable[[], Any]) -> Any:
        return call() if self.breaker is None else self.breaker.call(call)

    def _retry_after(self, exc: Exception) -> float | None:
        headers = {str(k).lower(): str(v) for k, v in dict(getattr(exc, "resp", {}) or {}).items()}
        return retry_after_seconds(headers, http_error_parts(exc)[2], datetime.now(UTC))

    def _pause(self, error_class: str, retry_after: float, attempt: int) -> None:
        """A rate-limit or quota answer: the moment it arrives, pause the whole account (every worker of it,
        not just us) until the server's time, then halve its steady rate until successes earn it back (AIMD).
        `attempt` 0 is the first retry."""
        backoff = backoff_seconds(error_class, min(attempt, 6), random.random()) or 0.0
        self.budget.pause(self.key, time.time() + max(retry_after, backoff, 1.0))
        self.budget.adapt_rate(self.key, "rate_limited")

    def _wait(self, error_class: str, attempt: int) -> float:
        """Seconds to sleep before retrying; `attempt` 0 is the first retry."""
        if error_class in (RATE_LIMIT, QUOTA) or attempt <= 0:
            return 0.0  # a rate limit has paused the account (`_pause`): the budget holds everyone back
        return backoff_seconds(TRANSIENT, min(attempt - 1, 6), random.random()) or 0.0


class _BatchFailed(ClassifiedError):
    error_class = TRANSIENT


def _build_service(grant: OAuthGrant, config: GmailConfig) -> Any:
    import google_auth_httplib2
    import httplib2
    from googleapiclient.discovery import build

    http = google_auth_httplib2.AuthorizedHttp(credentials_for(grant), http=httplib2.Http(timeout=config.timeout))
    options = {"api_endpoint": config.api_url} if config.api_url else None
    return build("gmail", "v1", http=http, static_discovery=True, cache_discovery=False, client_options=options)


def _fetched(body: dict[str, Any]) -> FetchedMessage:
    if "raw" in body:
        encoded = body["raw"]
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
    elif "payload" in body:
        raw = message_bytes(body)
    else:
        raw = b""  # format=minimal: ids and labels only
    return FetchedMessage(
        id=body["id"],
        thread_id=body.get("threadId", body["id"]),
        label_ids=tuple(body.get("labelIds", [])),
        internal_date_ms=int(body.get("internalDate", 0)),
        raw=raw,
    )


def _unserved(exc: BaseException) -> bool:
    """The server answered without doing the call: a 5xx or a rate refusal (not a timeout or 404)."""
    status = http_error_parts(exc)[0]
    return status >= 500 or status == 429 or (status == 403 and classify(exc) in (RATE_LIMIT, QUOTA))


def _worst(classes: list[str]) -> str:
    for c in (QUOTA, RATE_LIMIT, "timeout", TRANSIENT):
        if c in classes:
            return c
    return PERMANENT


def _reason(exc: BaseException) -> str:
    status, reason, message = http_error_parts(exc)
    if status:
        return f"HTTP {status} {reason}: {message}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


__all__ = [
    "CursorExpired",
    "FetchOutcome",
    "FetchedMessage",
    "GmailClient",
    "GmailConfig",
    "GmailError",
    "HistoryDelta",
    "MessageRef",
    "Profile",
]
