"""Seeded generator of realistic Gmail mailboxes, written as Google Takeout mbox files.

The same seed and count always give the same bytes, so benchmarks and search-quality evaluations
can be rerun and compared. Messages are produced one at a time from a bounded working set (a few
open threads, a ring of recent messages for duplicates, a correspondent population capped at
5,000), so memory stays flat whatever the count: a million messages need no more than a thousand.

`iter_messages` yields each message with its Gmail ids, labels and ground-truth metadata (topic,
facets, sender, recipients, bulk or not, whether it asks the account a question), so the same
stream can feed a fake Gmail server or label queries. `generate_mbox` writes the stream as an
mboxrd file the way Takeout does: a `From <id>@xxx <date>` postmark, `X-GM-THRID` and
`X-Gmail-Labels` headers, body lines starting with `From ` (after any `>`) escaped with one more `>`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html
import itertools
import json
import random
import re
import sys
import textwrap
import time
import unicodedata
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

# ---------------------------------------------------------------------------------------------
# Tunables. Rates are per message unless said otherwise.

START = datetime(2022, 1, 1)  # naive UTC; dates fall in [START, START + SPAN_DAYS)
SPAN_DAYS = 3 * 365
MAX_OPEN_THREADS = 6  # threads interleave like a real mailbox, but only a few are open at once
DUPLICATE_RATE = 0.005
MISSING_ID_RATE = 0.0125  # on messages that may lack one; ~1% of all entries
RECENT_RING = 256  # duplicates copy one of these, so memory does not grow with the count
QUOTE_MAX_LINES = 60  # clients trim long quotes; keeps 12-message threads from growing quadratically
POPULATION_MIN, POPULATION_MAX = 30, 5000
_LENGTHS = tuple(range(1, 13))  # conversation lengths: most are short, a few run to 12
_LENGTH_CUM = tuple(itertools.accumulate((30, 22, 15, 10, 7, 5, 3.5, 2.5, 1.5, 1.5, 1, 1)))

# ---------------------------------------------------------------------------------------------
# Public records.


@dataclass(frozen=True, slots=True)
class Party:
    """One address in a header: as written, and the mailbox it belongs to (gmail dots/+tags folded)."""

    name: str
    email: str
    canonical: str


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """Ground truth about one generated message, for evaluations; none of it is read back from bytes."""

    index: int  # position in the stream (entry number in the mbox)
    message_id: str | None  # without angle brackets; None when the message has no Message-ID
    thread_index: int  # ordinal of the thread in the stream
    thread_position: int  # 0 for the thread's first message
    thread_length: int  # planned length; the last threads are cut short when the count runs out
    kind: str  # conversation | newsletter | notification | receipt | bounce
    topic: str
    facets: dict[str, str]  # the topic's key values (city, invoice number, ...) for labelled queries
    subject: str
    language: str
    direction: str  # "sent" (from the account) or "received"
    is_bulk: bool  # List-Id / List-Unsubscribe / Precedence: bulk
    is_role_sender: bool  # noreply@, notifications@, mailer-daemon@ ...
    sender: Party
    to: tuple[Party, ...]
    cc: tuple[Party, ...]
    date: datetime  # timezone-aware UTC
    in_reply_to: str | None
    references: tuple[str, ...]
    is_duplicate: bool
    is_forward: bool
    asks_question: bool  # asks the account something directly (a needs-reply heuristic should fire)
    has_attachment: bool
    structure: str  # text | alternative | html | report
    charset: str
    transfer_encoding: str
    new_text: str  # what the sender wrote, without quote and signature
    signature: str | None


@dataclass(frozen=True, slots=True)
class GeneratedMessage:
    raw: bytes  # RFC 5322 bytes, LF line endings, not mbox-escaped
    gmail_thread_id: str  # decimal, as in X-GM-THRID; hex(int(...)) is the API threadId
    labels: tuple[str, ...]  # as in X-Gmail-Labels
    meta: MessageMeta
    gmail_message_id: str  # hex, as the API's message id
    internal_date: datetime  # timezone-aware UTC, the API's internalDate

    @property
    def api_thread_id(self) -> str:
        return format(int(self.gmail_thread_id), "x")


@dataclass(frozen=True, slots=True)
class GenerationStats:
    messages: int
    distinct_message_ids: int
    without_message_id: int
    duplicates: int
    threads: int
    bytes: int


_API_LABELS = {
    "Inbox": "INBOX",
    "Sent": "SENT",
    "Unread": "UNREAD",
    "Important": "IMPORTANT",
    "Starred": "STARRED",
    "Spam": "SPAM",
    "Trash": "TRASH",
    "Category Personal": "CATEGORY_PERSONAL",
    "Category Updates": "CATEGORY_UPDATES",
    "Category Promotions": "CATEGORY_PROMOTIONS",
    "Category Social": "CATEGORY_SOCIAL",
    "Category Forums": "CATEGORY_FORUMS",
}


def api_label_ids(labels: Sequence[str]) -> tuple[str, ...]:
    """Takeout label names as Gmail API label ids (user labels become `Label_<name>`).

    "Opened" and "Archived" are Takeout's spelling of the absence of UNREAD and INBOX.
    """
    out: list[str] = []
    for label in labels:
        if label in ("Opened", "Archived"):
            continue
        out.append(_API_LABELS.get(label) or "Label_" + re.sub(r"[^A-Za-z0-9]+", "_", label))
    return tuple(out)


# fmt: off
# ---------------------------------------------------------------------------------------------
# Vocabulary: names, places, companies.

_LOCALES = ("en", "fr", "de", "es", "it", "pt", "pl", "ja", "ru")
_LOCALE_WEIGHTS = (50, 10, 10, 8, 6, 6, 4, 3, 3)
_LOCALE_CUM = tuple(itertools.accumulate(_LOCALE_WEIGHTS))
_LANG_OF = {"en": "en", "fr": "fr", "de": "de", "es": "es", "it": "it", "pt": "pt", "pl": "en", "ja": "en",
            "ru": "en"}
_FIRST = {
    "en": ["James", "Olivia", "Liam", "Emma", "Noah", "Ava", "Zoë", "Chloë", "Renée", "Michael", "Sarah",
           "David", "Emily", "Daniel", "Grace", "Ryan", "Hannah", "Priya", "Arjun", "Wei", "Mei", "Aisha",
           "Omar", "Siobhán", "Seán", "Niamh", "Kevin", "Laura", "Brian", "Megan"],
    "fr": ["Jean", "Marie", "François", "Hélène", "Léa", "Chloé", "Théo", "Amélie", "Céline", "Jérôme",
           "Gaëlle", "Benoît", "Camille", "Noémie", "Stéphane", "Élodie"],
    "de": ["Jürgen", "Björn", "Lena", "Jörg", "Anna", "Lukas", "Sören", "Käthe", "Maximilian", "Sophie",
           "Florian", "Katharina", "Uwe", "Matthias", "Grete"],
    "es": ["José", "María", "Begoña", "Íñigo", "Lucía", "Álvaro", "Sofía", "Javier", "Carmen", "Raúl",
           "Nuria", "Andrés", "Ramón"],
    "it": ["Giulia", "Nicolò", "Francesco", "Chiara", "Matteo", "Alessandra", "Lorenzo", "Federica",
           "Niccolò", "Elena"],
    "pt": ["João", "Conceição", "Inês", "Gonçalo", "Beatriz", "Tiago", "Mariana", "Luís", "Ana", "Rodrigo"],
    "pl": ["Łukasz", "Małgorzata", "Paweł", "Agnieszka", "Michał", "Zofia", "Wojciech", "Katarzyna"],
}
_LAST = {
    "en": ["Smith", "Johnson", "Brown", "Taylor", "Wilson", "Davies", "Evans", "O'Brien", "Murphy", "Patel",
           "Nguyen", "Chen", "Kim", "Walker", "Hughes", "Clarke", "Reid", "Campbell", "Foster", "Bennett",
           "Brooks", "Hayes", "Lopez", "Singh"],
    "fr": ["Dubois", "Lefèvre", "Martin", "Bernard", "Moreau", "Rousseau", "Girard", "Bonnet", "Faure",
           "Mercier", "Lemaître", "Chevalier", "Fournier"],
    "de": ["Müller", "Schröder", "Groß", "Weiß", "Schmidt", "Fischer", "Becker", "Hoffmann", "Schäfer",
           "Köhler", "Krüger", "Zimmermann", "Wagner"],
    "es": ["García", "Martínez", "Ibáñez", "Núñez", "Fernández", "López", "Sánchez", "Pérez", "Gómez", "Ruiz",
           "Muñoz", "Jiménez"],
    "it": ["Rossi", "Bianchi", "Romano", "Colombo", "Ricci", "Marino", "Greco", "Bruno", "Gallo", "Conti",
           "Esposito"] + ["De Luca"],
    "pt": ["Silva", "Santos", "Ferreira", "Pereira", "Oliveira", "Costa", "Rodrigues", "Martins", "Gonçalves",
           "Araújo"],
    "pl": ["Nowak", "Wiśniewski", "Kowalczyk", "Wójcik", "Kamiński", "Lewandowski", "Zieliński", "Dąbrowski"],
}
# Japanese and Russian names need a romanization for the address (and Russian surnames agree in gender).
_JA_FIRST = (("太郎", "Taro"), ("花子", "Hanako"), ("由紀", "Yuki"), ("健二", "Kenji"), ("愛子", "Aiko"),
             ("博", "Hiroshi"), ("さくら", "Sakura"))
_JA_LAST = (("田中", "Tanaka"), ("鈴木", "Suzuki"), ("佐藤", "Sato"), ("高橋", "Takahashi"),
            ("渡辺", "Watanabe"), ("山本", "Yamamoto"))
_RU_NAMES = (("Ольга", "Иванова", "Olga", "Ivanova"), ("Дмитрий", "Смирнов", "Dmitry", "Smirnov"),
             ("Анна", "Кузнецова", "Anna", "Kuznetsova"), ("Сергей", "Попов", "Sergey", "Popov"),
             ("Наталья", "Соколова", "Natalia", "Sokolova"), ("Алексей", "Волков", "Alexey", "Volkov"),
             ("Екатерина", "Морозова", "Ekaterina", "Morozova"), ("Игорь", "Лебедев", "Igor", "Lebedev"))
_ACCOUNT_NAMES = ("Alex Morgan", "Sam Rivera", "Jordan Lee", "Robin Keller", "Casey Novak", "Taylor Brooks")

_TZ = {  # (offset minutes, daylight-saving region)
    "en": ((-480, "us"), (-300, "us"), (0, "eu"), (0, "eu"), (-300, "us"), (600, None)),
    "fr": ((60, "eu"),), "de": ((60, "eu"),), "es": ((60, "eu"),), "it": ((60, "eu"),),
    "pt": ((0, "eu"), (0, "eu"), (-180, None)), "pl": ((60, "eu"),), "ja": ((540, None),),
    "ru": ((180, None),),
}
_FREEMAIL = {
    "en": ("gmail.com",) * 5 + ("googlemail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com",
                                "proton.me"),
    "fr": ("gmail.com",) * 3 + ("orange.fr", "free.fr", "laposte.net"),
    "de": ("gmail.com",) * 2 + ("gmx.de", "web.de", "t-online.de"),
    "es": ("gmail.com",) * 3 + ("hotmail.es", "yahoo.es"),
    "it": ("gmail.com",) * 3 + ("libero.it", "virgilio.it"),
    "pt": ("gmail.com",) * 3 + ("sapo.pt", "uol.com.br"),
    "pl": ("gmail.com", "wp.pl", "onet.pl"),
    "ja": ("gmail.com", "yahoo.co.jp", "docomo.ne.jp"),
    "ru": ("mail.ru", "yandex.ru", "gmail.com"),
}
_TLD = {"en": (".com", ".io", ".co.uk", ".com.au"), "fr": (".fr", ".com"), "de": (".de", ".com"),
        "es": (".es", ".com"), "it": (".it",), "pt": (".pt", ".com.br"), "pl": (".pl",),
        "ja": (".co.jp", ".jp"), "ru": (".ru",)}
_CO_PREFIX = ("Northwind", "Contoso", "Globex", "Initech", "Acme", "Helios", "Bluefin", "Cedar", "Lumina",
              "Vertex", "Nordlicht", "Soleil", "Mercurio", "Andes", "Sakura", "Baltic", "Kestrel", "Orchid",
              "Pioneer", "Tidewater", "Aurora", "Basalt", "Copperleaf", "Driftwood", "Evergreen", "Fjord",
              "Greystone", "Harbor", "Ironbark", "Jasper")
_CO_SUFFIX = ("Analytics", "Logistics", "Labs", "Consulting", "Systems", "Software", "Partners", "Health",
              "Energy", "Media", "Foods", "Robotics", "Capital", "Studio", "Networks", "Bio")
_TITLES = {
    "en": ("Product Manager", "Software Engineer", "CTO", "Head of Sales", "Recruiter", "Account Executive",
           "Engineering Manager", "Finance Director", "Office Manager", "Data Scientist", "Legal Counsel"),
    "fr": ("Directrice financière", "Chef de projet", "Ingénieur logiciel", "Responsable RH"),
    "de": ("Geschäftsführer", "Projektleiterin", "Softwareentwickler", "Leiterin Einkauf"),
    "es": ("Jefe de proyecto", "Directora comercial", "Ingeniero de software"),
    "it": ("Responsabile vendite", "Project manager", "Sviluppatore software"),
    "pt": ("Gerente de projetos", "Diretora financeira", "Engenheiro de software"),
}
_PHONE = {"en": "+1 415 555 {a:04d}", "fr": "+33 1 {a:02d} {b:02d} {c:02d} {d:02d}",
          "de": "+49 30 {a:04d}{b:03d}", "es": "+34 91 {a:03d} {b:02d} {c:02d}",
          "it": "+39 02 {a:04d} {b:04d}", "pt": "+351 21 {a:03d} {b:04d}",
          "pl": "+48 22 {a:03d} {b:02d} {c:02d}",
          "ja": "+81 3-{a:04d}-{b:04d}", "ru": "+7 495 {a:03d}-{b:02d}-{c:02d}"}

# ---------------------------------------------------------------------------------------------
# Vocabulary: what people write about. Every template may use any key of the slot dict (_slots).

_PROJECTS = ("Atlas", "Borealis", "Cobalt", "Dynamo", "Everest", "Falcon", "Granite", "Helix", "Iris",
             "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Onyx", "Polaris", "Quartz", "Redwood",
             "Sierra", "Tundra")
_CITIES = ("Lisbon", "Berlin", "Tokyo", "Madrid", "Paris", "Rome", "São Paulo", "Warsaw", "New York",
           "Toronto", "Amsterdam", "Dublin", "Singapore", "Zürich", "Kraków", "Osaka", "Barcelona", "Porto",
           "Munich", "Lyon", "Copenhagen", "Vienna", "Milan", "Seville", "Montréal")
_AIRLINES = (("TAP Air Portugal", "TP", "flytap.com"), ("Lufthansa", "LH", "lufthansa.com"),
             ("Air France", "AF", "airfrance.fr"), ("Iberia", "IB", "iberia.com"), ("KLM", "KL", "klm.com"),
             ("British Airways", "BA", "britishairways.com"), ("ITA Airways", "AZ", "ita-airways.com"),
             ("LOT Polish Airlines", "LO", "lot.com"), ("Japan Airlines", "JL", "jal.co.jp"))
_HOTELS = ("Hotel Avenida", "Park Plaza", "Hotel Central", "The Harbour Inn", "Hotel Bellevue",
           "Grand Hotel Europa", "Casa do Rio", "Hotel am Markt", "Hôtel des Arts")
_EVENTS = ("PyCon", "KubeCon", "Web Summit", "PGConf", "DevOpsDays", "FOSDEM", "Data Council", "RustConf",
           "JSConf", "Strange Loop")
_ROLES = ("Senior Backend Engineer", "Data Scientist", "Product Designer", "Engineering Manager",
          "QA Analyst", "DevOps Engineer", "Frontend Developer", "Technical Writer")
_SERVICES = ("payments-api", "auth-service", "search-indexer", "checkout", "billing-worker", "notifications",
             "mobile app", "reporting pipeline", "image-resizer", "user-profile service")
_ERRORS = ("TimeoutError: connection pool exhausted", "NullPointerException in OrderService",
           "KeyError: 'customer_id'", "HTTP 502 Bad Gateway", "OOMKilled", "ERROR: deadlock detected",
           "SSL handshake failed", "ConnectionResetError")
_DBS = ("orders", "billing", "analytics", "customers", "inventory", "events")
_PG = ((11, 15), (12, 16), (13, 16), (14, 17), (10, 14))
_ROOMS = ("Room 4B", "the Lisbon room", "the boardroom", "meeting room Everest", "Room 2.14")
_FEATURES = ("dark mode", "SSO login", "offline sync", "the new dashboard", "team billing", "semantic search",
             "bulk export", "mobile checkout")
_DOCS = ("the NDA", "the MSA", "the SOW for phase 2", "the data processing agreement",
         "the renewal order form")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


@dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    weight: int
    personal: bool  # more likely with free-mail contacts
    facets: tuple[str, ...]
    label: str | None  # user label some threads get
    subjects: tuple[str, ...]
    openers: tuple[str, ...]
    details: tuple[str, ...]
    questions: tuple[str, ...]
    replies: tuple[str, ...]
    local_subjects: dict[str, tuple[str, ...]] = field(default_factory=dict)


# One topic per "@" line (weight, personal, facets, user label), then one template per line:
# S subject, S.<lang> localized subject, O opener, D detail, Q question to the reader, R reply.
_TOPIC_TEXT = """
@ project weight=10 personal=no facets=proj label=Work/Projects
S Project {proj}: status update
S {proj} milestone review on {weekday}
S {proj} roadmap for {quarter}
S Re-scoping {proj} phase 2
S {proj} — blockers and next steps
S Kickoff: {proj} x {vendor}
O Quick update on {proj}: we are about {pct}% through the current milestone.
O I've put together the {quarter} roadmap for {proj} and would like your eyes on it before {weekday}.
O The {proj} team hit a snag with the {service} integration this week.
O Following up on our {proj} kickoff with {vendor}.
D The design review is booked for {weekday} at {time}.
D We still need sign-off on the scope document before engineering can start.
D {vendor} confirmed they can deliver the API changes by the end of {month}.
D Two people are out next week, so the demo may slip by a few days.
D I moved the open items into the tracker under the {proj} board.
D From what I can see, the critical path is the {service} work.
D Budget-wise we are still within the {amount} we agreed for this phase.
D The stakeholders want a short written summary rather than another meeting.
Q Can you confirm the {proj} scope by {weekday}?
Q Would you be able to present the {proj} status at the all-hands?
Q Do you think we should push the {proj} launch to {month_next}?
R Thanks for the update on {proj}, this looks good.
R Agreed, let's keep the milestone as planned.
R I reviewed the roadmap and left comments in the doc.
R Makes sense. I'll sync with {vendor} tomorrow.
R Sounds good, I'll update the {proj} board accordingly.

