"""`message_from_bytes` as the standard library's, without compiling a regular expression per multipart.

`email.feedparser` compiles `(?P<sep>--BOUNDARY)(?P<end>--)?(?P<ws>[ \\t]*)(?P<linesep>\\r\\n|\\r|\\n)?$`
for every multipart part it meets, and boundaries are unique, so `re`'s cache never helps: ~0.25 ms
a message, a fifth of normalize's whole parse. Here the parser's own code runs unchanged with a `re`
whose `compile` turns exactly that pattern into a matcher doing the same thing (the line starts with
the separator, then the same tail pattern, compiled once). Any other pattern, or that one in a
Python whose parser writes it differently, goes to `re.compile` as before.
"""

from __future__ import annotations

import re
import types
from email import feedparser
from email.message import Message
from email.policy import Policy
from io import StringIO
from typing import Any

_OPEN = "(?P<sep>"
_TAIL = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
_TAIL_RE = re.compile(_TAIL[1:])
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)  # re.escape puts a backslash before special characters
_READ_SIZE = 8192  # email.parser.Parser feeds the text in pieces of this size; so do we


class _BoundaryMatcher:
    """`re.compile(_OPEN + re.escape(separator) + _TAIL)`, matching the same lines with the same groups."""

    __slots__ = ("_length", "_separator")

    def __init__(self, separator: str) -> None:
        self._separator = separator
        self._length = len(separator)

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self._separator):
            return None
        return _TAIL_RE.match(line, self._length)


class _ParserRe(types.ModuleType):
    """What the parser's code finds as `re`: the module, but for the boundary pattern."""

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)

    @staticmethod
    def compile(pattern: Any, flags: int = 0) -> Any:
        if isinstance(pattern, str) and not flags and pattern.startswith(_OPEN) and pattern.endswith(_TAIL):
            return _BoundaryMatcher(_UNESCAPE_RE.sub(r"\1", pattern[len(_OPEN) : -len(_TAIL)]))
        return re.compile(pattern, flags)


_PARSER_GLOBALS = dict(vars(feedparser), re=_ParserRe("re"))
_std_parsegen: types.FunctionType = getattr(feedparser.FeedParser, "_parsegen")  # noqa: B009 (private)


class _FeedParser(feedparser.FeedParser):
    # The standard method's own code, looking names up in a copy of its module's globals.
    _parsegen = types.FunctionType(_std_parsegen.__code__, _PARSER_GLOBALS, _std_parsegen.__name__,
                                   _std_parsegen.__defaults__, _std_parsegen.__closure__)


def message_from_bytes(raw: bytes, policy: Policy) -> Message:
    """`email.message_from_bytes(raw, policy=policy)`, step for step (email.parser.BytesParser)."""
    parser = _FeedParser(policy=policy)
    text = StringIO(raw.decode("ASCII", errors="surrogateescape"))
    while data := text.read(_READ_SIZE):
        parser.feed(data)
    return parser.close()
