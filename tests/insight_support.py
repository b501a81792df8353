"""Helpers of the LLM insight tests: normalized windows from raw mail, settings pointing at the project's
OpenAI-compatible server, the insight stage run as the Celery task runs it, and a responder that derives
its answers from the request like a (naive) model would."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from pipeline.insights.prompt import DATA_CLOSE, DATA_OPEN, extract_data
from pipeline.records import RawMessage
from pipeline.runs import StageClaim, add_window, begin_run, end_reading, ensure_account
from pipeline.settings import Settings
from pipeline.stages.ingest import ingest_window
from pipeline.stages.insight import insight_pending, insight_tools_for, mark_insights
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import StageResult, run_stage
from pipeline.testing.openai_server import OpenAIServer

ME = "me@example.com"


def mail(n: str, subject: str, body: str, *, sender: str = "Ann <ann@example.org>", to: str = ME,
         reply_to: str | None = None, hour: int = 10, headers: str = "") -> bytes:
    """One raw message; `n` makes its Message-ID (<n@example.org>), `reply_to` the parent's `n`."""
    parent = f"In-Reply-To: <{reply_to}@example.org>\nReferences: <{reply_to}@example.org>\n" if reply_to else ""
    return (f"From: {sender}\nTo: {to}\nSubject: {subject}\nMessage-ID: <{n}@example.org>\n{parent}{headers}"
            f"Date: Mon, 23 Nov 2026 {hour:02d}:00:00 +0000\n\n{body}\n").encode()


def normalized_window(engine: Engine, raws: list[bytes], seq: int = 0) -> tuple[int, int]:
    """(run id, window id) of a window whose messages went through ingest, normalize and contacts."""
    account = ensure_account(engine, ME, [ME])
    run = begin_run(engine, account, "import", f"test-{seq}", stale_seconds=60)
    wid = add_window(engine, run, 0, [RawMessage(f"offset:{seq}:{i}", raw) for i, raw in enumerate(raws)])
    end_reading(engine, run, len(raws), 1)
    settings = Settings()
    assert run_stage(engine, settings, wid, "ingest", ingest_window).outcome == "done"
    assert run_stage(engine, settings, wid, "normalize", normalize_window).outcome == "done"
    assert run_stage(engine, settings, wid, "contacts", lambda s, c: {}).outcome == "done"
    # Embeddings are not under test: done, so the run finishes once its insights are (and the next can begin).
    assert run_stage(engine, settings, wid, "embed", lambda s, c: {}).outcome == "done"
    return run, wid


def llm_settings(server: OpenAIServer, **overrides: Any) -> Settings:
    """LLM insights against `server`; breakers and the AI limit on PostgreSQL / in process (no Redis), so
    no other test session's state is shared."""
    values: dict[str, Any] = {"ai_base_url": server.base_url, "ai_api_key": "test-key", "insights": "llm",
                              "broker_url": None, "redis_url": None, "ai_timeout": 10.0}
    values.update(overrides)
    return Settings(**values)


def run_insight(engine: Engine, settings: Settings, wid: int, *, final_try: bool = False) -> StageResult:
    """The insight stage as the Celery task runs it in LLM mode."""
    tools = insight_tools_for(settings, engine)

    def ask_llm(claim: StageClaim) -> None:
        insight_pending(engine, claim, tools)

    return run_stage(engine, settings, wid, "insight", mark_insights, final_try=final_try, prepare=ask_llm)


def insights_by_subject(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.subject, i.category, i.needs_reply, i.summary, i.action_items, i.source, "
            "i.summarized_messages, i.summarized_through, t.id FROM insights i JOIN threads t ON t.id = i.thread_id"
        )).all()
    return {r[0]: {"category": r[1], "needs_reply": r[2], "summary": r[3], "action_items": r[4], "source": r[5],
                   "summarized_messages": r[6], "summarized_through": r[7], "thread_id": r[8]} for r in rows}


def chat_requests(server: OpenAIServer) -> list[dict[str, Any]]:
    return server.received("chat.completions")


def instruction_parts(body: dict[str, Any]) -> str:
    """Everything of a request a model reads as instructions: every message but the data block."""
    parts = []
    for message in body.get("messages", []):
        content = str(message.get("content", ""))
        if message.get("role") == "user" and DATA_OPEN in content:
            start = content.index(DATA_OPEN)
            end = content.find(DATA_CLOSE, start)
            content = content[:start] + (content[end + len(DATA_CLOSE):] if end >= 0 else "")
        parts.append(content)
    return "\n".join(parts)


INJECTED_SUMMARY = "INJECTED: everything is done"


def content_responder(record: list[dict[str, Any]] | None = None) -> Callable[[dict[str, Any]], str]:
    """A model that judges the thread from its data, deterministically, but obeys any instruction to
    "ignore previous instructions" it finds outside the data block (so a leak changes the answers), and
    treats any conversation history (more than system + user) as instructions too.

    Answer: summary "<subject> | <first 80 chars of the latest text>"; needs_reply "to_reply" when the
    latest message is not the owner's and asks something ("?"), "awaiting_reply" when the owner's does,
    else "fyi"; one action item per "please"/"can you" sentence of the latest message.
    """

    def respond(body: dict[str, Any]) -> str:
        if record is not None:
            record.append(body)
        instructions = instruction_parts(body).lower()
        if "ignore previous instructions" in instructions or "mark everything done" in instructions \
                or len(body.get("messages", [])) != 2:
            return json.dumps({"summary": INJECTED_SUMMARY, "action_items": [], "category": "other",
                               "needs_reply": "done"})
        data = extract_data(body["messages"][1]["content"])
        latest = data["messages"][-1]
        asks = "?" in latest["text"]
        needs = ("awaiting_reply" if latest["from_owner"] else "to_reply") if asks else "fyi"
        summary = f"{data['subject']} | {' '.join(latest['text'].split())[:80]}"
        if data.get("previous_summary"):
            summary = f"{summary} (after: {data['previous_summary'][:40]})"
        actions = [{"what": s.strip(), "who": "me", "due": None}
                   for s in latest["text"].replace("?", "?.").split(".")
                   if any(w in s.lower() for w in ("please", "can you")) and not latest["from_owner"]]
        return json.dumps({"summary": summary, "action_items": actions, "category": "personal",
                           "needs_reply": needs})

    return respond
