"""The answer an LLM gives for one thread: its JSON schema (sent as a strict structured output) and the
pydantic model every answer is validated with before anything is stored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A fixed list, so filters and reports can rely on it. Bulk categories are listed too: a thread that the
# header rules let through (a person wrote) may still turn out to be, say, a forwarded receipt.
LLM_CATEGORIES: tuple[str, ...] = (
    "personal", "work", "finance", "travel", "events", "shopping", "support",
    "newsletter", "notification", "receipt", "other",
)
NEEDS_REPLY: tuple[str, ...] = ("to_reply", "awaiting_reply", "fyi", "done")
SCHEMA_NAME = "thread_insight"

Category = Literal["personal", "work", "finance", "travel", "events", "shopping", "support",
                   "newsletter", "notification", "receipt", "other"]
NeedsReply = Literal["to_reply", "awaiting_reply", "fyi", "done"]


class ActionItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    what: str = Field(min_length=1)
    who: str
    due: str | None


class ThreadAnswer(BaseModel):
    """One thread's insight as the model states it. Lengths are not enforced here (strict structured
    outputs cannot express them); the stage shortens what it stores."""

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(min_length=1)
    action_items: list[ActionItem]
    category: Category
    needs_reply: NeedsReply


# Written out rather than generated: strict mode wants every property required, no extra properties
# and nullable as a type union, and no keyword it does not support (titles, defaults, lengths).
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "What the thread is about and where it stands, in at most "
                    "three sentences."},
        "action_items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "what": {"type": "string", "description": "The action, as the email states it."},
                    "who": {"type": "string", "description": "'me' for the mailbox owner, else the person's "
                            "name or address."},
                    "due": {"type": ["string", "null"], "description": "The deadline as written, or null "
                            "when none is stated."},
                },
                "required": ["what", "who", "due"],
                "additionalProperties": False,
            },
        },
        "category": {"type": "string", "enum": list(LLM_CATEGORIES)},
        "needs_reply": {"type": "string", "enum": list(NEEDS_REPLY)},
    },
    "required": ["summary", "action_items", "category", "needs_reply"],
    "additionalProperties": False,
}

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": ANSWER_SCHEMA},
}
