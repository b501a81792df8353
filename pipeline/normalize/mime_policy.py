"""`policy.default` with memoized, and where it cannot change anything deferred, header parsing.

`EmailPolicy.header_fetch_parse` re-parses a header on every access, and the parser and
`Message` methods read Content-Type, Content-Disposition and Content-Transfer-Encoding several
times per part. Header objects are immutable, and most values repeat across a mailbox, so one
parse per distinct (name, value) serves them all.

Content-Type values rarely repeat (each multipart boundary is new), and the registry's parse of one
cost more than the rest of a message's header reading. Yet every reader of these headers in the
email package (`get_content_type`, `get_param`, `get_boundary`, `get_filename`, `get_payload`) and
in ours works on the header's text, and for a plain value (ASCII tokens, quoted strings without
escapes, no encoded words, no comments) the registry's text is the value itself. Such values are
returned as `PlainHeader`: that text, which builds the registry's object only when something asks
for one of its attributes (`params`, `defects`, `fold`...). Behaviour is policy.default's,
exceptions included.
"""

from __future__ import annotations

import re
from email.headerregistry import (
    ContentDispositionHeader,
    ContentTransferEncodingHeader,
    ContentTypeHeader,
    UnstructuredHeader,
)
from email.policy import EmailPolicy
from functools import lru_cache
from typing import Any

_HEADER_CACHE_SIZE = 4096
_LINE_BREAK_RE = re.compile(r"\n|\r")  # what EmailPolicy.header_fetch_parse removes, nothing more

# RFC 2045 token characters; parameter names without RFC 2231's "*" and "'" (their values are decoded).
_TOKEN = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"
_ATTRIBUTE = r"[!#$&+.^_`{|}~0-9A-Za-z-]+"
# The registry writes parameters back as `; name="value"`: a value already written so (printable
# ASCII, nothing escaped, no encoded word, which it would decode) comes back unchanged.
_PARAMETERS = r'(?:; ' + _ATTRIBUTE + r'="(?:(?!=\?)[\x20\x21\x23-\x5b\x5d-\x7e])+")*'
_PLAIN_CONTENT_TYPE_RE = re.compile(rf"{_TOKEN}/{_TOKEN}{_PARAMETERS}")
_PLAIN_DISPOSITION_RE = re.compile(rf"{_TOKEN}{_PARAMETERS}")
_PLAIN_TOKEN_RE = re.compile(rf"[ \t]*{_TOKEN}[ \t]*")
# Printable ASCII and blanks: the unstructured parser splits it at whitespace and joins it back;
# only encoded words ("=?") are changed.
_PLAIN_UNSTRUCTURED_RE = re.compile(r"(?!.*=\?)[\x20-\x7e\t]*", re.DOTALL)


class PlainHeader(str):
    """A header's text that is exactly what the registry's parse would give as text; any other
    attribute is the registry's object's, parsed on first use."""

    def __new__(cls, text: str, factory: Any, name: str) -> PlainHeader:
        self = super().__new__(cls, text)
        self.__dict__.update(_factory=factory, _name=name, _parsed=None)
        return self

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)  # copy, pickle and friends: a plain str's behaviour
        parsed = self.__dict__["_parsed"]
        if parsed is None:
            parsed = _parse_header(self.__dict__["_factory"], self.__dict__["_name"], str(self))
            self.__dict__["_parsed"] = parsed
        return getattr(parsed, attr)


class MemoizingPolicy(EmailPolicy):
    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):
            return value  # already a header object (set by a program, not parsed)
        plain = _plain_pattern(self.header_factory, name.lower())
        if plain is not None:
            text = _LINE_BREAK_RE.sub("", value)
            if plain.fullmatch(text):
                return PlainHeader(text, self.header_factory, name)
        return _parse_header(self.header_factory, name, value)


@lru_cache(maxsize=256)
def _plain_pattern(factory: Any, name: str) -> re.Pattern[str] | None:
    """The values of header `name` whose registry text is the value itself, or None (addresses, dates
    and ids: the registry rewrites those)."""
    kind = factory[name]
    if issubclass(kind, ContentTypeHeader):
        return _PLAIN_CONTENT_TYPE_RE
    if issubclass(kind, ContentDispositionHeader):
        return _PLAIN_DISPOSITION_RE
    if issubclass(kind, ContentTransferEncodingHeader):
        return _PLAIN_TOKEN_RE
    if issubclass(kind, UnstructuredHeader):
        return _PLAIN_UNSTRUCTURED_RE
    return None


@lru_cache(maxsize=_HEADER_CACHE_SIZE)
def _parse_header(factory: Any, name: str, value: str) -> Any:
    return factory(name, _LINE_BREAK_RE.sub("", value))


POLICY = MemoizingPolicy()
