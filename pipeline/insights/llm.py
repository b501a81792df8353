"""Thread insights from an OpenAI-compatible `/v1/chat/completions`, as validated structured output.

Every request goes the way the remote embedder's do: through the endpoint's shared circuit breaker
(`ai:<host:port>`) and one slot of the global AI concurrency limit, with the openai client's own retries
off. Transport errors (429, 5xx, timeouts, insufficient_quota, an open breaker) are raised as they are:
`classify` gives their class and the stage's retry policy, or the enrichment sweep, handles them.

The one retry made here is of a different kind: an answer that is not JSON of the schema is asked for
once more (models slip now and then); a second bad answer raises `InvalidInsightAnswer` (permanent).
Each request is reserved against and charged to the account's daily budget (`Ledger`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipeline.insights.budget import Ledger, Usage, estimate_prompt_tokens, estimate_tokens
from pipeline.insights.schema import RESPONSE_FORMAT, ThreadAnswer
from pipeline.resilience.breakers import Breakers, ai_breaker_name, breakers_for
from pipeline.resilience.classify import PERMANENT, ClassifiedError
from pipeline.resilience.concurrency import ConcurrencyLimiter, limiter_for
from pipeline.settings import Settings

if TYPE_CHECKING:
    import openai
    from sqlalchemy import Engine

# The openai package (and the remote embedder's module, which imports it) is imported only when an LLM is
# configured: rules-only workers never load it, and `classify` skips its openai checks in them.

VALID_ANSWER_ATTEMPTS = 2  # the first answer, and exactly one retry when it is not valid


class InvalidInsightAnswer(ClassifiedError):
    """The model's answer was not JSON of the insight schema (or was cut off, or refused)."""

    error_class = PERMANENT


@dataclass(frozen=True, slots=True)
class Answered:
    answer: ThreadAnswer
    usage: Usage  # of every request made for it (a retry included)
    cost_usd: float
    requests: int


class InsightLLM:
    """Asks a chat model for one thread's insight. `source` ("llm:<model>") is stored with each insight."""

    def __init__(self, client: openai.OpenAI, model: str, *, max_output_tokens: int, breakers: Breakers,
                 limiter: ConcurrencyLimiter) -> None:
        self.client = client
        self.model = model
        self.source = f"llm:{model}"
        self.max_output_tokens = max_output_tokens
        self.breakers = breakers
        self.limiter = limiter
        self.breaker_name = ai_breaker_name(str(client.base_url))

    def ask(self, messages: list[dict[str, str]], ledger: Ledger) -> Answered:
        """The validated answer; raises BudgetExhausted before a call the budget cannot hold,
        InvalidInsightAnswer after two bad answers, and the openai client's errors as they come."""
        usage, cost, problems = Usage(), 0.0, []
        for attempt in range(1, VALID_ANSWER_ATTEMPTS + 1):
            reservation = ledger.reserve(estimate_prompt_tokens(messages), self.max_output_tokens)
            try:
                response = self._request(messages)
            except BaseException:
                ledger.release(reservation)
                raise
            call_usage = _usage(response, messages)
            cost += ledger.settle(reservation, call_usage)
            usage += call_usage
            try:
                return Answered(parse_answer(response), usage, cost, attempt)
            except InvalidInsightAnswer as exc:
                problems.append(str(exc))
        raise InvalidInsightAnswer(f"no valid answer in {VALID_ANSWER_ATTEMPTS} requests: " + "; ".join(problems))

    def _request(self, messages: list[dict[str, str]]) -> Any:
        from pipeline.embeddings.remote import SLOT_WAIT_SECONDS

        # The breaker first: an open one refuses at once, without taking a slot from calls that may go.
        with self.breakers.guard(self.breaker_name):
            return self.limiter.call(
                self.client.chat.completions.create, model=self.model, messages=messages,
                response_format=RESPONSE_FORMAT, temperature=0, max_completion_tokens=self.max_output_tokens,
                timeout=SLOT_WAIT_SECONDS,
            )


def parse_answer(response: Any) -> ThreadAnswer:
    """The answer of a chat completion, validated; InvalidInsightAnswer when it is not one."""
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise InvalidInsightAnswer("the response has no choices")
    choice = choices[0]
    message = choice.message
    if getattr(message, "refusal", None):
        raise InvalidInsightAnswer(f"the model refused: {str(message.refusal)[:200]}")
    if choice.finish_reason == "length":
        raise InvalidInsightAnswer("the answer was cut off at the completion token limit")
    content = message.content or ""
    try:
        return ThreadAnswer.model_validate(json.loads(content))
    except json.JSONDecodeError as exc:
        raise InvalidInsightAnswer(f"not JSON ({exc.msg} at {exc.pos}): {content[:120]!r}") from exc
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInsightAnswer(f"does not match the schema: {details}") from exc


def _usage(response: Any, messages: list[dict[str, str]]) -> Usage:
    """What the endpoint says the call used; estimated when it says nothing (some local servers)."""
    usage = getattr(response, "usage", None)
    if usage is not None and usage.prompt_tokens is not None:
        return Usage(int(usage.prompt_tokens), int(usage.completion_tokens or 0))
    content = response.choices[0].message.content if getattr(response, "choices", None) else ""
    return Usage(estimate_prompt_tokens(messages), estimate_tokens(content or ""))


def insight_llm_for(settings: Settings, engine: Engine) -> InsightLLM | None:
    """The configured LLM for insights, or None when insights are rules-only."""
    if settings.insights != "llm":
        return None
    from pipeline.embeddings.remote import OPENAI_BASE_URL, openai_client

    key = settings.ai_api_key.get_secret_value() if settings.ai_api_key else None
    return InsightLLM(
        openai_client(settings.ai_base_url or OPENAI_BASE_URL, key, settings.ai_timeout), settings.ai_chat_model,
        max_output_tokens=settings.insight_max_output_tokens, breakers=breakers_for(settings, engine),
        limiter=limiter_for(settings),
    )
