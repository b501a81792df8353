"""An in-memory Gmail mailbox with Gmail's ids, ordering, history log and resource shapes.

The model behind `gmail_server`: what a mailbox holds (messages with labels, threads, a history log)
and how Gmail shows it (message resources in minimal/metadata/full/raw, history records, labels).
It holds no HTTP, quota or fault logic. One lock guards all state; stored messages are immutable
snapshots, so a reader can render one outside the lock while the mailbox changes.

Choices that follow Gmail rather than convenience, because clients must cope with them:
- Message ids are `(internalDate ms << 20) | random` in hex (16 chars), as Gmail's are; a Takeout
  postmark `From <decimal id>@xxx` keeps its id. Thread ids are the id of the thread's first message.
- Listing is newest first by (internalDate, id). `after:`/`before:` dates are midnight in PST
  (UTC-8), as Gmail documents; epoch seconds are exact. `after:` is inclusive, `before:` exclusive.
- Empty repeated fields are omitted (a message without labels has no `labelIds` key, an empty
  list answer has no `messages` key), as Gmail's JSON does.
- History is kept for the last `history_retention` changes; a cursor older than that, or older than
  the initial load (which records no history), is expired.
"""

from __future__ import annotations

import base64
import bisect
import csv
import html
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple

SYSTEM_LABELS: tuple[str, ...] = (
    "INBOX", "SENT", "DRAFT", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "CHAT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES", "CATEGORY_FORUMS",
)
TAKEOUT_LABELS: dict[str, str] = {
    "Inbox": "INBOX",
    "Sent": "SENT",
    "Drafts": "DRAFT",
    "Draft": "DRAFT",
    "Spam": "SPAM",
    "Trash": "TRASH",
    "Unread": "UNREAD",
    "Starred": "STARRED",
    "Important": "IMPORTANT",
    "Chat": "CHAT",
    "Category Personal": "CATEGORY_PERSONAL",
    "Category Social": "CATEGORY_SOCIAL",
    "Category Promotions": "CATEGORY_PROMOTIONS",
    "Category Updates": "CATEGORY_UPDATES",
    "Category Forums": "CATEGORY_FORUMS",
}
# Takeout's way of saying "not UNREAD" and "not INBOX": no label at all in the API.
_ABSENCE_LABELS = frozenset({"Opened", "Archived"})
HIDDEN_LABELS = frozenset({"SPAM", "TRASH"})
HISTORY_TYPES: tuple[str, ...] = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
_TYPE_KEYS = {"messageAdded": "messagesAdded", "messageDeleted": "messagesDeleted",
              "labelAdded": "labelsAdded", "labelRemoved": "labelsRemoved"}
NEW_MAIL_LABELS: tuple[str, ...] = ("INBOX", "UNREAD")
# Gmail reads search dates as midnight PST; a client assuming UTC misses up to 8 hours of mail.
SEARCH_TZ = timezone(timedelta(hours=-8), "PST")
SNIPPET_CHARS = 200

_POSTMARK = re.compile(rb"^From \S+ .*\d{1,2}:\d{2}")
_ESCAPED_FROM = re.compile(rb"^>(>*From )")
_MSGID = re.compile(r"<([^<>\s]+)>")
_SEARCH_DATE = re.compile(r"^(\d{4})[/-](\d{1,2})[/-](\d{1,2})$")


class MailboxError(Exception):
    """Base of the mailbox's refusals; the server maps each to Gmail's status."""


class MessageNotFound(MailboxError, LookupError):
    """No such message or thread (never existed, or deleted)."""


class HistoryExpired(MailboxError, LookupError):
    """startHistoryId is older than the oldest history the mailbox still keeps."""


class InvalidArgument(MailboxError, ValueError):
    """A malformed id, label, query or page token."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as the mailbox holds it; replaced, never mutated, when its labels change."""

    id: str
    thread_id: str
    label_ids: tuple[str, ...]
    internal_date: int  # ms since the epoch
    raw: bytes
    history_id: int  # the change that last touched it
    rfc_message_id: str | None

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (self.internal_date, int(self.id, 16), self.id)

    def summary(self) -> dict[str, Any]:
        """The message as history records show it: id, threadId and (when any) labelIds."""
        out: dict[str, Any] = {"id": self.id, "threadId": self.thread_id}
        if self.label_ids:
            out["labelIds"] = list(self.label_ids)
        return out


