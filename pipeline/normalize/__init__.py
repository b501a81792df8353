"""Normalization: raw message bytes -> `ParsedMessage` (headers, text, new text, attachments).

`parse_message` never raises for a message with at least one header line; what went wrong on the
way is listed in `ParsedMessage.defects`. `message_key` is the identity every later stage upserts
on, `thread_key` the conversation it belongs to, `strip_reply` the quote and signature stripping.
"""

from pipeline.normalize.keys import message_key
from pipeline.normalize.parse import parse_message
from pipeline.normalize.quotes import strip_reply
from pipeline.normalize.threading import thread_key

__all__ = ["message_key", "parse_message", "strip_reply", "thread_key"]
