"""Header fields, each read with its own fallback, so one broken header costs only itself.

Address headers and Subject go through `policy.default`'s header registry (RFC 2047 names, groups,
quoting). The registry has bugs that real mail hits: `To: unlisted-recipients:; (no To-header on
input)` raises AttributeError inside it. Any exception there sends that one header down the
compat32 road (`email.utils.getaddresses` or `email.header.decode_header` on the raw value) and
leaves a defect. The other headers are simple enough to read from the raw values directly.
"""

from __future__ import annotations

import csv
import email.header
import email.utils
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any

from pipeline.normalize.charsets import decode_bytes, unescape_surrogates
from pipeline.records import Address

_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_BRACKETED_ID_RE = re.compile(r"<([^<>]*)>")
_ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "reply-to")
# Plain ASCII "Name <a@b.c>, d@e.f" lists, which a regex reads as the header registry does, for a
# fraction of its cost: a name of atoms (atext, without "=" and "?", which start encoded words, and
# "."), one quoted string without escapes, or a single encoded word (decoded as the registry does).
# Comments, groups, escapes and several encoded words are not: the registry reads those.
# (tests/test_normalize_addresses.py checks both agree on every address list of three generated
# mailboxes and the sample.)
_ADDR = r"[^<>\s\"(),:;@\\]+@[^<>\s\"(),:;@\\]+"
_ATOMS = r"[A-Za-z0-9 \t_'\-/!#$%&*+^`{|}~]*"  # no ".": the registry notes a period in a name as a defect
_QUOTED = r'"[ !#->@-\[\]-~]*"'  # printable ASCII but the quote, the backslash and "?" (encoded words)
_ENCODED_WORD = r"=\?[A-Za-z0-9_.:\-]+\?[BbQq]\?[!->@-~]+\?="  # no "?" or space inside its text
_SIMPLE_ENTRY = rf"(?:(?:{_QUOTED}|{_ENCODED_WORD}|{_ATOMS})\s*<{_ADDR}>|{_ADDR})"
_SIMPLE_ADDRESS_LIST_RE = re.compile(rf"\s*{_SIMPLE_ENTRY}(?:\s*,\s*{_SIMPLE_ENTRY})*\s*,?\s*")
# One entry of such a list: (name, address) or (address alone). Read by this regex, not getaddresses,
# whose character-by-character parser took ~18 µs per header against ~5 (ad-hoc, 7,738 headers).
_SIMPLE_ENTRY_RE = re.compile(rf"({_QUOTED}|{_ENCODED_WORD}|{_ATOMS})\s*<({_ADDR})>|({_ADDR})")
MAX_MESSAGE_ID_LENGTH = 998  # RFC 5322's line limit; anything longer is not an id
# Two encoded words with only whitespace between them: the whitespace is not text (RFC 2047 §6.2).
_ADJACENT_WORDS_RE = re.compile(r"\?=\s+=\?")


@dataclass(slots=True)
class Headers:
    message_id: str | None = None
    subject: str = ""
    addresses: dict[str, list[Address]] = field(default_factory=dict)  # by lower-case header name
    delivered_to: list[str] = field(default_factory=list)
    date: datetime | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    gmail_thread_id: str | None = None
    labels: list[str] = field(default_factory=list)
    list_id: str | None = None
    list_unsubscribe: str | None = None
    precedence: str | None = None
    auto_submitted: str | None = None


def read_headers(msg: Message, defects: list[str]) -> Headers:
    raw = raw_headers(msg, defects)
    first = {name: values[0] for name, values in raw.items()}
    return Headers(
        message_id=_message_id(first.get("message-id"), defects),
        subject=_subject(msg, first.get("subject"), defects),
        addresses={name: _addresses(msg, name, raw.get(name, []), defects) for name in _ADDRESS_HEADERS},
        delivered_to=_delivered_to(raw.get("delivered-to", [])),
        date=_date(first.get("date"), defects),
        in_reply_to=next(iter(message_ids(" ".join(raw.get("in-reply-to", [])))), None),
        references=message_ids(" ".join(raw.get("references", []))),
        gmail_thread_id=_token(first.get("x-gm-thrid")),
        labels=parse_labels(",".join(raw.get("x-gmail-labels", [])), defects),
        list_id=_text_value(first.get("list-id"), defects, "List-Id"),
        list_unsubscribe=_text_value(first.get("list-unsubscribe"), defects, "List-Unsubscribe"),
        precedence=_lower_token(first.get("precedence")),
        auto_submitted=_lower_token(first.get("auto-submitted")),
    )