class MessageContent(NamedTuple):
    """What a message's bytes decide of its API resource (never changed once made: answers share it)."""

    snippet: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _HeaderInfo:
    """What the mailbox needs from a message's headers before storing it."""

    date_ms: int | None
    rfc_message_id: str | None
    refs: tuple[str, ...]  # nearest parent first
    gm_thread_hex: str | None
    takeout_labels: tuple[str, ...] | None

    @classmethod
    def parse(cls, raw: bytes) -> _HeaderInfo:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
        return cls(
            date_ms=_date_ms(_header(headers, "Date")),
            rfc_message_id=_first_msgid(_header(headers, "Message-ID")),
            refs=_refs(_header(headers, "In-Reply-To"), _header(headers, "References")),
            gm_thread_hex=_decimal_to_hex(_header(headers, "X-GM-THRID")),
            takeout_labels=_takeout_labels(headers),
        )


@dataclass(frozen=True, slots=True)
class _Pending:
    """A loaded mbox entry waiting for its thread: threading needs the whole file first."""

    id: str
    raw: bytes
    info: _HeaderInfo
    internal_date: int


@dataclass(frozen=True, slots=True)
class ListPage:
    messages: list[dict[str, str]]
    next_page_token: str | None
    result_size_estimate: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    records: list[dict[str, Any]]
    next_page_token: str | None
    history_id: int


@dataclass(frozen=True, slots=True)
class _Query:
    after_ms: int | None = None
    before_ms: int | None = None
    label_ids: tuple[str, ...] = ()
    anywhere: bool = False
    unknown_label: bool = False


