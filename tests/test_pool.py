"""The worker pool through real processes and real signals."""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from turborun.pool import WorkerPool
from turborun.records import FN_PROVIDER, Call
from turborun.worker import WorkerSettings

SETTINGS = WorkerSettings(fn_threads=2, timeout_s=10, base_urls={}, api_keys={})


def _call(custom_id: str, fn: str) -> Call:
    return Call(custom_id, 1, FN_PROVIDER, "POST", "", orjson.dumps({}), fn=fn)


def _wait_for(predicate, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture
def pool(tmp_path, monkeypatch):
    monkeypatch.setenv("STEP_DIR", str(tmp_path))
    p = WorkerPool(2, SETTINGS)
    p.start()
    yield p
    p.shutdown()


def test_killed_worker_returns_its_calls_and_is_replaced(pool, tmp_path):
    pool.send([_call("slow-1", "steps:slow")])
    pid_file = _wait_for(lambda: next(iter(tmp_path.glob("pid-*")), None))
    victim = int(pid_file.read_text())
    os.kill(victim, signal.SIGKILL)
    lost = []
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        lost = pool.wait(1.0).lost
    assert [c.custom_id for c in lost] == ["slow-1"]
    assert pool.alive() == 2 and victim not in pool.pids()

    pool.send(lost)
    outcomes = []
    while not outcomes and time.monotonic() < deadline + 10:
        outcomes = pool.wait(1.0).outcomes
    assert outcomes[0].ok and outcomes[0].pid != victim
    assert outcomes[0].text == f"done by {outcomes[0].pid}"


def test_other_processes_keep_working_while_one_dies(pool, tmp_path):
    pool.send([_call("slow-1", "steps:slow")])
    pid_file = _wait_for(lambda: next(iter(tmp_path.glob("pid-*")), None))
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    pool.send([_call("quick", "steps:answer")])
    seen = {}
    deadline = time.monotonic() + 15
    while "quick" not in seen and time.monotonic() < deadline:
        events = pool.wait(1.0)
        seen.update({o.custom_id: o for o in events.outcomes})
    assert seen["quick"].text == "42"


def test_workers_ignore_sigint(pool):
    pool.send([_call("a", "steps:answer")])
    _wait_for(lambda: pool.wait(0.5).outcomes)
    for pid in pool.pids():
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert pool.alive() == 2
    pool.send([_call("b", "steps:answer")])
    outcomes = _wait_for(lambda: pool.wait(0.5).outcomes)
    assert outcomes[0].text == "42"


def test_fn_step_exception_is_an_outcome_not_a_crash(pool):
    pool.send([_call("f", "steps:fail")])
    outcome = _wait_for(lambda: pool.wait(0.5).outcomes)[0]
    assert outcome.error_kind == "fn_error" and "always fails" in (outcome.error_message or "")
    assert pool.alive() == 2


def test_process_with_stuck_steps_is_replaced_after_its_requests_are_answered(
    simulator, monkeypatch, tmp_path
):
    """MAX_STUCK_STEPS steps sleep past a 0.3 s timeout while an HTTP call (2 s) is in
    flight in the same process: each step fails at its deadline, a replacement starts,
    the HTTP call is answered (not lost), and then the old process stops."""
    from turborun.worker import MAX_STUCK_STEPS

    monkeypatch.setenv("STEP_DIR", str(tmp_path))
    settings = WorkerSettings(fn_threads=MAX_STUCK_STEPS, timeout_s=10,
                              base_urls={"openai": simulator.openai_base_url},
                              api_keys={"openai": "sk-test"})  # fmt: skip
    pool = WorkerPool(1, settings)
    pool.start()
    try:
        first = pool.pids()
        message = {"role": "user", "content": "[sim:latency=2]"}
        body = orjson.dumps({"model": "m", "max_tokens": 2, "messages": [message]})
        http = Call("http", 1, "openai", "POST", "/v1/chat/completions", body, timeout_s=10)
        steps = [
            Call(
                f"s{i}",
                1,
                FN_PROVIDER,
                "POST",
                "",
                orjson.dumps({}),
                fn="steps:sleeps_a_minute",
                timeout_s=0.3,
            )  # fmt: skip
            for i in range(MAX_STUCK_STEPS)
        ]
        pool.send([http, *steps])
        seen: dict[str, object] = {}
        lost = []
        deadline = time.monotonic() + 20
        while (len(seen) < MAX_STUCK_STEPS + 1 or pool.pids() == first or first[0] in
               pool.pids()) and time.monotonic() < deadline:  # fmt: skip
            events = pool.wait(0.5)
            seen.update({o.custom_id: o for o in events.outcomes})
            lost += events.lost
        assert not lost
        assert seen["http"].ok and seen["http"].pid == first[0]
        assert all(seen[f"s{i}"].error_kind == "fn_error" for i in range(MAX_STUCK_STEPS))
        assert len(pool.pids()) == 1 and first[0] not in pool.pids()
        pool.send([_call("after", "steps:answer")])
        outcome = _wait_for(lambda: pool.wait(0.5).outcomes)[0]
        assert outcome.text == "42" and outcome.pid != first[0]
    finally:
        pool.shutdown()
