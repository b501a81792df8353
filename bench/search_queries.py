"""A labelled query set for a generated mailbox, from what the generator planted in each thread.

Every conversation thread of `bench.generate` has a topic and the facts its templates filled in
(`MessageMeta.facets`: the invoice number, the city, the candidate ...). A query is written from
one thread's facts the way a person would type it; the threads that answer it are every thread of
the same topic with the same facts, provided the facts really appear in that thread's text
(subject or what a sender wrote) — a fact that no message states cannot be searched for.

Judged per thread, as search answers one hit per thread: recall@k of a query is the share of its
answering threads among the top k hits, out of at most k (a query answered by 30 threads scores
1.0 when all ten hits answer it).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# topic -> (facets the query names, how a person would ask). Phrasings mix bare keywords with
# questions whose other words need not occur in the mail, so both halves of the hybrid are tested.
TEMPLATES: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "invoice": ((("inv",), "invoice {inv}"),
                (("inv",), "has invoice {inv} been paid?"),
                (("vendor", "month"), "{vendor} invoice for {month}")),
    "travel": ((("city",), "flight to {city}"),
               (("airline", "city"), "{airline} booking to {city}"),
               (("city",), "hotel for the trip to {city}")),
    "hiring": ((("cand",), "interview with {cand}"),
               (("cand", "role"), "{cand} applying as {role}"),
               (("role",), "we are hiring a {role}")),
    "bug": ((("bug",), "bug {bug}"),
            (("service",), "{service} errors after the deploy"),
            (("err",), "{err}")),
    "migration": ((("db", "pg_to"), "upgrade the {db} database to Postgres {pg_to}"),
                  (("db",), "{db} migration window")),
    "support": ((("ticket",), "support ticket {ticket}"),
                (("customer",), "escalation from {customer}")),
    "contract": ((("vendor",), "contract with {vendor}"),
                 (("doc",), "who needs to sign {doc}")),
    "launch": ((("feature",), "launch plan for {feature}"),),
    "conference": ((("event",), "our talk at {event}"),
                   (("event", "city"), "{event} in {city}")),
    "project": ((("proj",), "status of the {proj} project"),),
    "meeting": ((("room",), "meeting in {room}"),),
}


@dataclass(frozen=True, slots=True)
class LabelledQuery:
    query: str
    topic: str
    facts: dict[str, str]
    threads: frozenset[int]  # generator thread ordinals that answer it
    messages: int  # how many messages those threads hold


@dataclass(slots=True)
class _Thread:
    topic: str
    facets: dict[str, str]
    text: list[str]
    messages: int = 0


def read_threads(meta_path: Path) -> tuple[dict[int, _Thread], dict[str, int]]:
    """Conversation threads by ordinal, and the thread ordinal of every Message-ID."""
    threads: dict[int, _Thread] = {}
    thread_of: dict[str, int] = {}
    with meta_path.open(encoding="utf-8") as fh:
        for line in fh:
            m = json.loads(line)
            if m["message_id"]:
                thread_of[m["message_id"]] = m["thread_index"]
            if m["kind"] != "conversation" or m["is_duplicate"]:
                continue
            t = threads.setdefault(m["thread_index"], _Thread(m["topic"], m["facets"], []))
            t.text.append(m["subject"])
            t.text.append(m["new_text"])
            t.messages += 1
    return threads, thread_of


def labelled_queries(meta_path: Path, *, count: int, seed: int = 0) -> list[LabelledQuery]:
    """About `count` distinct queries spread over the templates, each with the threads that answer it."""
    threads, _ = read_threads(meta_path)
    stated: dict[int, _Thread] = {}
    for ordinal, t in threads.items():
        body = "\n".join(t.text)
        # Only facts a message states count, for matching as for asking.
        t.facets = {k: v for k, v in t.facets.items() if v and v in body}
        stated[ordinal] = t
    index: dict[tuple[str, tuple[tuple[str, str], ...]], set[int]] = defaultdict(set)
    for ordinal, t in stated.items():
        for keys, _ in TEMPLATES.get(t.topic, ()):
            if all(k in t.facets for k in keys):
                index[(t.topic, tuple((k, t.facets[k]) for k in keys))].add(ordinal)
    rng = random.Random(seed)
    templates = [(topic, keys, phrase) for topic, items in TEMPLATES.items() for keys, phrase in items]
    per_template = max(1, count // len(templates))
    out: list[LabelledQuery] = []
    seen: set[str] = set()
    for topic, keys, phrase in templates:
        choices = sorted(fk for (tp, fk) in index if tp == topic and tuple(k for k, _ in fk) == keys)
        rng.shuffle(choices)
        for facts in choices[:per_template]:
            values = dict(facts)
            query = phrase.format_map(values)
            if query in seen:
                continue
            seen.add(query)
            answering = frozenset(index[(topic, facts)])
            out.append(LabelledQuery(query=query, topic=topic, facts=values, threads=answering,
                                     messages=sum(stated[o].messages for o in answering)))
    return out


def recall_at(found_threads: Iterable[int | None], relevant: frozenset[int], k: int) -> float:
    """Share of the relevant threads among the first k hits' threads, out of min(k, relevant)."""
    top = {t for t in list(found_threads)[:k] if t is not None}
    return len(top & relevant) / min(k, len(relevant))