class FakeMailbox:
    """One Gmail account's mail, thread-safe, with Gmail's ids, ordering and history semantics."""

    def __init__(self, email: str, *, history_retention: int = 10_000, seed: int = 0) -> None:
        self.email = email
        self.history_retention = history_retention
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._by_id: dict[str, StoredMessage] = {}
        self._order: list[tuple[int, int, str]] = []  # sort keys, ascending; listing walks it backwards
        self._threads: dict[str, set[str]] = {}
        self._thread_by_rfc_id: dict[str, str] = {}
        self._user_labels: dict[str, str] = {}  # id -> name
        self._label_by_name: dict[str, str] = {}  # name -> id
        self._history: list[tuple[int, dict[str, Any]]] = []
        self._history_id = 0
        self._history_floor = 0  # cursors below this have lost records
        self.watch_state: dict[str, Any] | None = None
        self._contents: dict[str, tuple[bytes, MessageContent]] = {}  # by id, with the bytes it was made of

    # ------------------------------------------------------------------ constructors and loading

    @classmethod
    def from_mbox(cls, email: str, path: Path | str, **kwargs: Any) -> FakeMailbox:
        box = cls(email, **kwargs)
        box.load_mbox(path)
        return box

    @classmethod
    def from_generated(cls, email: str, n: int, seed: int = 0, **kwargs: Any) -> FakeMailbox:
        """A mailbox holding `bench.generate`'s seeded mailbox of `n` messages, as its mbox would load."""
        from bench.generate import generate_mbox

        box = cls(email, seed=seed, **kwargs)
        with tempfile.TemporaryDirectory(prefix="fake-gmail-") as folder:
            path = Path(folder) / "generated.mbox"
            generate_mbox(path, n, seed=seed, account=email)
            box.load_mbox(path)
        return box

    def load_mbox(self, path: Path | str) -> int:
        """Load a (Takeout) mbox as the mailbox's initial state: no history records; returns the count."""
        entries = [(postmark, raw, _HeaderInfo.parse(raw)) for postmark, raw in iter_mbox(Path(path))]
        with self._lock:
            taken: set[str] = set()
            pending = [self._pending(postmark, raw, info, taken) for postmark, raw, info in entries]
            threads = self._thread_pending(pending)
            for item in pending:
                labels = self._labels_for(None, item.info)
                self._insert(self._stored(item, threads[item.id], labels))
            self._history_floor = self._history_id
        return len(pending)

    def _pending(self, postmark: bytes, raw: bytes, info: _HeaderInfo, taken: set[str]) -> _Pending:
        date = info.date_ms if info.date_ms is not None else _postmark_ms(postmark)
        date = date if date is not None else _now_ms()
        wanted = _postmark_id(postmark)
        # A duplicate entry (same postmark twice) is another message in Gmail, so it gets a new id.
        usable = wanted is not None and wanted not in taken and wanted not in self._by_id
        mid = wanted if usable and wanted is not None else self._new_id(date, taken)
        taken.add(mid)
        return _Pending(mid, raw, info, date)

    def _stored(self, item: _Pending, thread_id: str, labels: tuple[str, ...]) -> StoredMessage:
        self._history_id += 1
        return StoredMessage(item.id, thread_id, labels, item.internal_date, item.raw, self._history_id,
                             item.info.rfc_message_id)

    def _thread_pending(self, pending: Sequence[_Pending]) -> dict[str, str]:
        """Thread ids for a whole file: X-GM-THRID, else References/In-Reply-To in either direction."""
        local: dict[str, _Pending] = {p.info.rfc_message_id: p for p in pending if p.info.rfc_message_id}
        parent = {p.id: p.id for p in pending}

        def root(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for p in pending:
            for ref in p.info.refs:
                other = local.get(ref)
                if other is not None and not p.info.gm_thread_hex and not other.info.gm_thread_hex:
                    parent[root(p.id)] = root(other.id)
        adopted: dict[str, str] = {}
        for p in pending:
            found = None if p.info.gm_thread_hex else self._thread_via_refs(p.info.refs, local)
            if found:
                adopted.setdefault(root(p.id), found)
        first: dict[str, _Pending] = {}
        for p in pending:
            r = root(p.id)
            if r not in first or (p.internal_date, p.id) < (first[r].internal_date, first[r].id):
                first[r] = p
        return {p.id: p.info.gm_thread_hex or adopted.get(root(p.id)) or first[root(p.id)].id for p in pending}

    def _thread_via_refs(self, refs: Sequence[str], local: Mapping[str, _Pending]) -> str | None:
        for ref in refs:
            known = self._thread_by_rfc_id.get(ref)
            if known:
                return known
            other = local.get(ref)
            if other is not None and other.info.gm_thread_hex:
                return other.info.gm_thread_hex
        return None

    # ------------------------------------------------------------------ mutations

    def add_raw(self, raw: bytes, *, labels: Sequence[str] | None = None, thread_id: str | None = None,
                record_history: bool = True, internal_date: int | None = None) -> str:
        """Store a new message and return its id.

        `labels` are label ids or names (Takeout names map to system labels; other names become
        user labels); by default the message's X-Gmail-Labels, else INBOX and UNREAD like new mail.
        """
        info = _HeaderInfo.parse(raw)
        with self._lock:
            date = internal_date if internal_date is not None else (info.date_ms or _now_ms())
            mid = self._new_id(date)
            thread = thread_id or info.gm_thread_hex or self._thread_via_refs(info.refs, {}) or mid
            item = _Pending(mid, raw, info, date)
            msg = self._stored(item, thread, self._labels_for(labels, info))
            self._insert(msg)
            if record_history:
                self._record({"messages": [_ref(msg)], "messagesAdded": [{"message": msg.summary()}]})
        return mid

    def content(self, msg: StoredMessage) -> MessageContent:
        """`message_content(msg)`, made once per message and kept while the mailbox lives.

        Parsing a message and laying out its parts is about three quarters of the test server's CPU in
        the quota bench (py-spy). Gmail does that on its own machines: a bench whose server shares the
        cores being measured calls `prepare_contents` first, so the syncs are not charged for it."""
        kept = self._contents.get(msg.id)
        if kept is not None and kept[0] is msg.raw:  # a label change replaces the message, not its bytes
            return kept[1]
        made = message_content(msg)
        self._contents[msg.id] = (msg.raw, made)
        return made

    def prepare_contents(self) -> None:
        """Make every message's `content` now rather than at its first get."""
        for message_id in self.ids():
            self.content(self.get(message_id))

    def delete(self, message_id: str) -> None:
        """Delete permanently (not to Trash), as users.messages.delete does."""
        with self._lock:
            msg = self._require(message_id)
            self._remove(msg)
            self._contents.pop(message_id, None)
            self._history_id += 1
            self._record({"messages": [_ref(msg)], "messagesDeleted": [{"message": msg.summary()}]})

    def modify_labels(self, message_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Add and remove label ids; records labelsAdded/labelsRemoved only for labels that changed."""
        with self._lock:
            msg = self._require(message_id)
            add_ids, remove_ids = [self._require_label(x) for x in add], [self._require_label(x) for x in remove]
            added = [x for x in dict.fromkeys(add_ids) if x not in msg.label_ids and x not in remove_ids]
            removed = [x for x in dict.fromkeys(remove_ids) if x in msg.label_ids]
            if not added and not removed:
                return
            labels = tuple(x for x in msg.label_ids if x not in removed) + tuple(added)
            self._history_id += 1
            new = replace(msg, label_ids=labels, history_id=self._history_id)
            self._by_id[msg.id] = new
            record: dict[str, Any] = {"messages": [_ref(new)]}
            if added:
                record["labelsAdded"] = [{"message": new.summary(), "labelIds": added}]
            if removed:
                record["labelsRemoved"] = [{"message": new.summary(), "labelIds": removed}]
            self._record(record)

    def create_label(self, name: str) -> str:
        """The id of the user label `name`, created (as Label_<n>) if new."""
        with self._lock:
            if name in self._label_by_name:
                return self._label_by_name[name]
            label_id = f"Label_{len(self._user_labels) + 1}"
            self._user_labels[label_id] = name
            self._label_by_name[name] = label_id
            return label_id

    def expire_history(self, keep_last: int) -> None:
        """Forget all but the last `keep_last` history records, as Gmail does after about a week."""
        with self._lock:
            self._trim_history(max(0, keep_last))

    # ------------------------------------------------------------------ reads

    @property
    def history_id(self) -> int:
        with self._lock:
            return self._history_id

    @property
    def oldest_valid_history_id(self) -> int:
        """The smallest startHistoryId history_page still answers."""
        with self._lock:
            return self._history_floor

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)

    def ids(self) -> list[str]:
        """Every message id, newest first (spam and trash included)."""
        with self._lock:
            return [key[2] for key in reversed(self._order)]

    def profile(self) -> dict[str, Any]:
        with self._lock:
            return {"emailAddress": self.email, "messagesTotal": len(self._order),
                    "threadsTotal": len(self._threads), "historyId": str(self._history_id)}

    def get(self, message_id: str) -> StoredMessage:
        with self._lock:
            return self._require(message_id)

    def thread(self, thread_id: str) -> list[StoredMessage]:
        """The thread's messages, oldest first, as threads.get gives them."""
        _check_id(thread_id)
        with self._lock:
            members = [self._by_id[m] for m in self._threads.get(thread_id, ())]
        if not members:
            raise MessageNotFound(thread_id)
        return sorted(members, key=lambda m: m.sort_key)

    def labels(self) -> list[dict[str, Any]]:
        with self._lock:
            system = [{"id": x, "name": x, "type": "system"} for x in SYSTEM_LABELS]
            user = [{"id": i, "name": n, "type": "user", "messageListVisibility": "show",
                     "labelListVisibility": "labelShow"} for i, n in self._user_labels.items()]
        return system + user

    def has_label(self, label_id: str) -> bool:
        with self._lock:
            return label_id in SYSTEM_LABELS or label_id in self._user_labels

    def list_page(self, *, label_ids: Sequence[str] = (), query: str = "", include_spam_trash: bool = False,
                  page_token: str | None = None, max_results: int = 100) -> ListPage:
        """One page of messages.list, newest first. The token is the last item's (internalDate, id),
        so paging stays correct while messages are added or deleted."""
        q = self._parse_query(query)
        wanted = frozenset(label_ids) | frozenset(q.label_ids)
        if q.unknown_label:
            return ListPage([], None, 0)
        hidden_ok = include_spam_trash or q.anywhere or bool(wanted & HIDDEN_LABELS)
        with self._lock:
            lo, hi = self._bounds(q, page_token)
            found: list[dict[str, str]] = []
            i = hi - 1
            while i >= lo and len(found) < max_results:
                msg = self._by_id[self._order[i][2]]
                i -= 1
                if _matches(msg, wanted, hidden_ok):
                    found.append(_ref(msg))
            more = any(_matches(self._by_id[self._order[j][2]], wanted, hidden_ok) for j in range(i, lo - 1, -1))
            last = self._by_id[found[-1]["id"]] if found and more else None
            estimate = len(found) + (i - lo + 1 if more else 0)
        return ListPage(found, _list_token(last) if last else None, estimate)

    def history_page(self, start_history_id: int, *, label_id: str | None = None,
                     history_types: Sequence[str] | None = None, page_token: str | None = None,
                     max_results: int = 100) -> HistoryPage:
        """Records with id > start_history_id, oldest first; HistoryExpired when some were forgotten."""
        types = tuple(history_types) if history_types else HISTORY_TYPES
        after = _int_token(page_token) if page_token else start_history_id
        with self._lock:
            if after < self._history_floor:
                raise HistoryExpired(str(start_history_id))
            i = bisect.bisect_right(self._history, after, key=lambda r: r[0])
            out: list[dict[str, Any]] = []
            last_id = after
            while i < len(self._history) and len(out) < max_results:
                rid, record = self._history[i]
                i += 1
                shown = _filter_record(rid, record, types, label_id)
                if shown is not None:
                    out.append(shown)
                    last_id = rid
            more = any(_filter_record(r, rec, types, label_id) for r, rec in self._history[i:])
            return HistoryPage(out, str(last_id) if more else None, self._history_id)

    # ------------------------------------------------------------------ internals (lock held)

    def _insert(self, msg: StoredMessage) -> None:
        self._by_id[msg.id] = msg
        bisect.insort(self._order, msg.sort_key)
        self._threads.setdefault(msg.thread_id, set()).add(msg.id)
        if msg.rfc_message_id:
            self._thread_by_rfc_id.setdefault(msg.rfc_message_id, msg.thread_id)

    def _remove(self, msg: StoredMessage) -> None:
        del self._by_id[msg.id]
        del self._order[bisect.bisect_left(self._order, msg.sort_key)]
        members = self._threads[msg.thread_id]
        members.discard(msg.id)
        if not members:
            del self._threads[msg.thread_id]

    def _require(self, message_id: str) -> StoredMessage:
        _check_id(message_id)
        msg = self._by_id.get(message_id)
        if msg is None:
            raise MessageNotFound(message_id)
        return msg

    def _require_label(self, label: str) -> str:
        if label in SYSTEM_LABELS or label in self._user_labels:
            return label
        raise InvalidArgument(f"Invalid label: {label}")

    def _labels_for(self, labels: Sequence[str] | None, info: _HeaderInfo) -> tuple[str, ...]:
        if labels is None:
            labels = info.takeout_labels if info.takeout_labels is not None else NEW_MAIL_LABELS
        out: list[str] = []
        for label in labels:
            resolved = self._resolve_label(label)
            if resolved and resolved not in out:
                out.append(resolved)
        return tuple(out)

    def _resolve_label(self, label: str) -> str | None:
        if label in SYSTEM_LABELS or label in self._user_labels:
            return label
        if label in _ABSENCE_LABELS:
            return None
        return TAKEOUT_LABELS.get(label) or self.create_label(label)

    def _new_id(self, internal_date: int, taken: set[str] | frozenset[str] = frozenset()) -> str:
        while True:
            candidate = format((max(internal_date, 0) << 20) | self._rng.getrandbits(20), "016x")
            if candidate not in self._by_id and candidate not in taken:
                return candidate

    def _record(self, record: dict[str, Any]) -> None:
        self._history.append((self._history_id, record))
        if len(self._history) > self.history_retention:
            self._trim_history(self.history_retention)

    def _trim_history(self, keep: int) -> None:
        drop = len(self._history) - keep
        if drop > 0:
            self._history_floor = max(self._history_floor, self._history[drop - 1][0])
            del self._history[:drop]

    def _parse_query(self, query: str) -> _Query:
        q = _Query()
        for term in query.split():
            key, _, value = term.partition(":")
            q = self._query_term(q, key.lower(), value)
        return q

    def _query_term(self, q: _Query, key: str, value: str) -> _Query:
        """One search term. Free text and operators not listed are ignored: results are a superset."""
        if key in ("after", "newer"):
            return replace(q, after_ms=_search_ms(value))
        if key in ("before", "older"):
            return replace(q, before_ms=_search_ms(value))
        if key == "in" and value.lower() == "anywhere":
            return replace(q, anywhere=True)
        system = {"DRAFTS": "DRAFT"}.get(value.upper(), value.upper())
        if key in ("in", "is", "label") and system in SYSTEM_LABELS:
            return replace(q, label_ids=q.label_ids + (system,))
        if key == "label":
            # Gmail finds nothing for a label that does not exist.
            label = self._user_label_for_search(value)
            return replace(q, label_ids=q.label_ids + (label,)) if label else replace(q, unknown_label=True)
        return q

    def _user_label_for_search(self, value: str) -> str | None:
        wanted = value.lower()
        with self._lock:
            for label_id, name in self._user_labels.items():
                if wanted in (name.lower(), re.sub(r"[\s/]+", "-", name.lower()), label_id.lower()):
                    return label_id
        return None

    def _bounds(self, q: _Query, page_token: str | None) -> tuple[int, int]:
        """Index range [lo, hi) of `_order` the query's dates and the page token allow."""
        hi = len(self._order)
        if q.before_ms is not None:
            hi = bisect.bisect_left(self._order, (q.before_ms, -1, ""))
        if page_token:
            hi = min(hi, bisect.bisect_left(self._order, _decode_list_token(page_token)))
        lo = 0 if q.after_ms is None else bisect.bisect_left(self._order, (q.after_ms, -1, ""))
        return lo, hi


# ---------------------------------------------------------------------- mbox reading


def iter_mbox(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """(postmark line, message bytes) per entry of an mboxrd file, `>From ` unescaped.

    Only a `From ` line after a blank line that looks like a postmark starts an entry, so an
    unescaped `From ` in a body does not split a message; the blank separator line is dropped.
    """
    postmark: bytes | None = None
    lines: list[bytes] = []
    previous_blank = True
    with path.open("rb") as fh:
        for line in fh:
            if previous_blank and _POSTMARK.match(line):
                if postmark is not None:
                    yield postmark, _entry_bytes(lines)
                postmark, lines = line, []
            else:
                lines.append(_ESCAPED_FROM.sub(rb"\1", line))
            previous_blank = line in (b"\n", b"\r\n")
    if postmark is not None:
        yield postmark, _entry_bytes(lines)


def _entry_bytes(lines: list[bytes]) -> bytes:
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]
    return b"".join(lines)


def _postmark_id(postmark: bytes) -> str | None:
    sender = postmark.split(b" ", 2)[1].split(b"@", 1)[0]
    if not sender.isdigit():
        return None
    value = int(sender)
    return format(value, "x") if 0 < value < 1 << 64 else None


def _postmark_ms(postmark: bytes) -> int | None:
    parts = postmark.decode("ascii", "replace").split(" ", 2)
    if len(parts) < 3:
        return None
    for fmt in ("%a %b %d %H:%M:%S %z %Y", "%a %b %d %H:%M:%S %Y"):
        try:
            when = datetime.strptime(parts[2].strip(), fmt)
        except ValueError:
            continue
        return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
    return None


# ---------------------------------------------------------------------- header helpers


def _header(headers: Message, name: str) -> str | None:
    # raw_items: compat32's get() wraps 8-bit values in Header objects that lose the bytes.
    wanted = name.lower()
    return next((_from_8bit(str(v)) for k, v in headers.raw_items() if k.lower() == wanted), None)


def _from_8bit(text: str) -> str:
    """Undo the parser's surrogate escapes of raw 8-bit header bytes (read as UTF-8): JSON cannot carry them."""
    if re.search("[\udc80-\udcff]", text):
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def _date_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _first_msgid(value: str | None) -> str | None:
    found = _MSGID.findall(value or "")
    return found[0] if found else None


def _refs(in_reply_to: str | None, references: str | None) -> tuple[str, ...]:
    ordered = _MSGID.findall(in_reply_to or "") + list(reversed(_MSGID.findall(references or "")))
    return tuple(dict.fromkeys(ordered))


def _decimal_to_hex(value: str | None) -> str | None:
    value = (value or "").strip()
    return format(int(value), "x") if value.isdigit() and int(value) > 0 else None


def _takeout_labels(headers: Message) -> tuple[str, ...] | None:
    value = _header(headers, "X-Gmail-Labels")
    if value is None:
        return None
    # Takeout quotes label names that contain commas, as CSV does.
    unfolded = re.sub(r"\r?\n[ \t]", " ", value)
    names = next(csv.reader([unfolded], skipinitialspace=True), [])
    return tuple(name.strip() for name in names if name.strip())


def _check_id(message_id: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{1,16}", message_id or ""):
        raise InvalidArgument("Invalid id value")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _search_ms(value: str) -> int:
    if value.isdigit():
        return int(value) * 1000
    match = _SEARCH_DATE.match(value)
    if match is None:
        raise InvalidArgument(f"Invalid search date: {value}")
    year, month, day = (int(x) for x in match.groups())
    try:
        return int(datetime(year, month, day, tzinfo=SEARCH_TZ).timestamp() * 1000)
    except ValueError as exc:
        raise InvalidArgument(f"Invalid search date: {value}") from exc


# ---------------------------------------------------------------------- listing and history helpers


def _ref(msg: StoredMessage) -> dict[str, str]:
    return {"id": msg.id, "threadId": msg.thread_id}


def _matches(msg: StoredMessage, wanted: frozenset[str], hidden_ok: bool) -> bool:
    if not hidden_ok and HIDDEN_LABELS.intersection(msg.label_ids):
        return False
    return wanted.issubset(msg.label_ids)


def _list_token(msg: StoredMessage) -> str:
    return base64.urlsafe_b64encode(f"{msg.internal_date}:{msg.id}".encode()).decode().rstrip("=")


def _decode_list_token(token: str) -> tuple[int, int, str]:
    try:
        date, _, mid = _unb64(token).decode().partition(":")
        return (int(date), int(mid, 16), mid)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("Invalid pageToken") from exc


def _int_token(token: str) -> int:
    if not token.isdigit():
        raise InvalidArgument("Invalid pageToken")
    return int(token)


def _filter_record(rid: int, record: dict[str, Any], types: Sequence[str],
                   label_id: str | None) -> dict[str, Any] | None:
    """The record as history.list shows it under the type and label filters; None when filtered out."""
    kept = {_TYPE_KEYS[t]: record[_TYPE_KEYS[t]] for t in types if _TYPE_KEYS.get(t) in record}
    if not kept:
        return None
    if label_id is not None and not any(_involves_label(item, label_id) for items in kept.values() for item in items):
        return None
    return {"id": str(rid), "messages": record["messages"], **kept}


def _involves_label(item: dict[str, Any], label_id: str) -> bool:
    return label_id in item["message"].get("labelIds", ()) or label_id in item.get("labelIds", ())


# ---------------------------------------------------------------------- Gmail resource shapes

FORMATS = ("minimal", "metadata", "full", "raw")


def message_resource(msg: StoredMessage, fmt: str = "full", metadata_headers: Sequence[str] = (),
                     content: MessageContent | None = None) -> dict[str, Any]:
    """users.messages.get's JSON for `msg` in `fmt` (minimal, metadata, full or raw).

    `content`: the message's parsed content when the caller keeps it (`FakeMailbox.content`)."""
    text, payload = content or message_content(msg)
    out: dict[str, Any] = {"id": msg.id, "threadId": msg.thread_id}
    if msg.label_ids:
        out["labelIds"] = list(msg.label_ids)
    out["snippet"] = text
    if fmt == "metadata":
        names = {w.lower() for w in metadata_headers}
        out["payload"] = {"partId": "", "mimeType": payload["mimeType"], "filename": "",
                          "headers": [h for h in payload["headers"] if not names or h["name"].lower() in names],
                          "body": {"size": 0}}
    elif fmt == "full":
        out["payload"] = payload
    out.update(sizeEstimate=len(msg.raw), historyId=str(msg.history_id), internalDate=str(msg.internal_date))
    if fmt == "raw":
        out["raw"] = base64.urlsafe_b64encode(msg.raw).decode("ascii")
    return out


def message_content(msg: StoredMessage) -> MessageContent:
    """What a message's bytes decide of its resource: the snippet and the full payload."""
    parsed = message_from_bytes(msg.raw, policy=compat32)
    return MessageContent(snippet(parsed), _part(parsed, "", msg.id))


def attachment_resource(msg: StoredMessage, attachment_id: str) -> dict[str, Any] | None:
    """users.messages.attachments.get's JSON, or None when the id names no part of `msg`."""
    try:
        owner, _, part_id = _unb64(attachment_id[3:]).decode().partition("/")
    except (ValueError, UnicodeDecodeError):
        return None
    part = _find_part(message_from_bytes(msg.raw, policy=compat32), part_id) if owner == msg.id else None
    if part is None or part.is_multipart():
        return None
    data = _part_bytes(part)
    return {"attachmentId": attachment_id, "size": len(data), "data": _b64(data)}


def snippet(parsed: Message) -> str:
    """About the first 200 characters of the text, whitespace collapsed, HTML-escaped as Gmail does."""
    text = _first_text(parsed, "text/plain")
    if text is None:
        markup = _first_text(parsed, "text/html")
        text = _html_text(markup) if markup is not None else ""
    text = " ".join(text.split())[:SNIPPET_CHARS]
    return html.escape(text, quote=True).replace("&#x27;", "&#39;")


def _first_text(parsed: Message, mime: str) -> str | None:
    for part in parsed.walk():
        if part.get_content_type() == mime and not _is_attachment(part):
            return _part_text(part)
    return None


def _part_text(part: Message) -> str:
    data = _part_bytes(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _part_bytes(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).split(";", 1)[0].strip().lower()
    return disposition == "attachment" or bool(part.get_filename())


_INVISIBLE = frozenset({"script", "style", "head", "title"})


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _INVISIBLE:
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _INVISIBLE and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)


def _html_text(markup: str) -> str:
    parser = _TextOnly()
    parser.feed(markup)
    parser.close()
    return " ".join(parser.chunks)


def _header_value(value: Any) -> str:
    """A header value unfolded and with RFC 2047 words decoded, as the API's payload headers show it."""
    text = _from_8bit(re.sub(r"\r?\n[ \t]*", " ", str(value)))
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def _headers(part: Message) -> list[dict[str, str]]:
    return [{"name": name, "value": _header_value(value)} for name, value in part.raw_items()]


def _part(part: Message, part_id: str, message_id: str) -> dict[str, Any]:
    filename = part.get_filename()
    node: dict[str, Any] = {"partId": part_id, "mimeType": part.get_content_type(),
                            "filename": _header_value(filename) if filename else "", "headers": _headers(part)}
    if part.is_multipart():
        children = part.get_payload()
        node["body"] = {"size": 0}
        node["parts"] = [_part(child, _child_id(part_id, i), message_id) for i, child in enumerate(children)]
        return node
    data = _part_bytes(part)
    if _is_attachment(part):
        node["body"] = {"attachmentId": _attachment_id(message_id, part_id), "size": len(data)}
    else:
        node["body"] = {"size": len(data), "data": _b64(data)} if data else {"size": 0}
    return node


def _find_part(parsed: Message, part_id: str) -> Message | None:
    node = parsed
    for index in (int(x) for x in part_id.split(".") if x.isdigit()):
        children = node.get_payload() if node.is_multipart() else []
        child = children[index] if isinstance(children, list) and index < len(children) else None
        if not isinstance(child, Message):
            return None
        node = child
    return node


def _child_id(parent: str, index: int) -> str:
    return str(index) if parent == "" else f"{parent}.{index}"


def _attachment_id(message_id: str, part_id: str) -> str:
    # Gmail's ids are opaque and long; ours encode where the part is, so no table is kept.
    return "ANG" + base64.urlsafe_b64encode(f"{message_id}/{part_id}".encode()).decode().rstrip("=")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


__all__ = [
    "FORMATS",
    "HISTORY_TYPES",
    "SYSTEM_LABELS",
    "TAKEOUT_LABELS",
    "FakeMailbox",
    "HistoryExpired",
    "HistoryPage",
    "InvalidArgument",
    "ListPage",
    "MailboxError",
    "MessageNotFound",
    "StoredMessage",
    "attachment_resource",
    "iter_mbox",
    "MessageContent",
    "message_content",
    "message_resource",
    "snippet",
]
