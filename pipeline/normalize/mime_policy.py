"""`policy.default` with memoized header parsing.

`EmailPolicy.header_fetch_parse` re-parses a header on every access, and the parser and
`Message` methods read Content-Type, Content-Disposition and Content-Transfer-Encoding several
times per part. Header objects are immutable, and those values repeat across a mailbox, so one
parse per distinct (name, value) serves them all. Behaviour is policy.default's, exceptions included.
"""

from __future__ import annotations

import re
from email.policy import EmailPolicy
from functools import lru_cache
from typing import Any

_HEADER_CACHE_SIZE = 4096
_LINE_BREAK_RE = re.compile(r"\n|\r")  # what EmailPolicy.header_fetch_parse removes, nothing more


class MemoizingPolicy(EmailPolicy):
    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):
            return value  # already a header object (set by a program, not parsed)
        return _parse_header(self.header_factory, name, value)


@lru_cache(maxsize=_HEADER_CACHE_SIZE)
def _parse_header(factory: Any, name: str, value: str) -> Any:
    return factory(name, _LINE_BREAK_RE.sub("", value))


POLICY = MemoizingPolicy()