@ invoice weight=8 personal=no facets=inv,month,vendor,amount label=Finance/Invoices
S Invoice {inv} for {month}
S {vendor} invoice {inv}: payment due {weekday}
S Overdue: invoice {inv}
S Question about invoice {inv}
S {month} invoice from {vendor}
S Updated invoice with PO {po}
O Please find attached invoice {inv} for {month} services, total {amount}.
O Our records show invoice {inv} ({amount}) is still unpaid.
O I'm sending over the {month} invoice from {vendor}.
O Attached is the corrected invoice; it now references purchase order {po}.
D Payment terms are net 30 from the invoice date.
D The amount covers {hours} hours of consulting plus expenses.
D Bank details are unchanged from the previous invoice.
D VAT is included at the standard rate.
D From our side the PO number {po} needs to appear on every invoice.
D We will pay the {month} invoice in the next payment run on {weekday}.
D Accounts payable asked for a PDF copy rather than a link.
Q Could you confirm when invoice {inv} will be paid?
Q Can you send me a copy of the {month} invoice with the PO number on it?
Q Is the {amount} total correct, or should the travel expenses be removed?
R Thanks, I've forwarded invoice {inv} to accounts payable.
R Payment for {inv} was scheduled today.
R Received, thank you. We'll process it this week.
R Apologies for the delay, the invoice was stuck in approval.
R The {month} invoice is approved on my side.
S.fr Facture {inv}
S.fr Facture {vendor} – {inv}
S.de Rechnung {inv}
S.de Ihre Rechnung {inv}
S.es Factura {inv}
S.it Fattura {inv}
S.pt Fatura {inv}

@ travel weight=8 personal=no facets=city,airline,month label=Travel
S Flight to {city} on {day} {month}
S Trip to {city}: itinerary
S Hotel booking in {city}
S {city} trip, travel arrangements
S Your {airline} flight {flight} to {city}
S Travel plans for {event} in {city}
O I booked the flight to {city} on {airline}, departing {weekday} {day} {month}.
O Here is the itinerary for the {city} trip next month.
O We need to sort out the hotel in {city} for {event}.
O The {airline} flight {flight} to {city} has been rescheduled by two hours.
D The hotel is the {hotel}, about ten minutes from the venue.
D Check-in opens 24 hours before departure.
D There is a short layover in {city2} on the way back.
D I added the booking reference to the shared travel sheet.
D Expenses can go on the company card; keep the receipts.
D From the airport the easiest option is the metro, it takes about 30 minutes.
D The return flight lands late on {weekday} evening.
Q Could you book the same flight to {city} so we travel together?
Q Do you want me to reserve a table for dinner in {city}?
Q Can you confirm your passport details for the {airline} booking?
R Great, thanks for booking the {city} flight!
R I'm on the same flight, see you at the gate.
R The {hotel} works for me.
R I'll arrive a day early and meet you in {city}.
R Thanks, itinerary received.
S.fr Vol pour {city}
S.fr Voyage à {city}
S.de Flug nach {city}
S.de Reise nach {city}
S.es Vuelo a {city}
S.es Viaje a {city}
S.it Volo per {city}
S.pt Voo para {city}

@ hiring weight=6 personal=no facets=role,cand label=Hiring
S Candidate: {cand} for {role}
S Interview loop for {role}
S Offer for {cand}
S Feedback needed: {cand}
S {role} opening: referrals?
S Scheduling interviews with {cand}
O {cand} has applied for the {role} position and the resume looks strong.
O We are setting up the interview loop for {cand} ({role}).
O The hiring committee recommends an offer for {cand}.
O We have a new {role} opening and are looking for referrals.
D The technical interview is on {weekday} at {time}.
D Please submit your scorecard within 24 hours of the interview.
D {cand} has eight years of experience, most recently at {vendor}.
D The salary band for {role} was approved last quarter.
D Recruiting will handle the reference checks.
D From the phone screen, communication skills were excellent.
D We'd like to close the role before the end of {month}.
Q Could you interview {cand} on {weekday} at {time}?
Q Can you share your feedback on {cand} by tomorrow?
Q Would you be willing to be the hiring manager for the {role} role?
R I can take the system design interview for {cand}.
R Strong hire from me.
R Feedback submitted in the tracker.
R I'm free on {weekday} afternoon for the interview.
R Happy to refer a couple of people for the {role} role.

@ meeting weight=9 personal=no facets=weekday,room label=-
S Meeting on {weekday} at {time}
S Agenda for the weekly sync
S Reschedule our 1:1?
S Notes from today's meeting
S Planning session in {room}
S Can we meet next week?
O Can we move our meeting to {weekday} at {time}?
O Here is the agenda for the weekly sync.
O Thanks everyone for joining today; notes are below.
O I'd like to set up a planning session next week in {room}.
D First item is the {proj} timeline, then hiring, then open questions.
D I booked {room} for an hour.
D The video link is in the calendar invite.
D Action items: finalize the budget, confirm the vendor, update the roadmap.
D Please add topics to the agenda doc before {weekday}.
D We ran out of time on the last point, so it moves to next week.
D From now on the sync will be every other {weekday}.
Q Does {weekday} at {time} work for you?
Q Could you take notes at the next meeting?
Q Can you send the slides before the meeting?
R {weekday} at {time} works for me.
R Thanks for the notes.
R I'll add my topics to the agenda.
R Can't make it, but I'll watch the recording.
R Accepted the invite.
S.fr Réunion de suivi
S.fr Point hebdomadaire
S.de Besprechung nächste Woche
S.de Termin
S.es Reunión de seguimiento
S.it Riunione settimanale
S.pt Reunião de acompanhamento

@ bug weight=8 personal=no facets=service,bug,err label=Work/Bugs
S Bug {bug}: {service} returns 500
S Regression in {service} after last deploy
S {err} in production
S Hotfix for {bug}
S Crash report: {service}
S Flaky test in {service}
O We're seeing {err} in {service} since this morning's deploy.
O Bug {bug} is back: {service} returns HTTP 500 for about {pct}% of requests.
O I opened {bug} for the crash in {service}.
O The hotfix for {bug} is ready for review.
D The stack trace points at the connection pool.
D It only reproduces under load, so it's probably a race condition.
D Rolling back to the previous release made the errors disappear.
D I added a regression test and a feature flag around the new code path.
D Logs are in the incident channel.
D From the logs it looks like a timeout talking to the {db} database.
D Customers on the {customer} account reported it first.
Q Can you review the fix for {bug} today?
Q Could you check whether {service} is still throwing {err}?
Q Do we need a postmortem for this incident?
R Fix looks good, approved.
R Confirmed, the errors stopped after the rollback.
R I can reproduce {bug} locally.
R Deployed the hotfix to production.
R I'll write up the postmortem.

@ migration weight=6 personal=no facets=db,pg_to label=Work/Infra
S Database migration: {db} to PostgreSQL {pg_to}
S Migration window for {db} on {weekday}
S Schema migration plan
S Postgres {pg_from} to {pg_to} upgrade
S Rollback plan for the {db} migration
S Replication lag during migration
O We plan to migrate the {db} database from PostgreSQL {pg_from} to {pg_to} on {weekday}.
O The schema migration for {db} is ready for review.
O Heads-up: the database migration window is {weekday} {day} {month} from 22:00 to 02:00.
O The {db} migration dry run finished in {hours} hours.
D We will take a snapshot before starting so we can roll back.
D The backfill of the new column runs in batches of 10,000 rows.
D Replication lag peaked at 40 seconds during the dry run.
D Writes to {db} will be paused for about 15 minutes.
D The migration scripts are in the infra repository.
D From the dry run, the longest step is rebuilding the indexes.
D We'll use logical replication to keep downtime short.
Q Can you be on call during the {db} migration window?
Q Could you sign off on the database migration plan by {weekday}?
Q Do we have a tested rollback for the schema change?
R I'll be on call for the migration.
R Plan looks solid, approved.
R The rollback was tested on staging yesterday.
R Migration completed, all checks green.
R Let's postpone by a week to avoid month-end.
S.fr Migration de la base {db}
S.de Datenbankmigration {db}
S.es Migración de la base de datos {db}

@ budget weight=5 personal=no facets=quarter,amount label=Finance
S {quarter} budget review
S Budget request: {amount}
S Forecast for {quarter} {year}
S Headcount and spend
S Cloud costs over budget
S Approval needed: {amount} spend
O Attached is the {quarter} budget review for the team.
O I'm requesting {amount} for additional tooling this quarter.
O Cloud costs came in {pct}% over forecast last month.
O Finance asked for an updated forecast for {quarter} {year}.
D Most of the increase comes from storage and data transfer.
D We can offset part of it by cancelling unused licences.
D The headcount plan assumes two hires in {month_next}.
D The forecast is in the shared finance folder.
D Travel spend is already at 80% of the annual budget.
D From next quarter, cost centres will be charged monthly.
D We need approval before the end of {month}.
Q Can you approve the {amount} request?
Q Could you review the {quarter} forecast before Friday?
Q Do you know which cost centre this should go to?
R Approved.
R Let's discuss the cloud costs in our next 1:1.
R I've updated the forecast with your numbers.
R Finance confirmed the cost centre.
R We should cut the travel budget instead.

@ contract weight=4 personal=no facets=vendor,doc label=Legal
S NDA with {vendor}
S Contract renewal: {vendor}
S Legal review of the MSA
S Signature needed: {doc}
S Redlines on the {vendor} agreement
S Termination clause question
O {vendor} sent over their NDA; can legal take a look?
O The {vendor} contract is up for renewal at the end of {month}.
O Attached are our redlines on the master services agreement.
O Please sign {doc} via the e-signature link.
D The liability cap is still the main open point.
D They accepted our changes to the payment terms.
D Auto-renewal is for another 12 months unless cancelled with 60 days' notice.
D The data processing addendum needs to be attached.
D Legal expects to finish the review by {weekday}.
D From a procurement point of view the price increase is {pct}%.
D Governing law is the main remaining question.
Q Could you sign {doc} by {weekday}?
Q Can you check if the {vendor} NDA covers the pilot?
Q Do we want to renegotiate before renewal?
R Signed and returned.
R Legal is fine with the redlines.
R I'll push back on the liability cap.
R Let's renew for one year only.
R Forwarded to procurement.

@ launch weight=4 personal=no facets=feature label=Work/Marketing
S Launch plan for {feature}
S Press release draft
S Webinar on {day} {month}
S Landing page copy for {feature}
S Campaign results
S Go/no-go for the {feature} launch
O Here is the launch plan for {feature}, targeting {weekday} {day} {month}.
O The press release draft is ready for review.
O Campaign results are in: sign-ups are up {pct}% week over week.
O We need final copy for the {feature} landing page.
D The blog post goes out at 9:00 and the newsletter an hour later.
D Sales needs a one-pager before the launch.
D The webinar has 340 registrations so far.
D Legal still has to approve the pricing wording.
D Support has updated the help centre articles.
D From the beta, the most requested improvement is better onboarding.
D Social posts are scheduled for the whole week.
Q Can you give the final go/no-go for {feature} by {weekday}?
Q Could you review the press release before it goes to the agency?
Q Would you be willing to speak at the launch webinar?
R Go from my side.
R Left a few comments on the press release.
R Happy to join the webinar.
R Copy looks great.
R Let's delay by a week so support is ready.

@ support weight=5 personal=no facets=ticket,customer label=Support
S Ticket {ticket}: customer cannot log in
S Escalation: {customer}
S Refund request from {customer}
S SLA breach on ticket {ticket}
S Customer feedback about {feature}
S Follow-up on {ticket}
O {customer} escalated ticket {ticket}: their users cannot log in since yesterday.
O We received a refund request from {customer} for the annual plan.
O Ticket {ticket} breached the four-hour SLA.
O {customer} shared detailed feedback about {feature}.
D The customer is on the enterprise plan with priority support.
D Engineering has a workaround but not a fix yet.
D I offered a service credit for the downtime.
D Their admin will join a call on {weekday} at {time}.
D The refund amount would be {amount}.
D From their description it sounds like an SSO configuration issue.
D I've linked the ticket to bug {bug}.
Q Could you join the customer call on {weekday}?
Q Can you approve the refund of {amount}?
Q Do you know who owns the SSO integration now?
R I'll join the call.
R Refund approved.
R Thanks for handling this so quickly.
R Engineering is on it.
R Let's keep the customer updated daily.

@ personal weight=7 personal=yes facets=friend,weekday label=-
S Dinner on {weekday}?
S {friend}'s birthday party
S Weekend hike
S BBQ this Saturday
S Photos from the trip
S Wedding plans
O Are you free for dinner on {weekday}? There's a new place near the river.
O We're throwing a surprise party for {friend} next Saturday.
O A few of us are going hiking this weekend if the weather holds.
O I finally uploaded the photos from our trip to {city}.
D Bring something to drink if you can.
D We'll meet at the station at 8 sharp.
D The forecast says sunny with a bit of wind.
D Kids are welcome, of course.
D I booked a table for six at 19:30.
D From what {friend} told me, it's going to be a big one.
D The shared album link is below.
Q Are you in?
Q Can you bring the speaker?
Q Do you want me to pick you up on the way?
R Count me in!
R Sounds lovely, see you there.
R Sorry, I can't make it this time.
R The photos are amazing, thank you!
R I'll bring dessert.

