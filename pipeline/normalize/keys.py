"""The message key: the identity every stage upserts on."""

from __future__ import annotations

import hashlib
import json

from pipeline.records import Address, ParsedMessage


def message_key(parsed: ParsedMessage) -> str:
    """`mid:<Message-ID>`, or `sha:<sha256>` of the message's content for messages without one.

    `parsed` must be the full parse when there is no Message-ID. The hash covers what the message
    says (addresses, date, subject, references, text, attachments' names, types and sizes), not its
    bytes: a Takeout mbox and Gmail's format=full (rebuilt without attachment bodies, with another
    transfer encoding) give the same key, and so do line-ending or trailing-whitespace changes.
    """
    if parsed.message_id:
        return f"mid:{parsed.message_id}"
    return f"sha:{hashlib.sha256(_content(parsed)).hexdigest()}"


def _content(p: ParsedMessage) -> bytes:
    def people(addresses: list[Address]) -> list[list[str]]:
        return [[a.name, a.email.lower()] for a in addresses]

    fields = {
        "from": people([p.from_] if p.from_ else []), "to": people(p.to), "cc": people(p.cc),
        "date": p.date.isoformat() if p.date else None, "subject": p.subject,
        "in_reply_to": p.in_reply_to, "references": p.references, "list_id": p.list_id,
        "text": " ".join(p.text.split()),
        "attachments": [[a.filename, a.content_type, a.size] for a in p.attachments],
    }
    return json.dumps(fields, ensure_ascii=False, sort_keys=True).encode()
