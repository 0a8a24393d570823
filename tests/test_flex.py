"""The flex tier through the real SDKs against the simulator: capacity answers (OpenAI's
429 "resource unavailable", Groq's 498) are retried without touching the learned limits,
``--flex-fallback N`` sends at the standard tier after N of them, and costs follow the
tier that served each task."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from turborun import execute_batch
from turborun.config import load_config
from turborun.flex import fall_back, is_capacity_answer, served_tier
from turborun.simulator import Simulator

MODEL = "gpt-5-mini"  # standard 0.25 / 2.00, flex 0.125 / 1.00 USD per million tokens
GROQ_MODEL = "llama-3.1-8b-instant"


def _config(sim: Simulator, tmp_path: Path, **flags: Any) -> Any:
    env = {
        "OPENAI_API_KEY": "sk-test-" + "a" * 40,
        "GROQ_API_KEY": "gsk_test" + "b" * 40,
        "OPENAI_BASE_URL": sim.openai_base_url,
        "GROQ_BASE_URL": sim.base_url,
        "TURBORUN_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }
    return load_config({"progress": False, "processes": 1, **flags}, environ=env, cwd=tmp_path)


def _tasks(path: Path, n: int, tier: str | None = "flex", extra: str = "", every: int = 1) -> Path:
    lines = []
    for i in range(n):
        text = f"item {i}{extra}" if i % every == 0 else f"item {i}"
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 8,
        }
        if tier is not None:
            body["service_tier"] = tier
        lines.append(orjson.dumps({"custom_id": f"t{i}", "body": body}) + b"\n")
    path.write_bytes(b"".join(lines))
    return path


def _results(path: Path) -> dict[str, dict[str, Any]]:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return {line["custom_id"]: line for line in lines}


def _cost(line: dict[str, Any], input_price: float, output_price: float) -> float:
    usage = line["response"]["body"]["usage"]
    return (usage["prompt_tokens"] * input_price + usage["completion_tokens"] * output_price) / 1e6


def _tpm_limits(tmp_path: Path, sim: Simulator, tasks: Path, **flags: Any) -> tuple[Any, list]:
    seen: list[float | None] = []
    result = execute_batch(tasks, checkpoint=tasks.stem, config=_config(sim, tmp_path, **flags),
                           progress=lambda p: seen.append(p.tpm_limit))  # fmt: skip
    return result, [limit for limit in seen if limit is not None]


def test_capacity_errors_are_retried_and_leave_learned_limits_unchanged(tmp_path: Path) -> None:
    limits = {MODEL: (12_000.0, 3_000_000.0)}  # learned from the answers' x-ratelimit headers
    with Simulator(latency_s=0.02, limits=limits, flex_capacity_rate=0.2, seed=5) as sim:
        tasks = _tasks(tmp_path / "flex.jsonl", 300)
        result, tpm_limits = _tpm_limits(tmp_path, sim, tasks, max_retries=12)
        log = sim.requests()
    refused = [e for e in log if e["status"] == 429]
    assert 0.12 < len(refused) / len(log) < 0.28  # ~20 % of flex requests refused
    assert result.metrics.succeeded == 300
    assert result.metrics.rate_limited == 0  # capacity is not a rate limit
    assert tpm_limits and set(tpm_limits) == {3_000_000.0}  # learned once, never lowered
    lines = _results(tmp_path / "flex.results.jsonl")
    line = lines["t0"]
    assert line["response"]["body"]["service_tier"] == "flex"
    assert line["turborun"]["cost_usd"] == pytest.approx(_cost(line, 0.125, 1.00))


def test_a_rate_limit_429_lowers_the_limit_those_snapshots_show(tmp_path: Path) -> None:
    """The control for the test above: a real 429 does lower the limit in force."""
    limits = {MODEL: (12_000.0, 3_000_000.0)}
    with Simulator(latency_s=0.02, limits=limits) as sim:
        extra = " [sim:status=429:times=1]"
        tasks = _tasks(tmp_path / "plain.jsonl", 150, tier=None, extra=extra, every=50)
        result, tpm_limits = _tpm_limits(tmp_path, sim, tasks, max_retries=3)
    assert result.metrics.succeeded == 150 and result.metrics.rate_limited > 0
    assert min(tpm_limits) < 3_000_000.0


def test_flex_fallback_serves_at_the_standard_tier_after_two_capacity_errors(
    tmp_path: Path,
) -> None:
    path = _tasks(tmp_path / "fallback.jsonl", 60)
    groq = {"custom_id": "g", "provider": "groq", "body": {
        "model": GROQ_MODEL, "service_tier": "flex", "max_tokens": 8,
        "messages": [{"role": "user", "content": "groq item"}]}}  # fmt: skip
    path.write_bytes(path.read_bytes() + orjson.dumps(groq) + b"\n")
    with Simulator(latency_s=0.01, flex_capacity_rate=0.5, seed=3) as sim:
        config = _config(sim, tmp_path, flex_fallback=2, max_retries=8)
        result = execute_batch(path, checkpoint="fallback", config=config)
        log = sim.requests()
    refusals: Counter[str] = Counter()
    tiers: dict[str, list[str]] = {}
    for entry in log:
        text = entry["body"]["messages"][0]["content"]
        tiers.setdefault(text, []).append(entry["body"].get("service_tier"))
        if entry["status"] in (429, 498):
            refusals[text] += 1
    assert result.metrics.succeeded == 61
    lines = _results(tmp_path / "fallback.results.jsonl")
    fell_back = [cid for cid, line in lines.items()
                 if line["response"]["body"]["service_tier"] != "flex"]  # fmt: skip
    assert len(fell_back) > 5  # at 50 %, a quarter of the tasks meet two refusals
    for cid, line in lines.items():
        text = "groq item" if cid == "g" else f"item {cid[1:]}"
        served = line["response"]["body"]["service_tier"]
        if refusals[text] >= 2:  # two capacity answers: the third attempt is standard
            assert tiers[text] == ["flex", "flex", "on_demand" if cid == "g" else "default"]
            assert line["turborun"]["attempts"] == 3 and served != "flex"
            if cid != "g":
                assert line["turborun"]["cost_usd"] == pytest.approx(_cost(line, 0.25, 2.00))
        else:
            assert served == "flex" and set(tiers[text]) == {"flex"}
            if cid != "g":
                assert line["turborun"]["cost_usd"] == pytest.approx(_cost(line, 0.125, 1.00))
    assert {e["status"] for e in log if e["path"].startswith("/openai/v1")} <= {200, 498}
    assert {e["status"] for e in log if e["path"].startswith("/v1")} <= {200, 429}


def test_capacity_answers_are_told_from_rate_limits() -> None:
    assert is_capacity_answer(498, b'{"error": {"code": "capacity_exceeded"}}')
    assert is_capacity_answer(429, b'{"error": {"message": "Resource unavailable, retry"}}')
    assert not is_capacity_answer(429, b'{"error": {"message": "Rate limit reached (RPM)"}}')
    assert fall_back("openai", b'{"model":"m","service_tier":"flex"}') == (
        b'{"model":"m","service_tier":"default"}'
    )
    assert fall_back("groq", b'{"service_tier":"flex"}') == b'{"service_tier":"on_demand"}'
    assert served_tier(b'{"service_tier":"flex"}') == "flex"
    assert served_tier(b'{"service_tier":"default","x":"flex"}') == "standard"
