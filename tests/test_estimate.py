"""The estimate (sends nothing): tokens, cost ranges, the binding constraint, resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from turborun.budget import MARGIN
from turborun.config import Config, Limit
from turborun.estimate import (
    estimate,
    journal_ratios,
    load_ratios,
    record_ratios,
    render,
    usage_sums,
)
from turborun.latency import LatencyModel
from turborun.pricing import Price, Pricing
from turborun.tasks import tasks_from_dicts
from turborun.tokens import TokenEstimator

PRICING = Pricing({("openai", "gpt-4o-mini"): Price(input=0.15, output=0.6)})


def chat(
    custom_id: str,
    *,
    model: str = "gpt-4o-mini",
    max_tokens: int | None = 100,
    depends_on: list[str] | None = None,
) -> dict:
    body: dict = {"model": model, "messages": [{"role": "user", "content": f"say {custom_id}"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    item: dict = {"custom_id": custom_id, "body": body}
    if depends_on:
        item["depends_on"] = depends_on
    return item


def tasks_of(items: list[dict]):
    return tasks_from_dicts(items, TokenEstimator()).tasks


class FixedLatency(LatencyModel):
    def __init__(self, seconds: float) -> None:
        super().__init__(None)
        self.seconds = seconds

    def expected_s(self, provider: str, model: str, output_tokens: int) -> float:
        return self.seconds


def test_tokens_and_cost_range_per_model(tmp_path: Path) -> None:
    tasks = tasks_of([chat(f"t{i}") for i in range(10)] + [chat("other", model="llama")])
    est = estimate(
        tasks,
        Config(checkpoint_dir=tmp_path),
        pricing=PRICING,
        latency=FixedLatency(1.0),
        ratios={"openai/gpt-4o-mini": 0.5},
    )
    mini, llama = est.models  # sorted by provider, then model
    assert (mini.model, llama.model) == ("gpt-4o-mini", "llama")
    assert mini.tasks == 10 and mini.max_output_tokens == 1000
    assert mini.prompt_tokens == sum(t.prompt_tokens for t in tasks[:10]) > 0
    assert mini.likely_output_tokens == 500
    prompt_usd = mini.prompt_tokens * 0.15 / 1e6
    assert mini.cost_low_usd == pytest.approx(prompt_usd)
    assert mini.cost_likely_usd == pytest.approx(prompt_usd + 500 * 0.6 / 1e6)
    assert mini.cost_high_usd == pytest.approx(prompt_usd + 1000 * 0.6 / 1e6)
    assert not llama.priced and llama.cost_low_usd is None
    assert est.totals()["cost_high_usd"] is None  # an unpriced model: the total is unknown
    assert any("llama: no known price" in note for note in est.notes)


def test_a_task_without_max_output_leaves_no_upper_bound(tmp_path: Path) -> None:
    tasks = tasks_of([chat("a"), chat("b", max_tokens=None)])
    est = estimate(
        tasks,
        Config(checkpoint_dir=tmp_path),
        pricing=PRICING,
        latency=FixedLatency(1.0),
        ratios={},
    )
    (m,) = est.models
    assert m.unbounded == 1 and m.cost_high_usd is None and m.cost_low_usd is not None
    assert "unknown" not in render(est) and "?" in render(est)


def test_the_rate_limit_binds_a_wide_run(tmp_path: Path) -> None:
    tasks = tasks_of([chat(f"t{i}") for i in range(600)])
    config = Config(checkpoint_dir=tmp_path, override_limit=Limit(rpm=300, tpm=None))
    est = estimate(tasks, config, pricing=PRICING, latency=FixedLatency(2.0), ratios={})
    assert est.limit_s == pytest.approx(600 / (300 * (1 - MARGIN)) * 60 + 2.0)
    assert est.time_s == est.limit_s
    assert est.bound == "rate limit of openai/gpt-4o-mini"


def test_the_tpm_limit_counts_reserved_tokens(tmp_path: Path) -> None:
    tasks = tasks_of([chat(f"t{i}", max_tokens=1000) for i in range(100)])
    config = Config(checkpoint_dir=tmp_path, override_limit=Limit(rpm=10_000, tpm=50_000))
    est = estimate(tasks, config, pricing=PRICING, latency=FixedLatency(0.0), ratios={})
    reserved = est.models[0].prompt_tokens + 100 * 1000
    assert est.limit_s == pytest.approx(reserved / (50_000 * (1 - MARGIN)) * 60)


def test_the_critical_path_binds_a_deep_dag(tmp_path: Path) -> None:
    items = [chat("c0")] + [chat(f"c{i}", depends_on=[f"c{i - 1}"]) for i in range(1, 20)]
    config = Config(checkpoint_dir=tmp_path, override_limit=Limit(rpm=10_000, tpm=None))
    est = estimate(tasks_of(items), config, pricing=PRICING, latency=FixedLatency(1.5), ratios={})
    assert est.critical_path_s == pytest.approx(30.0)
    assert est.bound == "critical path" and est.time_s == pytest.approx(30.0)


def test_the_in_flight_ceiling_binds_long_requests_under_a_high_limit(tmp_path: Path) -> None:
    tasks = tasks_of([chat(f"t{i}") for i in range(1000)])
    config = Config(checkpoint_dir=tmp_path, override_limit=Limit(rpm=1e6, tpm=None), workers=10)
    est = estimate(tasks, config, pricing=PRICING, latency=FixedLatency(3.0), ratios={})
    assert est.concurrency_s == pytest.approx(1000 * 3.0 / 10)
    assert est.bound == "in-flight ceiling"


def test_a_resume_counts_only_what_remains(tmp_path: Path) -> None:
    items = [chat("a"), chat("b", depends_on=["a"]), chat("c"), chat("d")]
    tasks = tasks_of(items)
    fp = {t.custom_id: t.fingerprint for t in tasks}
    done = {
        "a": ("failed", fp["a"]),  # failed: runs again, and so does its dependent b
        "b": ("succeeded", fp["b"]),
        "c": ("succeeded", fp["c"]),  # done: skipped
        "d": ("succeeded", "another definition"),  # changed: runs again
    }
    est = estimate(
        tasks,
        Config(checkpoint_dir=tmp_path),
        pricing=PRICING,
        latency=FixedLatency(1.0),
        ratios={},
        done=done,
    )
    assert (est.tasks, est.skipped) == (3, 1)
    assert est.models[0].tasks == 3


def test_output_ratios_are_kept_between_runs(tmp_path: Path) -> None:
    tasks = tasks_of([chat("a", max_tokens=100), chat("b", max_tokens=300), chat("c")])
    entries = [
        ("a", {"status": "succeeded", "output_tokens": 50}),
        ("b", {"status": "succeeded", "output_tokens": 150}),
        ("c", {"status": "failed", "output_tokens": None}),
        ("unknown", {"status": "succeeded", "output_tokens": 7}),
    ]
    assert usage_sums(tasks, entries) == {"openai/gpt-4o-mini": (200, 400)}
    assert journal_ratios(tasks, entries) == {"openai/gpt-4o-mini": 0.5}
    record_ratios(tmp_path, usage_sums(tasks, entries))
    record_ratios(tmp_path, {"openai/gpt-4o-mini": (100, 100)})
    assert load_ratios(tmp_path) == {"openai/gpt-4o-mini": pytest.approx(300 / 500)}
    (tmp_path / "_outputs.json").write_text(json.dumps({"x": "not a table", "y": [1]}))
    assert load_ratios(tmp_path) == {}
    (tmp_path / "_outputs.json").write_bytes(b"\xff\xfe garbage")
    assert load_ratios(tmp_path) == {}


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turborun", *args], cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_the_estimate_command_sends_nothing_and_counts_what_a_resume_would_run(
    tmp_path: Path,
) -> None:
    lines = [chat(f"t{i}") for i in range(30)]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in lines))
    done = _cli(tmp_path, "estimate", "tasks.jsonl", "--rpm", "60", "--json")
    assert done.returncode == 0, done.stderr
    est = json.loads(done.stdout)
    assert est["tasks"] == 30 and est["bound"] == "rate limit of openai/gpt-4o-mini"
    paced_s = 30 / (60 * (1 - MARGIN)) * 60  # the buckets pace MARGIN below the limit
    assert est["time_s"] == pytest.approx(paced_s + est["models"][0]["latency_s"], abs=0.01)
    assert not (tmp_path / "checkpoints").exists()  # nothing made, nothing sent

    table = _cli(tmp_path, "batch", "tasks.jsonl", "--estimate", "--simulate")
    assert table.returncode == 0 and "openai/gpt-4o-mini" in table.stdout
    assert not (tmp_path / "checkpoints").exists() and "time: ~" in table.stdout

    first = _cli(tmp_path, "batch", "tasks.jsonl", "--simulate", "--no-progress")
    assert first.returncode == 0, first.stderr
    lines[0]["body"]["max_tokens"] = 99  # one task changed: a resume runs it again
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in lines))
    again = json.loads(_cli(tmp_path, "estimate", "tasks.jsonl", "--resume", "--json").stdout)
    assert (again["tasks"], again["skipped"]) == (1, 29)
    assert again["models"][0]["output_ratio"] is not None  # learned from the run


def test_the_progress_line_shows_spend_against_the_cap_and_the_eta() -> None:
    from turborun.progress import _postfix
    from turborun.supervisor import Progress

    p = Progress(done=10, total=100, failed=0, retrying=0, rate_limited=0, tokens_per_min=0,
                 tpm_limit=None, cost_usd=0.5, cost_cap_usd=2.0, spent_usd=0.75,
                 projected_usd=5.25, eta_s=125.0)  # fmt: skip
    text = _postfix(p)
    assert "cost=$0.7500/$2 cap (~$5.2500 at the end)" in text
    assert "ETA 2:05" in text
    bare = Progress(done=0, total=1, failed=0, retrying=0, rate_limited=0, tokens_per_min=0,
                    tpm_limit=None, cost_usd=None)  # fmt: skip
    assert "cost=- ETA ?" in _postfix(bare)


def test_embeddings_produce_no_output_and_leave_the_cost_bounded(tmp_path: Path) -> None:
    pricing = Pricing({("openai", "text-embedding-3-small"): Price(input=0.02, output=0.0)})
    item = {"custom_id": "e", "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "some text"}}  # fmt: skip
    est = estimate(tasks_of([item]), Config(checkpoint_dir=tmp_path), pricing=pricing,
                   latency=FixedLatency(0.1), ratios={})  # fmt: skip
    (m,) = est.models
    assert m.unbounded == 0 and m.cost_high_usd == m.cost_low_usd is not None
    assert not any("output" in note for note in est.notes)
