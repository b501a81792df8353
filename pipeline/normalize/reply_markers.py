"""The multilingual vocabulary of reply, forward and signature markers, compiled once.

`quotes.py` holds the algorithm; this module holds only words and patterns, so a new language is
a one-line change here. Every pattern is applied to a single line (or to a window of at most three
joined lines capped in length), and none nests unbounded repetition, so matching stays linear.
"""

from __future__ import annotations

import re

# Verbs of attribution lines ("... wrote:"), lower case, with the spellings seen without accents.
WROTE_VERBS = (
    "wrote", "writes", "a écrit", "a ecrit", "schrieb", "ha scritto", "escreveu", "escribió",
    "escribio", "schreef", "napisał", "napisała", "napisał(a)", "napisal", "napisala", "pisze",
    "kirjoitti", "skrev", "написал", "написала", "написал(а)", "пишет", "írta", "irta", "napsal",
    "napsala", "napsal(a)", "yazdı", "yazdi",
)
# CJK forms: no word boundary before them.
WROTE_VERBS_CJK = ("写道", "寫道", "작성", "のメッセージ")
_WROTE_WORDS = "|".join(
    re.escape(verb).replace(r"\ ", r"\s+") for verb in sorted(WROTE_VERBS, key=len, reverse=True)
)
WROTE_RE = re.compile(
    rf"(?<!\w)(?:{_WROTE_WORDS})(?!\w)|(?:{'|'.join(WROTE_VERBS_CJK)})", re.IGNORECASE
)
# The last word of each verb: what a line ending in a verb (no colon) ends with.
WROTE_LAST_WORDS = frozenset(verb.split()[-1] for verb in WROTE_VERBS)

# How attributions start in the languages we know; used to choose the first line of a wrapped one.
OPENER_RE = re.compile(
    r"^\s*(?:-+\s*)?(?:On|Le|Am|Il|In\s+data|Em|El|Op|W\s+dniu|Dnia|Den|På|Dne|Στις|В)\s", re.UNICODE
)

# A line that can only be the continuation of a wrapped attribution, never its first line.
CONTINUATION_RE = re.compile(rf"^\s*(?:[<>(\[]|[^\s@]+@[^\s@]+|(?:{_WROTE_WORDS})(?!\w))", re.IGNORECASE)

EMAIL_RE = re.compile(r"[^\s@<>()\"']+@[^\s@<>()\"']+\.[^\s@<>()\"']+")
DATE_OR_TIME_RE = re.compile(r"\d{1,2}[:.h]\d{2}|(?<!\d)(?:19|20)\d{2}(?!\d)")

# "-----Original Message-----", "---------- Forwarded message ---------" and their translations.
_SEPARATOR_PHRASES = (
    r"original\s+message|message\s+d['’]origine|message\s+original|ursprüngliche\s+nachricht|"
    r"originalnachricht|oprindelig\s+(?:besked|meddelelse)|opprinnelig\s+melding|"
    r"ursprungligt\s+meddelande|originalmeddelande|messaggio\s+originale|mensaje\s+original|"
    r"mensagem\s+original|oorspronkelijk\s+bericht|origineel\s+bericht|alkuperäinen\s+viesti|"
    r"wiadomość\s+oryginalna|oryginalna\s+wiadomość|исходное\s+сообщение|původní\s+zpráva|"
    r"eredeti\s+üzenet|forwarded\s+message|message\s+transféré|weitergeleitete\s+nachricht|"
    r"messaggio\s+inoltrato|mensaje\s+reenviado|mensagem\s+encaminhada|doorgestuurd\s+bericht|"
    r"videresendt\s+(?:melding|meddelelse|besked)|vidarebefordrat\s+meddelande|välitetty\s+viesti|"
    r"przekazana\s+wiadomość|wiadomość\s+przekazana|пересланное\s+сообщение|reply\s+message"
)
SEPARATOR_RE = re.compile(
    rf"^\s*[-_=*~]{{2,}}\s*(?:{_SEPARATOR_PHRASES})\s*[-_=*~]*\s*$", re.IGNORECASE
)
FORWARD_INTRO_RE = re.compile(
    r"^\s*(?:begin\s+forwarded\s+message|début\s+du\s+message\s+(?:réexpédié|transféré)|"
    r"anfang\s+der\s+weitergeleiteten\s+(?:nachricht|e-mail)|inizio\s+messaggio\s+inoltrato|"
    r"início\s+da\s+mensagem\s+(?:reencaminhada|encaminhada)|comienzo\s+del\s+mensaje\s+reenviado|"
    r"begin\s+doorgestuurd\s+bericht|начало\s+переадресованного\s+сообщения)\s*[:：]?\s*$",
    re.IGNORECASE,
)

