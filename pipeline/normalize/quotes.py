"""Quoted-reply, forward and signature stripping: what the sender actually wrote in this message.

One forward pass over the lines. Quoted lines (`>`) are dropped wherever they are, so inline
replies keep their new lines. An attribution ("On … wrote:", in many languages, wrapped over up to
three lines) is dropped with the quote it introduces; when no `>` quote follows it, the original
was pasted unquoted and everything from the attribution on is old text. Outlook header blocks,
"Original message" / "Forwarded message" separators and client taglines end the new text too. A
signature delimiter ends it and what follows, up to the next quote, is returned as the signature.

Analysis is capped (`MAX_LINES`, `MAX_CHARS`) so a huge body costs no more than a big one: when
nothing ended the new text before the cap, the rest is kept minus its `>` lines.
"""

from __future__ import annotations

import re

from pipeline.normalize import reply_markers as rm

MAX_LINES = 2000
MAX_CHARS = 100_000
MAX_ATTRIBUTION_LINES = 3
MAX_ATTRIBUTION_CHARS = 400
# Attribution verbs come last in most languages; Germanic ones put "NAME <EMAIL>" after the verb.
MAX_TEXT_AFTER_VERB = 150
# Bare "--" and rule-line delimiters are only trusted when what follows is signature-sized.
MAX_SIGNATURE_LINES_AFTER_BARE_DASHES = 20
MAX_SIGNATURE_LINES_AFTER_RULE = 10
# A quoted line this long that is followed by an unquoted one was probably wrapped by the quoter.
MIN_WRAPPED_QUOTE_LENGTH = 50
# A tagline is a short phrase ("Sent from my iPhone"), maybe followed by a long tracking URL.
MAX_TAGLINE_CHARS = 300
MAX_TAGLINE_TEXT = 80
MAX_TAGLINE_WORDS = 8
HEADER_BLOCK_SPAN = 12

_QUOTED_COLON_RE = re.compile(r"\s*>\s*[:：]\s*")
_RULE_CHARS = "-_=*~\u2014\u2015\u2013"
_TIME_RE = re.compile(r"\d{1,2}[:.h]\d{2}")


def strip_reply(text: str) -> tuple[str, str | None]:
    """Return (the new text of a reply, its signature or None)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    head, tail = _split_at_cap(text)
    lines = head.split("\n")
    kept, signature, cut = _scan(lines)
    if not cut and tail:
        # Past the cap only the linear part of the analysis runs: quoted lines go.
        kept.extend(line for line in tail.split("\n") if not _is_quoted(line))
    return _tidy(kept, trim_rules=cut), signature


def _split_at_cap(text: str) -> tuple[str, str]:
    end = len(text)
    if end > MAX_CHARS:
        end = text.rfind("\n", 0, MAX_CHARS)
        end = MAX_CHARS if end < 0 else end
    newline = -1
    for _ in range(MAX_LINES):
        newline = text.find("\n", newline + 1, end)
        if newline < 0:
            break
    else:
        end = newline
    if end >= len(text):
        return text, ""
    return text[:end], text[end + 1 :]


def _scan(lines: list[str]) -> tuple[list[str], str | None, bool]:
    """Walk the lines once; return (kept lines, signature, whether old text was cut off)."""
    spans = _attribution_spans(lines)
    kept: list[str] = []
    in_fence = False
    i = 0
    maybe_marker = rm.MAYBE_MARKER_START_RE.match
    while i < len(lines):
        line = lines[i]
        if in_fence:
            in_fence = rm.FENCE_RE.match(line) is None
        elif not line.strip() or (
            # Most lines are plain prose: one C-level match rules out every marker below.
            not maybe_marker(line)
            and ":" not in line
            and "@" not in line
            and "：" not in line
            and i not in spans
            and not (i and _is_quoted(lines[i - 1]))  # else it could be a quoter's wrap
        ):
            pass
        elif rm.FENCE_RE.match(line):
            # Code blocks may hold "> prompt" lines and "--" that are content, not quotes.
            in_fence = True
        elif _is_escaped_from(lines, i):
            line = line[1:]
        elif _is_quoted(line) or _is_wrapped_quote(lines, i):
            i += 1
            continue
        elif i in spans:
            end = spans[i]
            if _is_quoted_at(lines, _next_nonblank(lines, end + 1)):
                i = end + 1
                continue
            return kept, None, True
        elif _is_bare_attribution(lines, i):
            i += 1
            continue
        elif _starts_old_text(lines, i):
            return kept, None, True
        else:
            signature = _signature_at(lines, i, spans)
            if signature is not None:
                return kept, signature or None, True
        kept.append(line)
        i += 1
    return kept, None, False


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _is_quoted_at(lines: list[str], i: int) -> bool:
    return 0 <= i < len(lines) and _is_quoted(lines[i])


def _next_nonblank(lines: list[str], i: int) -> int:
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def _is_escaped_from(lines: list[str], i: int) -> bool:
    """mbox writers turn a body line "From ..." into ">From ..."; alone among unquoted lines it is
    that escape, not a one-line quote."""
    if not lines[i].startswith(">From "):
        return False
    before = i - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    return not _is_quoted_at(lines, before) and not _is_quoted_at(lines, _next_nonblank(lines, i + 1))


def _is_wrapped_quote(lines: list[str], i: int) -> bool:
    """An unquoted line squeezed between quoted ones, after a long one, is a quoter's wrap."""
    return (
        0 < i < len(lines) - 1
        and _is_quoted(lines[i - 1])
        and _is_quoted(lines[i + 1])
        and len(lines[i - 1].rstrip()) >= MIN_WRAPPED_QUOTE_LENGTH
    )


