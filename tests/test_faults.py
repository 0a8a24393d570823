"""Runs that must keep moving or say why not: a pause shown with its reason, a killed
worker process that is not the provider's failure, a server that never answers, Python
steps that raise anything or run past --timeout, a request larger than a minute's
tokens. Real worker processes, the real openai SDK over real HTTP to the simulator (or
to a closed port), a real journal. Timings are for scripts/bench_faults.py."""

from __future__ import annotations

import io
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import children

from turborun import execute_batch
from turborun.config import Config, Limit
from turborun.progress import ProgressDisplay
from turborun.simulator import Simulator
from turborun.supervisor import Progress

pytestmark = pytest.mark.timeout(60)  # a run that never ends fails alone


def _config(url: str, tmp_path: Path, **kw: Any) -> Config:
    kw.setdefault("processes", 1)
    return Config(
        checkpoint_dir=tmp_path / "ck",
        base_urls={"openai": url},
        api_keys={"openai": "sk-test"},
        progress=False,
        **kw,
    )


def _task(cid: str, model: str, content: str = "", max_tokens: int = 4, **keys: Any) -> dict:
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"{cid} {content}".strip()}],
    }
    return {"custom_id": cid, "body": body, **keys}


def _run(tasks: list[dict], config: Config, snapshots: list[Progress] | None = None,
         on_progress: Any = None) -> Any:  # fmt: skip
    def progress(snapshot: Progress) -> None:
        if snapshots is not None:
            snapshots.append(snapshot)
        if on_progress is not None:
            on_progress(snapshot)

    return execute_batch(
        tasks, config=config, progress=progress, handle_signals=False, checkpoint="run"
    )


def _run_log(tmp_path: Path) -> str:
    return (tmp_path / "ck" / "run" / "run.log").read_text()


# ---- pauses are shown, with their reason ----------------------------------------------


def test_breaker_pause_shows_in_the_progress_line_and_run_log_with_its_reason(simulator, tmp_path):
    """Every request fails twice (HTTP 500) before it succeeds: the breaker opens, the
    progress line says PAUSED and why, run.log has the same line, and the run ends with
    every task done."""
    model = f"pause-{uuid.uuid4().hex[:8]}"
    tasks = [_task(f"p{i}", model, "[sim:status=500:times=2]") for i in range(12)]
    config = _config(simulator.openai_base_url, tmp_path, workers=12,
                     breaker_failures=4, breaker_cooldown_s=0.3)  # fmt: skip
    snapshots: list[Progress] = []
    result = _run(tasks, config, snapshots)

    assert result.success_rate == 1.0
    paused = [s for s in snapshots if s.paused]
    assert paused, "no progress snapshot showed the pause"
    reason = paused[0].paused[0]
    assert reason.startswith(f"openai/{model}: circuit breaker ")
    assert "requests failed (server_error" in reason
    stream = io.StringIO()
    ProgressDisplay(stream=stream)(paused[0])  # the line a user sees (not a terminal)
    assert f"PAUSED openai/{model}: circuit breaker " in stream.getvalue()
    log = _run_log(tmp_path)
    assert f"openai/{model}: circuit breaker open: " in log
    assert "requests failed (server_error" in log


def test_pauses_reach_the_run_log_without_a_progress_display(simulator, tmp_path):
    model = f"quiet-{uuid.uuid4().hex[:8]}"
    tasks = [_task(f"q{i}", model, "[sim:status=500:times=2]") for i in range(12)]
    config = _config(simulator.openai_base_url, tmp_path, workers=12,
                     breaker_failures=4, breaker_cooldown_s=0.3)  # fmt: skip
    result = execute_batch(tasks, config=config, handle_signals=False, checkpoint="run")
    assert result.success_rate == 1.0
    assert f"openai/{model}: circuit breaker open: " in _run_log(tmp_path)


# ---- a killed worker process is the pool's failure --------------------------------------


