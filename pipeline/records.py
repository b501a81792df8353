"""Plain records that cross module boundaries (source -> normalize -> contacts/insights/embeddings).

They hold values only; the functions that make and consume them live in the modules named for
each stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as a source hands it over: its bytes (None until fetched) and where it came from."""

    source_ref: str  # mbox: "offset:<byte offset>"; Gmail: "gmail:<id>"
    raw: bytes | None
    gmail_thread_id: str | None = None  # X-GM-THRID (Takeout) or the API threadId
    labels: tuple[str, ...] = ()  # X-Gmail-Labels (Takeout) or the API labelIds
    gmail_id: str | None = None  # Gmail API refs: fetched by the ingest stage


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox as written in a header: display name and address as found (not canonicalized)."""

    name: str
    email: str


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(slots=True)
class ParsedMessage:
    """Everything the later stages need from one RFC 5322 message."""

    message_id: str | None  # RFC Message-ID without angle brackets; None when absent or unusable
    subject: str
    from_: Address | None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    delivered_to: list[str] = field(default_factory=list)
    date: datetime | None = None  # timezone-aware, UTC
    in_reply_to: str | None = None  # first id of In-Reply-To, without angle brackets
    references: list[str] = field(default_factory=list)  # oldest first, without angle brackets
    gmail_thread_id: str | None = None
    labels: list[str] = field(default_factory=list)
    content_type: str = "text/plain"  # of the top-level part, e.g. multipart/report for bounces
    list_id: str | None = None
    list_unsubscribe: str | None = None
    precedence: str | None = None
    auto_submitted: str | None = None
    text: str = ""  # the full body text (HTML converted), before any stripping
    stripped: str = ""  # the new text only: quoted replies, forwards' quoted parts and signatures removed
    signature: str | None = None
    body_source: str = "none"  # "plain", "html" or "none"
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)  # human-readable, one per problem met
    size: int = 0


@dataclass(frozen=True, slots=True)
class Participant:
    """One contact's part in one message, after canonicalization and filtering."""

    email: str  # canonical
    name: str
    role: str  # "from", "to", "cc", "reply_to"
    direction: str  # "sent" (the account wrote to them) or "received" (they wrote to the account)


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    content_hash: str  # hex sha256 of the model name and the text: the key that skips re-embedding


@dataclass(frozen=True, slots=True)
class ThreadMessageView:
    """What the rule-based insight needs to know about one message of a thread."""

    from_email: str | None
    from_me: bool
    date: datetime | None
    subject: str
    stripped: str
    category: str  # the per-message category from pipeline.insights.rules.classify_message


@dataclass(frozen=True, slots=True)
class InsightResult:
    category: str  # newsletter, notification, receipt, bounce, personal
    needs_reply: str  # to_reply, awaiting_reply, fyi, done
    summary: str
    action_items: list[dict[str, str]]
    source: str  # "rules" or "llm:<model>"
