"""A message's bytes rebuilt from Gmail's `format=full` resource, attachment bodies left out.

`format=raw` downloads every attachment (base64 inside JSON, a third larger again) only for
normalize to record its name, type and size. `format=full` costs the same quota, gives each part's
headers and decoded text, and names attachments by id and size without their data. Rebuilding a
MIME message from it lets ingest and normalize stay one path for mailbox files and the API:

- leaf parts: Gmail's `body.data` is already transfer-decoded, so the part is written with its own
  Content-Type (charset included) and re-encoded as base64;
- attachments: their headers, an empty body and `X-Mailpipe-Attachment-Size` with Gmail's size,
  which normalize reports instead of the (empty) body's;
- multipart and message/rfc822 parts: their headers, then their children in order.

Header values in this format are unfolded with RFC 2047 words decoded (Gmail shows them so); they
are written back as UTF-8 (RFC 6532), which normalize reads like any 8-bit header. A decoded display
name holding a comma outside quotes is then ambiguous, as it is to every Gmail API client.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Mapping, Sequence
from email.utils import formataddr, getaddresses
from typing import Any

from pipeline.normalize.body import ATTACHMENT_SIZE_HEADER

# Headers the rebuilt part states itself: the body is re-encoded, and a stale length would lie.
_REWRITTEN = frozenset({"content-transfer-encoding", "content-length", ATTACHMENT_SIZE_HEADER.lower()})


_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to"})


class PayloadError(ValueError):
    """A `format=full` resource too malformed to rebuild (no payload, undecodable part data)."""


def message_bytes(resource: Mapping[str, Any]) -> bytes:
    """The RFC 5322 bytes of a messages.get(format=full) resource, without attachment bodies."""
    payload = resource.get("payload")
    if not isinstance(payload, Mapping):
        raise PayloadError("the resource has no payload")
    return b"\r\n".join(_part_lines(payload)) + b"\r\n"


def attachment_count(resource: Mapping[str, Any]) -> int:
    """How many parts Gmail withheld as attachments (named by id, without data)."""
    payload = resource.get("payload")
    return _count_withheld(payload) if isinstance(payload, Mapping) else 0


def _count_withheld(node: Mapping[str, Any]) -> int:
    own = 1 if _withheld(node) else 0
    return own + sum(_count_withheld(child) for child in node.get("parts") or [])


def _part_lines(node: Mapping[str, Any]) -> list[bytes]:
    headers = _headers(node.get("headers") or [])
    children: Sequence[Mapping[str, Any]] = node.get("parts") or []
    mime = str(node.get("mimeType") or "text/plain").lower()
    if mime.startswith("multipart/"):
        return _multipart_lines(headers, children)
    if children:  # message/rfc822: the attached message's own headers and body follow
        return [*_header_lines(headers), b"", *_part_lines(children[0])]
    if _withheld(node):
        size = int((node.get("body") or {}).get("size") or 0)
        return [*_header_lines([*headers, (ATTACHMENT_SIZE_HEADER, str(size))]), b""]
    data = _data(node)
    return [*_header_lines([*headers, ("Content-Transfer-Encoding", "base64")]), b"", *_base64_lines(data)]


def _multipart_lines(headers: list[tuple[str, str]], children: Sequence[Mapping[str, Any]]) -> list[bytes]:
    boundary = _boundary(headers)
    if boundary is None:  # Gmail always shows it; a part without one still needs a delimiter
        boundary = "mailpipe-" + secrets.token_hex(12)
        headers = [(n, f'{v}; boundary="{boundary}"' if n.lower() == "content-type" else v) for n, v in headers]
    lines = [*_header_lines(headers), b""]
    for child in children:
        lines += [b"--" + boundary.encode(), *_part_lines(child)]
    lines.append(b"--" + boundary.encode() + b"--")
    return lines


def _headers(raw: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(str(h.get("name", "")), str(h.get("value", ""))) for h in raw
            if h.get("name") and str(h.get("name")).lower() not in _REWRITTEN]


def _header_lines(headers: Sequence[tuple[str, str]]) -> list[bytes]:
    lines = []
    for name, value in headers:
        value = " ".join(value.splitlines())  # unfolded already; a stray CR or LF must not start a header
        if name.lower() in _ADDRESS_HEADERS:
            value = _encoded_addresses(value)
        lines.append(f"{name}: {value}".encode())
    return lines


def _encoded_addresses(value: str) -> str:
    """Address list with decoded names, re-encoded so a comma inside a name stays inside it.

    "Mercier, Céline <c@x>" was one encoded word; decoded, it reads as two entries, the first
    without "@". A bare word is never an address here, so it is rejoined to the name after it.
    """
    if value.isascii() and "," not in value:
        # One entry (only a comma separates two): nothing to rejoin, and ASCII is kept as Gmail gave it.
        # Most values are so, and parsing them was a twentieth of an ingest worker's CPU.
        return value
    pairs: list[tuple[str, str]] = []
    carried: list[str] = []
    rejoined = False
    for name, addr in getaddresses([value]):
        if addr and "@" not in addr and not name:
            carried.append(addr)
            continue
        if carried:
            name, carried, rejoined = ", ".join([*carried, name]) if name else ", ".join(carried), [], True
        pairs.append((name, addr))
    if carried or (value.isascii() and not rejoined):  # nothing to repair: the text as Gmail gave it
        return value
    return ", ".join(formataddr(pair, charset="utf-8") for pair in pairs)


# A Content-Type of a type and `; name=value` parameters, each value a token or a quoted string with
# nothing escaped and no encoded word: the registry's parameters are then these names (lowercased) and
# values as written (test_gmail_payload compares them). Gmail's multipart types are written so.
_TOKEN = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"
_PARAMETER = r'; ?([!#$&+.^_`{|}~0-9A-Za-z-]+)=(?:"((?:(?!=\?)[\x20\x21\x23-\x5b\x5d-\x7e])+)"|(' + _TOKEN + "))"
_PLAIN_CONTENT_TYPE_RE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:{_PARAMETER})*")
_PARAMETER_RE = re.compile(_PARAMETER)


def _boundary(headers: Sequence[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "content-type":
            return boundary_of(value)
    return None


def boundary_of(content_type: str) -> str | None:
    """The boundary parameter of a Content-Type value as the header registry reads it (None if none)."""
    if _PLAIN_CONTENT_TYPE_RE.fullmatch(content_type):
        # The registry's parse of a plain value was half of rebuilding a message (ad-hoc profile), for a
        # result read off the text. A repeated parameter is left to it (which of them it keeps depends on
        # their names' case).
        params = {param.lower(): quoted or token for param, quoted, token in _PARAMETER_RE.findall(content_type)}
        if len(params) == content_type.count(";"):
            return params.get("boundary") or None
    from email.headerregistry import HeaderRegistry

    parsed = HeaderRegistry()("content-type", content_type)
    found = parsed.params.get("boundary")  # type: ignore[attr-defined]
    return str(found) if found else None


def _withheld(node: Mapping[str, Any]) -> bool:
    body = node.get("body") or {}
    return bool(body.get("attachmentId")) and "data" not in body


def _data(node: Mapping[str, Any]) -> bytes:
    encoded = str((node.get("body") or {}).get("data") or "")
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError as exc:
        raise PayloadError(f"part {node.get('partId', '?')}: undecodable body data: {exc}") from exc


def _base64_lines(data: bytes) -> list[bytes]:
    encoded = base64.b64encode(data)
    return [encoded[i : i + 76] for i in range(0, len(encoded), 76)]


__all__ = ["ATTACHMENT_SIZE_HEADER", "PayloadError", "attachment_count", "boundary_of", "message_bytes"]
