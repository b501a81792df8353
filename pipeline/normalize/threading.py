"""`thread_key`: which conversation a message belongs to.

Named for the conversation threads it groups; it does not shadow the standard library's
`threading` for absolute imports.
"""

from __future__ import annotations

from pipeline.normalize.keys import message_key
from pipeline.records import ParsedMessage

# Takeout's X-GM-THRID is the decimal form of the 64-bit id the Gmail API gives in hex. A hex
# threadId has at most 16 digits; the decimal of an id that large has more, so the two never clash.
_MAX_HEX_THREAD_ID = 16


def thread_key(parsed: ParsedMessage) -> str:
    """`gm:<Gmail thread id>`, else `ref:<root id>` (References, In-Reply-To, own Message-ID),
    else `key:<message key>` (a hash of the content, stable across imports and sources).
    """
    if parsed.gmail_thread_id:
        return f"gm:{_gmail_thread_hex(parsed.gmail_thread_id)}"
    root = parsed.references[0] if parsed.references else parsed.in_reply_to or parsed.message_id
    if root:
        return f"ref:{root}"
    return f"key:{message_key(parsed)}"


def _gmail_thread_hex(thread_id: str) -> str:
    thread_id = thread_id.strip()
    if thread_id.isdigit() and len(thread_id) > _MAX_HEX_THREAD_ID:
        return format(int(thread_id), "x")
    return thread_id.lower()