def _worker_pids() -> set[int]:
    pids: set[int] = set()
    for child in children(os.getpid()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing.forkserver" in cmdline:
            pids |= children(child)
    return pids


def test_sigkilled_worker_neither_opens_the_breaker_nor_pauses_its_bucket(tmp_path):
    """300 requests at 1 s in 2 processes, a breaker that would open at 5 failures: a
    worker SIGKILLed holding ~150 of them loses calls, not attempts; no pause, no
    retry, every task succeeds."""
    before = _worker_pids()
    killed: list[int] = []

    def kill_one(snapshot: Progress) -> None:
        if killed or snapshot.in_flight < 250 or len(sim.requests()) < 250:
            return
        workers = sorted(_worker_pids() - before)
        if workers:
            killed.append(workers[0])
            os.kill(workers[0], signal.SIGKILL)

    model = "kill-breaker"
    with Simulator(latency_s=1.0) as sim:
        config = _config(sim.openai_base_url, tmp_path, workers=300, processes=2,
                         breaker_failures=5, breaker_cooldown_s=30.0,
                         model_limits={("openai", model): Limit(rpm=600_000, tpm=1e9)})  # fmt: skip
        snapshots: list[Progress] = []
        tasks = [_task(f"k{i:03d}", model) for i in range(300)]
        result = _run(tasks, config, snapshots, kill_one)

    assert killed, "no worker process was killed"
    assert result.success_rate == 1.0
    assert result.metrics.retries == 0
    assert {r.attempts for r in result.results.values()} == {1}
    assert not [s.paused for s in snapshots if s.paused]
    log = _run_log(tmp_path)
    assert "a worker process died holding" in log
    assert "circuit breaker" not in log


# ---- a server that never answers ---------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_port_fails_every_task_after_the_give_up_time(tmp_path):
    """30 tasks to a port nothing listens on, default retries, breaker cool-down 0.5 s
    (so the bucket gives up after 2 × 0.5 s instead of 2 × 30 s): every task fails with
    `connection`, the message says the server never answered, the run log says so once."""
    config = _config(f"http://127.0.0.1:{_closed_port()}/v1", tmp_path, breaker_cooldown_s=0.5)
    snapshots: list[Progress] = []
    result = _run([_task(f"c{i:02d}", "closed") for i in range(30)], config, snapshots)

    assert result.metrics.failed == 30
    for r in result.results.values():
        assert r.status == "failed"
        assert r.error["code"] == "connection"
        assert "no answer at all from the server in" in r.error["message"]
        assert "openai/closed (http://127.0.0.1:" in r.error["message"]
        assert r.attempts <= 1 + config.max_retries
    log = _run_log(tmp_path)
    assert log.count("giving up on its tasks") == 1
    # while it waited, the progress line said why and when it would give up
    reasons = [r for s in snapshots for r in s.paused]
    assert any("no answer yet from the server: its tasks fail in" in r for r in reasons)


# ---- Python steps ------------------------------------------------------------------------


@pytest.fixture
def step_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STEP_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("fn", "raised"), [("steps:exits", "SystemExit: 3"),
                                            ("steps:interrupts", "KeyboardInterrupt")])  # fmt: skip
def test_step_raising_a_base_exception_fails_and_the_run_finishes(step_dir, fn, raised):
    tasks = [
        {"custom_id": "bad", "fn": fn},
        {"custom_id": "after", "fn": "steps:answer", "depends_on": ["bad"]},
        {"custom_id": "other", "fn": "steps:answer"},
    ]
    result = execute_batch(tasks, checkpoint_dir=str(step_dir / "ck"), workers=1, processes=1)
    bad = result.results["bad"]
    assert bad.status == "failed" and bad.error["code"] == "fn_error"
    assert bad.error["message"] == raised
    assert result.results["after"].status == "skipped"
    assert result.results["other"].text == "42"


def test_step_past_its_timeout_fails_and_does_not_hold_its_slot(step_dir):
    """One process, one step thread: a step sleeping a minute under --timeout 1 fails at
    its deadline and the steps after it still run (on a fresh thread)."""
    tasks = [{"custom_id": "slow", "fn": "steps:sleeps_a_minute", "priority": "high"}]
    tasks += [{"custom_id": f"quick{i}", "fn": "steps:answer"} for i in range(3)]
    result = execute_batch(tasks, checkpoint_dir=str(step_dir / "ck"), workers=1, processes=1,
                           timeout_s=1.0)  # fmt: skip
    slow = result.results["slow"]
    assert slow.status == "failed" and slow.error["code"] == "fn_error"
    assert "still running after the 1 s timeout" in slow.error["message"]
    assert slow.attempts == 1  # a step past its deadline is not retried
    assert [result.results[f"quick{i}"].text for i in range(3)] == ["42"] * 3