@ housing weight=3 personal=yes facets=month label=Home
S Apartment lease renewal
S Rent for {month}
S Repair in the kitchen
S Moving on {day} {month}
S Viewing the flat on {weekday}
S Deposit return
O The lease renewal for the apartment is due at the end of {month}.
O Just confirming the rent for {month} has been transferred.
O The kitchen tap is leaking again and the plumber can only come on {weekday}.
O The movers are booked for {day} {month}.
D The new rent would be {amount} per month.
D The landlord wants a signed copy by post.
D Please leave the keys with the neighbour.
D The inventory check is on the last day.
D I'll send the meter readings tonight.
D From {month_next} the building has a new caretaker.
D The deposit should come back within 30 days.
Q Can you be home on {weekday} morning for the plumber?
Q Could you sign the renewal this week?
Q Do you know when the deposit will be returned?
R Thanks, received.
R I'll be home on {weekday}.
R Signed and scanned.
R Let me check with the landlord.
R Great, thanks for sorting it out.

@ conference weight=4 personal=no facets=event,city label=Conferences
S CFP: talk proposal for {event}
S Your talk at {event} was accepted
S Speaker logistics for {event}
S Slides for {event}
S {event} in {city}: schedule
S Panel invitation
O I'm submitting a talk proposal to {event} about the {proj} architecture.
O Good news: our talk at {event} in {city} was accepted!
O Speaker logistics for {event} are below.
O Would you join a panel at {event} in {city}?
D The talk slot is 30 minutes plus questions.
D Travel and two hotel nights are covered.
D Slides are due one week before the event.
D The venue is next to the central station.
D There's a speaker dinner on the first evening.
D From last year's feedback, live demos went down well.
D Recordings will be published later.
Q Could you review my abstract for {event}?
Q Can you send your slides by {weekday}?
Q Would you co-present the talk with me?
R Congrats on the acceptance!
R Abstract looks great.
R Slides attached.
R I'd love to join the panel.
R See you in {city}!

