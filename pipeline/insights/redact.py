"""Secrets out of email text before it leaves the machine: keys, tokens, JWTs, card numbers, private keys.

Pattern matching errs towards redacting: a 16-digit order number that passes the Luhn check is redacted
too (1 in 10 do), which costs the model a number it rarely needs. Each hit becomes `[REDACTED:<kind>]`,
so the model still sees that something was there.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipeline.settings import Settings

OPENAI_HOST = "api.openai.com"

# Order matters: whole blocks and structured tokens before the shorter key shapes they may contain.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # A block cut short by the text cap has no END line: redact to the end of the text then.
    ("private_key", re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
                               r"(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.DOTALL)),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")),
    ("bearer", re.compile(r"(?i)\b(?:bearer|token)\s+[A-Za-z0-9._~+/=-]{16,}")),
    ("openai_key", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
    ("stripe_key", re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}")),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("google_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("password", re.compile(r"(?i)\b(?:password|passwd|passcode|pwd)\s*[:=]\s*\S+")),
)
# 13-19 digits, optionally grouped by single spaces or dashes; kept only when the Luhn check passes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")


@dataclass(slots=True)
class Redacted:
    text: str
    counts: Counter[str] = field(default_factory=Counter)  # kind → hits

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def redact(text: str) -> Redacted:
    """`text` with every secret replaced by `[REDACTED:<kind>]`, and how many of each kind were found."""
    counts: Counter[str] = Counter()
    for kind, pattern in _PATTERNS:
        text, hits = pattern.subn(_marker(kind), text)
        if hits:
            counts[kind] += hits

    def card(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if not luhn_valid(digits):
            return match.group(0)
        counts["card_number"] += 1
        return _marker("card_number")

    return Redacted(_CARD.sub(card, text), counts)


def _marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def redaction_enabled(settings: Settings) -> bool:
    """ai_redact on/off as set; 'auto': on unless the endpoint is on this machine (loopback)."""
    if settings.ai_redact != "auto":
        return settings.ai_redact == "on"
    return not is_loopback_url(settings.ai_base_url or f"https://{OPENAI_HOST}/v1")


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url if "//" in url else "//" + url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