def test_process_with_too_many_stuck_steps_is_replaced_and_the_run_goes_on(step_dir):
    from turborun.worker import MAX_STUCK_STEPS

    tasks = [{"custom_id": f"s{i}", "fn": "steps:sleeps_a_minute", "priority": "high"}
             for i in range(MAX_STUCK_STEPS)]  # fmt: skip
    tasks += [{"custom_id": f"q{i}", "fn": "steps:answer"} for i in range(4)]
    result = execute_batch(tasks, checkpoint="stuck", checkpoint_dir=str(step_dir / "ck"),
                           workers=8, processes=1, timeout_s=0.5)  # fmt: skip
    assert result.metrics.failed == MAX_STUCK_STEPS
    assert [result.results[f"q{i}"].text for i in range(4)] == ["42"] * 4
    log = (step_dir / "ck" / "stuck" / "run.log").read_text()
    assert "replacing it" in log


# ---- a request larger than a minute's tokens ----------------------------------------------


def test_request_over_the_configured_tpm_fails_at_once_and_smaller_ones_run(simulator, tmp_path):
    model = f"tpm-{uuid.uuid4().hex[:8]}"
    config = _config(simulator.openai_base_url, tmp_path, workers=4,
                     model_limits={("openai", model): Limit(rpm=6000, tpm=10_000)})  # fmt: skip
    tasks = [_task("huge", model, max_tokens=1_000_000_000, priority="critical")]
    tasks += [_task(f"small{i}", model, max_tokens=8) for i in range(5)]
    result = _run(tasks, config)

    huge = result.results["huge"]
    assert huge.status == "failed" and huge.error["code"] == "request_too_large"
    assert f"openai/{model} allows 10,000 tokens per minute (configured)" in huge.error["message"]
    assert huge.attempts == 0
    assert all(result.results[f"small{i}"].ok for i in range(5))


def test_request_over_a_learned_tpm_fails_once_the_limit_is_known(tmp_path):
    model = "tpm-learned"
    with Simulator(latency_s=0.0, limits={model: (None, 200_000)}) as sim:
        config = _config(sim.openai_base_url, tmp_path, workers=4)
        tasks = [_task(f"small{i}", model, max_tokens=8) for i in range(5)]
        tasks.append(_task("huge", model, max_tokens=1_000_000, priority="low"))
        result = _run(tasks, config)
        huge_sent = [r for r in sim.requests() if r.get("max_tokens") == 1_000_000]

    huge = result.results["huge"]
    assert huge.status == "failed" and huge.error["code"] == "request_too_large"
    assert "allows 200,000 tokens per minute (learned from the provider)" in huge.error["message"]
    assert not huge_sent
    assert all(result.results[f"small{i}"].ok for i in range(5))


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("steps:sleeps_a_minute", "still running after the 0.5 s timeout"),
        ("steps:exits", "SystemExit: 3"),
        ("steps:answer", None),
    ],
)
def test_a_step_ray_places_is_bounded_by_its_timeout_like_a_local_one(
    fn: str, message: str | None
) -> None:
    """The function a Ray task runs for a step that asked for resources (no Ray needed
    to call it): past its timeout it returns a failure instead of holding the task."""
    import time

    from turborun.ray_pool import run_placed_step
    from turborun.records import FN_ERROR, FN_PROVIDER, Call

    call = Call("placed", 1, FN_PROVIDER, "POST", "", b"{}", fn=fn, timeout_s=0.5)
    started = time.monotonic()
    outcome = run_placed_step(call)
    assert time.monotonic() - started < 5
    if message is None:
        assert outcome.ok
    else:
        assert outcome.error_kind == FN_ERROR and message in (outcome.error_message or "")