@ it weight=3 personal=no facets=service label=-
S New laptop setup
S VPN access request
S Password reset
S Phishing attempt reported
S 2FA enrollment
S Access to the {service} dashboard
O Your new laptop is ready for pickup at the IT desk.
O I've requested VPN access for the new contractor.
O We received a phishing email pretending to be from payroll.
O Please enroll in two-factor authentication by {weekday}.
D Bring your old laptop so we can wipe it.
D Access requests need your manager's approval.
D Do not click any links in that email.
D Hardware keys are available at the front desk.
D The {service} dashboard is read-only for now.
D From Monday, passwords must be at least 14 characters.
D The ticket number is {ticket}.
Q Could you approve the access request?
Q Can you forward the phishing email as an attachment?
Q When can you drop by the IT desk?
R Approved.
R Forwarded.
R Thanks, I'll come by tomorrow.
R Enrolled.
R Done, thanks for the reminder.
"""


def _parse_topics(text: str) -> tuple[_Topic, ...]:
    topics: list[_Topic] = []
    for chunk in text.strip().split("\n\n"):
        head, *rows = chunk.split("\n")
        fields = dict(item.split("=", 1) for item in head.split()[2:])
        parts: dict[str, list[str]] = {"S": [], "O": [], "D": [], "Q": [], "R": []}
        local: dict[str, list[str]] = {}
        for row in rows:
            key, _, template = row.partition(" ")
            if key.startswith("S."):
                local.setdefault(key[2:], []).append(template)
            else:
                parts[key].append(template)
        topics.append(_Topic(
            name=head.split()[1], weight=int(fields["weight"]), personal=fields["personal"] == "yes",
            facets=tuple(fields["facets"].split(",")),
            label=None if fields["label"] == "-" else fields["label"],
            subjects=tuple(parts["S"]), openers=tuple(parts["O"]), details=tuple(parts["D"]),
            questions=tuple(parts["Q"]), replies=tuple(parts["R"]),
            local_subjects={lang: tuple(v) for lang, v in local.items()},
        ))
    return tuple(topics)


_TOPICS = _parse_topics(_TOPIC_TEXT)
_TOPIC_WEIGHTS_WORK = tuple(itertools.accumulate(t.weight for t in _TOPICS))
_TOPIC_WEIGHTS_PERSONAL = tuple(itertools.accumulate(t.weight * (4 if t.personal else 1) for t in _TOPICS))
_TOPIC_BY_NAME = {t.name: t for t in _TOPICS}

# Greetings, closings, filler and reply markers per language.
_GREET = {"en": ("Hi {first},", "Hello {first},", "Hey {first},", "Dear {first},", "{first},"),
          "fr": ("Bonjour {first},", "Salut {first},", "Coucou {first},"),
          "de": ("Hallo {first},", "Hi {first},", "Guten Tag {first},"),
          "es": ("Hola {first},", "Buenos días {first}:", "Hola {first}:"),
          "it": ("Ciao {first},", "Buongiorno {first},"),
          "pt": ("Olá {first},", "Oi {first},", "Bom dia {first},")}
_GREET_ALL = {"en": ("Hi all,", "Hi team,", "Hello everyone,"), "fr": ("Bonjour à tous,",),
              "de": ("Hallo zusammen,",), "es": ("Hola a todos,",), "it": ("Ciao a tutti,",),
              "pt": ("Olá a todos,",)}
_CLOSE = {"en": ("Thanks,", "Best,", "Cheers,", "Best regards,", "Thanks!"),
          "fr": ("Cordialement,", "Bien à toi,", "Merci,", "Bonne journée,"),
          "de": ("Viele Grüße", "Beste Grüße", "Danke und Gruß"),
          "es": ("Un saludo,", "Saludos,", "Gracias,"),
          "it": ("Saluti,", "Cordiali saluti,", "Grazie,"),
          "pt": ("Abraços,", "Atenciosamente,", "Obrigado,")}
_FILLER = {"fr": ("Merci pour ton retour rapide.", "Je te tiens au courant.",
                  "Désolé pour la réponse tardive.",
                  "Voici où on en est."),
           "de": ("Danke für die schnelle Antwort.", "Ich melde mich morgen.",
                  "Kurzes Update von meiner Seite.",
                  "Entschuldige die späte Rückmeldung."),
           "es": ("Gracias por la información.", "Te confirmo mañana.", "Perdona la demora en responder.",
                  "Te cuento cómo va."),
           "it": ("Grazie mille per l'aggiornamento.", "Ti faccio sapere domani.", "Scusa il ritardo.",
                  "Ecco a che punto siamo."),
           "pt": ("Obrigado pela ajuda.", "Te confirmo amanhã.", "Desculpa a demora.",
                  "Segue a atualização.")}
_LOCALE_SIGNOFF = {"ja": ("よろしくお願いします。", "お疲れさまです。"), "ru": ("Спасибо!", "С уважением,")}
_FORWARD_NOTE = {"en": ("FYI, see below.", "Forwarding this to you.", "See the thread below."),
                 "fr": ("Pour info.", "Je te transfère ce message."),
                 "de": ("Zur Info.", "Leite ich dir weiter."),
                 "es": ("Te reenvío esto.", "Para tu información."), "it": ("Ti inoltro questo.",),
                 "pt": ("Segue abaixo.", "Para sua informação.")}

_WD_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MON_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WD_SHORT = {"fr": ("lun.", "mar.", "mer.", "jeu.", "ven.", "sam.", "dim."),
             "de": ("Mo.", "Di.", "Mi.", "Do.", "Fr.", "Sa.", "So."),
             "es": ("lun", "mar", "mié", "jue", "vie", "sáb", "dom"),
             "it": ("lun", "mar", "mer", "gio", "ven", "sab", "dom"),
             "pt": ("seg.", "ter.", "qua.", "qui.", "sex.", "sáb.", "dom.")}
_MON_SHORT = {"fr": ("janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.",
                     "nov.",
                     "déc."),
              "de": ("Jan.", "Feb.", "März", "Apr.", "Mai", "Juni", "Juli", "Aug.", "Sept.", "Okt.", "Nov.",
                     "Dez."),
              "es": ("ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sept", "oct", "nov", "dic"),
              "it": ("gen", "feb", "mar", "apr", "mag", "giu", "lug", "ago", "set", "ott", "nov", "dic"),
              "pt": ("jan.", "fev.", "mar.", "abr.", "mai.", "jun.", "jul.", "ago.", "set.", "out.", "nov.",
                     "dez.")}
_WD_LONG = {"en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
            "fr": ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
            "de": ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"),
            "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
            "it": ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica"),
            "pt": ("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira", "sábado",
                   "domingo")}
_MON_LONG = {"en": _MONTHS,
             "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
                    "octobre", "novembre", "décembre"),
             "de": ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
                    "Oktober",
                    "November", "Dezember"),
             "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
                    "octubre", "noviembre", "diciembre"),
             "it": ("gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto",
                    "settembre",
                    "ottobre", "novembre", "dicembre"),
             "pt": ("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto", "setembro",
                    "outubro", "novembro", "dezembro")}
# Outlook's quoted header block: (From, Sent, To, Subject) labels and a date formatter key.
_OUTLOOK_LABELS = {"en": ("From", "Sent", "To", "Subject"), "fr": ("De", "Envoyé", "À", "Objet"),
                   "de": ("Von", "Gesendet", "An", "Betreff"), "es": ("De", "Enviado el", "Para", "Asunto"),
                   "it": ("Da", "Inviato", "A", "Oggetto"), "pt": ("De", "Enviado", "Para", "Assunto")}
_FORWARD_HEAD = {"en": ("---------- Forwarded message ---------", "From", "Date", "Subject", "To"),
                 "fr": ("---------- Message transféré ---------", "De", "Date", "Subject", "To"),
                 "de": ("---------- Weitergeleitete Nachricht ---------", "Von", "Date", "Subject", "To"),
                 "es": ("---------- Forwarded message ---------", "De", "Date", "Subject", "To"),
                 "it": ("---------- Forwarded message ---------", "Da", "Date", "Subject", "To"),
                 "pt": ("---------- Forwarded message ---------", "De", "Date", "Subject", "To")}
_REPLY_PREFIX = {"en": "RE: ", "fr": "RE : ", "de": "AW: ", "es": "RE: ", "it": "R: ", "pt": "RES: "}
_FWD_PREFIX = {"en": "FW: ", "fr": "TR : ", "de": "WG: ", "es": "RV: ", "it": "I: ", "pt": "ENC: "}
_REPLY_PREFIXES = ("Re: ", "RE: ", "RE : ", "AW: ", "R: ", "RES: ")

# ---------------------------------------------------------------------------------------------
# Bulk and automated senders.


@dataclass(frozen=True, slots=True)
class _Newsletter:
    name: str
    address: str
    list_host: str
    area: str
    lang: str
    charset: str


_NEWSLETTERS = (
    _Newsletter("The Morning Byte", "news@morningbyte.io", "morningbyte.io", "tech", "en", "utf-8"),
    _Newsletter("Postgres Weekly", "peter@postgresweekly.com", "postgresweekly.com", "database", "en",
                "utf-8"),
    _Newsletter("Python Digest", "digest@pythondigest.dev", "pythondigest.dev", "tech", "en", "utf-8"),
    _Newsletter("Skyscout Deals", "deals@skyscout.travel", "skyscout.travel", "travel", "en", "utf-8"),
    _Newsletter("Le Petit Journal Tech", "lettre@petitjournaltech.fr", "petitjournaltech.fr", "tech_fr", "fr",
                "iso-8859-1"),
    _Newsletter("Finanz-Wochenrückblick", "newsletter@finanzblick.de", "finanzblick.de", "finance_de", "de",
                "utf-8"),
    _Newsletter("Runner\u2019s Digest", "hello@runnersdigest.com", "runnersdigest.com", "running", "en",
                "windows-1252"),
    _Newsletter("Cooking with Ana", "ana@cookingwithana.com", "cookingwithana.com", "food", "en", "utf-8"),
    _Newsletter("Product Daily", "hello@digest.productdaily.com", "productdaily.com", "product", "en",
                "utf-8"),
    _Newsletter("Money Matters", "weekly@moneymatters.co.uk", "moneymatters.co.uk", "finance", "en", "utf-8"),
)
_HEADLINES = {
    "tech": ("{feature} is now generally available", "How we cut {service} latency by {pct}%",
             "A practical guide to vector search", "Ten habits of effective code reviewers",
             "Why your CI is slow, and how to fix it", "Inside a {err} outage"),
    "database": ("Why {db} migrations fail, and how to avoid it", "PostgreSQL {pg_to} released",
                 "Zero-downtime schema changes in practice", "Tuning autovacuum for large tables",
                 "Logical replication for upgrades"),
    "travel": ("Flights to {city} from {amount}", "Weekend in {city2}: hotels from {amount}",
               "Last-minute deals to {city}", "Spring sale: 20% off flights to {city}"),
    "tech_fr": ("Les nouveautés de la semaine en développement web",
                "Sécurité : les failles à corriger en priorité",
                "Retour d'expérience : migrer vers PostgreSQL {pg_to}", "L'été des conférences à {city}"),
    "finance_de": ("Märkte im Überblick: Zinsen und Inflation", "Steuertipps für Selbstständige",
                   "Wie sicher ist Ihr Tagesgeldkonto?", "Börsenwoche: Technologiewerte im Plus"),
    "running": ("Training plan for your first half marathon", "Race calendar for {month}",
                "Best running shoes of {year}", "Stretching routines after long runs"),
    "food": ("Five recipes for busy weeknights", "The best restaurants in {city} this season",
             "How to make fresh pasta at home", "Seasonal vegetables for {month}"),
    "product": ("Top launches of the day: {feature} and more", "Founders share their onboarding lessons",
                "The {year} product trends report", "Product of the week"),
    "finance": ("Interest rates: what changed in {month}", "Your {quarter} money checklist",
                "Markets this week", "How to read your pension statement"),
}
_BLURBS = {
    "en": ("A short read with practical takeaways.", "Plus: a few links we enjoyed this week.",
           "Our editors picked the highlights for you.", "Read the full story on our website."),
    "fr": ("Une lecture rapide avec des conseils pratiques.", "À lire sur notre site.",
           "Notre sélection de la semaine, préparée par l'équipe éditoriale."),
    "de": ("Eine kurze Lektüre mit praktischen Tipps.", "Den ganzen Artikel lesen Sie auf unserer Website.",
           "Unsere Redaktion hat die wichtigsten Themen für Sie ausgewählt."),
}


@dataclass(frozen=True, slots=True)
class _Shop:
    name: str
    address: str
    kind: str  # goods | ride | subscription | flight | hotel | utility | invoice


_SHOPS = (
    _Shop("Amazon.com", "auto-confirm@amazon.com", "goods"),
    _Shop("Uber Receipts", "noreply@uber.com", "ride"),
    _Shop("Apple", "no_reply@email.apple.com", "subscription"),
    _Shop("Booking.com", "noreply@booking.com", "hotel"),
    _Shop("Octopus Energy", "hello@octopus.energy", "utility"),
    _Shop("Stripe", "receipts+acct_1LqT@stripe.com", "invoice"),
    _Shop("Airline", "", "flight"),  # name and address come from the airline chosen
)
_GOODS = ("USB-C charging cable", "Noise-cancelling headphones",
          "Designing Data-Intensive Applications (Paperback)", "Coffee beans, 1 kg", "Ergonomic keyboard",
          "Standing desk mat", "Running shoes", "Kindle Paperwhite")

# ---------------------------------------------------------------------------------------------
# Charsets and encodings.

# fmt: on
_CODEC = {
    "utf-8": "utf-8",
    "iso-8859-1": "latin-1",
    "windows-1252": "cp1252",
    "koi8-r": "koi8_r",
    "shift_jis": "shift_jis",
}
_CHARSET_LABEL = {
    "utf-8": "UTF-8",
    "iso-8859-1": "iso-8859-1",
    "windows-1252": "Windows-1252",
    "koi8-r": "koi8-r",
    "shift_jis": "Shift_JIS",
}
_WRAP = textwrap.TextWrapper(width=72, break_long_words=False, break_on_hyphens=False)
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)
_Q_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _pick(rng: random.Random, seq: Sequence[Any]) -> Any:
    """rng.choice without its bookkeeping: the generator calls this ~30 times per message."""
    return seq[int(rng.random() * len(seq))]


def _between(rng: random.Random, low: int, high: int) -> int:
    """rng.randint(low, high), several times cheaper."""
    return low + int(rng.random() * (high - low + 1))


def _q_word(data: bytes) -> str:
    return "".join(chr(c) if c in _Q_SAFE else ("_" if c == 32 else f"={c:02X}") for c in data)


def encode_header_text(text: str, charset: str = "utf-8", q: bool = False) -> str:
    """RFC 2047 encoded words for non-ASCII header text (ASCII passes through unchanged).

    Words are split on character boundaries and folded so no word exceeds 75 characters.
    """
    if text.isascii():
        return text
    codec = _CODEC.get(charset, charset)
    try:
        whole = text.encode(codec)
    except UnicodeEncodeError:
        charset, codec = "utf-8", "utf-8"
        whole = text.encode(codec)
    label = _CHARSET_LABEL.get(charset, charset)
    budget = 75 - len(label) - 7  # room for the text inside "=?label?B?...?="
    if (len(_q_word(whole)) if q else (len(whole) + 2) // 3 * 4) <= budget:
        return _word(whole, label, q)
    words: list[str] = []
    chunk: list[bytes] = []
    used = 0
    for ch in text:
        data = ch.encode(codec)
        cost = len(_q_word(data)) if q else len(data)
        if chunk and used + cost > (budget if q else budget // 4 * 3):
            words.append(_word(b"".join(chunk), label, q))
            chunk, used = [], 0
        chunk.append(data)
        used += cost
    if chunk:
        words.append(_word(b"".join(chunk), label, q))
    return "\n ".join(words)


def _word(data: bytes, label: str, q: bool) -> str:
    if q:
        return f"=?{label}?Q?{_q_word(data)}?="
    return f"=?{label}?B?{base64.b64encode(data).decode('ascii')}?="


def format_address(name: str, email: str, charset: str = "utf-8", q: bool = False) -> str:
    if not name:
        return email
    if name.isascii():
        if any(c in name for c in ',.;:@"()<>[]\\'):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{email}>"
    return f"{encode_header_text(name, charset, q)} <{email}>"


def _join_addresses(items: Sequence[str]) -> str:
    if sum(len(i) + 2 for i in items) > 66:
        return ",\n ".join(items)
    return ", ".join(items)


def _rfc2822(when: datetime, offset: int, pad_day: bool = False) -> str:
    """RFC 5322 date for a naive-UTC `when` shown in a zone `offset` minutes east of UTC."""
    local = when + timedelta(minutes=offset)
    sign = "+" if offset >= 0 else "-"
    o = abs(offset)
    day = f"{local.day:02d}" if pad_day else str(local.day)
    return (
        f"{_WD_EN[local.weekday()]}, {day} {_MON_EN[local.month - 1]} {local.year} "
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} {sign}{o // 60:02d}{o % 60:02d}"
    )


def _postmark_date(when: datetime) -> str:
    return (
        f"{_WD_EN[when.weekday()]} {_MON_EN[when.month - 1]} {when.day:02d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} +0000 {when.year}"
    )


def _encode_body(text: str, charset: str, cte: str) -> bytes:
    data = text.encode(_CODEC[charset])
    if cte == "quoted-printable":
        return binascii.b2a_qp(data)
    if cte == "base64":
        return base64.encodebytes(data)
    return data


def _fold_ascii(text: str) -> str:
    """Lower-case ASCII for building addresses from names (Łukasz -> lukasz, Müller -> muller)."""
    text = text.replace("ł", "l").replace("Ł", "L").replace("ß", "ss").replace("ø", "o").replace("æ", "ae")
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text.lower() if c.isascii() and c.isalnum())


def gmail_canonical(email: str) -> str:
    """gmail.com/googlemail.com: dots and +tags do not matter; other domains only lower-case."""
    local, _, domain = email.lower().partition("@")
    if domain in ("gmail.com", "googlemail.com"):
        return local.split("+", 1)[0].replace(".", "") + "@gmail.com"
    return f"{local}@{domain}"


def mboxrd_escape(raw: bytes) -> bytes:
    """Escape body lines that would read as a postmark: `From ` after any number of `>` gets one more."""
    if b"From " not in raw:  # a substring test is far cheaper than the regex, and usually false
        return raw
    return _FROM_LINE.sub(rb">\1", raw)


# ---------------------------------------------------------------------------------------------
# The world: the account and its correspondents.


@dataclass(slots=True)
class _Person:
    name: str
    alt_name: str  # another way the name shows up (romanized, "Last, First")
    first: str
    email: str
    variants: tuple[str, ...]
    canonical: str
    locale: str
    lang: str
    company: str | None
    signature: str | None
    sig_delim: bool  # writes "-- " above the signature
    client: str  # gmail | outlook | apple | thunderbird | webmail
    tz: int
    dst: str | None
    wraps: bool  # hard-wraps plain text at 72 columns
    is_account: bool = False


@dataclass(slots=True)
class _Company:
    name: str
    domain: str
    locale: str


@dataclass(slots=True)
class _World:
    account: _Person
    people: list[_Person]
    companies: list[_Company]
    freemail_people: list[_Person]
    work_people: list[_Person]


def _pick_locale(rng: random.Random) -> str:
    return rng.choices(_LOCALES, cum_weights=_LOCALE_CUM)[0]


def _make_name(rng: random.Random, locale: str) -> tuple[str, str, str, str, str]:
    """(display, alternative display, first name for greetings, first ascii, last ascii)."""
    if locale == "ja":
        (fd, fa), (ld, la) = _pick(rng, _JA_FIRST), _pick(rng, _JA_LAST)
        return f"{ld} {fd}", f"{fa} {la}", fd if rng.random() < 0.3 else fa, fa.lower(), la.lower()
    if locale == "ru":
        fd, ld, fa, la = _pick(rng, _RU_NAMES)
        return f"{fd} {ld}", f"{fa} {la}", fd, fa.lower(), la.lower()
    first, last = _pick(rng, _FIRST[locale]), _pick(rng, _LAST[locale])
    return f"{first} {last}", f"{last}, {first}", first, _fold_ascii(first), _fold_ascii(last)


def _local_part(rng: random.Random, fa: str, la: str, freemail: bool) -> str:
    roll = rng.random()
    if freemail:
        if roll < 0.35:
            return f"{fa}.{la}"
        if roll < 0.5:
            return f"{fa}{la}"
        if roll < 0.7:
            return f"{fa}.{la}{_between(rng, 1, 99)}"
        if roll < 0.85:
            return f"{fa[0]}{la}{_between(rng, 70, 99)}"
        return f"{fa}_{la}"
    if roll < 0.5:
        return f"{fa}.{la}"
    if roll < 0.7:
        return f"{fa[0]}{la}"
    if roll < 0.85:
        return fa
    if roll < 0.9:
        return f"{fa}_{la}"
    return f"{fa}{la[0]}"


def _gmail_variants(local: str, domain: str) -> tuple[str, ...]:
    base = local.replace(".", "")
    tags = ("work", "news", "github", "travel")
    tag = tags[len(local) % len(tags)]
    out = [f"{base}@gmail.com", f"{local}+{tag}@gmail.com", f"{local}@googlemail.com"]
    if domain == "googlemail.com":
        out[2] = f"{local}@gmail.com"
    out.append(f"{local.capitalize()}@{domain}")
    return tuple(dict.fromkeys(v for v in out if v != f"{local}@{domain}"))


def _phone(rng: random.Random, locale: str) -> str:
    return _PHONE[locale].format(
        a=_between(rng, 100, 9999) % 10000,
        b=_between(rng, 10, 99),
        c=_between(rng, 10, 99),
        d=_between(rng, 10, 99),
    )


def _signature(rng: random.Random, name: str, locale: str, company: str | None) -> str | None:
    if rng.random() < 0.25:
        return None
    lines = [name]
    titles = _TITLES.get(locale, _TITLES["en"])
    if company:
        lines.append(f"{_pick(rng, titles)}, {company}")
    if rng.random() < 0.7:
        lines.append(_phone(rng, locale))
    if company and rng.random() < 0.2:
        lines.append("This email and any attachments are confidential and intended solely for the addressee.")
    return "\n".join(lines)


def _client_for(rng: random.Random, domain: str, freemail: bool) -> str:
    if domain in ("gmail.com", "googlemail.com"):
        return "gmail"
    if domain in ("outlook.com", "hotmail.com", "hotmail.es"):
        return "outlook"
    if freemail:
        return rng.choices(("webmail", "apple", "outlook", "thunderbird"), (50, 25, 15, 10))[0]
    return rng.choices(("outlook", "gmail", "apple", "thunderbird"), (45, 30, 15, 10))[0]


def _build_world(rng: random.Random, count: int, account: str) -> _World:
    size = max(POPULATION_MIN, min(POPULATION_MAX, count // 20))
    companies = _build_companies(rng, max(8, size // 10))
    used: set[str] = {account.lower()}
    people: list[_Person] = []
    for _ in range(size):
        people.append(_make_person(rng, companies, used))
    account_name = _pick(rng, _ACCOUNT_NAMES)
    own_domain = account.partition("@")[2]
    own_company = own_domain.split(".")[0].capitalize() + " Inc."
    me = _Person(
        name=account_name,
        alt_name=account_name,
        first=account_name.split()[0],
        email=account,
        variants=(),
        canonical=gmail_canonical(account),
        locale="en",
        lang="en",
        company=own_company,
        signature=f"{account_name}\nHead of Platform, {own_company}\n+1 415 555 0100",
        sig_delim=True,
        client="gmail",
        tz=60,
        dst="eu",
        wraps=False,
        is_account=True,
    )
    freemail = [p for p in people if p.company is None]
    work = [p for p in people if p.company is not None]
    return _World(me, people, companies, freemail or people, work or people)


def _build_companies(rng: random.Random, n: int) -> list[_Company]:
    out: list[_Company] = []
    seen: set[str] = set()
    while len(out) < n:
        locale = _pick_locale(rng)
        prefix, suffix = _pick(rng, _CO_PREFIX), _pick(rng, _CO_SUFFIX)
        stem = prefix.lower() + (("-" + suffix.lower()) if rng.random() < 0.5 else "")
        domain = stem + _pick(rng, _TLD[locale])
        if domain in seen:
            if len(seen) >= len(_CO_PREFIX) * len(_CO_SUFFIX):
                break
            continue
        seen.add(domain)
        out.append(_Company(f"{prefix} {suffix}", domain, locale))
    return out


def _make_person(rng: random.Random, companies: list[_Company], used: set[str]) -> _Person:
    at_company = rng.random() < 0.6
    company = _pick(rng, companies) if at_company else None
    locale = company.locale if company and rng.random() < 0.7 else _pick_locale(rng)
    display, alt, first, fa, la = _make_name(rng, locale)
    if company:
        domain = company.domain if rng.random() < 0.95 else "mail." + company.domain
    else:
        domain = _pick(rng, _FREEMAIL[locale])
    local = _local_part(rng, fa, la, company is None)
    email = f"{local}@{domain}"
    n = 2
    while email.lower() in used or gmail_canonical(email) in used:
        email = f"{local}{n}@{domain}"
        n += 1
    used.add(email.lower())
    used.add(gmail_canonical(email))
    local = email.partition("@")[0]
    if domain in ("gmail.com", "googlemail.com"):
        variants = _gmail_variants(local, domain)
    else:
        variants = (f"{local.capitalize()}@{domain}",)
    tz, dst = _pick(rng, _TZ[locale])
    client = _client_for(rng, domain, company is None)
    return _Person(
        name=display,
        alt_name=alt,
        first=first,
        email=email,
        variants=variants,
        canonical=gmail_canonical(email),
        locale=locale,
        lang=_LANG_OF[locale],
        company=company.name if company else None,
        signature=_signature(rng, display, locale, company.name if company else None),
        sig_delim=rng.random() < 0.75,
        client=client,
        tz=tz,
        dst=dst,
        wraps=client in ("thunderbird", "webmail"),
    )


def _offset_at(person: _Person, when: datetime) -> int:
    # Coarse daylight saving (April to October) is enough to make offsets vary like real mail.
    return person.tz + (60 if person.dst and 4 <= when.month <= 10 else 0)


# ---------------------------------------------------------------------------------------------
# Threads and messages.


@dataclass(slots=True)
class _Thread:
    index: int
    kind: str
    topic: str
    slots: dict[str, str]
    facets: dict[str, str]
    subject: str
    length: int
    lang: str
    people: list[_Person]  # correspondents taking part (the account is implicit)
    labels_base: tuple[str, ...]
    user_label: str | None
    position: int = 0
    gmail_thread_id: int = 0
    when: datetime = START
    refs: list[str] = field(default_factory=list)  # Message-IDs so far, oldest first
    last_id: str | None = None
    last_sender: _Person | None = None
    last_to: list[_Person] = field(default_factory=list)
    last_text: str = ""
    last_subject: str = ""
    last_when: datetime = START
    last_raw: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Body:
    new_text: str
    signature: str | None = None
    sig_delim: bool = True
    quote_intro: str | None = None
    quoted: str | None = None
    quote_style: str = "prefix"  # prefix (> lines) | outlook (header block) | forward


@dataclass(slots=True)
class _Part:
    """A leaf MIME part, already encoded."""

    content_type: str
    cte: str
    payload: bytes
    disposition: str | None = None


class _Generator:
    def __init__(self, count: int, seed: int, account: str) -> None:
        self.count = count
        self.rng = random.Random(seed)
        self.account = account
        self.world = _build_world(self.rng, count, account)
        self.salt = self.rng.getrandbits(20)
        self.thread_count = 0

    # -- stream -------------------------------------------------------------------------------

    def run(self) -> Iterator[GeneratedMessage]:
        rng = self.rng
        open_threads: list[_Thread] = []
        recent: deque[GeneratedMessage] = deque(maxlen=RECENT_RING)
        for index in range(self.count):
            if recent and rng.random() < DUPLICATE_RATE:
                yield self._duplicate(index, recent[rng.randrange(len(recent))])
                continue
            outstanding = sum(t.length - t.position for t in open_threads)
            start_new = not open_threads or (
                len(open_threads) < MAX_OPEN_THREADS
                and outstanding < self.count - index
                and rng.random() < 0.45
            )
            thread = self._start_thread() if start_new else open_threads[rng.randrange(len(open_threads))]
            if start_new:
                open_threads.append(thread)
            message = self._next(thread, index)
            if thread.position >= thread.length:
                open_threads.remove(thread)
            if message.meta.message_id:
                recent.append(message)
            yield message

    def _duplicate(self, index: int, original: GeneratedMessage) -> GeneratedMessage:
        # Takeout + API overlap: the same bytes again, under another Gmail id.
        gid = self._gmail_id(original.internal_date.replace(tzinfo=None), index)
        meta = replace(original.meta, index=index, is_duplicate=True)
        return replace(original, meta=meta, gmail_message_id=format(gid, "x"))

    def _gmail_id(self, when: datetime, index: int) -> int:
        # Gmail ids are a millisecond timestamp shifted left 20 bits; the low bits are an odd-multiplier
        # permutation of the stream index, so ids stay unique for the first 2**20 messages at least.
        ms = int((when - datetime(1970, 1, 1)).total_seconds() * 1000)
        return (ms << 20) | ((index * 0x9E3779B1 + self.salt) & 0xFFFFF)

    # -- thread planning ----------------------------------------------------------------------

    def _start_thread(self) -> _Thread:
        rng = self.rng
        kind = rng.choices(
            ("conversation", "newsletter", "github", "alert", "receipt", "bounce"), (54, 17, 7, 9, 11, 0.6)
        )[0]
        index = self.thread_count
        self.thread_count += 1
        when = self._thread_start()
        if kind == "conversation":
            return self._plan_conversation(index, when)
        if kind == "newsletter":
            return self._plan_single(index, when, "newsletter", "newsletter")
        if kind == "github":
            return self._plan_github(index, when)
        if kind == "alert":
            return self._plan_single(
                index, when, "notification", _pick(rng, ("security", "calendar", "jira", "slack", "linkedin"))
            )
        if kind == "receipt":
            return self._plan_single(index, when, "receipt", "receipt")
        return self._plan_bounce(index, when)

    def _thread_start(self) -> datetime:
        rng = self.rng
        day = START + timedelta(days=rng.randrange(SPAN_DAYS))
        # Mostly office hours (roughly, in UTC), some at any time of day.
        seconds = rng.randrange(7 * 3600, 18 * 3600) if rng.random() < 0.8 else rng.randrange(86400)
        return day + timedelta(seconds=seconds)

    def _slots(self, when: datetime, locale: str) -> dict[str, str]:
        rng = self.rng
        month = when.month - 1 if rng.random() < 0.7 else when.month % 12
        pg_from, pg_to = _pick(rng, _PG)
        airline = _pick(rng, _AIRLINES)
        city, city2 = rng.sample(_CITIES, 2)
        value = _pick(rng, (_between(rng, 80, 900), _between(rng, 900, 25000))) + _between(rng, 0, 99) / 100
        return {
            "proj": _pick(rng, _PROJECTS),
            "city": city,
            "city2": city2,
            "month": _MONTHS[month],
            "month_next": _MONTHS[(month + 1) % 12],
            "weekday": _pick(rng, _WEEKDAYS),
            "day": str(_between(rng, 1, 28)),
            "time": f"{_between(rng, 8, 17)}:{_pick(rng, (0, 15, 30, 45)):02d}",
            "amount": _money(value, locale),
            "inv": f"INV-{when.year}-{_between(rng, 1, 9999):04d}",
            "po": f"PO-{_between(rng, 10000, 99999)}",
            "role": _pick(rng, _ROLES),
            "cand": _pick(rng, self.world.people).name,
            "friend": _pick(rng, self.world.people).first,
            "service": _pick(rng, _SERVICES),
            "bug": f"#{_between(rng, 1000, 9999)}",
            "err": _pick(rng, _ERRORS),
            "db": _pick(rng, _DBS),
            "pg_from": str(pg_from),
            "pg_to": str(pg_to),
            "quarter": f"Q{(month // 3) + 1}",
            "year": str(when.year),
            "pct": str(_between(rng, 3, 95)),
            "airline": airline[0],
            "flight": f"{airline[1]} {_between(rng, 100, 2999)}",
            "hotel": _pick(rng, _HOTELS),
            "event": f"{_pick(rng, _EVENTS)} {when.year}",
            "vendor": _pick(rng, self.world.companies).name,
            "ticket": f"SUP-{_between(rng, 10000, 99999)}",
            "room": _pick(rng, _ROOMS),
            "hours": str(_between(rng, 6, 120)),
            "customer": _pick(rng, self.world.companies).name,
            "feature": _pick(rng, _FEATURES),
            "doc": _pick(rng, _DOCS),
        }

    def _plan_conversation(self, index: int, when: datetime) -> _Thread:
        rng = self.rng
        world = self.world
        starter = _pick(rng, world.people)
        weights = _TOPIC_WEIGHTS_PERSONAL if starter.company is None else _TOPIC_WEIGHTS_WORK
        topic = rng.choices(_TOPICS, cum_weights=weights)[0]
        pool = world.freemail_people if topic.personal else world.work_people
        others = [
            p for p in rng.sample(pool, min(len(pool), _pick(rng, (0, 0, 0, 1, 1, 2, 3)))) if p is not starter
        ]
        people = [starter, *others]
        slots = self._slots(when, starter.locale)
        local = topic.local_subjects.get(starter.lang)
        template = _pick(rng, local) if local and rng.random() < 0.6 else _pick(rng, topic.subjects)
        length = rng.choices(_LENGTHS, cum_weights=_LENGTH_CUM)[0]
        in_inbox = rng.random() < 0.7
        base = ("Inbox" if in_inbox else "Archived",) + (("Important",) if rng.random() < 0.3 else ())
        if topic.personal:
            base += ("Category Personal",)
        thread = _Thread(
            index=index,
            kind="conversation",
            topic=topic.name,
            slots=slots,
            facets={k: slots[k] for k in topic.facets},
            subject=template.format_map(slots),
            length=length,
            lang=starter.lang,
            people=people,
            labels_base=base,
            user_label=topic.label if topic.label and rng.random() < 0.35 else None,
            when=when,
        )
        thread.extra["account_starts"] = rng.random() < 0.35
        thread.extra["forward_in"] = not thread.extra["account_starts"] and rng.random() < 0.06
        return thread

    def _plan_single(self, index: int, when: datetime, kind: str, topic: str) -> _Thread:
        slots = self._slots(when, "en")
        return _Thread(
            index=index,
            kind=kind,
            topic=topic,
            slots=slots,
            facets={},
            subject="",
            length=1,
            lang="en",
            people=[],
            labels_base=(),
            user_label=None,
            when=when,
        )

    def _plan_github(self, index: int, when: datetime) -> _Thread:
        rng = self.rng
        slots = self._slots(when, "en")
        org = _pick(rng, ("acme", "northwind", "helios-labs", "kestrel-io"))
        repo = _pick(rng, ("api", "web", "infra", "mobile", "docs", "data-pipeline"))
        number = 100 + index  # unique per stream, so Message-IDs never collide across threads
        topic = _pick(rng, ("bug", "migration", "project"))
        titles = {
            "bug": (
                "Fix {err} in {service}",
                "{service} returns 500 under load",
                "Crash when saving profile",
            ),
            "migration": (
                "Add migration for the {db} table",
                "Upgrade to PostgreSQL {pg_to}",
                "Backfill new column in {db}",
            ),
            "project": ("{proj}: implement {feature}", "Roadmap: {proj} milestone 2", "Docs for {feature}"),
        }
        title = _pick(rng, titles[topic]).format_map(slots)
        is_pr = rng.random() < 0.5
        thread = _Thread(
            index=index,
            kind="notification",
            topic=topic,
            slots=slots,
            facets={"repo": f"{org}/{repo}", "service": slots["service"]},
            subject=f"[{org}/{repo}] {title} (#{number})",
            length=rng.choices((1, 2, 3, 4, 5), (30, 25, 20, 15, 10))[0],
            lang="en",
            people=rng.sample(self.world.people, min(3, len(self.world.people))),
            labels_base=(("Inbox",) if rng.random() < 0.4 else ("Archived",)) + ("Category Updates",),
            user_label="GitHub" if rng.random() < 0.5 else None,
            when=when,
        )
        thread.extra.update(org=org, repo=repo, number=number, is_pr=is_pr, title=title)
        return thread

    def _plan_bounce(self, index: int, when: datetime) -> _Thread:
        rng = self.rng
        victim = _pick(rng, self.world.people)
        local, _, domain = victim.email.partition("@")
        typo = _pick(rng, ("gmial.com", "gmail.co", "hotmial.com")) if domain == "gmail.com" else domain
        bad = f"{local}.old@{domain}" if typo == domain else f"{local}@{typo}"
        slots = self._slots(when, "en")
        topic = _pick(rng, ("meeting", "project", "invoice"))
        t = _TOPIC_BY_NAME[topic]
        thread = _Thread(
            index=index,
            kind="bounce",
            topic=topic,
            slots=slots,
            facets={},
            subject=_pick(rng, t.subjects).format_map(slots),
            length=2,
            lang="en",
            people=[victim],
            labels_base=("Inbox",),
            user_label=None,
            when=when,
        )
        thread.extra["bad"] = bad
        return thread

    # -- message dispatch ---------------------------------------------------------------------

    def _next(self, thread: _Thread, index: int) -> GeneratedMessage:
        if thread.position:
            thread.when += self._delay()
        if thread.kind == "conversation":
            message = self._conversation(thread, index)
        elif thread.kind == "newsletter":
            message = self._newsletter(thread, index)
        elif thread.kind == "receipt":
            message = self._receipt(thread, index)
        elif thread.kind == "bounce":
            message = self._bounce(thread, index)
        elif thread.topic in ("bug", "migration", "project"):
            message = self._github(thread, index)
        else:
            message = self._alert(thread, index)
        thread.position += 1
        return message

    def _delay(self) -> timedelta:
        minutes = min(self.rng.lognormvariate(5.0, 1.4), 14 * 24 * 60)
        return timedelta(minutes=max(2.0, minutes), seconds=self.rng.randrange(60))

    # -- conversations ------------------------------------------------------------------------

    def _conversation(self, thread: _Thread, index: int) -> GeneratedMessage:
        rng = self.rng
        me = self.world.account
        pos = thread.position
        forward = False
        forwarded_in = pos == 0 and bool(thread.extra["forward_in"])
        if pos == 0:
            sender = me if thread.extra["account_starts"] else thread.people[0]
            to = [p for p in thread.people if p is not sender][:2] if sender is me else [me]
            cc = [p for p in thread.people if p is not sender and p not in to]
            if sender is not me and rng.random() < 0.04:
                to, cc = cc, []  # the account was Bcc'd
            if forwarded_in:
                thread.last_sender = _pick(rng, self.world.people)
                thread.last_to = [thread.people[0]]
                thread.last_when = thread.when - timedelta(hours=_between(rng, 2, 200))
                thread.last_text = self._compose_text(thread, thread.last_sender, [thread.people[0]], 0)[
                    0
                ].new_text
                thread.last_subject = thread.subject
        elif (
            thread.last_sender is not me
            and rng.random() < 0.07
            and len(self.world.people) > len(thread.people)
        ):
            forward = True
            sender = me
            newcomer = _pick(rng, self.world.people)
            while newcomer in thread.people:
                newcomer = _pick(rng, self.world.people)
            thread.people.append(newcomer)
            to, cc = [newcomer], []
        else:
            sender = self._replier(thread)
            everyone = [me, *thread.people]
            to = [thread.last_sender] if thread.last_sender and thread.last_sender is not sender else []
            if not to:
                to = [p for p in everyone if p is not sender][:1]
            rest = [p for p in everyone if p is not sender and p not in to]
            cc = rest if rng.random() < 0.7 else ([me] if sender is not me and me not in to else [])
        bcc_only = sender is not me and me not in to and me not in cc
        body, asks = self._compose_text(thread, sender, to, pos, forward=forward or forwarded_in)
        subject = self._conversation_subject(thread, sender, pos, forward or forwarded_in)
        return self._emit_conversation(
            thread, index, sender, to, cc, subject, body, asks, bcc_only, forward or forwarded_in
        )

    def _replier(self, thread: _Thread) -> _Person:
        me = self.world.account
        if thread.last_sender is not me and self.rng.random() < 0.6:
            return me
        choices = [p for p in thread.people if p is not thread.last_sender]
        return _pick(self.rng, choices) if choices else me

    def _conversation_subject(self, thread: _Thread, sender: _Person, pos: int, forward: bool) -> str:
        current = thread.last_subject or thread.subject
        if pos == 0 and not forward:
            return thread.subject
        outlook = sender.client == "outlook"
        if forward:
            prefix = _FWD_PREFIX.get(sender.lang, "FW: ") if outlook else "Fwd: "
            return prefix + current
        if current.startswith(_REPLY_PREFIXES):
            return current
        return (_REPLY_PREFIX.get(sender.lang, "RE: ") if outlook else "Re: ") + current

    def _compose_text(
        self, thread: _Thread, sender: _Person, to: list[_Person], pos: int, forward: bool = False
    ) -> tuple[_Body, bool]:
        rng = self.rng
        topic = _TOPIC_BY_NAME[thread.topic]
        slots = thread.slots
        lang = sender.lang
        paragraphs: list[str] = []
        asks = False
        if forward:
            paragraphs.append(_pick(rng, _FORWARD_NOTE.get(lang, _FORWARD_NOTE["en"])))
        else:
            greet_pool = _GREET_ALL[lang] if len(to) > 1 else _GREET[lang]
            greeting = _pick(rng, greet_pool).format(first=to[0].first if to else "")
            sentences: list[str] = []
            if lang != "en" and rng.random() < 0.6:
                sentences.append(_pick(rng, _FILLER[lang]))
            if pos == 0:
                sentences.append(_pick(rng, topic.openers))
                sentences.extend(rng.sample(topic.details, _between(rng, 1, 3)))
            else:
                sentences.append(_pick(rng, topic.replies))
                sentences.extend(rng.sample(topic.details, _between(rng, 0, 2)))
            asks = not sender.is_account and rng.random() < 0.3
            if asks:
                sentences.append(_pick(rng, topic.questions))
            text = [s.format_map(slots) for s in sentences]
            split = _between(rng, 1, len(text)) if len(text) > 2 else len(text)
            paragraphs.append(greeting)
            paragraphs.append(" ".join(text[:split]))
            if text[split:]:
                paragraphs.append(" ".join(text[split:]))
            closing = _pick(rng, _CLOSE[lang])
            signoff = _LOCALE_SIGNOFF.get(sender.locale)
            if signoff and rng.random() < 0.7:
                closing = _pick(rng, signoff) + "\n" + closing
            paragraphs.append(f"{closing}\n{sender.first}")
        if sender.wraps:
            paragraphs = [_WRAP.fill(p) if len(p) > 72 and "\n" not in p else p for p in paragraphs]
        new_text = "\n\n".join(paragraphs)
        if sender.client == "outlook":
            new_text = new_text.replace("'", "\u2019")  # Word's smart quotes: why cp1252 mail exists
        body = _Body(new_text=new_text, signature=sender.signature, sig_delim=sender.sig_delim)
        if thread.last_sender is not None and (pos > 0 or forward):
            self._attach_quote(body, thread, sender, forward)
        return body, (not forward and asks and self._addressed(to))

    def _addressed(self, to: list[_Person]) -> bool:
        return any(p.is_account for p in to)

    def _attach_quote(self, body: _Body, thread: _Thread, sender: _Person, forward: bool) -> None:
        rng = self.rng
        prev = thread.last_sender
        assert prev is not None
        lines = thread.last_text.split("\n")
        quoted = "\n".join(lines[:QUOTE_MAX_LINES])
        when_local = thread.last_when + timedelta(minutes=_offset_at(sender, thread.last_when))
        lang = sender.lang
        if forward:
            head = _FORWARD_HEAD.get(lang, _FORWARD_HEAD["en"])
            to_text = ", ".join(f"{p.name} <{p.email}>" for p in thread.last_to) or self.account
            body.quote_intro = (
                f"{head[0]}\n{head[1]}: {prev.name} <{prev.email}>\n"
                f"{head[2]}: {_gmail_date(when_local, 'en')}\n"
                f"{head[3]}: {thread.last_subject}\n{head[4]}: {to_text}"
            )
            body.quoted = quoted
            body.quote_style = "forward"
            return
        if sender.client == "outlook" and rng.random() < 0.8:
            labels = _OUTLOOK_LABELS.get(lang, _OUTLOOK_LABELS["en"])
            to_text = "; ".join(p.name for p in thread.last_to)
            sep = "-----Original Message-----" if rng.random() < 0.3 else "________________________________"
            body.quote_intro = (
                f"{sep}\n{labels[0]}: {prev.name} <{prev.email}>\n"
                f"{labels[1]}: {_long_date(when_local, lang)}\n{labels[2]}: {to_text}\n"
                f"{labels[3]}: {thread.last_subject}"
            )
            body.quoted = quoted
            body.quote_style = "outlook"
            return
        intro = _attribution(sender.client, lang, when_local, prev.name, prev.email)
        if len(intro) > 76 and rng.random() < 0.3:
            # Gmail hard-wraps long attribution lines, a classic trap for quote strippers.
            cut = intro.rfind(" ", 0, 76)
            intro = intro[:cut] + "\n" + intro[cut + 1 :]
        body.quote_intro = intro
        body.quoted = quoted
        body.quote_style = "prefix"

    def _emit_conversation(
        self,
        thread: _Thread,
        index: int,
        sender: _Person,
        to: list[_Person],
        cc: list[_Person],
        subject: str,
        body: _Body,
        asks: bool,
        bcc_only: bool,
        forward: bool,
    ) -> GeneratedMessage:
        rng = self.rng
        me = self.world.account
        sent = sender is me
        plain = _render_plain(body)
        client = sender.client
        charset = _pick_charset(rng, sender, plain)
        structure = _pick_structure(rng, client)
        attachments = self._attachments(thread, thread.position)
        html_text = _render_html(body, client, charset) if structure != "text" else None
        message_id = self._message_id(sender, index, thread.when, eligible_to_drop=not sent)
        q = client in ("apple", "thunderbird", "outlook")
        from_value, from_party = self._address(sender, charset, q)
        to_pairs = [self._address(p, charset, q) for p in to]
        cc_pairs = [self._address(p, charset, q) for p in cc]
        headers: list[tuple[str, str]] = []
        if not sent:
            headers.extend(self._delivery_headers(sender, thread.when))
        headers.append(("MIME-Version", "1.0"))
        refs = thread.refs[-20:]
        if refs and thread.position > 0:
            headers.append(("References", "\n ".join(f"<{r}>" for r in refs)))
        in_reply_to = thread.last_id if thread.position > 0 else None
        if in_reply_to:
            headers.append(("In-Reply-To", f"<{in_reply_to}>"))
        headers.append(("From", from_value))
        headers.append(("Date", _rfc2822(thread.when, _offset_at(sender, thread.when), client == "outlook")))
        if message_id:
            headers.append(("Message-ID", f"<{message_id}>"))
        headers.append(("Subject", encode_header_text(subject, charset, q)))
        if bcc_only and not to_pairs:
            # Both spellings of "no visible recipients"; the second breaks CPython's header registry.
            headers.append(
                (
                    "To",
                    _pick(rng, ("undisclosed-recipients:;", "unlisted-recipients:; (no To-header on input)")),
                )
            )
        elif to_pairs:
            headers.append(("To", _join_addresses([v for v, _ in to_pairs])))
        if cc_pairs:
            headers.append(("Cc", _join_addresses([v for v, _ in cc_pairs])))
        headers.extend(_client_headers(client, subject, rng))
        mime_headers, mime_body, cte, charset = _mime(
            rng, plain, html_text, charset, structure, attachments, client, index
        )
        raw = _assemble(headers + mime_headers, mime_body)
        labels = self._conversation_labels(thread, sent)
        meta = MessageMeta(
            index=index,
            message_id=message_id,
            thread_index=thread.index,
            thread_position=thread.position,
            thread_length=thread.length,
            kind="conversation",
            topic=thread.topic,
            facets=thread.facets,
            subject=subject,
            language=sender.lang,
            direction="sent" if sent else "received",
            is_bulk=False,
            is_role_sender=False,
            sender=from_party,
            to=tuple(p for _, p in to_pairs),
            cc=tuple(p for _, p in cc_pairs),
            date=thread.when.replace(tzinfo=UTC),
            in_reply_to=in_reply_to,
            references=tuple(refs) if thread.position > 0 else (),
            is_duplicate=False,
            is_forward=forward,
            asks_question=asks,
            has_attachment=bool(attachments),
            structure=structure,
            charset=charset,
            transfer_encoding=cte,
            new_text=body.new_text,
            signature=body.signature,
        )
        self._advance(thread, message_id, sender, to, _plain_for_quote(body), subject, raw)
        return self._wrap(raw, thread, labels, meta, index)

    def _advance(
        self,
        thread: _Thread,
        message_id: str | None,
        sender: _Person,
        to: list[_Person],
        text: str,
        subject: str,
        raw: bytes,
    ) -> None:
        if message_id:
            thread.refs.append(message_id)
        thread.last_id = message_id
        thread.last_sender = sender
        thread.last_to = to
        thread.last_text = text
        thread.last_subject = subject
        thread.last_when = thread.when
        thread.last_raw = raw

    def _wrap(
        self, raw: bytes, thread: _Thread, labels: tuple[str, ...], meta: MessageMeta, index: int
    ) -> GeneratedMessage:
        gid = self._gmail_id(thread.when, index)
        if thread.position == 0:
            thread.gmail_thread_id = gid  # Gmail names a thread after its first message
        tid = str(thread.gmail_thread_id)
        raw = (f"X-GM-THRID: {tid}\nX-Gmail-Labels: {','.join(labels)}\n").encode("ascii") + raw
        return GeneratedMessage(
            raw=raw,
            gmail_thread_id=tid,
            labels=labels,
            meta=meta,
            gmail_message_id=format(gid, "x"),
            internal_date=thread.when.replace(tzinfo=UTC),
        )

    def _conversation_labels(self, thread: _Thread, sent: bool) -> tuple[str, ...]:
        rng = self.rng
        labels: list[str] = []
        if sent:
            labels.append("Sent")
            if rng.random() < 0.4:
                labels.append("Opened")
        else:
            labels.append(thread.labels_base[0])
            if "Important" in thread.labels_base:
                labels.append("Important")
            last = thread.position == thread.length - 1
            labels.append("Unread" if last and rng.random() < 0.15 else "Opened")
            labels.extend(x for x in thread.labels_base if x.startswith("Category"))
        if thread.user_label:
            labels.append(thread.user_label)
        return tuple(labels)

    def _address(self, person: _Person, charset: str, q: bool) -> tuple[str, Party]:
        rng = self.rng
        if person.is_account:
            return format_address(person.name, person.email, charset, q), Party(
                person.name, person.email, person.canonical
            )
        email = person.email if not person.variants or rng.random() < 0.85 else _pick(rng, person.variants)
        roll = rng.random()
        name = person.name if roll < 0.8 else ("" if roll < 0.88 else person.alt_name)
        return format_address(name, email, charset, q), Party(name, email, person.canonical)

    def _delivery_headers(self, sender: _Person, when: datetime) -> list[tuple[str, str]]:
        rng = self.rng
        host = sender.email.partition("@")[2].lower()
        ip = ".".join(str(_between(rng, low, 254)) for low in (20, 0, 0, 1))
        arrived = when + timedelta(seconds=_between(rng, 1, 40))
        smtp_id = f"{rng.getrandbits(60):015x}"
        return [
            ("Delivered-To", self.account),
            (
                "Received",
                f"from mail.{host} (mail.{host}. [{ip}])\n        by mx.google.com with ESMTPS id "
                f"{smtp_id}.{_between(rng, 10, 99)}\n        for <{self.account}>\n"
                f"        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);\n"
                f"        {_rfc2822(arrived, -480 if arrived.month in (1, 2, 3, 11, 12) else -420)}",
            ),
            ("Return-Path", f"<{sender.email}>"),
        ]

    def _message_id(self, sender: _Person, index: int, when: datetime, eligible_to_drop: bool) -> str | None:
        rng = self.rng
        if eligible_to_drop and rng.random() < MISSING_ID_RATE:
            return None
        suffix = f"{index:08x}"  # fixed width, so the id is unique whatever the random part
        domain = sender.email.partition("@")[2].lower()
        client = sender.client
        if client == "gmail":
            return "CA" + "".join(rng.choices(_TOKEN_CHARS + "+_-=", k=34)) + suffix + "@mail.gmail.com"
        if client == "outlook":
            pod = _pick(rng, ("DB9PR", "AM6PR", "PAXPR", "BN8PR", "SJ0PR"))
            box = f"{pod}{_between(rng, 1, 9):02d}MB{_between(rng, 1000, 9999)}"
            region = _pick(rng, ("eurprd02", "eurprd04", "namprd12", "namprd06"))
            token = "".join(rng.choices(_TOKEN_CHARS[:36], k=20))
            return f"{box}{token}{suffix.upper()}@{box}.{region}.prod.outlook.com"
        if client in ("apple", "thunderbird"):
            bits = f"{rng.getrandbits(96):024x}{suffix}"
            uid = f"{bits[:8]}-{bits[8:12]}-{bits[12:16]}-{bits[16:20]}-{bits[20:]}"
            return (uid.upper() if client == "apple" else uid) + "@" + domain
        stamp = int((when - datetime(1970, 1, 1)).total_seconds())
        return f"{stamp}.{suffix}.{rng.getrandbits(32):x}@{domain}"

    def _attachments(self, thread: _Thread, pos: int) -> list[_Part]:
        rng = self.rng
        chance = {"invoice": 0.45, "contract": 0.3, "hiring": 0.2, "budget": 0.2}.get(thread.topic, 0.03)
        if pos > 0:
            chance /= 4
        if rng.random() >= chance:
            return []
        slots = thread.slots
        names = {
            "invoice": (f"{slots['inv']}.pdf", "application/pdf"),
            "contract": ("contract-redlines.pdf", "application/pdf"),
            "hiring": (f"CV_{_fold_ascii(slots['cand'].split()[-1]) or 'candidate'}.pdf", "application/pdf"),
            "budget": (f"budget-{slots['quarter']}-{slots['year']}.csv", "text/csv"),
        }
        default = _pick(
            rng,
            (
                ("screenshot.png", "image/png"),
                ("notes.txt", "text/plain"),
                ("Präsentation.pdf", "application/pdf"),
                ("résumé.pdf", "application/pdf"),
                ("invite.ics", "text/calendar"),
            ),
        )
        filename, ctype = names.get(thread.topic, default)
        return [_attachment_part(rng, filename, ctype)]

    # -- bulk and automated mail ---------------------------------------------------------------

    def _newsletter(self, thread: _Thread, index: int) -> GeneratedMessage:
        rng = self.rng
        news = _pick(rng, _NEWSLETTERS)
        slots = thread.slots
        lang = news.lang
        headlines = [h.format_map(slots) for h in rng.sample(_HEADLINES[news.area], 3)]
        blurbs = _BLURBS.get(lang, _BLURBS["en"])
        issue = _between(rng, 50, 600)
        subject = f"{news.name} #{issue}: {headlines[0]}"
        items = [(h, _pick(rng, blurbs)) for h in headlines]
        unsub = f"https://{news.list_host}/unsubscribe?u={rng.getrandbits(48):x}"
        footer = {"fr": "Se désabonner", "de": "Abmelden"}.get(lang, "Unsubscribe")
        plain = (
            f"{news.name} - #{issue}\n\n"
            + "\n\n".join(
                f"* {h}\n  {b}\n  https://{news.list_host}/p/{rng.getrandbits(32):x}" for h, b in items
            )
            + f"\n\n{footer}: {unsub}\n"
        )
        html_text = _newsletter_html(news.name, issue, items, news.list_host, unsub, footer)
        charset = news.charset
        try:
            (plain + html_text).encode(_CODEC[charset])
        except UnicodeEncodeError:
            charset = "utf-8"
        message_id = (
            None
            if rng.random() < MISSING_ID_RATE
            else (
                f"0100018{rng.getrandbits(40):010x}-{rng.getrandbits(32):08x}-{index:08x}-000000@email.amazonses.com"
            )
        )
        headers = [
            *self._bulk_delivery(news.address, thread.when),
            ("MIME-Version", "1.0"),
            ("From", format_address(news.name, news.address, charset)),
            ("Reply-To", news.address),
            ("To", self.account),
            ("Subject", encode_header_text(subject, charset)),
            ("Date", _rfc2822(thread.when, 0, True)),
        ]
        if message_id:
            headers.append(("Message-ID", f"<{message_id}>"))
        headers += [
            (
                "List-Id",
                f"{encode_header_text(news.name)} "
                f"<{news.list_host.replace('.', '-')}.list-id.{news.list_host}>",
            ),
            ("List-Unsubscribe", f"<mailto:unsubscribe@{news.list_host}?subject=unsubscribe>, <{unsub}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("Precedence", "bulk"),
            ("Feedback-ID", f"{issue}:newsletter:{news.list_host}"),
        ]
        structure = "alternative" if rng.random() < 0.8 else "html"
        mime_headers, mime_body, cte, charset = _mime(
            rng, plain, html_text, charset, structure, [], "newsletter", index
        )
        raw = _assemble(headers + mime_headers, mime_body)
        labels = (("Inbox", "Unread") if rng.random() < 0.4 else ("Archived", "Opened")) + (
            "Category Promotions" if news.area in ("travel", "food", "product") else "Category Updates",
        )
        party = Party(news.name, news.address, news.address.lower())
        meta = self._automated_meta(
            thread,
            index,
            message_id,
            "newsletter",
            f"newsletter:{news.area}",
            subject,
            lang,
            party,
            True,
            structure,
            charset,
            cte,
            plain,
            {"newsletter": news.name},
        )
        self._advance(thread, message_id, self.world.account, [], plain, subject, raw)
        return self._wrap(raw, thread, labels, meta, index)

    def _bulk_delivery(self, address: str, when: datetime) -> list[tuple[str, str]]:
        host = address.partition("@")[2]
        return [
            ("Delivered-To", self.account),
            (
                "Received",
                f"from a8-30.smtp-out.amazonses.com (a8-30.smtp-out.amazonses.com. [54.240.8.30])\n"
                f"        by mx.google.com with ESMTPS for <{self.account}>;\n"
                f"        {_rfc2822(when + timedelta(seconds=3), 0)}",
            ),
            ("Return-Path", f"<bounces+{self.rng.getrandbits(24):x}@{host}>"),
        ]

    def _automated_meta(
        self,
        thread: _Thread,
        index: int,
        message_id: str | None,
        kind: str,
        topic: str,
        subject: str,
        lang: str,
        sender: Party,
        bulk: bool,
        structure: str,
        charset: str,
        cte: str,
        text: str,
        facets: dict[str, str],
        in_reply_to: str | None = None,
        references: tuple[str, ...] = (),
    ) -> MessageMeta:
        me = self.world.account
        return MessageMeta(
            index=index,
            message_id=message_id,
            thread_index=thread.index,
            thread_position=thread.position,
            thread_length=thread.length,
            kind=kind,
            topic=topic,
            facets=facets,
            subject=subject,
            language=lang,
            direction="received",
            is_bulk=bulk,
            is_role_sender=True,
            sender=sender,
            to=(Party(me.name, me.email, me.canonical),),
            cc=(),
            date=thread.when.replace(tzinfo=UTC),
            in_reply_to=in_reply_to,
            references=references,
            is_duplicate=False,
            is_forward=False,
            asks_question=False,
            has_attachment=False,
            structure=structure,
            charset=charset,
            transfer_encoding=cte,
            new_text=text,
            signature=None,
        )

    def _receipt(self, thread: _Thread, index: int) -> GeneratedMessage:
        rng = self.rng
        shop = _pick(rng, _SHOPS)
        slots = thread.slots
        name, address = shop.name, shop.address
        order = (
            f"{_between(rng, 100, 999)}-{_between(rng, 1000000, 9999999)}-{_between(rng, 1000000, 9999999)}"
        )
        amount = _money(_between(rng, 5, 900) + _between(rng, 0, 99) / 100, "en")
        facets = {"shop": name, "amount": amount}
        if shop.kind == "goods":
            item = _pick(rng, _GOODS)
            subject = f'Your Amazon.com order #{order} of "{item}"'
            lines = [f"Order #{order}", f"{item}  {amount}", f"Order total: {amount}"]
        elif shop.kind == "ride":
            subject = f"Your {slots['weekday'].lower()} evening trip with Uber"
            lines = [
                f"Total {amount}",
                f"Trip in {slots['city']}",
                "Thanks for riding, we hope you enjoyed it.",
            ]
            facets["city"] = slots["city"]
        elif shop.kind == "subscription":
            subject = "Your receipt from Apple."
            lines = [
                "iCloud+ with 200 GB (Monthly)",
                f"Total: {amount}",
                f"Order ID: M{_between(rng, 10**8, 10**9)}",
            ]
        elif shop.kind == "hotel":
            subject = f"Your booking is confirmed at {slots['hotel']}, {slots['city']}"
            lines = [
                f"Confirmation number: {_between(rng, 10**9, 10**10)}",
                f"{slots['hotel']}, {slots['city']}",
                f"Total price: {amount}",
            ]
            facets["city"] = slots["city"]
        elif shop.kind == "utility":
            subject = f"Your {slots['month']} bill is ready"
            lines = [
                f"Your bill for {slots['month']} {slots['year']} is {amount}.",
                "We'll take payment by direct debit in 14 days.",
            ]
            facets["month"] = slots["month"]
        elif shop.kind == "invoice":
            subject = (
                f"Receipt from {slots['vendor']} [#{_between(rng, 1000, 9999)}-{_between(rng, 1000, 9999)}]"
            )
            name, address = slots["vendor"], shop.address
            lines = [
                f"Amount paid: {amount}",
                f"Date paid: {slots['month']} {slots['day']}, {slots['year']}",
                f"Invoice {slots['inv']}",
            ]
            facets.update(vendor=slots["vendor"], inv=slots["inv"])
        else:
            airline = next(a for a in _AIRLINES if a[0] == slots["airline"])
            name, address = airline[0], f"noreply@{airline[2]}"
            subject = f"Booking confirmation: your flight to {slots['city']}"
            lines = [
                f"Booking reference: {''.join(rng.choices(_TOKEN_CHARS[:26], k=6))}",
                f"Flight {slots['flight']} to {slots['city']}, {slots['day']} {slots['month']}",
                f"Total paid: {amount}",
                "This is your e-ticket receipt.",
            ]
            facets.update(city=slots["city"], airline=airline[0])
        plain = "\n".join(lines) + "\n"
        html_text = _receipt_html(name, lines)
        structure = "html" if rng.random() < 0.5 else "alternative"
        message_id = (
            None
            if rng.random() < MISSING_ID_RATE
            else (f"{rng.getrandbits(64):016x}.{index:08x}@{address.partition('@')[2]}")
        )
        headers = [
            ("Delivered-To", self.account),
            ("Return-Path", f"<{address}>"),
            ("MIME-Version", "1.0"),
            ("From", format_address(name, address)),
            ("To", self.account),
            ("Subject", encode_header_text(subject)),
            ("Date", _rfc2822(thread.when, 0, True)),
        ]
        if message_id:
            headers.append(("Message-ID", f"<{message_id}>"))
        mime_headers, mime_body, cte, charset = _mime(
            rng, plain, html_text, "utf-8", structure, [], "receipt", index
        )
        raw = _assemble(headers + mime_headers, mime_body)
        labels = ("Inbox" if rng.random() < 0.5 else "Archived", "Opened", "Category Updates") + (
            ("Receipts",) if rng.random() < 0.3 else ()
        )
        party = Party(name, address, address.lower())
        meta = self._automated_meta(
            thread,
            index,
            message_id,
            "receipt",
            "receipt",
            subject,
            "en",
            party,
            False,
            structure,
            "utf-8",
            cte,
            plain,
            facets,
        )
        self._advance(thread, message_id, self.world.account, [], plain, subject, raw)
        return self._wrap(raw, thread, labels, meta, index)

    def _github(self, thread: _Thread, index: int) -> GeneratedMessage:
        rng = self.rng
        x = thread.extra
        org, repo, number = x["org"], x["repo"], x["number"]
        kind = "pull" if x["is_pr"] else "issues"
        root = f"{org}/{repo}/{kind}/{number}@github.com"
        actor = _pick(rng, thread.people)
        url = f"https://github.com/{org}/{repo}/{kind}/{number}"
        if thread.position == 0:
            message_id = root
            what = "pull request" if x["is_pr"] else "issue"
            text = (
                f"{actor.alt_name if not actor.name.isascii() else actor.name} opened this {what}.\n\n"
                + _TOPIC_BY_NAME[thread.topic].openers[0].format_map(thread.slots)
            )
            subject = thread.subject
        else:
            comment = 1_000_000 + index
            message_id = f"{org}/{repo}/{kind}/{number}/c{comment}@github.com"
            if x["is_pr"] and thread.position == thread.length - 1 and rng.random() < 0.5:
                text = f"Merged #{number} into main."
            else:
                text = _pick(rng, _TOPIC_BY_NAME[thread.topic].replies).format_map(thread.slots)
            subject = "Re: " + thread.subject
            url += f"#issuecomment-{comment}"
        plain = (
            f"{text}\n\n—\nReply to this email directly, view it on GitHub:\n{url}\n"
            f"You are receiving this because you were mentioned.Message ID: <{message_id}>\n"
        )
        html_text = (
            f'<p></p>\n<p dir="auto">{html.escape(text)}</p>\n<p style="font-size:small;color:#666">'
            f'&mdash;<br>Reply to this email directly, <a href="{url}">view it on GitHub</a>.</p>\n'
        )
        actor_party = Party(actor.name, "notifications@github.com", "notifications@github.com")
        headers = [
            ("Delivered-To", self.account),
            ("Return-Path", "<noreply@github.com>"),
            ("Date", _rfc2822(thread.when, -420 if 4 <= thread.when.month <= 10 else -480)),
            ("From", format_address(actor.name, "notifications@github.com")),
            ("Reply-To", f"{org}/{repo} <reply+{rng.getrandbits(80):020X}@reply.github.com>"),
            ("To", f"{org}/{repo} <{repo}@noreply.github.com>"),
            (
                "Cc",
                f"{format_address(self.world.account.name, self.account)}, Mention "
                f"<mention@noreply.github.com>",
            ),
            ("Message-ID", f"<{message_id}>"),
        ]
        in_reply_to = root if thread.position > 0 else None
        if in_reply_to:
            headers += [("In-Reply-To", f"<{root}>"), ("References", f"<{root}>")]
        headers += [
            ("Subject", subject),
            ("MIME-Version", "1.0"),
            ("List-ID", f"{org}/{repo} <{repo}.{org}.github.com>"),
            ("List-Archive", f"https://github.com/{org}/{repo}"),
            (
                "List-Unsubscribe",
                f"<mailto:unsub+{rng.getrandbits(40):x}@reply.github.com>, "
                f"<https://github.com/notifications/unsubscribe/{rng.getrandbits(64):x}>",
            ),
            ("Precedence", "list"),
            ("X-GitHub-Reason", _pick(rng, ("mention", "subscribed", "author"))),
            ("X-Auto-Response-Suppress", "All"),
        ]
        mime_headers, mime_body, cte, charset = _mime(
            rng, plain, html_text, "utf-8", "alternative", [], "github", index
        )
        raw = _assemble(headers + mime_headers, mime_body)
        labels = (*thread.labels_base[:1], "Opened", *thread.labels_base[1:]) + (
            (thread.user_label,) if thread.user_label else ()
        )
        meta = self._automated_meta(
            thread,
            index,
            message_id,
            "notification",
            thread.topic,
            subject,
            "en",
            actor_party,
            True,
            "alternative",
            "utf-8",
            cte,
            text,
            thread.facets,
            in_reply_to,
            (root,) if in_reply_to else (),
        )
        self._advance(thread, message_id, self.world.account, [], plain, subject, raw)
        return self._wrap(raw, thread, labels, meta, index)

    def _alert(self, thread: _Thread, index: int) -> GeneratedMessage:
        rng = self.rng
        s = thread.slots
        me = self.world.account
        extra: list[tuple[str, str]] = []
        bulk = False
        if thread.topic == "security":
            name, address = "Google", "no-reply@accounts.google.com"
            subject = "Security alert"
            text = (
                f"New sign-in to your account\n\n{self.account}\nWe noticed a new sign-in to your Google "
                f"Account on a Mac device in {s['city']}. If this was you, you don't need to do anything."
            )
            extra.append(("Auto-Submitted", "auto-generated"))
            facets = {"city": s["city"]}
        elif thread.topic == "calendar":
            name, address = "Google Calendar", "calendar-notification@google.com"
            subject = (
                f"Notification: Weekly sync @ {s['weekday']} {s['day']} {s['month']} {s['year']} {s['time']}"
            )
            text = (
                "This is a reminder for the following event.\n\n"
                f"Weekly sync\n{s['weekday']} {s['time']}\n{s['room']}"
            )
            extra.append(("Auto-Submitted", "auto-generated"))
            facets = {"weekday": s["weekday"]}
            thread.topic = "meeting"
        elif thread.topic == "jira":
            key = f"PAY-{_between(rng, 100, 9999)}"
            name, address = "Jira", f"jira@{_fold_ascii(s['customer'].split()[0])}.atlassian.net"
            subject = f"[JIRA] ({key}) {s['service']}: {s['err']}"
            reporter = _pick(rng, self.world.people).name
            text = f"{reporter} created {key}:\n\n{s['err']} in {s['service']}.\nPriority: High"
            extra += [("Auto-Submitted", "auto-generated"), ("Precedence", "bulk")]
            bulk = True
            facets = {"service": s["service"], "err": s["err"]}
            thread.topic = "bug"
        elif thread.topic == "slack":
            name, address = "Slack", "notification@slack.com"
            person = _pick(rng, self.world.people)
            subject = (
                f"[Slack] New messages from {person.alt_name if not person.name.isascii() else person.name}"
            )
            text = (
                f'You have a new direct message from {person.name}:\n\n"Quick question about the '
                f'{s["proj"]} demo, do you have five minutes?"\n\nOpen Slack to reply.'
            )
            facets = {"proj": s["proj"]}
            thread.topic = "project"
        else:
            name, address = "LinkedIn", "messages-noreply@linkedin.com"
            person = _pick(rng, self.world.people)
            subject = f"{person.name} sent you a message"
            text = (
                f"{person.name}: Hi {me.first}, I came across your profile and we have an opening for a "
                f"{s['role']} that might interest you."
            )
            extra.append(
                ("List-Unsubscribe", f"<https://www.linkedin.com/e/v2/unsub?m={rng.getrandbits(40):x}>")
            )
            bulk = True
            facets = {"role": s["role"]}
            thread.topic = "hiring"
        plain = text + "\n"
        html_text = f'<html><body><div style="font-family:Arial">{_html_lines(text)}</div></body></html>\n'
        message_id = f"{rng.getrandbits(64):016x}-{index:08x}@{address.partition('@')[2]}"
        headers = [
            ("Delivered-To", self.account),
            ("Return-Path", f"<{address}>"),
            ("MIME-Version", "1.0"),
            ("Date", _rfc2822(thread.when, 0, True)),
            ("Message-ID", f"<{message_id}>"),
            ("Subject", encode_header_text(subject)),
            ("From", format_address(name, address)),
            ("To", self.account),
            *extra,
        ]
        structure = "alternative" if rng.random() < 0.7 else "html"
        mime_headers, mime_body, cte, charset = _mime(
            rng, plain, html_text, "utf-8", structure, [], "alert", index
        )
        raw = _assemble(headers + mime_headers, mime_body)
        labels = ("Inbox" if rng.random() < 0.5 else "Archived", "Opened", "Category Updates")
        meta = self._automated_meta(
            thread,
            index,
            message_id,
            "notification",
            thread.topic,
            subject,
            "en",
            Party(name, address, address.lower()),
            bulk,
            structure,
            "utf-8",
            cte,
            text,
            facets,
        )
        self._advance(thread, message_id, me, [], plain, subject, raw)
        return self._wrap(raw, thread, labels, meta, index)

    def _bounce(self, thread: _Thread, index: int) -> GeneratedMessage:
        me = self.world.account
        bad = thread.extra["bad"]
        victim = thread.people[0]
        if thread.position == 0:
            # The account's own message to a mistyped address: it must have a Message-ID to bounce against.
            greeting = _pick(self.rng, _GREET["en"]).format(first=victim.first)
            opener = _TOPIC_BY_NAME[thread.topic].openers[0].format_map(thread.slots)
            body = _Body(new_text=f"{greeting}\n\n{opener}\n\nThanks,\n{me.first}", signature=me.signature)
            plain = _render_plain(body)
            message_id = self._message_id(me, index, thread.when, eligible_to_drop=False)
            assert message_id
            headers = [
                ("MIME-Version", "1.0"),
                ("From", format_address(me.name, me.email)),
                ("Date", _rfc2822(thread.when, _offset_at(me, thread.when))),
                ("Message-ID", f"<{message_id}>"),
                ("Subject", encode_header_text(thread.subject)),
                ("To", format_address(victim.name, bad)),
            ]
            mime_headers, mime_body, cte, charset = _mime(
                self.rng,
                plain,
                _render_html(body, "gmail", "utf-8"),
                "utf-8",
                "alternative",
                [],
                "gmail",
                index,
            )
            raw = _assemble(headers + mime_headers, mime_body)
            meta = MessageMeta(
                index=index,
                message_id=message_id,
                thread_index=thread.index,
                thread_position=0,
                thread_length=2,
                kind="bounce",
                topic=thread.topic,
                facets={},
                subject=thread.subject,
                language="en",
                direction="sent",
                is_bulk=False,
                is_role_sender=False,
                sender=Party(me.name, me.email, me.canonical),
                to=(Party(victim.name, bad, gmail_canonical(bad)),),
                cc=(),
                date=thread.when.replace(tzinfo=UTC),
                in_reply_to=None,
                references=(),
                is_duplicate=False,
                is_forward=False,
                asks_question=False,
                has_attachment=False,
                structure="alternative",
                charset="utf-8",
                transfer_encoding=cte,
                new_text=body.new_text,
                signature=body.signature,
            )
            self._advance(thread, message_id, me, [victim], plain, thread.subject, raw)
            return self._wrap(raw, thread, ("Sent",), meta, index)
        original_id = thread.last_id
        assert original_id
        message_id = f"{self.rng.getrandbits(64):016x}.{index:08x}@mx.google.com"
        explanation = (
            f"\n** Address not found **\n\nYour message wasn't delivered to {bad} because the address "
            f"couldn't be found, or is unable to receive mail.\n\nThe response from the remote server "
            f"was:\n550 5.1.1 The email account that you tried to reach does not exist.\n"
        )
        status = (
            f"Reporting-MTA: dns; googlemail.com\nArrival-Date: {_rfc2822(thread.when, 0)}\n\n"
            f"Final-Recipient: rfc822; {bad}\nAction: failed\nStatus: 5.1.1\n"
            f"Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist.\n"
            f"Last-Attempt-Date: {_rfc2822(thread.when, 0)}\n"
        )
        boundary = f"000000000000{self.rng.getrandbits(48):012x}"
        parts = [
            _Part('text/plain; charset="UTF-8"', "7bit", explanation.encode()),
            _Part("message/delivery-status", "7bit", status.encode()),
            _Part("message/rfc822", "7bit" if thread.last_raw.isascii() else "8bit", thread.last_raw),
        ]
        headers = [
            ("Delivered-To", self.account),
            ("Return-Path", "<>"),
            ("MIME-Version", "1.0"),
            ("From", "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"),
            ("To", self.account),
            ("Auto-Submitted", "auto-replied"),
            ("Message-ID", f"<{message_id}>"),
            ("Date", _rfc2822(thread.when, -480)),
            ("Subject", "Delivery Status Notification (Failure)"),
            ("References", f"<{original_id}>"),
            ("In-Reply-To", f"<{original_id}>"),
            ("X-Failed-Recipients", bad),
            ("Content-Type", f'multipart/report; boundary="{boundary}"; report-type=delivery-status'),
        ]
        raw = _assemble(headers, _multipart(boundary, parts))
        party = Party(
            "Mail Delivery Subsystem", "mailer-daemon@googlemail.com", "mailer-daemon@googlemail.com"
        )
        meta = self._automated_meta(
            thread,
            index,
            message_id,
            "bounce",
            thread.topic,
            "Delivery Status Notification (Failure)",
            "en",
            party,
            False,
            "report",
            "utf-8",
            "7bit",
            explanation,
            {"failed_recipient": bad},
            original_id,
            (original_id,),
        )
        self._advance(thread, message_id, me, [], explanation, meta.subject, raw)
        return self._wrap(raw, thread, ("Inbox", "Unread"), meta, index)


def _plain_for_quote(body: _Body) -> str:
    """What a replier sees and quotes: the previous message's full plain text."""
    return _render_plain(body).rstrip("\n")


