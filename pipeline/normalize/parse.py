"""`parse_message`: raw RFC 5322 bytes -> ParsedMessage, keeping every message that has a header."""

from __future__ import annotations

import email
import re
from email import errors, policy
from email.message import Message

from pipeline.errors import ParseError
from pipeline.normalize.body import extract_body
from pipeline.normalize.feedparse import message_from_bytes
from pipeline.normalize.headers import read_headers
from pipeline.normalize.mime_policy import POLICY
from pipeline.normalize.quotes import strip_reply
from pipeline.records import ParsedMessage

# What the stdlib parser accepts as a header line: a field name and colon, a continuation, or
# an mbox "From " line (email.feedparser.headerRE).
_HEADER_LINE_RE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]+:|[ \t]")
_LINE_RE = re.compile(rb"[^\n]*\n|[^\n]+")
_BLANK_LINE_RE = re.compile(rb"\n\r?\n")
MAX_HEADER_BLOCK_LINES = 500


def parse_message(
    raw: bytes, *, gmail_thread_id: str | None = None, labels: tuple[str, ...] = ()
) -> ParsedMessage:
    """Parse one message. Problems met on the way are listed in `defects`, never raised.

    Raises ParseError only when there is nothing to parse: empty input, or bytes without a single
    header line (binary garbage, a bare body).
    """
    if not raw.strip():
        raise ParseError("empty message")
    defects: list[str] = []
    msg = _parse_bytes(raw, defects)
    if any(isinstance(d, errors.MissingHeaderBodySeparatorDefect) for d in msg.defects):
        msg = _reparse_without_junk_lines(raw, msg, defects)
    if not msg.keys():
        raise ParseError("no header line found: not an RFC 5322 message")
    headers = read_headers(msg, defects)
    body = extract_body(msg)
    defects.extend(body.defects)
    defects.extend(_structure_defects(msg))
    stripped, signature = strip_reply(body.text)
    addresses = headers.addresses
    from_ = addresses["from"]
    return ParsedMessage(
        message_id=headers.message_id,
        subject=headers.subject,
        from_=from_[0] if from_ else None,
        to=addresses["to"],
        cc=addresses["cc"],
        bcc=addresses["bcc"],
        reply_to=addresses["reply-to"],
        delivered_to=headers.delivered_to,
        date=headers.date,
        in_reply_to=headers.in_reply_to,
        references=headers.references,
        gmail_thread_id=gmail_thread_id or headers.gmail_thread_id,
        labels=list(labels) if labels else headers.labels,
        content_type=_content_type(msg),
        list_id=headers.list_id,
        list_unsubscribe=headers.list_unsubscribe,
        precedence=headers.precedence,
        auto_submitted=headers.auto_submitted,
        text="\n\n".join([body.text, *body.forwarded]).strip("\n"),
        stripped=stripped,
        signature=signature,
        body_source=body.source,
        attachments=body.attachments,
        defects=list(dict.fromkeys(defects)),
        size=len(raw),
    )


def _parse_bytes(raw: bytes, defects: list[str]) -> Message:
    try:
        return message_from_bytes(raw, POLICY)
    except Exception as exc:  # the parser consults the header registry for Content-Type
        defects.append(f"structure: policy.default parse failed, used compat32: {type(exc).__name__}: {exc}")
        return email.message_from_bytes(raw, policy=policy.compat32)


def _reparse_without_junk_lines(raw: bytes, msg: Message, defects: list[str]) -> Message:
    """The parser ends the headers at the first line that is not one, so a single corrupt field
    name ("F\\xbfom:") sends every header after it into the body. When real header lines follow
    such lines, drop them and parse again; otherwise the body merely lacks its blank line."""
    blank = _BLANK_LINE_RE.search(raw)
    block_end = blank.start() + 1 if blank else len(raw)
    lines = _LINE_RE.findall(raw, 0, block_end)
    if len(lines) > MAX_HEADER_BLOCK_LINES:
        return msg
    is_field = [_HEADER_LINE_RE.match(line) is not None and line[:1] not in b" \t" for line in lines]
    kept: list[bytes] = []
    for index, line in enumerate(lines):
        if _HEADER_LINE_RE.match(line):
            kept.append(line)
        elif b":" not in line or not any(is_field[index + 1 :]):
            return msg
    if len(kept) == len(lines):
        return msg
    defects.append(f"structure: dropped {len(lines) - len(kept)} malformed header line(s)")
    return _parse_bytes(b"".join(kept) + raw[block_end:], defects)


def _structure_defects(msg: Message) -> list[str]:
    """The email package's own findings (bad boundaries, base64 padding...), read after decoding."""
    found: list[str] = []
    for part in msg.walk():
        for defect in part.defects:
            detail = str(defect)
            found.append(f"structure: {type(defect).__name__}" + (f": {detail}" if detail else ""))
    return found


def _content_type(msg: Message) -> str:
    try:
        return msg.get_content_type()
    except Exception:  # a Content-Type the registry cannot parse
        return "text/plain"
