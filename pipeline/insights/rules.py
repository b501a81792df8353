"""Rules-only insights: a message category from headers and keywords, a thread insight from those.

Deterministic and cheap: this is what runs when no LLM is configured, and what decides that bulk
mail never reaches one. Everything here is pattern matching on headers and on the new text of each
message (quotes and signatures already stripped); nothing is inferred beyond what is written.
"""

from __future__ import annotations

import re
from collections import Counter

from pipeline.contacts import canonical_email, is_role_address
from pipeline.records import InsightResult, ParsedMessage, ThreadMessageView

BOUNCE, NEWSLETTER, NOTIFICATION, RECEIPT, PERSONAL = "bounce", "newsletter", "notification", "receipt", "personal"
CATEGORIES = (BOUNCE, NEWSLETTER, NOTIFICATION, RECEIPT, PERSONAL)
TO_REPLY, AWAITING_REPLY, FYI, DONE = "to_reply", "awaiting_reply", "fyi", "done"
SOURCE = "rules"

SUMMARY_MAX_CHARS = 240
ACTION_ITEM_MAX_CHARS = 300
MAX_ACTION_ITEMS = 10
_RECEIPT_BODY_CHARS = 2_000  # receipts say what they are near the top; the rest is noise

# ---------------------------------------------------------------------------------------------
# Message category

_BOUNCE_LOCALS = re.compile(r"^(?:mailer-daemon|mailerdaemon|postmaster)(?:$|[-_.+])")
# Senders whose list mail is about an event (a PR, an alert) rather than an edition of a newsletter.
_NOTIFIER_LOCAL = re.compile(r"(?:^|[-_.+])(?:notifications?|notify|alerts?)(?:$|[-_.+])")
_LIST_PRECEDENCE = frozenset({"bulk", "list", "junk"})

_RECEIPT_RE = re.compile(
    r"\b(?:"
    # en
    r"receipts?|invoices?|order\s+confirm(?:ation|ed)|payment\s+(?:received|confirm(?:ation|ed))"
    r"|your\s+order|purchase\s+confirmation"
    # de
    r"|rechnung(?:en)?|quittung|zahlungsbest\w+|bestellbest\w+|ihre\s+bestellung"
    # fr
    r"|factures?|re[çc]u\s+de\s+paiement|votre\s+re[çc]u|votre\s+commande|confirmation\s+de\s+commande"
    # es
    r"|recibos?|facturas?|tu\s+pedido|su\s+pedido|confirmaci[óo]n\s+de\s+pedido"
    # it
    r"|ricevut[ae]|fattur[ae]|il\s+tuo\s+ordine|conferma\s+d['’]ordine"
    r")\b",
    re.IGNORECASE,
)
# A human replying about an invoice is a conversation, not a receipt.
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|tr|rv|sv|vs|r|i)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def classify_message(msg: ParsedMessage) -> str:
    """One of bounce, newsletter, notification, receipt, personal; header rules before keywords.

    Order: bounce (multipart/report, mailer-daemon/postmaster sender) > receipt (keywords in the
    subject, or near the top of the body of automated mail) > list mail (List-Id, List-Unsubscribe,
    Precedence bulk/list/junk: notification when the sender is a notifier or the message is
    Auto-Submitted, else newsletter) > Auto-Submitted or a role sender > personal. Mailing-list
    discussions land in "newsletter": the category set has nothing closer.
    """
    sender = canonical_email(msg.from_.email) if msg.from_ else None
    local = sender.rpartition("@")[0] if sender else ""
    if _is_bounce(msg, local):
        return BOUNCE
    listed = _has_list_headers(msg)
    auto = _token(msg.auto_submitted) not in ("", "no")
    automated = listed or auto or (sender is not None and is_role_address(sender))
    if _is_receipt(msg, automated):
        return RECEIPT
    if listed:
        return NOTIFICATION if auto or _NOTIFIER_LOCAL.search(local) else NEWSLETTER
    if automated:
        return NOTIFICATION
    return PERSONAL


def _is_bounce(msg: ParsedMessage, sender_local: str) -> bool:
    return _token(msg.content_type) == "multipart/report" or bool(_BOUNCE_LOCALS.match(sender_local))


def _has_list_headers(msg: ParsedMessage) -> bool:
    return bool(
        (msg.list_id or "").strip()
        or (msg.list_unsubscribe or "").strip()
        or _token(msg.precedence) in _LIST_PRECEDENCE
    )