# ---------------------------------------------------------------------------------------------
# Rendering.


def _money(value: float, locale: str) -> str:
    if locale == "en":
        return f"${value:,.2f}"
    if locale in ("fr", "pl", "ru"):
        return f"{value:,.2f} €".replace(",", "\u202f").replace(".", ",")
    text = f"{value:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")
    return f"{text} €"


def _gmail_date(when: datetime, lang: str) -> str:
    hour = when.hour % 12 or 12
    return (
        f"{_WD_EN[when.weekday()]}, {_MON_EN[when.month - 1]} {when.day}, {when.year} at {hour}:"
        f"{when.minute:02d} {'AM' if when.hour < 12 else 'PM'}"
    )


def _long_date(when: datetime, lang: str) -> str:
    wd = _WD_LONG.get(lang, _WD_LONG["en"])[when.weekday()]
    mon = _MON_LONG.get(lang, _MON_LONG["en"])[when.month - 1]
    hm = f"{when.hour:02d}:{when.minute:02d}"
    if lang == "en":
        return f"{wd}, {mon} {when.day}, {when.year} {when.hour % 12 or 12}:{when.minute:02d} " + (
            "AM" if when.hour < 12 else "PM"
        )
    if lang == "de":
        return f"{wd}, {when.day}. {mon} {when.year} {hm}"
    if lang in ("es", "pt"):
        return f"{wd}, {when.day} de {mon} de {when.year} {hm}"
    return f"{wd} {when.day} {mon} {when.year} {hm}"