# Outlook-style header blocks ("From: … Sent: … To: … Subject: …"), by role, in many languages.
_FROM_KEYS = (
    "from", "de", "von", "van", "da", "fra", "från", "od", "от", "lähettäjä", "feladó", "frá",
    "mittente", "remitente", "absender", "expéditeur", "kimden", "发件人", "寄件者", "差出人",
    "보낸 사람",
)
_TO_KEYS = (
    "to", "à", "a", "an", "aan", "til", "till", "para", "do", "кому", "vastaanottaja", "címzett",
    "destinatario", "kime", "cc", "copie à", "kopie", "kopi", "收件人", "宛先", "받는 사람",
)
_DATE_KEYS = (
    "sent", "date", "envoyé", "envoyé le", "gesendet", "datum", "verzonden", "inviato", "data",
    "sendt", "dato", "skickat", "enviado", "enviada", "fecha", "wysłane", "отправлено", "дата",
    "lähetetty", "päivämäärä", "elküldve", "dátum", "tarih", "message du", "发送时间", "日期",
    "送信日時", "보낸 날짜",
)
_SUBJECT_KEYS = (
    "subject", "objet", "sujet", "betreff", "onderwerp", "oggetto", "emne", "ämne", "asunto",
    "assunto", "temat", "тема", "aihe", "tárgy", "konu", "主题", "主旨", "件名", "제목",
)

HEADER_KEY_ROLE: dict[str, str] = {}
_KEYS_BY_ROLE = {"from": _FROM_KEYS, "to": _TO_KEYS, "date": _DATE_KEYS, "subject": _SUBJECT_KEYS}
for _role, _keys in _KEYS_BY_ROLE.items():
    for _key in _keys:
        HEADER_KEY_ROLE[_key] = _role

# Longest keys first so "envoyé le" wins over "envoyé"; "*From:*" is Outlook's HTML bold made text.
_KEY_ALTERNATION = "|".join(
    re.escape(key).replace(r"\ ", r"\s+") for key in sorted(HEADER_KEY_ROLE, key=len, reverse=True)
)
HEADER_KEY_RE = re.compile(rf"^\s*\*{{0,2}}\s*(?P<key>{_KEY_ALTERNATION})\s*\*{{0,2}}\s*[:：]", re.IGNORECASE)

# Taglines mobile and web clients append ("Sent from my iPhone", "Get Outlook for iOS<url>").
_TAGLINE_WORDS = (
    r"(?:sent\s+from|sent\s+with|sent\s+via|get\s+outlook\s+for|envoyé\s+de|envoyé\s+depuis|"
    r"envoyé\s+à\s+partir\s+de|envoyé\s+avec|télécharger\s+outlook\s+pour|gesendet\s+von|"
    r"gesendet\s+mit|von\s+meinem|enviado\s+desde|enviado\s+de|enviado\s+do|enviado\s+com|"
    r"inviato\s+da|verzonden\s+met|verzonden\s+vanaf|verstuurd\s+vanaf|sendt\s+fra|skickat\s+från|"
    r"lähetetty|wysłane\s+z|отправлено\s+с)(?!\w)"
)
TAGLINE_RE = re.compile(rf"^{_TAGLINE_WORDS}", re.IGNORECASE)
TRAILING_URL_RE = re.compile(r"\s*<[^<>\s]*>\s*$")

# Lines that delimit a signature or footer: "-- ", "--", em-dash rules, mailing-list underscores.
DASH_RULE_RE = re.compile(r"^\s*[\u2014\u2015]+\s*$")
UNDERSCORE_RULE_RE = re.compile(r"^\s*_{2,}\s*$")
# Any line made only of rule characters; trimmed from the end of a reply when a quote follows it.
RULE_LINE_RE = re.compile(r"^\s*[-_=*~\u2014\u2015\u2013]{2,}\s*$")
FENCE_RE = re.compile(r"^\s*(?:```|~~~)")

# How a line that may be something other than new text starts: quoted, fenced, a rule or delimiter,
# a tagline or a forward intro. Built from the patterns above so it cannot miss what they match.
# With a check for ":" and "@" (header keys, addresses) it lets other lines skip detailed checks.
MAYBE_MARKER_START_RE = re.compile(
    rf"\s*(?:[>`~_=*\u2014\u2015\u2013-]|{_TAGLINE_WORDS})|{FORWARD_INTRO_RE.pattern}", re.IGNORECASE
)
