"""The message key: the identity every stage upserts on."""

from __future__ import annotations

import hashlib

from pipeline.records import ParsedMessage


def message_key(parsed: ParsedMessage, raw: bytes) -> str:
    """`mid:<Message-ID>`, or `sha:<sha256>` of the raw bytes for messages without one.

    The hash ignores line-ending style and trailing whitespace, which mbox writers and transports
    change, so the same message imported twice, or from two sources, gets the same key.
    """
    if parsed.message_id:
        return f"mid:{parsed.message_id}"
    data = raw.replace(b"\r\n", b"\n").rstrip()
    return f"sha:{hashlib.sha256(data).hexdigest()}"