# --- attributions ---------------------------------------------------------------------------


def _attribution_spans(lines: list[str]) -> dict[int, int]:
    """Map the first line of every attribution to its last line."""
    spans: dict[int, int] = {}
    for end, line in enumerate(lines):
        if len(line) > MAX_ATTRIBUTION_CHARS or not _may_end_attribution(line):
            continue
        if _is_quoted(line) and not _QUOTED_COLON_RE.fullmatch(line):
            continue
        start = _attribution_start(lines, end)
        if start is not None:
            spans[start] = end
    return spans


def _may_end_attribution(line: str) -> bool:
    """A colon ends the line, or an attribution verb does (some clients drop the colon); Zoho
    surrounds its attribution with dashes."""
    tail = line.rstrip(" \t-")
    if not tail:
        return False
    if tail[-1] in ":：" or tail.endswith(rm.WROTE_VERBS_CJK):
        return True
    words = tail.rsplit(None, 1)  # empty for lines of control characters str.split() calls space
    return bool(words) and words[-1].lower() in rm.WROTE_LAST_WORDS


def _attribution_start(lines: list[str], end: int) -> int | None:
    """Where the attribution that ends at `end` starts, or None when it is not one."""
    candidates: list[int] = []
    for start in range(end, max(-1, end - MAX_ATTRIBUTION_LINES), -1):
        line = lines[start].rstrip()
        if not line:
            break
        if start < end and (
            _is_quoted(line) or _may_end_attribution(line) or line.endswith((".", "!", "?"))
        ):
            break
        candidates.append(start)
    # A known opener ("On", "Le", "Am"...) marks the first line of a wrapped attribution best;
    # without one, the shortest window whose first line cannot be a continuation wins.
    for start in candidates:
        if rm.OPENER_RE.match(lines[start]) and _looks_like_attribution(
            _join(lines, start, end), has_opener=True
        ):
            return start
    for start in candidates:
        if not rm.CONTINUATION_RE.match(lines[start]) and _looks_like_attribution(
            _join(lines, start, end), has_opener=False
        ):
            return start
    return None


def _join(lines: list[str], start: int, end: int) -> str:
    return " ".join(line.strip() for line in lines[start : end + 1])


def _looks_like_attribution(window: str, *, has_opener: bool) -> bool:
    text = window.strip().strip("-").strip()
    if not text or len(text) > MAX_ATTRIBUTION_CHARS:
        return False
    has_email = rm.EMAIL_RE.search(text) is not None
    verbs = list(rm.WROTE_RE.finditer(text))
    verb = verbs[-1] if verbs else None
    if verb is not None and len(text) - verb.end() <= MAX_TEXT_AFTER_VERB:
        anchored = has_opener or text[0].isdigit() or has_email or _TIME_RE.search(text) is not None
        if anchored and ("@" in text or any(c.isdigit() for c in text)):
            return True
    # "30.09.2017, 18.30, "John" <john@example.com>:" — no verb, but a date, an address and a colon.
    return text.endswith((":", "：")) and has_email and rm.DATE_OR_TIME_RE.search(text) is not None


