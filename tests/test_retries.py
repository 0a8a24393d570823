"""Retries, rate limits and failures through the whole pipeline: supervisor, budgets,
worker processes, the real openai and groq SDKs, real HTTP to the simulator."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import LIMITED_MODEL

from turborun import execute_batch
from turborun.config import Config, Limit
from turborun.simulator import Simulator


def _config(sim: Simulator, tmp_path: Path, **kw) -> Config:
    kw.setdefault("workers", 4)
    kw.setdefault("processes", 1)
    return Config(
        checkpoint_dir=tmp_path / "ck",
        base_urls={"openai": sim.openai_base_url, "groq": sim.base_url},
        api_keys={"openai": "sk-test", "groq": "gsk-test"},
        progress=False,
        **kw,
    )


def _task(
    cid: str, content: str, *, model: str = "gpt-4o-mini", provider: str = "openai", **extra
) -> dict:
    return {
        "custom_id": cid,
        "provider": provider,
        **extra,
        "body": {
            "model": model,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": content}],
        },
    }


def _receipts(sim: Simulator, marker: str) -> list[dict]:
    return [r for r in sim.requests() if marker in str(r.get("body"))]


def _run(tasks, config):
    return execute_batch(tasks, config=config, handle_signals=False)


@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_429_waits_retry_after_ms_without_holding_a_worker(simulator, tmp_path, provider):
    # One worker; a (first, by priority) gets a 429 asking for 700 ms. b is on another
    # model, so a's slowed bucket does not hold it: b takes the only worker while a
    # waits, which it could not if the wait happened inside the worker.
    tag = uuid.uuid4().hex
    limited = f"{tag} A [sim:status=429:retry_after_ms=700:times=1]"
    tasks = [
        _task("a", limited, provider=provider, priority="high"),
        _task("b", f"{tag} B", provider=provider, model=f"other-{tag[:8]}"),
    ]
    result = _run(tasks, _config(simulator, tmp_path, workers=1))
    assert result.results["a"].status == "succeeded" and result.results["a"].attempts == 2
    assert result.results["b"].status == "succeeded" and result.results["b"].attempts == 1
    a1, a2 = (r["t"] for r in _receipts(simulator, f"{tag} A"))
    (b,) = (r["t"] for r in _receipts(simulator, f"{tag} B"))
    assert a2 - a1 >= 0.7, "retried earlier than retry-after-ms said"
    assert a1 < b < a2, "the only worker was held while the 429 waited"
    assert result.metrics.rate_limited == 1


def test_5xx_and_dropped_connections_are_retried(simulator, tmp_path):
    tag = uuid.uuid4().hex
    tasks = [
        _task("five", f"{tag} [sim:status=503:times=2]"),
        _task("drop", f"{tag} [sim:drop:times=1]", provider="groq"),
        _task("bad-json", f"{tag} [sim:invalid_json:times=1]"),
    ]
    result = _run(tasks, _config(simulator, tmp_path))
    r = result.results
    assert [r[c].status for c in ("five", "drop", "bad-json")] == ["succeeded"] * 3
    assert (r["five"].attempts, r["drop"].attempts, r["bad-json"].attempts) == (3, 2, 2)
    assert r["five"].text.startswith("echo: ")


def test_400_fails_at_once_with_the_providers_error(simulator, tmp_path):
    tag = uuid.uuid4().hex
    result = _run(
        [_task("bad", f"{tag} [sim:status=400:message=no such parameter]")],
        _config(simulator, tmp_path),
    )
    bad = result.results["bad"]
    assert bad.status == "failed" and bad.attempts == 1
    assert bad.error["code"] == "client_error"
    assert "no such parameter" in bad.error["message"]
    assert "no such parameter" in str(bad.body)  # the provider's error body is kept
    assert len(_receipts(simulator, tag)) == 1


def test_retries_stop_after_max_retries(simulator, tmp_path):
    tag = uuid.uuid4().hex
    result = _run(
        [_task("down", f"{tag} [sim:status=500]")], _config(simulator, tmp_path, max_retries=2)
    )
    assert result.results["down"].status == "failed"
    assert result.results["down"].attempts == 3
    assert len(_receipts(simulator, tag)) == 3


def test_hung_request_times_out_and_is_retried(simulator, tmp_path):
    tag = uuid.uuid4().hex
    result = _run(
        [_task("hang", f"{tag} [sim:hang:times=1]")], _config(simulator, tmp_path, timeout_s=1.0)
    )
    hang = result.results["hang"]
    assert hang.status == "succeeded" and hang.attempts == 2
    first, second = (r["t"] for r in _receipts(simulator, tag))
    assert second - first >= 1.0


def test_rejected_key_stops_dispatch_to_that_provider(simulator, tmp_path):
    tag = uuid.uuid4().hex
    tasks = [_task("k0", f"{tag} first [sim:status=401]", priority="critical")]
    tasks += [
        _task(f"k{i}", f"{tag} more {i} [sim:status=401]", priority="low") for i in range(1, 6)
    ]
    tasks += [_task("g", f"{tag} groq fine", provider="groq")]
    result = _run(tasks, _config(simulator, tmp_path, workers=1))
    assert all(result.results[f"k{i}"].error["code"] == "auth" for i in range(6))
    assert "refused our API key" in result.results["k5"].error["message"]
    assert result.results["g"].status == "succeeded"
    assert len(_receipts(simulator, f"{tag} more")) <= 1  # at most one already queued


# The pacing tests below count what the simulator saw. The budget paces by the moment a
# request is handed to a worker; on a machine whose CPUs are saturated, a worker (and the
# simulator stamping arrivals) may be held for a moment and let a few requests through
# together, so one second can hold a request or two beyond the limit. The bounds allow
# that much (_JITTER_ALLOWANCE) and no more: without pacing, 60-70 requests on 16 workers
# at 10-20 ms arrive within a fraction of a second and draw dozens of 429s.
_JITTER_ALLOWANCE = 2


def test_limit_learned_from_headers_is_respected(tmp_path):
    model = "learn-me"
    with Simulator(latency_s=0.02, limits={model: (1200, None)}) as sim:  # 20 per second
        tasks = [_task(f"r{i}", f"learn {i}", model=model) for i in range(70)]
        result = _run(tasks, _config(sim, tmp_path, workers=16))
        times = sorted(r["t"] for r in sim.requests())
    assert result.success_rate == 1.0
    assert result.metrics.rate_limited <= _JITTER_ALLOWANCE
    assert len(times) == 70 + result.metrics.rate_limited
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 20 + _JITTER_ALLOWANCE
    assert times[-1] - times[0] >= (70 - 20) / 20 - 0.5, "a minute's limit went in a burst"


def test_configured_limit_paces_evenly_with_no_429(tmp_path):
    model = "paced"
    with Simulator(latency_s=0.01, limits={model: (1800, None)}, rate_headers=False) as sim:
        tasks = [_task(f"r{i}", f"paced {i}", model=model) for i in range(60)]
        limits = {("openai", model): Limit(rpm=1800)}
        config = _config(sim, tmp_path, workers=16, model_limits=limits)
        result = _run(tasks, config)
        times = sorted(r["t"] for r in sim.requests())
    assert result.success_rate == 1.0
    assert result.metrics.rate_limited <= _JITTER_ALLOWANCE
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 30 + _JITTER_ALLOWANCE
    assert times[-1] - times[0] >= (60 - 30) / 30 - 0.5, "a minute's limit went in a burst"


def test_cost_is_null_for_an_unknown_model_and_priced_for_a_known_one(simulator, tmp_path):
    tag = uuid.uuid4().hex
    tasks = [
        _task("known", f"{tag} k"),
        _task("unknown", f"{tag} u", model="no-such-model-anywhere"),
        _task("limited", f"{tag} l", model=LIMITED_MODEL),
    ]
    result = _run(tasks, _config(simulator, tmp_path))
    assert result.results["known"].cost_usd is not None and result.results["known"].cost_usd > 0
    assert result.results["unknown"].cost_usd is None


def test_a_resume_counts_the_prompt_tokens_of_the_tasks_it_runs(simulator, tmp_path):
    """A resume loads its file without tokenizing; the tasks that run are counted by
    the supervisor before they queue: largest prompt first under --strategy tokens."""
    marker = uuid.uuid4().hex
    words = {"a": 1, "b": 400, "c": 50, "d": 200}
    path = tmp_path / "sized.jsonl"
    tasks = [_task(cid, f"{marker} " + "word " * n) for cid, n in words.items()]
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    config = _config(simulator, tmp_path, workers=1, strategy="tokens")
    first = tmp_path / "first.jsonl"  # a checkpoint to resume (--resume needs one)
    first.write_text(json.dumps(_task("z", "an earlier run")) + "\n")
    assert execute_batch(first, config=config, checkpoint="sized").success_rate == 1.0
    result = execute_batch(path, config=config, checkpoint="sized", resume=True)
    assert result.success_rate == 1.0
    sent = [r["body"]["messages"][0]["content"].count("word") for r in _receipts(simulator, marker)]
    assert sent == [400, 200, 50, 1]
    assert result.metrics.input_tokens > 650  # the simulator's usage, for reference