def _attribution(client: str, lang: str, when: datetime, name: str, email: str) -> str:
    """The line a mail client writes above a quoted reply, in the replier's language."""
    d, y, hm = when.day, when.year, f"{when.hour:02d}:{when.minute:02d}"
    if lang == "en" or lang not in _WD_SHORT:
        if client == "apple":
            return f"On {d} {_MON_EN[when.month - 1]} {y}, at {hm}, {name} <{email}> wrote:"
        if client == "thunderbird":
            return f"On {d:02d}/{when.month:02d}/{y} {hm}, {name} wrote:"
        return f"On {_gmail_date(when, 'en')} {name} <{email}> wrote:"
    wd, mon = _WD_SHORT[lang][when.weekday()], _MON_SHORT[lang][when.month - 1]
    if lang == "fr":
        if client == "apple":
            return f"Le {d} {mon} {y} à {hm}, {name} <{email}> a écrit :"
        return f"Le {wd} {d} {mon} {y} à {hm}, {name} <{email}> a écrit :"
    if lang == "de":
        if client == "thunderbird":
            return f"Am {d:02d}.{when.month:02d}.{y % 100:02d} um {hm} schrieb {name}:"
        return f"Am {wd}, {d}. {mon} {y} um {hm} Uhr schrieb {name} <{email}>:"
    if lang == "es":
        return f"El {wd}, {d} {mon} {y} a las {hm}, {name} (<{email}>) escribió:"
    if lang == "it":
        return f"Il giorno {wd} {d} {mon} {y} alle ore {hm} {name} <{email}> ha scritto:"
    return f"Em {wd}, {d} de {mon} de {y} às {hm}, {name} <{email}> escreveu:"