def _is_receipt(msg: ParsedMessage, automated: bool) -> bool:
    subject_hit = bool(_RECEIPT_RE.search(msg.subject))
    if subject_hit and (automated or not _REPLY_PREFIX.match(msg.subject)):
        return True
    # Body keywords only count for machine-sent mail: people write "invoice" in conversation.
    body = (msg.stripped or msg.text)[:_RECEIPT_BODY_CHARS]
    return automated and bool(_RECEIPT_RE.search(body))


def _token(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().strip('"').lower()


# ---------------------------------------------------------------------------------------------
# Questions, requests, due dates

_REQUEST_RE = re.compile(
    r"\b(?:"
    r"can\s+you|could\s+you|would\s+you|will\s+you|please|pls|let\s+me\s+know|i\s+need\s+you\s+to"
    r"|pourrie[zs][-\s]vous|pourrais[-\s]tu|peux[-\s]tu|pouvez[-\s]vous|merci\s+de|s'il\s+(?:te|vous)\s+pla[iî]t"
    r"|k[öo]nnt?en\s+sie|k[öo]nntest\s+du|kannst\s+du|bitte"
    r"|puedes|podr[íi]as|podr[íi]a|pueden|por\s+favor"
    r")\b",
    re.IGNORECASE,
)
# Courtesy formulas that contain a request word but ask for nothing.
_NOT_A_REQUEST_RE = re.compile(
    r"\b(?:"
    r"please\s+(?:find|see\s+attached|note|ignore|disregard)|please\s+(?:don't|do\s+not)\s+hesitate"
    r"|merci\s+de\s+(?:votre|ton|ta|vos|tes)\b|bitte\s+sch[öo]n|bitte\s+sehr"
    r")",
    re.IGNORECASE,
)
_URL_RE = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)

