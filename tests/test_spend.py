"""Spend caps: reservations keep spent + reserved within each cap."""

from __future__ import annotations

import pytest

from turborun.pricing import Price, Pricing
from turborun.spend import PROMPT_MARGIN, PROMPT_SLACK_TOKENS, SpendCaps

PRICING = Pricing(
    {
        ("openai", "gpt-4o-mini"): Price(input=0.15, output=0.6),
        ("openai", "gpt-4o"): Price(input=2.5, output=10.0),
    }
)


def test_a_reservation_is_the_worst_case_of_prompt_and_requested_output() -> None:
    caps = SpendCaps(PRICING, max_cost_usd=1.0)
    r = caps.worst_case("openai", "gpt-4o-mini", 1000, 500)
    prompt = 1000 * (1 + PROMPT_MARGIN) + PROMPT_SLACK_TOKENS
    assert r.tokens == prompt + 500
    assert r.usd == pytest.approx((prompt * 0.15 + 500 * 0.6) / 1e6)


def test_the_run_cap_refuses_what_would_pass_it_counting_reservations() -> None:
    caps = SpendCaps(PRICING, max_cost_usd=0.01)
    r = caps.worst_case("openai", "gpt-4o", 0, 400)  # ~$0.00404 each
    assert caps.why_not(r) is None
    caps.reserve(r)
    assert caps.why_not(r) is None
    caps.reserve(r)
    assert caps.why_not(r) == ("run", "the run's cost cap ($0.01)")  # 3 × 0.00404 > 0.01
    caps.settle(r, usd=0.001, tokens=100)  # it cost less than reserved: room again
    assert caps.why_not(r) is None
    assert caps.spent_usd == pytest.approx(0.001)
    assert caps.reserved_usd == pytest.approx(r.usd)


def test_an_answer_without_usage_keeps_its_reservation_as_spent() -> None:
    caps = SpendCaps(PRICING, max_cost_usd=1.0)
    r = caps.worst_case("openai", "gpt-4o", 100, 100)
    caps.reserve(r)
    caps.settle(r, usd=None, tokens=None)
    assert caps.spent_usd == pytest.approx(r.usd) and caps.reserved_usd == 0


def test_a_lost_request_releases_its_reservation() -> None:
    caps = SpendCaps(PRICING, max_cost_usd=1.0)
    r = caps.worst_case("openai", "gpt-4o", 100, 100)
    caps.reserve(r)
    caps.release(r)
    assert caps.spent_usd == 0 and caps.reserved_usd == 0


def test_a_model_cap_binds_that_model_only() -> None:
    caps = SpendCaps(PRICING, model_caps_usd={("openai", "gpt-4o"): 0.005})
    big = caps.worst_case("openai", "gpt-4o", 0, 400)
    small = caps.worst_case("openai", "gpt-4o-mini", 0, 400)
    caps.reserve(big)
    assert caps.why_not(big) == ("model", "the cost cap of openai/gpt-4o ($0.005)")
    assert caps.why_not(small) is None


def test_a_token_cap_needs_no_price() -> None:
    caps = SpendCaps(PRICING, max_tokens_total=1000)
    assert caps.priced("vllm", "my-model")
    r = caps.worst_case("vllm", "my-model", 100, 400)
    caps.reserve(r)
    assert caps.why_not(r) == ("run", "the run's token cap (1,000 tokens)")
    assert not SpendCaps(PRICING, max_cost_usd=1.0).priced("vllm", "my-model")


def test_earlier_spend_counts_from_the_start() -> None:
    caps = SpendCaps(PRICING, max_cost_usd=0.01)
    caps.add_spent(("openai", "gpt-4o"), 0.0095, 900)
    assert caps.why_not(caps.worst_case("openai", "gpt-4o", 0, 100)) is not None
    assert caps.fraction() == pytest.approx(0.95)


def test_a_cap_on_a_model_whose_price_is_a_guess_says_so(caplog) -> None:
    from turborun.caps import spend_caps
    from turborun.config import Config
    from turborun.tasks import tasks_from_dicts
    from turborun.tokens import TokenEstimator

    pricing = Pricing(
        {
            ("openai", "sure"): Price(1.0, 1.0, source="https://x", checked="2026-11"),
            ("openai", "guessed"): Price(1.0, 1.0, source="https://x", checked="unverified: old"),
            ("openai", "unsourced"): Price(1.0, 1.0),
        }
    )
    items = [
        {"custom_id": m, "body": {"model": m, "max_tokens": 5, "messages": []}}
        for m in ("sure", "guessed", "unsourced")
    ]
    tasks = tasks_from_dicts(items, TokenEstimator()).tasks
    with caplog.at_level("WARNING", logger="turborun"):
        caps = spend_caps(Config(max_cost=1.0), pricing, tasks, recorded={}, journal_entries=())
    assert caps is not None
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "openai/guessed" in warned and "unverified: old" in warned
    assert "openai/unsourced" in warned and "openai/sure" not in warned