def _prefix_lines(text: str) -> str:
    # "> " before every line, ">" alone on blank lines, as Gmail writes them.
    return ("> " + text.replace("\n", "\n> ")).replace("> \n", ">\n")


def _render_plain(body: _Body) -> str:
    parts = [body.new_text]
    if body.signature:
        parts.append(("-- \n" if body.sig_delim else "") + body.signature)
    if body.quote_intro is not None and body.quoted is not None:
        if body.quote_style == "prefix":
            parts.append(body.quote_intro + "\n" + _prefix_lines(body.quoted))
        else:
            parts.append(body.quote_intro + "\n\n" + body.quoted)
    return "\n\n".join(parts) + "\n"


def _html_lines(text: str) -> str:
    return html.escape(text).replace("\n", "<br>\n")


def _render_html(body: _Body, client: str, charset: str) -> str:
    paras = "".join(f"<div>{_html_lines(p)}</div><div><br></div>" for p in body.new_text.split("\n\n"))
    sig = ""
    if body.signature:
        dash = "-- <br>" if body.sig_delim else ""
        sig = f'<div dir="ltr" class="gmail_signature">{dash}{_html_lines(body.signature)}</div>'
    quote = ""
    if body.quote_intro is not None and body.quoted is not None:
        if body.quote_style == "prefix":
            quote = (
                '<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
                f"{_html_lines(body.quote_intro)}"
                f'<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px '
                f'solid rgb(204,204,204);padding-left:1ex">{_html_lines(body.quoted)}</blockquote></div>'
            )
        else:
            quote = (
                f'<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
                f'<p class="MsoNormal">{_html_lines(body.quote_intro)}</p></div>'
                f"<div>{_html_lines(body.quoted)}</div>"
            )
    if client == "outlook":
        return (
            '<html><head><meta http-equiv="Content-Type" '
            f'content="text/html; charset={_CHARSET_LABEL[charset]}">'
            f'<style>p.MsoNormal{{margin:0cm;font-size:11.0pt;font-family:"Calibri",sans-serif}}</style></head>'
            f'<body lang="EN-US"><div class="WordSection1">{paras}{sig}{quote}</div></body></html>\n'
        )
    return f'<div dir="ltr">{paras}{sig}</div>{quote}\n'


