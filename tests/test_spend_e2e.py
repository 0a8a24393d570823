"""Spend caps and account refusals through the whole pipeline: the command line and
execute_batch, worker processes, the real openai SDK over HTTP to the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import journaled

from turborun import execute_batch
from turborun.config import Config, Limit
from turborun.simulator import Simulator

# gpt-4o-mini at $0.15 / $0.60 per million tokens. The simulator answers at most 16
# output tokens, so a task's cost is mostly its prompt: ~6,600 tokens cost ~$0.001,
# and the worst case reserved for it (prompt + 10 % + the requested 16) is close to it.
MAX_TOKENS = 16


def _prompt(i: int, tokens: int = 6600) -> str:
    return f"q{i} " + "word " * tokens


def _tasks(path: Path, n: int, *, model: str = "gpt-4o-mini", max_tokens: int | None = MAX_TOKENS,
           tag: str = "") -> Path:  # fmt: skip
    with path.open("w") as f:
        for i in range(n):
            content = _prompt(i) if model == "gpt-4o-mini" else f"{tag}q{i}"
            body: dict = {"model": model, "messages": [{"role": "user", "content": content}]}
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            f.write(json.dumps({"custom_id": f"t{i}", "body": body}) + "\n")
    return path


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turborun", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _config(sim: Simulator, tmp_path: Path, **kw) -> Config:
    return Config(
        checkpoint_dir=tmp_path / "ck",
        base_urls={"openai": sim.openai_base_url, "groq": sim.base_url},
        api_keys={"openai": "sk-test", "groq": "gsk-test"},
        progress=False,
        **kw,
    )


def test_a_cost_cap_is_never_passed_and_a_resume_with_a_higher_cap_finishes(
    tmp_path: Path,
) -> None:
    tasks = _tasks(tmp_path / "tasks.jsonl", 300)
    first = _cli(tmp_path, "batch", "tasks.jsonl", "--simulate", "--no-progress",
                 "--max-cost", "0.05")  # fmt: skip
    assert first.returncode == 3, first.stderr
    assert "cost cap ($0.05) is reached" in first.stderr
    assert "--resume --max-cost NEW_CAP" in first.stderr
    lines = _lines(tasks.with_name("tasks.results.jsonl"))
    statuses = [line["turborun"]["status"] for line in lines]
    spent = sum(line["turborun"]["cost_usd"] or 0 for line in lines)
    assert statuses.count("failed") == 0
    done = statuses.count("succeeded")
    assert statuses.count("pending") == 300 - done > 0
    assert 0.95 * 0.05 <= spent <= 0.05, spent
    meta = json.loads((tmp_path / "checkpoints" / "tasks" / "run.json").read_text())
    assert meta["state"] == "stopped" and meta["max_cost_usd"] == 0.05

    # the same cap again: nothing more fits, nothing is sent
    again = _cli(tmp_path, "batch", "tasks.jsonl", "--simulate", "--no-progress", "--resume")
    assert again.returncode == 3, again.stderr
    assert [line["turborun"]["status"] for line in _lines(tasks.with_name(
        "tasks.results.jsonl"))].count("succeeded") == done  # fmt: skip

    last = _cli(tmp_path, "batch", "tasks.jsonl", "--simulate", "--no-progress", "--resume",
                "--max-cost", "20")  # fmt: skip
    assert last.returncode == 0, last.stderr
    lines = _lines(tasks.with_name("tasks.results.jsonl"))
    assert all(line["turborun"]["status"] == "succeeded" for line in lines)
    assert sum(line["turborun"]["resumed"] for line in lines) == done  # none paid twice


def test_a_cap_reached_with_hundreds_in_flight_is_not_passed(tmp_path: Path) -> None:
    log = tmp_path / "sim.jsonl"
    with Simulator(latency_s=1.0, log_path=log) as sim:
        items = [
            {"custom_id": f"t{i}", "body": {"model": "gpt-4o-mini", "max_tokens": MAX_TOKENS,
             "messages": [{"role": "user", "content": _prompt(i, 660)}]}}
            for i in range(1000)
        ]  # fmt: skip
        result = execute_batch(
            items, checkpoint="capped",
            config=_config(sim, tmp_path, workers=400, processes=2, max_cost=0.02,
                             override_limit=Limit(rpm=100_000, tpm=10**9)),
            handle_signals=False,
        )  # fmt: skip
    assert result.stopped_by is not None and "cost cap ($0.02)" in result.stopped_by
    assert result.metrics.peak_in_flight >= 150  # the cap bound with hundreds in flight
    entries = journaled(tmp_path / "ck" / "capped")
    spent = sum(e["cost_usd"] or 0 for e in entries.values())
    assert 0.95 * 0.02 <= spent <= 0.02
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(sent) == len(entries) == result.metrics.succeeded  # nothing sent unjournaled
    assert result.metrics.failed == 0 and result.metrics.pending == 1000 - len(entries)


def test_an_account_refusal_pauses_the_provider_and_a_resume_completes(tmp_path: Path) -> None:
    items = [
        {"custom_id": f"t{i}", "body": {"model": "gpt-4o-mini", "max_tokens": 5,
         "messages": [{"role": "user", "content": f"quota {i}"}]}}
        for i in range(200)
    ]  # fmt: skip
    log = tmp_path / "sim.jsonl"
    with Simulator(latency_s=0.02, log_path=log, quota_after=50) as sim:
        result = execute_batch(
            items, checkpoint="quota", config=_config(sim, tmp_path, workers=8, processes=1),
            handle_signals=False,
        )  # fmt: skip
    assert result.stopped_by is not None and "openai refused the account" in result.stopped_by
    assert "insufficient_quota" in result.stopped_by
    assert result.metrics.failed == 0 and result.metrics.succeeded == 50
    assert result.metrics.pending == 150
    refused = [e for e in map(json.loads, log.read_text().splitlines()) if e["status"] == 429]
    assert 1 <= len(refused) <= 8 + 1  # what was in flight, and no more
    statuses = {e["status"] for e in journaled(tmp_path / "ck" / "quota").values()}
    assert statuses == {"succeeded"}  # no task failed because of the account

    with Simulator(latency_s=0.02) as sim:  # the account is fixed
        again = execute_batch(
            items, checkpoint="quota", resume=True,
            config=_config(sim, tmp_path, workers=8, processes=1), handle_signals=False,
        )  # fmt: skip
    assert again.stopped_by is None and again.metrics.succeeded == 200
    assert again.metrics.resumed == 50


def test_the_command_line_exits_3_on_an_account_refusal(tmp_path: Path) -> None:
    _tasks(tmp_path / "tasks.jsonl", 30, max_tokens=5)
    with Simulator(latency_s=0.0, quota_after=10) as sim:
        env_file = tmp_path / ".env"
        env_file.write_text(f"OPENAI_API_KEY=sk-test\nOPENAI_BASE_URL={sim.openai_base_url}\n")
        done = _cli(tmp_path, "batch", "tasks.jsonl", "--no-progress", "--workers", "2")
    assert done.returncode == 3, done.stderr
    assert "refused the account" in done.stderr and "--resume" in done.stderr
    statuses = [line["turborun"]["status"] for line in _lines(tmp_path / "tasks.results.jsonl")]
    assert statuses.count("failed") == 0 and statuses.count("succeeded") == 10


@pytest.mark.parametrize(
    ("model", "max_tokens", "message"),
    [
        ("my-own-model", 10, "without a known price: openai/my-own-model (5 tasks)"),
        ("gpt-4o-mini", None, "5 tasks set no max_tokens"),
    ],
)
def test_a_cap_that_cannot_bound_the_work_is_refused_before_anything_is_sent(
    tmp_path: Path, model: str, max_tokens: int | None, message: str
) -> None:
    _tasks(tmp_path / "tasks.jsonl", 5, model=model, max_tokens=max_tokens)
    done = _cli(tmp_path, "batch", "tasks.jsonl", "--simulate", "--no-progress",
                "--max-cost", "1")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing made, nothing sent


def test_a_token_cap_bounds_a_model_without_a_price(tmp_path: Path) -> None:
    _tasks(tmp_path / "tasks.jsonl", 300, model="my-own-model", max_tokens=100)
    done = _cli(tmp_path, "batch", "tasks.jsonl", "--simulate", "--no-progress",
                "--max-tokens-total", "2000")  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "token cap (2,000 tokens)" in done.stderr
    lines = _lines(tmp_path / "tasks.results.jsonl")
    used = sum((line["turborun"]["input_tokens"] or 0) + (line["turborun"]["output_tokens"] or 0)
               for line in lines)  # fmt: skip
    assert 2000 - 150 <= used <= 2000  # within one request's worst case of the cap


def test_runner_refuses_a_spend_cap_rather_than_ignoring_it() -> None:
    from turborun import ConfigError, Runner

    with pytest.raises(ConfigError, match="Runner takes no spend cap"):
        Runner(max_cost=1.0)