def raw_headers(msg: Message, defects: list[str]) -> dict[str, list[str]]:
    """Header values as found (unfolded, raw 8-bit bytes decoded), by lower-case name, without
    touching the registry."""
    out: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        text = unescape_surrogates(_FOLD_RE.sub("", str(value)).strip(), f"header {name}", defects)
        out.setdefault(name.lower(), []).append(text)
    return out


def header_text(msg: Message, name: str) -> str:
    """One header as display text, whatever state it is in ("" when absent)."""
    try:
        value = msg.get(name)
        return "" if value is None else " ".join(str(value).split())
    except Exception:  # the registry's bugs: see the module docstring
        values = raw_headers(msg, []).get(name.lower())
        return decode_words(values[0], name, []) if values else ""


# --- addresses ------------------------------------------------------------------------------


def _addresses(msg: Message, name: str, values: list[str], defects: list[str]) -> list[Address]:
    if not values:
        return []
    if all(_SIMPLE_ADDRESS_LIST_RE.fullmatch(v) for v in values):
        return simple_addresses(values, _title(name), defects)
    return registry_addresses(msg, name, values, defects)


def simple_addresses(values: list[str], title: str, defects: list[str]) -> list[Address]:
    """Address lists that match _SIMPLE_ADDRESS_LIST_RE, read without the header registry (and as it
    reads them: a quoted name unquoted, an encoded word decoded, atoms joined by single spaces)."""
    found: list[Address] = []
    for value in values:
        for name, address, bare in _SIMPLE_ENTRY_RE.findall(value):
            if bare:
                found.append(Address("", bare))
            elif name.startswith('"'):
                found.append(Address(name[1:-1], address))
            elif name.startswith("=?"):
                found.append(Address(decode_words(name, title, defects), address))
            else:
                found.append(Address(" ".join(name.split()), address))
    return found


def registry_addresses(msg: Message, name: str, values: list[str], defects: list[str]) -> list[Address]:
    """Any address list, read by the email package's header registry (policy.default), mended where it errs."""
    title = _title(name)
    try:
        found: list[Address] = []
        # Registry header objects; after a compat32 re-parse they are str and fail here on purpose.
        parsed: list[Any] = msg.get_all(name) or []
        for header in parsed:
            found.extend(
                Address(_unescape(a.display_name, title, defects), _unescape(a.addr_spec, title, defects))
                for a in header.addresses
            )
            defects.extend(f"header {title}: {d}" for d in getattr(header, "defects", ()))
    except Exception as exc:  # the registry raises assorted types on malformed input
        defects.append(f"header {title}: fell back to compat32: {type(exc).__name__}: {exc}")
        found = _addresses_compat32(values, title, defects)
    else:
        if any("(" in v for v in values):
            found = _names_from_comments(found, values, title, defects)
        if any(_ADJACENT_WORDS_RE.search(v) for v in values):
            found = _names_from_words(found, values, title, defects)
    return [a for a in found if "@" in a.email]


def _names_from_comments(
    found: list[Address], values: list[str], title: str, defects: list[str]
) -> list[Address]:
    """Old archives write "bob@example.com (Bob Smith)"; the registry drops the comment name."""
    names = {a.email: a.name for a in _addresses_compat32(values, title, defects)}
    return [a if a.name else Address(names.get(a.email, ""), a.email) for a in found]


def _names_from_words(found: list[Address], values: list[str], title: str, defects: list[str]) -> list[Address]:
    """A name split over adjacent encoded words ("=?UTF-8?Q?..._=D0=9C?= =?UTF-8?Q?=D0=BE...?=").

    RFC 2047 §6.2: the space between them is not part of the text, but the registry's address parser
    keeps it, splitting a word ("М орозова"). decode_header joins them as the RFC says.
    """
    names = {a.email: a.name for a in _addresses_compat32(values, title, defects) if a.name}
    return [Address(names.get(a.email, a.name), a.email) for a in found]


def _addresses_compat32(values: list[str], title: str, defects: list[str]) -> list[Address]:
    pairs = email.utils.getaddresses(values)
    return [Address(decode_words(name, title, defects), addr.strip()) for name, addr in pairs if addr]


def _delivered_to(values: list[str]) -> list[str]:
    return [addr for _, addr in email.utils.getaddresses(values) if "@" in addr]


# --- ids ------------------------------------------------------------------------------------