def _newsletter_html(
    name: str, issue: int, items: list[tuple[str, str]], host: str, unsub: str, footer: str
) -> str:
    rows = "".join(
        f'<tr><td style="padding:12px 0"><h2 style="font-size:18px;margin:0">'
        f'<a href="https://{host}/r/{abs(_hash_text(h)):x}">{html.escape(h)}</a></h2>'
        f'<p style="margin:4px 0;color:#444">{html.escape(b)}</p></td></tr>'
        for h, b in items
    )
    return (
        f'<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width"></head>'
        f'<body style="background:#f4f4f4"><table width="600" align="center" cellpadding="0" cellspacing="0">'
        f"<tr><td><h1>{html.escape(name)} #{issue}</h1></td></tr>{rows}"
        f'<tr><td style="font-size:11px;color:#999"><a href="{unsub}">{html.escape(footer)}</a></td></tr>'
        f'</table><img src="https://{host}/o/{issue}.gif" width="1" height="1" alt=""></body></html>\n'
    )


def _hash_text(text: str) -> int:
    """A stable small hash (the built-in hash() is salted per process, which would break determinism)."""
    value = 2166136261
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


def _receipt_html(name: str, lines: list[str]) -> str:
    rows = "".join(f'<tr><td style="padding:4px 0">{html.escape(ln)}</td></tr>' for ln in lines)
    return (
        f'<html><body><table width="100%" style="font-family:Helvetica,Arial"><tr><td>'
        f'<h1 style="font-size:20px">{html.escape(name)}</h1></td></tr>{rows}</table></body></html>\n'
    )


def _pick_charset(rng: random.Random, sender: _Person, text: str) -> str:
    roll = rng.random()
    wanted = "utf-8"
    if sender.locale == "ru" and roll < 0.5:
        wanted = "koi8-r"
    elif sender.locale == "ja" and roll < 0.4:
        wanted = "shift_jis"
    elif sender.lang in ("fr", "de", "es", "it", "pt"):
        wanted = "iso-8859-1" if roll < 0.25 else ("windows-1252" if roll < 0.35 else "utf-8")
    elif sender.client == "outlook" and roll < 0.3:
        wanted = "windows-1252"
    if wanted != "utf-8":
        try:
            text.encode(_CODEC[wanted])
        except UnicodeEncodeError:
            return "utf-8"  # the quoted text has characters this charset lacks, as real clients find out
    return wanted


def _pick_cte(rng: random.Random, charset: str, text: str) -> str:
    if text.isascii():
        return "7bit" if rng.random() < 0.7 else "quoted-printable"
    roll = rng.random()
    if charset == "utf-8":
        return "quoted-printable" if roll < 0.5 else ("base64" if roll < 0.7 else "8bit")
    if charset in ("iso-8859-1", "windows-1252"):
        return "quoted-printable" if roll < 0.6 else "8bit"
    return "base64" if roll < 0.6 else "8bit"


def _pick_structure(rng: random.Random, client: str) -> str:
    weights = {
        "gmail": (15, 85, 0),
        "outlook": (0, 88, 12),
        "apple": (50, 50, 0),
        "thunderbird": (80, 20, 0),
        "webmail": (30, 45, 25),
    }[client]
    return rng.choices(("text", "alternative", "html"), weights)[0]


def _attachment_part(rng: random.Random, filename: str, ctype: str) -> _Part:
    size = _between(rng, 300, 3000)
    magic = {"application/pdf": b"%PDF-1.4\n", "image/png": b"\x89PNG\r\n\x1a\n"}.get(ctype, b"")
    if ctype.startswith("text/"):
        payload = (
            "date,item,amount\n"
            + "".join(f"2023-0{i % 9 + 1}-1{i % 9},item {i},{i * 13.5:.2f}\n" for i in range(size // 30))
        ).encode()
    else:
        payload = magic + rng.randbytes(size)
    if filename.isascii():
        disp = f'attachment; filename="{filename}"'
        ct = f'{ctype}; name="{filename}"'
    else:
        quoted = "".join(
            chr(b) if b < 128 and (chr(b).isalnum() or chr(b) in "._-") else f"%{b:02X}"
            for b in filename.encode("utf-8")
        )
        disp = f"attachment; filename*=UTF-8''{quoted}"
        ct = f'{ctype}; name="{encode_header_text(filename)}"'
    return _Part(ct, "base64", base64.encodebytes(payload), disp)


def _text_part(rng: random.Random, text: str, subtype: str, charset: str, client: str) -> _Part:
    cte = _pick_cte(rng, charset, text)
    label = _CHARSET_LABEL[charset] if client != "apple" else charset
    ctype = f'text/{subtype}; charset="{label}"'
    if subtype == "plain" and client == "thunderbird":
        ctype = f"text/plain; charset={label}; format=flowed"
    return _Part(ctype, cte, _encode_body(text, charset, cte))


def _mime(
    rng: random.Random,
    plain: str,
    html_text: str | None,
    charset: str,
    structure: str,
    attachments: list[_Part],
    client: str,
    index: int,
) -> tuple[list[tuple[str, str]], bytes, str, str]:
    """Top-level MIME headers and body bytes; also the main text part's transfer encoding and charset."""
    if html_text is not None and charset != "utf-8":
        try:
            html_text.encode(_CODEC[charset])
        except UnicodeEncodeError:
            charset = "utf-8"
    if structure == "html" and html_text is not None:
        main = [_text_part(rng, html_text, "html", charset, client)]
    elif structure == "alternative" and html_text is not None:
        main = [
            _text_part(rng, plain, "plain", charset, client),
            _text_part(rng, html_text, "html", charset, client),
        ]
    else:
        main = [_text_part(rng, plain, "plain", charset, client)]
    cte = main[0].cte
    if len(main) == 1 and not attachments:
        part = main[0]
        return (
            [("Content-Type", part.content_type), ("Content-Transfer-Encoding", part.cte)],
            part.payload,
            cte,
            charset,
        )
    boundary = _boundary(rng, client, index)
    if len(main) == 2:
        inner: bytes = _multipart(boundary + "_alt", main)
        inner_part = _Part(f'multipart/alternative; boundary="{boundary}_alt"', "", inner)
        if not attachments:
            return (
                [("Content-Type", f'multipart/alternative; boundary="{boundary}_alt"')],
                inner,
                cte,
                charset,
            )
        leaves = [inner_part, *attachments]
    else:
        leaves = [main[0], *attachments]
    return (
        [("Content-Type", f'multipart/mixed; boundary="{boundary}"')],
        _multipart(boundary, leaves),
        cte,
        charset,
    )


def _boundary(rng: random.Random, client: str, index: int) -> str:
    if client == "outlook":
        return f"_000_{rng.getrandbits(64):016X}{index:08X}_"
    if client == "apple":
        return f"Apple-Mail={rng.getrandbits(64):016X}-{index:08X}"
    return f"000000000000{rng.getrandbits(32):08x}{index:08x}"


def _multipart(boundary: str, parts: Sequence[_Part]) -> bytes:
    out: list[bytes] = []
    marker = f"--{boundary}\n".encode("ascii")
    for part in parts:
        head = f"Content-Type: {part.content_type}\n"
        if part.cte:
            head += f"Content-Transfer-Encoding: {part.cte}\n"
        if part.disposition:
            head += f"Content-Disposition: {part.disposition}\n"
        payload = part.payload if part.payload.endswith(b"\n") else part.payload + b"\n"
        out.append(marker + head.encode("ascii") + b"\n" + payload)
    out.append(f"--{boundary}--\n".encode("ascii"))
    return b"\n".join(out)


def _client_headers(client: str, subject: str, rng: random.Random) -> list[tuple[str, str]]:
    if client == "apple":
        return [("X-Mailer", "Apple Mail (2.3731.600.7)")]
    if client == "thunderbird":
        return [
            ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"),
            ("Content-Language", "en-US"),
        ]
    if client == "outlook":
        return [
            ("Thread-Topic", encode_header_text(subject)),
            ("Thread-Index", base64.b64encode(rng.randbytes(22)).decode("ascii")),
            ("Accept-Language", "en-US"),
            ("Content-Language", "en-US"),
        ]
    return []


def _assemble(headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    # Header values stay ASCII (encoded words), so this encode never fails.
    return head.encode("ascii") + b"\n" + body


# ---------------------------------------------------------------------------------------------
# Public entry points.


def iter_messages(
    count: int, *, seed: int = 0, account: str = "me@example.com"
) -> Iterator[GeneratedMessage]:
    """Yield exactly `count` messages; the same arguments always yield the same messages."""
    if count < 0:
        raise ValueError("count must be >= 0")
    if "@" not in account:
        raise ValueError(f"account must be an email address, got {account!r}")
    return _Generator(count, seed, account).run()


def mbox_entry(message: GeneratedMessage, crlf: bool = False) -> bytes:
    """One mbox entry: the Takeout postmark, the escaped message, and the blank separator line."""
    when = message.internal_date.replace(tzinfo=None)
    postmark = f"From {int(message.gmail_message_id, 16)}@xxx {_postmark_date(when)}\n".encode("ascii")
    body = mboxrd_escape(message.raw)
    if crlf:
        body = body.replace(b"\n", b"\r\n")
        return postmark + body + b"\r\n"
    return postmark + body + b"\n"


def write_mbox(
    messages: Iterator[GeneratedMessage],
    out: BinaryIO,
    *,
    crlf: bool = False,
    meta_out: BinaryIO | None = None,
) -> GenerationStats:
    """Stream messages into an open binary file; optionally ground truth as JSON lines."""
    total = without = duplicates = threads = written = 0
    for message in messages:
        entry = mbox_entry(message, crlf)
        out.write(entry)
        written += len(entry)
        total += 1
        meta = message.meta
        if meta.message_id is None:
            without += 1
        elif meta.is_duplicate:
            duplicates += 1
        if meta.thread_position == 0 and not meta.is_duplicate:
            threads += 1
        if meta_out is not None:
            meta_out.write(json.dumps(meta_record(message), ensure_ascii=False).encode("utf-8") + b"\n")
    return GenerationStats(
        messages=total,
        distinct_message_ids=total - without - duplicates,
        without_message_id=without,
        duplicates=duplicates,
        threads=threads,
        bytes=written,
    )


def meta_record(message: GeneratedMessage) -> dict[str, Any]:
    """Ground truth for one message as plain JSON-able values."""
    record = asdict(message.meta)
    record["date"] = message.meta.date.isoformat()
    record["gmail_message_id"] = message.gmail_message_id
    record["gmail_thread_id"] = message.gmail_thread_id
    record["labels"] = list(message.labels)
    return record


def generate_mbox(
    path: Path,
    count: int,
    *,
    seed: int = 0,
    account: str = "me@example.com",
    crlf: bool = False,
    meta_path: Path | None = None,
) -> GenerationStats:
    """Write `count` messages to `path` as a Takeout-style mbox, streaming; return what was written."""
    messages = iter_messages(count, seed=seed, account=account)
    with open(path, "wb", buffering=1 << 20) as out:
        if meta_path is None:
            return write_mbox(messages, out, crlf=crlf)
        with open(meta_path, "wb", buffering=1 << 20) as meta_out:
            return write_mbox(messages, out, crlf=crlf, meta_out=meta_out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generate", description="Write a seeded, realistic Takeout-style mbox."
    )
    parser.add_argument("out", type=Path, help="mbox file to write")
    parser.add_argument("--count", type=int, required=True, help="number of mbox entries to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--account", default="me@example.com")
    parser.add_argument("--crlf", action="store_true", help="CRLF line endings inside messages")
    parser.add_argument("--meta", type=Path, help="also write ground truth, one JSON object per message")
    parser.add_argument("--json", action="store_true", help="print the stats as JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    stats = generate_mbox(
        args.out, args.count, seed=args.seed, account=args.account, crlf=args.crlf, meta_path=args.meta
    )
    seconds = time.perf_counter() - started
    report = {
        **asdict(stats),
        "seconds": round(seconds, 3),
        "messages_per_second": round(stats.messages / seconds) if seconds else None,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