def _is_bare_attribution(lines: list[str], i: int) -> bool:
    """Old Gmail's "2011/4/7 Name <a@b.c>" above a quote: no verb, no colon, but a date and address."""
    line = lines[i]
    return (
        "@" in line
        and len(line) <= MAX_ATTRIBUTION_CHARS
        and _is_quoted_at(lines, _next_nonblank(lines, i + 1))
        and rm.EMAIL_RE.search(line) is not None
        and rm.DATE_OR_TIME_RE.search(line) is not None
    )


# --- separators, header blocks, signatures --------------------------------------------------


def _starts_old_text(lines: list[str], i: int) -> bool:
    """A separator, forward intro or Outlook header block (maybe after a rule line) starts here."""
    line = lines[i]
    first = line.lstrip()[:1]
    if first and first in _RULE_CHARS:
        if rm.SEPARATOR_RE.match(line):
            return True
        if rm.RULE_LINE_RE.match(line):
            following = _next_nonblank(lines, i + 1)
            return following < len(lines) and _header_block_at(lines, following)
    # Every header key and forward intro we know is followed by a colon, or ends the line.
    if ":" not in line and "：" not in line:
        return rm.FORWARD_INTRO_RE.match(line) is not None
    return rm.FORWARD_INTRO_RE.match(line) is not None or _header_block_at(lines, i)


def _header_block_at(lines: list[str], i: int) -> bool:
    """True when a "From: … Sent/To/Subject: …" block, in any known language, starts at line i."""
    if not rm.HEADER_KEY_RE.match(lines[i]):
        return False
    roles: set[str] = set()
    keys = 0
    gap = 0
    for line in lines[i : i + HEADER_BLOCK_SPAN]:
        if not line.strip():
            break
        match = rm.HEADER_KEY_RE.match(line)
        if match is None:
            # A long From value wraps onto the next line or two.
            gap += 1
            if gap > 2:
                break
            continue
        gap = 0
        keys += 1
        roles.add(rm.HEADER_KEY_ROLE.get(" ".join(match.group("key").lower().split()), ""))
    return keys >= 2 and "from" in roles and len(roles) >= 2


def _signature_at(lines: list[str], i: int, spans: dict[int, int]) -> str | None:
    """The signature starting at line i ("" when it is empty), or None when none starts there."""
    line = lines[i]
    bare = line.strip()
    if _is_tagline(bare):
        return bare
    if line == "-- ":
        limit: int | None = None  # RFC 3676's delimiter: trusted whatever follows
    elif bare == "--":
        limit = MAX_SIGNATURE_LINES_AFTER_BARE_DASHES
    elif bare[:1] in ("_", "\u2014", "\u2015") and (
        rm.DASH_RULE_RE.match(line) or rm.UNDERSCORE_RULE_RE.match(line)
    ):
        limit = MAX_SIGNATURE_LINES_AFTER_RULE
    else:
        return None
    block = _signature_block(lines, i + 1, spans)
    if limit is not None and sum(1 for b in block if b.strip()) > limit:
        return None
    return _tidy(block, trim_rules=False)


def _signature_block(lines: list[str], start: int, spans: dict[int, int]) -> list[str]:
    """Lines after a delimiter, up to the next quote, attribution or quote header."""
    block: list[str] = []
    for j in range(start, len(lines)):
        line = lines[j]
        if line.strip() and (_is_quoted(line) or j in spans or _starts_old_text(lines, j)):
            break
        block.append(line)
    return block


def _is_tagline(line: str) -> bool:
    """A stripped line like "Sent from my iPhone" or "Gesendet von Outlook für Android<url>";
    not a sentence that mentions sending."""
    if len(line) > MAX_TAGLINE_CHARS or rm.TAGLINE_RE.match(line) is None:
        return False
    text = rm.TRAILING_URL_RE.sub("", line).rstrip(" .")
    match = rm.TAGLINE_RE.match(text)
    if match is None or len(text) > MAX_TAGLINE_TEXT:
        return False
    rest = text[match.end() :]
    return not any(c in rest for c in ",;:!?") and len(rest.split()) <= MAX_TAGLINE_WORDS


# --- output ---------------------------------------------------------------------------------


def _tidy(lines: list[str], *, trim_rules: bool) -> str:
    """Right-strip lines, collapse blank runs and, after a cut, drop the rule lines above it."""
    out: list[str] = []
    for line in lines:
        line = line.rstrip()
        if line or (out and out[-1]):
            out.append(line)
    while out and (not out[-1] or (trim_rules and rm.RULE_LINE_RE.match(out[-1]))):
        out.pop()
    return "\n".join(out)
