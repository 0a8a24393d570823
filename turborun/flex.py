"""The flex tier: bodies with ``"service_tier": "flex"`` (docs/BATCH.md, "Flex").

A flex request may be refused for lack of capacity: OpenAI answers 429 with a "Resource
unavailable" message, Groq answers 498 ``capacity_exceeded``. Such an answer is not a rate
limit: it gets its own error kind (``records.CAPACITY``), is retried with backoff like a
5xx, and never slows a bucket or lowers a learned limit (the budget only reacts to
``rate_limited``) nor counts toward the circuit breaker. ``--flex-fallback N``: a task
that met N capacity answers is sent at the provider's standard tier instead. A task is
priced at the tier that served it, read from the answer's ``service_tier``.
"""

from __future__ import annotations

import orjson

FLEX = "flex"
# The tier a fallback asks for: OpenAI's standard tier is "default", Groq's "on_demand".
STANDARD_TIER = {"openai": "default", "groq": "on_demand"}
CAPACITY_STATUS = 498  # Groq: flex capacity exceeded
_OPENAI_CAPACITY_WORDS = (b"resource unavailable", b"resource_unavailable")


def is_capacity_answer(status: int, body: bytes) -> bool:
    """Groq's 498, or OpenAI's 429 whose error says the resource is unavailable."""
    if status == CAPACITY_STATUS:
        return True
    if status != 429 or not body:
        return False
    lowered = body.lower()
    return any(words in lowered for words in _OPENAI_CAPACITY_WORDS)


def fall_back(provider: str, body: bytes) -> bytes:
    """``body`` at the provider's standard tier if it asks for flex, else unchanged."""
    if b'"flex"' not in body:
        return body
    data = orjson.loads(body)
    if not isinstance(data, dict) or data.get("service_tier") != FLEX:
        return body
    data["service_tier"] = STANDARD_TIER.get(provider, "auto")
    return orjson.dumps(data)


def served_tier(body: bytes | None) -> str:
    """The tier to price an answer at: "flex" when it says flex served it, else "standard"."""
    if not body or b"flex" not in body:
        return "standard"
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "standard"
    return FLEX if isinstance(data, dict) and data.get("service_tier") == FLEX else "standard"
