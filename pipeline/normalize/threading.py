"""`thread_key`: which conversation a message belongs to.

Named for the conversation threads it groups; it does not shadow the standard library's
`threading` for absolute imports.
"""

from __future__ import annotations

import hashlib

from pipeline.normalize.keys import message_key
from pipeline.records import ParsedMessage

# Takeout's X-GM-THRID is the decimal form of the 64-bit id the Gmail API gives in hex. A hex
# threadId has at most 16 digits; the decimal of an id that large has more, so the two never clash.
_MAX_HEX_THREAD_ID = 16


def thread_key(parsed: ParsedMessage, raw: bytes | None = None) -> str:
    """`gm:<Gmail thread id>`, else `ref:<root id>` (References, In-Reply-To, own Message-ID),
    else `key:<message key>`.

    `raw` is only needed for messages without any id; without it the last resort hashes the parsed
    sender, date, subject and text, which is stable across imports too.
    """
    if parsed.gmail_thread_id:
        return f"gm:{_gmail_thread_hex(parsed.gmail_thread_id)}"
    root = parsed.references[0] if parsed.references else parsed.in_reply_to or parsed.message_id
    if root:
        return f"ref:{root}"
    if raw is not None:
        return f"key:{message_key(parsed, raw)}"
    return f"key:syn:{_content_hash(parsed)}"


def _gmail_thread_hex(thread_id: str) -> str:
    thread_id = thread_id.strip()
    if thread_id.isdigit() and len(thread_id) > _MAX_HEX_THREAD_ID:
        return format(int(thread_id), "x")
    return thread_id.lower()


def _content_hash(parsed: ParsedMessage) -> str:
    sender = parsed.from_.email if parsed.from_ else ""
    date = parsed.date.isoformat() if parsed.date else ""
    fields = "\x00".join((sender, date, parsed.subject, parsed.text))
    return hashlib.sha256(fields.encode("utf-8", "surrogatepass")).hexdigest()