_WEEKDAYS = (
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tue|wed|thu|fri"
    r"|lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche"
    r"|montag|dienstag|mittwoch|donnerstag|freitag|samstag|sonntag"
    r"|lunes|martes|mi[ée]rcoles|jueves|viernes|s[áa]bado|domingo"
)
_MONTHS = (
    r"january|february|march|april|may|june|july|august|september|october|november|december"
    r"|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
    r"|janvier|f[ée]vrier|mars|avril|mai|juin|juillet|ao[ûu]t|septembre|octobre|novembre|d[ée]cembre"
    r"|januar|februar|m[äa]rz|juni|juli|oktober|dezember"
    r"|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th|er|\.)?"
_WHEN = (
    r"(?:(?:next|this|le|el|am|nächsten)\s+)?(?:" + _WEEKDAYS + r")\b"
    r"|(?:" + _MONTHS + r")\.?\s+" + _DAY + r"\b"
    r"|" + _DAY + r"\s+(?:de\s+)?(?:" + _MONTHS + r")\b"
    r"|\d{4}-\d{2}-\d{2}\b|\d{1,2}/\d{1,2}(?:/\d{2,4})?\b|\d{1,2}\.\d{1,2}\.(?:\d{2,4}\b)?"
    r"|today|tonight|tomorrow|eod|eow|cob|end\s+of\s+(?:the\s+)?(?:day|week|month)|next\s+week"
    r"|demain|ce\s+soir|la\s+fin\s+de\s+(?:la\s+)?(?:journ[ée]e|semaine|mois)"
    r"|morgen|heute|ende\s+der\s+woche|ende\s+des\s+monats"
    r"|ma[ñn]ana|hoy|el\s+fin\s+de\s+semana|final\s+de\s+(?:la\s+)?semana"
)
_DUE_RE = re.compile(
    r"\b(?:by|before|until|no\s+later\s+than|due|avant|d'ici|pour|bis(?:\s+(?:zum|am))?|vor"
    r"|antes\s+del?|para\s+el|hasta\s+el|para)\s+(?:" + _WHEN + r")",
    re.IGNORECASE,
)


def asks_something(text: str) -> bool:
    """True when the text asks a question ("?" outside URLs) or contains a request phrase."""
    text = _URL_RE.sub(" ", text)
    return "?" in text or any(_is_request(s) for s in split_sentences(text))


def _is_request(sentence: str) -> bool:
    return bool(_REQUEST_RE.search(sentence)) and not _NOT_A_REQUEST_RE.search(sentence)


def due_phrase(sentence: str) -> str:
    """The first deadline phrase in the sentence ("by Friday", "before March 3"), else ""."""
    match = _DUE_RE.search(sentence)
    return " ".join(match.group(0).split()) if match else ""


# "3. März" is a German date, not a sentence end: after a digit, a month name keeps the sentence going.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])(?<!\d\.)\s+|(?<=\d\.)\s+(?!(?:" + _MONTHS + r")\b)|\n+", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Lines, then sentence ends: email text rarely has clean paragraphs."""
    return [s for s in (" ".join(part.split()) for part in _SENTENCE_END_RE.split(text)) if s]


# ---------------------------------------------------------------------------------------------
# Thread insight


def thread_insight(messages: list[ThreadMessageView]) -> InsightResult:
    """Category, needs-reply state, an extractive summary and action items for one thread.

    - category: personal when any message is personal (someone wrote to a person, or the account
      answered a bulk mail); otherwise the most common category, ties going to the latest.
    - needs_reply: "fyi" for non-personal threads and when the latest message is itself automated;
      latest from the account: "awaiting_reply" when it asks something, else "done"; latest from
      someone else: "to_reply" when it asks something, else "fyi". Whether the account was a direct
      recipient is not known here; the caller can downgrade "to_reply" for Cc-only mail.
    - summary: the subject (reply prefixes removed) and the first sentence of the latest message.
    - action_items: request sentences of the latest message not from the account (personal threads
      only), each {"what", "who": "me", "due"}.
    Messages are ordered by date; those without one keep their place before dated ones.
    """
    if not messages:
        raise ValueError("a thread has at least one message")
    ordered = _chronological(messages)
    category = _thread_category(ordered)
    latest = ordered[-1]
    return InsightResult(
        category=category,
        needs_reply=_needs_reply(category, latest),
        summary=_summary(ordered),
        action_items=_action_items(ordered) if category == PERSONAL else [],
        source=SOURCE,
    )


def _chronological(messages: list[ThreadMessageView]) -> list[ThreadMessageView]:
    # sorted() is stable, so equal and missing dates keep the caller's order.
    return sorted(messages, key=lambda m: (m.date is not None, m.date.timestamp() if m.date else 0.0))


def _thread_category(ordered: list[ThreadMessageView]) -> str:
    categories = [m.category for m in ordered]
    if PERSONAL in categories:
        return PERSONAL
    counts = Counter(categories)
    top = max(counts.values())
    # Ties: the category of the latest message among the tied ones.
    return next(c for c in reversed(categories) if counts[c] == top)


def _needs_reply(category: str, latest: ThreadMessageView) -> str:
    if category != PERSONAL or latest.category != PERSONAL:
        return FYI
    asks = asks_something(latest.stripped)
    if latest.from_me:
        return AWAITING_REPLY if asks else DONE
    return TO_REPLY if asks else FYI


_GREETING_RE = re.compile(
    r"^(?:hi|hello|hey|dear|good\s+(?:morning|afternoon|evening)|greetings|bonjour|bonsoir|salut|coucou"
    r"|hallo|moin|servus|guten\s+(?:tag|morgen|abend)|liebe[rs]?|sehr\s+geehrte[rs]?|hola|buenos\s+d[íi]as"
    r"|buenas(?:\s+tardes)?|estimad[oa]s?|querid[oa]s?|ciao|buongiorno|gentile|caro|cara)\b",
    re.IGNORECASE,
)


def _summary(ordered: list[ThreadMessageView]) -> str:
    subject = next((_clean_subject(m.subject) for m in reversed(ordered) if _clean_subject(m.subject)), "")
    first = _first_sentence(ordered[-1].stripped)
    text = f"{subject}: {first}" if subject and first else subject or first
    return _shorten(text, SUMMARY_MAX_CHARS)


def _clean_subject(subject: str) -> str:
    return " ".join(_REPLY_PREFIX.sub("", subject).split())


def _first_sentence(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    # Skip the salutation ("Hi Anna,") so the summary starts with what the message says.
    while lines and (not lines[0] or (len(lines[0]) <= 60 and _GREETING_RE.match(lines[0]))):
        lines.pop(0)
    sentences = split_sentences(" ".join(lines))
    return sentences[0] if sentences else ""


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def _action_items(ordered: list[ThreadMessageView]) -> list[dict[str, str]]:
    latest_other = next((m for m in reversed(ordered) if not m.from_me), None)
    if latest_other is None:
        return []
    items: list[dict[str, str]] = []
    for sentence in split_sentences(latest_other.stripped):
        if _is_request(sentence):
            what = _shorten(sentence, ACTION_ITEM_MAX_CHARS)
            items.append({"what": what, "who": "me", "due": due_phrase(sentence)})
        if len(items) == MAX_ACTION_ITEMS:
            break
    return items
