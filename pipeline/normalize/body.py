"""The body of a message: which parts are its text, decoded; which are attachments, as metadata.

- text/plain is preferred; HTML is converted only where a part offers nothing else.
- multipart/alternative: the first non-empty text/plain, else the richest other alternative.
- multipart/report (bounces): only the human-readable first part is text.
- message/rfc822 parts (forwarded as attachment): their text goes to `forwarded`, after a marker,
  so callers can show it in the full text but keep it out of the new text.
- Attachments are recorded (filename, type, decoded size); their bodies are never read as text.
- Other leaves (text/calendar, delivery-status, signatures) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import email
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message

from pipeline.normalize.charsets import decode_bytes, html_meta_charset, unescape_surrogates
from pipeline.normalize.headers import header_text
from pipeline.normalize.html_text import html_to_text
from pipeline.records import Attachment

MAX_DEPTH = 20
FORWARD_MARKER = "---------- Forwarded message ----------"
_FORWARD_SUMMARY = ("From", "Date", "Subject", "To")
_TEXT_TYPES = ("text/plain", "text/html")
_RAW_FILENAME_RE = re.compile(r"""(?:file)?name\s*=\s*(?:"([^"]*)"|([^\s;"]+))""", re.IGNORECASE)
_IGNORED_SIGNATURES = (
    "application/pgp-signature",
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
)


@dataclass(slots=True)
class Body:
    parts: list[str] = field(default_factory=list)  # the message's own text parts, in order
    kinds: set[str] = field(default_factory=set)  # "plain" and/or "html": where the parts came from
    forwarded: list[str] = field(default_factory=list)  # forwarded messages, each after FORWARD_MARKER
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(self.parts)

    @property
    def source(self) -> str:
        return "plain" if "plain" in self.kinds else "html" if "html" in self.kinds else "none"

    def add(self, kind: str, text: str) -> None:
        if text.strip():
            self.parts.append(text.strip("\n"))
            self.kinds.add(kind)


def extract_body(msg: Message) -> Body:
    body = Body()
    _visit(msg, body, 0)
    return body


def _visit(part: Message, body: Body, depth: int) -> None:
    if depth > MAX_DEPTH:
        body.defects.append(f"structure: parts nested deeper than {MAX_DEPTH}; the rest was skipped")
        return
    ctype = _content_type(part)
    if ctype == "message/rfc822":
        _visit_forwarded(part, body, depth)
    elif part.is_multipart():
        _visit_multipart(part, ctype, body, depth)
    elif _is_attachment(part, ctype):
        body.attachments.append(_attachment(part, ctype))
    elif ctype in _TEXT_TYPES:
        _add_text(part, ctype, body)


def _visit_multipart(part: Message, ctype: str, body: Body, depth: int) -> None:
    children = [c for c in part.get_payload() if isinstance(c, Message)]
    if ctype == "multipart/alternative":
        _visit_alternative(children, body, depth)
    elif ctype == "multipart/report":
        # A bounce: the first part is written for people; the rest is for machines.
        if children:
            _visit(children[0], body, depth + 1)
    elif ctype.startswith("message/"):
        return  # delivery-status and the like: header blocks, not text
    else:
        for child in children:
            _visit(child, body, depth + 1)


def _visit_alternative(children: list[Message], body: Body, depth: int) -> None:
    for child in children:
        if _content_type(child) == "text/plain" and not _is_attachment(child, "text/plain"):
            text = _decode_text(child, "text/plain", body.defects)
            if text.strip():
                body.add("plain", text)
                return
    # Senders put the richest alternative last.
    for child in reversed(children):
        ctype = _content_type(child)
        if ctype == "text/html" or child.is_multipart():
            _visit(child, body, depth + 1)
            return


def _visit_forwarded(part: Message, body: Body, depth: int) -> None:
    body.attachments.append(Attachment(_filename(part), "message/rfc822", _size(part)))
    inner = _attached_message(part)
    if inner is None:
        return
    forwarded = Body()
    _visit(inner, forwarded, depth + 1)
    body.attachments.extend(forwarded.attachments)
    body.defects.extend(forwarded.defects)
    summary = [f"{name}: {value}" for name in _FORWARD_SUMMARY if (value := header_text(inner, name))]
    body.forwarded.append("\n".join([FORWARD_MARKER, *summary, "", forwarded.text]).rstrip())
    body.forwarded.extend(forwarded.forwarded)


def _attached_message(part: Message) -> Message | None:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        return None
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    encoded = inner.get_payload()
    if encoding in ("base64", "quoted-printable") and not inner.keys() and isinstance(encoded, str):
        # The parser read the still-encoded message as a headerless one: decode, then parse.
        data = encoded.encode("ascii", "surrogateescape")
        try:
            decoded = base64.b64decode(data) if encoding == "base64" else quopri.decodestring(data)
        except binascii.Error:
            return inner
        return email.message_from_bytes(decoded, policy=part.policy)
    return inner


def _add_text(part: Message, ctype: str, body: Body) -> None:
    text = _decode_text(part, ctype, body.defects)
    if ctype == "text/html":
        body.add("html", html_to_text(text))
    else:
        body.add("plain", text)


def _decode_text(part: Message, ctype: str, defects: list[str]) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    try:
        charset = part.get_content_charset()
    except Exception:  # a malformed Content-Type parameter list
        charset = None
    if charset is None and ctype == "text/html":
        charset = html_meta_charset(data)
    text = decode_bytes(data, charset, f"part {ctype}", defects)
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- attachments ----------------------------------------------------------------------------

# Set on an attachment part whose body was not downloaded (pipeline.sources.gmail_payload): its size.
ATTACHMENT_SIZE_HEADER = "X-Mailpipe-Attachment-Size"


def _is_attachment(part: Message, ctype: str) -> bool:
    if ctype in _IGNORED_SIGNATURES:
        return False
    try:
        disposition = part.get_content_disposition()
    except Exception:
        disposition = None
    if disposition == "attachment":
        return True
    if ctype in _TEXT_TYPES:
        # Inline text is body unless it is a named file (an attached .txt or .html).
        return bool(_filename(part))
    maintype = ctype.partition("/")[0]
    return maintype not in ("text", "multipart", "message") or bool(_filename(part))


def _attachment(part: Message, ctype: str) -> Attachment:
    return Attachment(_filename(part), ctype, _size(part))


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
        readable = "\ufffd" not in name
    except Exception:  # broken RFC 2231 parameters
        name, readable = "", False
    if not readable:
        # The registry replaces raw 8-bit (non-UTF-8) bytes in parameters; read the raw value.
        name = _raw_filename(part) or name
    return " ".join(name.split())


def _raw_filename(part: Message) -> str:
    for header, value in part.raw_items():
        if header.lower() in ("content-disposition", "content-type"):
            match = _RAW_FILENAME_RE.search(unescape_surrogates(str(value), "attachment filename", []))
            if match:
                return match.group(1) if match.group(1) is not None else match.group(2)
    return ""


def _size(part: Message) -> int:
    withheld = part.get(ATTACHMENT_SIZE_HEADER)
    if withheld is not None and str(withheld).strip().isdigit():
        return int(str(withheld).strip())  # fetched without its body (Gmail format=full): Gmail's size
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return len(data)
    payload = part.get_payload()
    if not isinstance(payload, list):
        return 0
    try:
        return sum(len(m.as_bytes()) for m in payload if isinstance(m, Message))
    except Exception:  # an attached message too broken to serialize
        return 0


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # the registry on a malformed Content-Type
        return "text/plain"