def message_ids(value: str) -> list[str]:
    """Ids in order of appearance, without brackets or duplicates; bare ids when none is bracketed."""
    found = ["".join(inner.split()) for inner in _BRACKETED_ID_RE.findall(value)]
    if not found:
        found = [token.strip("<>\"'") for token in re.split(r"[\s,]+", value) if "@" in token]
    return list(dict.fromkeys(i for i in found if i and len(i) <= MAX_MESSAGE_ID_LENGTH))


def parse_message_id(value: str | email.header.Header | None, defects: list[str] | None = None) -> str | None:
    """The Message-ID in a raw header value, as `parse_message` reads it: first id, no brackets.

    For callers that read headers themselves (ingest's header-only parse), so both agree on keys.
    """
    return _message_id(value, [] if defects is None else defects)


def _message_id(value: str | email.header.Header | None, defects: list[str]) -> str | None:
    if value is None:
        return None
    # compat32 callers hand over raw 8-bit bytes as surrogate escapes, or as a Header object.
    text = _header_object_text(value, defects) if isinstance(value, email.header.Header) else value
    value = unescape_surrogates(text, "header Message-ID", defects)
    ids = message_ids(value)
    if not ids:
        token = value.strip().strip("<>").strip()
        if not token or " " in token or len(token) > MAX_MESSAGE_ID_LENGTH:
            defects.append(f"header Message-ID: unusable {value[:80]!r}")
            return None
        ids = [token]
    if "<" not in value:
        defects.append("header Message-ID: no angle brackets")
    if len(ids) > 1:
        defects.append(f"header Message-ID: {len(ids)} ids, kept the first")
    return ids[0]


def _header_object_text(header: email.header.Header, defects: list[str]) -> str:
    return "".join(
        chunk if isinstance(chunk, str) else decode_bytes(chunk, _known(charset), "header", defects)
        for chunk, charset in email.header.decode_header(header)
    )


def _known(charset: str | None) -> str | None:
    return None if charset in (None, "unknown-8bit") else charset


# --- text headers ---------------------------------------------------------------------------


def _subject(msg: Message, raw: str | None, defects: list[str]) -> str:
    if raw is None:
        return ""
    try:
        subject = str(msg.get("subject", ""))
    except Exception as exc:
        defects.append(f"header Subject: fell back to raw decoding: {type(exc).__name__}: {exc}")
        return decode_words(raw, "Subject", defects)
    if "\ufffd" in subject and "\ufffd" not in raw:
        # The registry replaced what it could not decode (unknown charset, 8-bit bytes): redo it.
        return decode_words(raw, "Subject", defects)
    return subject


def decode_words(value: str, where: str, defects: list[str]) -> str:
    """Decode RFC 2047 encoded words and stray 8-bit bytes; unknown charsets are detected."""
    if "=?" not in value:
        return _unescape(value, where, defects)
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # malformed encoded words: the raw text is the best we have
        return _unescape(value, where, defects)
    parts: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            parts.append(_unescape(chunk, where, defects))
        else:
            parts.append(decode_bytes(chunk, _known(charset), f"header {where}", defects))
    return "".join(parts)


def _unescape(value: str, where: str, defects: list[str]) -> str:
    return unescape_surrogates(value, f"header {where}", defects)


def _text_value(value: str | None, defects: list[str], title: str) -> str | None:
    if value is None:
        return None
    text = " ".join(decode_words(value, title, defects).split())
    return text or None


def _token(value: str | None) -> str | None:
    return (value.strip() or None) if value is not None else None


def _lower_token(value: str | None) -> str | None:
    token = _token(value)
    return token.lower() if token else None


def parse_labels(value: str, defects: list[str]) -> list[str]:
    """X-Gmail-Labels: comma-separated, labels with commas are quoted, may be encoded words."""
    if not value.strip():
        return []
    text = decode_words(value, "X-Gmail-Labels", defects)
    row = next(csv.reader([text], skipinitialspace=True), [])
    return [label.strip() for label in row if label.strip()]


# --- dates ----------------------------------------------------------------------------------


def _date(value: str | None, defects: list[str]) -> datetime | None:
    if value is None:
        return None
    parsed = _parse_date(value)
    if parsed is None:
        defects.append(f"header Date: unparsable {value[:80]!r}")
        return None
    if parsed.tzinfo is None:
        # RFC 5322's "-0000" means "zone unknown"; UTC is the least wrong reading.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_date(value: str) -> datetime | None:
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        return None


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))
