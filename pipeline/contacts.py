"""Contacts: canonical addresses, role/bulk filters, per-message participants, company and rank.

Pure functions over `ParsedMessage`; storage aggregates the `Participant`s they return.

Counting rule (one rule for counts and rank, see `traffic_of`):
- a message *from* one of the account's own addresses is "sent" to every other To/Cc/Reply-To
  address on it: each of them gets sent_count + 1;
- any other message is "received": its sender (role "from") gets received_count + 1. Reply-To
  addresses and the people cc'd alongside the account are participants too (direction
  "received", role reply_to/to/cc): they are *seen* (names, first/last seen, threads) but did not
  write to the account, so they add nothing to the counts or the rank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.header import decode_header, make_header
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from pipeline.records import Address, ParsedMessage, Participant

SENT, RECEIVED = "sent", "received"

# ---------------------------------------------------------------------------------------------
# Canonical addresses

_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
# Loose on purpose: we only need to tell addresses from junk such as "undisclosed-recipients".
# Unicode letters are allowed (EAI/IDN); whitespace, brackets and separators are not.
_LOCAL_RE = re.compile(r"[^\s@<>()\[\],;:\"\\]+")
_DOMAIN_LABEL_RE = re.compile(r"(?!-)[^\s@<>()\[\],;:\"\\._]+(?<!-)")


def canonical_email(addr: str) -> str | None:
    """The address as stored for a contact, or None when `addr` is not a usable address.

    Lower-cased (mail systems treat the local part case-insensitively in practice); for gmail.com
    and googlemail.com only, dots and a `+tag` are dropped from the local part and googlemail.com
    becomes gmail.com, because Gmail delivers all of those spellings to one mailbox.
    """
    candidate = addr.strip().strip("<>").strip().lower()
    if candidate.startswith("mailto:"):
        candidate = candidate[len("mailto:") :]
    local, at, domain = candidate.rpartition("@")
    if not at or not _valid_local(local) or not _valid_domain(domain.rstrip(".")):
        return None
    domain = domain.rstrip(".")
    if domain in _GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        if not local:
            return None
        domain = "gmail.com"
    return f"{local}@{domain}"


def _valid_local(local: str) -> bool:
    return bool(_LOCAL_RE.fullmatch(local)) and not local.startswith(".") and not local.endswith(".")


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    # A dotless domain ("localhost", "example") is never a contact's real address.
    return len(labels) >= 2 and all(_DOMAIN_LABEL_RE.fullmatch(label) for label in labels)


# ---------------------------------------------------------------------------------------------
# Role addresses

_NOREPLY = r"(?:no|do[-_.]?not|dont|do[-_.]?no)[-_.]?reply"
_ROLE_LOCALS = frozenset(
    {
        "mailer-daemon",
        "mailerdaemon",
        "mailer_daemon",
        "postmaster",
        "notifications",
        "notification",
        "notify",
        "alerts",
        "alert",
        "bounce",
        "bounces",
        "daemon",
        "autoreply",
        "auto-reply",
        "auto-confirm",
        "autoconfirm",
        "listserv",
        "majordomo",
        "mailman",
    }
)
_ROLE_PATTERNS = (
    # noreply alone or as one dash/dot/underscore/plus-separated part: noreply-billing@, x-noreply@
    re.compile(rf"(?:^|[-_.+]){_NOREPLY}(?:$|[-_.+])"),
    # bounce handlers: bounces+123@ (SendGrid), list-bounces@ (Mailman), bounce-abc@
    re.compile(r"^bounces?(?:[-_.+=]|$)|[-_.]bounces?$"),
    # envelope-rewrite (SRS, BATV) addresses are bounce paths, never people
    re.compile(r"^(?:srs[01]|prvs|msprvs\d*|btv1)="),
    re.compile(r"^mailer-daemon"),
)


def is_role_address(email: str) -> bool:
    """True for addresses that belong to machines rather than people (noreply, bounces, daemons)."""
    local = email.strip().lower().rpartition("@")[0]
    if not local:
        return False
    return local in _ROLE_LOCALS or any(p.search(local) for p in _ROLE_PATTERNS)


# ---------------------------------------------------------------------------------------------
# Bulk mail

_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})


def is_bulk(msg: ParsedMessage) -> bool:
    """True for mailing-list, bulk, auto-generated and bounce messages (RFC 2369, 3834, 6522)."""
    return bool(
        (msg.list_id and msg.list_id.strip())
        or (msg.list_unsubscribe and msg.list_unsubscribe.strip())
        or _header_token(msg.precedence) in _BULK_PRECEDENCE
        or _header_token(msg.auto_submitted) not in ("", "no")
        or _header_token(msg.content_type) == "multipart/report"
    )


def _header_token(value: str | None) -> str:
    """The first token of a structured header ("auto-replied; foo=bar" -> "auto-replied")."""
    if not value:
        return ""
    return value.split(";", 1)[0].strip().strip('"').lower()


# ---------------------------------------------------------------------------------------------
# Participants

# Strongest first: a contact that appears in several headers of one message keeps the first role.
_ROLE_ORDER = ("from", "reply_to", "to", "cc")


def extract_participants(msg: ParsedMessage, own_addresses: frozenset[str]) -> list[Participant]:
    """One Participant per contact address on `msg` (From/To/Cc/Reply-To), strongest role kept.

    Own addresses, role addresses and unparseable ones are dropped. Bulk mail and mail whose sender
    is a role address (automated) yield no participants at all. `own_addresses` may be given in
    any spelling: they are compared in canonical form. See the module docstring for the direction
    and counting rule.
    """
    if is_bulk(msg):
        return []
    own = _canonical_set(own_addresses)
    sender = canonical_email(msg.from_.email) if msg.from_ else None
    if sender is not None and sender not in own and is_role_address(sender):
        return []
    direction = SENT if sender is not None and sender in own else RECEIVED
    seen: dict[str, Participant] = {}
    for role, address in _addresses_by_role(msg):
        email = canonical_email(address.email)
        if email is None or email in own or is_role_address(email):
            continue
        name = clean_display_name(address.name, address.email)
        known = seen.get(email)
        if known is None:
            seen[email] = Participant(email=email, name=name, role=role, direction=direction)
        elif not known.name and name:
            # The weaker header had the only display name: keep the role, take the name.
            seen[email] = Participant(email=email, name=name, role=known.role, direction=direction)
    return list(seen.values())


def traffic_of(participant: Participant) -> str | None:
    """Which count (and rank increment) a participant adds to its contact: "sent", "received" or None.

    None for people who were only seen on a message the account received (Reply-To, co-recipients).
    """
    if participant.direction == SENT:
        return SENT
    if participant.direction == RECEIVED and participant.role == "from":
        return RECEIVED
    return None


def _addresses_by_role(msg: ParsedMessage) -> Iterable[tuple[str, Address]]:
    headers = {
        "from": [msg.from_] if msg.from_ else [],
        "reply_to": msg.reply_to,
        "to": msg.to,
        "cc": msg.cc,
    }
    for role in _ROLE_ORDER:
        for address in headers[role]:
            yield role, address


def _canonical_set(addresses: Iterable[str]) -> frozenset[str]:
    return frozenset(c for c in (canonical_email(a) for a in addresses) if c is not None)


_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"


def clean_display_name(name: str, email: str) -> str:
    """The display name as shown to a user: decoded, unquoted, "" when absent or just the address."""
    text = _decode_words(name)
    text = " ".join(text.split()).strip(_QUOTES + " ").strip()
    if not text:
        return ""
    bare = text.strip("<>").strip().lower()
    if bare in (email.strip().lower(), canonical_email(email)):
        return ""
    return text


def _decode_words(name: str) -> str:
    # The parser decodes RFC 2047 words, but its compat32 fallback can hand them over raw.
    if "=?" not in name:
        return name
    try:
        return str(make_header(decode_header(name)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return name


# ---------------------------------------------------------------------------------------------
# Company


# Compared with the registrable domain's first label, so every country variant matches.
_FREE_MAIL_BRANDS = frozenset(
    {"yahoo", "ymail", "hotmail", "outlook", "live", "msn", "aol", "gmx", "yandex", "libero", "rediffmail"}
)
_FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "rocketmail.com",
        "windowslive.com",
        "aim.com",
        "proton.me",
        "protonmail.com",
        "protonmail.ch",
        "pm.me",
        "web.de",
        "t-online.de",
        "freenet.de",
        "ya.ru",
        "mail.ru",
        "bk.ru",
        "inbox.ru",
        "list.ru",
        "rambler.ru",
        "qq.com",
        "foxmail.com",
        "163.com",
        "126.com",
        "yeah.net",
        "sina.com",
        "sohu.com",
        "naver.com",
        "hanmail.net",
        "daum.net",
        "fastmail.com",
        "fastmail.fm",
        "hey.com",
        "tutanota.com",
        "tutanota.de",
        "tuta.io",
        "zohomail.com",
        "mail.com",
        "email.com",
        "inbox.com",
        "orange.fr",
        "wanadoo.fr",
        "free.fr",
        "laposte.net",
        "sfr.fr",
        "seznam.cz",
        "wp.pl",
        "o2.pl",
        "interia.pl",
        "comcast.net",
        "verizon.net",
        "att.net",
        "sbcglobal.net",
        "btinternet.com",
        "virginmedia.com",
        "sky.com",
        "bigpond.com",
        "shaw.ca",
        "rogers.com",
        "hushmail.com",
    }
)


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # The bundled list; accept_unknown=False so "host.local" or "x.internal" give no company.
    return PublicSuffixList(accept_unknown=False)


def company_for(email: str) -> str | None:
    """The registrable domain of `email` ("mail.bbc.co.uk" -> "bbc.co.uk"), None for free mail."""
    domain = email.strip().lower().rpartition("@")[2].rstrip(".")
    if not domain:
        return None
    registrable = _psl().privatesuffix(domain)
    if registrable is None:
        return None
    if registrable in _FREE_MAIL_DOMAINS or registrable.split(".", 1)[0] in _FREE_MAIL_BRANDS:
        return None
    return str(registrable)


# ---------------------------------------------------------------------------------------------
# Rank
#
# rank(now) = sum over messages of w * 2^-((now - t) / half_life), doubled when traffic is two-way.
# Stored as its logarithm shifted to a fixed epoch instead: ln(w) + (t - epoch) / tau, with
# tau = half_life / ln 2. Then rank(now) = exp(score - (now - epoch) / tau): the factor that depends
# on `now` is the same for every contact, so the order of stored scores never changes as time
# passes, and a plain B-tree index on the stored score (plus ln 2 for two-way, see `rank_key`)
# serves "top contacts" without rewriting rows. Sums become logaddexp, which never overflows; the
# score grows by ~1.4 per half-life (~280 by the year 2200 at 180 days), far from float limits.

RANK_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_SECONDS_PER_DAY = 86_400.0
_DIRECTION_WEIGHT = {SENT: 2.0, RECEIVED: 1.0}  # writing to someone says more than being written to
_TWO_WAY_BONUS = math.log(2.0)
_MAX_EXP = 700.0  # math.exp overflows just above 709


def rank_log_increment(direction: str, when: datetime, half_life_days: float = 180.0) -> float:
    """The log-domain score of one message: ln(w) + (when - epoch) / tau (w = 2 sent, 1 received).

    Callers should clamp `when` to the ingestion time: a bogus future Date would otherwise rank a
    contact as if the message kept arriving. A naive `when` is taken as UTC.
    """
    try:
        weight = _DIRECTION_WEIGHT[direction]
    except KeyError:
        raise ValueError(f"direction must be 'sent' or 'received', not {direction!r}") from None
    return math.log(weight) + _epoch_age(when, half_life_days)


def combine_log(a: float | None, b: float) -> float:
    """ln(e^a + e^b) without overflow; `a` is None for a contact with no score yet."""
    if a is None or a == -math.inf:
        return b
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log1p(math.exp(low - high))


def rank_key(score_log: float | None, two_way: bool) -> float | None:
    """The time-invariant sort key to store and index: the log score, plus ln 2 when two-way."""
    if score_log is None:
        return None
    return score_log + (_TWO_WAY_BONUS if two_way else 0.0)


def rank_now(score_log: float | None, two_way: bool, now: datetime, half_life_days: float = 180.0) -> float:
    """The decayed, weighted message count as of `now` (x2 when both sent and received > 0)."""
    key = rank_key(score_log, two_way)
    if key is None:
        return 0.0
    exponent = key - _epoch_age(now, half_life_days)
    # Only a `now` centuries before the messages gets near the limit; saturate instead of raising.
    return math.exp(min(exponent, _MAX_EXP))


def _epoch_age(when: datetime, half_life_days: float) -> float:
    """(when - epoch) / tau, tau = half_life / ln 2."""
    if half_life_days <= 0:
        raise ValueError("half_life_days must be positive")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    days = (when - RANK_EPOCH).total_seconds() / _SECONDS_PER_DAY
    return days * math.log(2.0) / half_life_days
