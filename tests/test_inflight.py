"""Requests in flight through the whole pipeline: the supervisor's in-flight target
(rate × latency, a fixed --workers, the --max-in-flight ceiling), worker processes that
hold hundreds of calls (and die holding them), endpoints that are rested when they stop
answering, and adaptive limits for a self-hosted server. Real worker processes, the real
openai SDK over real HTTP to the simulator, a real journal."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import children, journaled

from turborun import execute_batch
from turborun.config import DEFAULT_WORKERS, Config, Limit
from turborun.simulator import Simulator
from turborun.supervisor import Progress

MODEL = "sim-inflight"
HUGE_TPM = 1_000_000_000.0  # configured so the bucket paces by RPM and learns nothing

pytestmark = pytest.mark.timeout(60)  # a run that never ends fails alone


# ---- helpers -----------------------------------------------------------------------


def _task(cid: str, *, extra: str = "", **keys: Any) -> dict[str, Any]:
    """A chat task whose prompt starts with its custom_id (how the log is matched)."""
    body = {
        "model": MODEL,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": f"{cid} {extra}".strip()}],
    }
    return {"custom_id": cid, "body": body, **keys}


def _tasks(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [_task(f"{prefix}{i:04d}") for i in range(n)]


def _config(tmp_path: Path, urls: list[str], *, rpm: float | None = None, **kw: Any) -> Config:
    kw.setdefault("processes", 2)
    if len(urls) > 1:
        kw["provider_endpoints"] = {"openai": tuple(urls)}
    if rpm is not None:
        kw["model_limits"] = {("openai", MODEL): Limit(rpm=rpm, tpm=HUGE_TPM)}
    return Config(
        checkpoint_dir=tmp_path / "ck",
        base_urls={"openai": urls[0]},
        api_keys={"openai": "sk-test"},
        progress=False,
        **kw,
    )


def _run(tasks: list[dict[str, Any]], config: Config, snapshots: list[Progress] | None = None,
         on_progress: Any = None, checkpoint: str | None = None) -> Any:  # fmt: skip
    def progress(snapshot: Progress) -> None:
        if snapshots is not None:
            snapshots.append(snapshot)
        if on_progress is not None:
            on_progress(snapshot)

    return execute_batch(
        tasks, config=config, progress=progress, handle_signals=False, checkpoint=checkpoint
    )


def _log(sim: Simulator) -> list[dict[str, Any]]:
    """The simulator's request log, complete lines only (safe while it appends)."""
    data = Path(sim.log_path).read_bytes() if sim.log_path else b""
    return [orjson.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


def _cid(entry: dict[str, Any]) -> str | None:
    messages = (entry.get("body") or {}).get("messages") or []
    content = messages[-1].get("content") if messages else None
    return content.split()[0] if isinstance(content, str) and content else None


def _receipts(sim: Simulator) -> Counter[str]:
    """Requests the simulator received, per custom_id."""
    return Counter(cid for cid in map(_cid, _log(sim)) if cid is not None)


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _worker_pids() -> set[int]:
    """Live children of this process's multiprocessing fork server: the worker
    processes (the pool starts them from the fork server, never from us)."""
    pids: set[int] = set()
    for child in children(os.getpid()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing.forkserver" in cmdline:
            pids |= {p for p in children(child) if _alive(p)}
    return pids


# ---- 1. the target follows rate × latency ------------------------------------------


def test_target_grows_under_a_long_latency_limit_and_returns_to_the_start(tmp_path):
    """400 requests at 2 s under 12,000 RPM: Little's law wants ~400 in flight, so the
    target leaves 120 behind; a second phase of 30 tasks (they depend on the first 400)
    needs few, and the target is back at 120."""
    first = _tasks(400)
    second = [
        _task(f"p{i:02d}", extra="[sim:latency=1.5]", depends_on=[t["custom_id"] for t in first])
        for i in range(30)
    ]
    snapshots: list[Progress] = []
    with Simulator(latency_s=2.0, limits={MODEL: (12_000, None)}) as sim:
        config = _config(tmp_path, [sim.openai_base_url], rpm=12_000)
        result = _run(first + second, config, snapshots)
        statuses = Counter(entry["status"] for entry in sim.requests())

    assert result.success_rate == 1.0
    assert result.metrics.rate_limited == 0, f"{result.metrics.rate_limited} × 429"
    assert statuses == {200: 430}, statuses
    assert max(s.target for s in snapshots) > DEFAULT_WORKERS
    assert max(s.in_flight for s in snapshots) > DEFAULT_WORKERS
    # ~400 by Little's law (the whole first phase at once); 200 leaves room for a slow CI
    assert result.metrics.peak_in_flight > 200, result.metrics.peak_in_flight
    assert result.metrics.peak_target > 200, result.metrics.peak_target
    phase_two = [s for s in snapshots if 400 <= s.done < s.total]
    assert phase_two, "no progress snapshot while the second phase ran"
    assert [s.target for s in phase_two] == [DEFAULT_WORKERS] * len(phase_two)
    assert all(s.in_flight <= 30 for s in phase_two)
    assert snapshots[-1].done == 430 and snapshots[-1].target == DEFAULT_WORKERS


# ---- 2. a fixed --workers --------------------------------------------------------------


def test_fixed_workers_bound_what_is_in_flight(tmp_path):
    """The same demand (200/s × 0.5 s × headroom ≈ 126) with --workers 50: never more
    than 50 in flight, seen by the supervisor and by the server."""
    snapshots: list[Progress] = []
    with Simulator(latency_s=0.5, limits={MODEL: (12_000, None)}, capacity=1000) as sim:
        config = _config(tmp_path, [sim.openai_base_url], rpm=12_000, workers=50)
        result = _run(_tasks(300), config, snapshots)
        log = sim.requests()

    assert result.success_rate == 1.0 and result.metrics.rate_limited == 0
    assert max(s.in_flight for s in snapshots) <= 50
    assert {s.target for s in snapshots} == {50}
    assert result.metrics.peak_in_flight == 50  # reached, and never passed
    assert result.metrics.peak_target == 50
    in_service = [e["in_service"] for e in log]
    assert len(log) == 300 and {e["status"] for e in log} == {200}
    assert 40 <= max(in_service) <= 50, max(in_service)
    assert max(e["waiting"] for e in log) == 0


# ---- 3. the --max-in-flight ceiling -------------------------------------------------


def test_max_in_flight_caps_the_target(tmp_path):
    """Demand 200/s × 1 s × headroom ≈ 251 under a ceiling of 150."""
    snapshots: list[Progress] = []
    with Simulator(latency_s=1.0, limits={MODEL: (12_000, None)}, capacity=1000) as sim:
        config = _config(tmp_path, [sim.openai_base_url], rpm=12_000, max_in_flight=150)
        result = _run(_tasks(400), config, snapshots)
        log = sim.requests()

    assert result.success_rate == 1.0 and result.metrics.rate_limited == 0
    assert result.metrics.peak_target == 150, "the ceiling binds: demand is ~250"
    assert DEFAULT_WORKERS < result.metrics.peak_in_flight <= 150
    assert max(s.target for s in snapshots) <= 150
    assert max(s.in_flight for s in snapshots) <= 150
    peak_at_server = max(e["in_service"] for e in log)
    assert DEFAULT_WORKERS < peak_at_server <= 150, peak_at_server
    assert len(log) == 400


# ---- 4. a worker process dies holding hundreds of calls ------------------------------


def test_killed_worker_holding_hundreds_of_calls_requeues_each_once(tmp_path):
    """600 requests at 3 s in 2 processes: once ≥ 300 are in flight, SIGKILL one of
    them. Its calls (~half) are sent again exactly once; every task succeeds once."""
    before = _worker_pids()  # stale ones from earlier runs, if any
    killed: dict[str, Any] = {}

    def kill_one(snapshot: Progress) -> None:
        # ≥ 300 in flight, most of them at the server (a worker on a busy core may
        # still be opening connections for the last ones it was handed)
        if killed or snapshot.in_flight < 300 or len(_log(sim)) < 500:
            return
        workers = sorted(_worker_pids() - before)
        killed["workers"] = workers
        killed["in_flight"] = snapshot.in_flight
        if workers:
            killed["pid"] = workers[0]
            os.kill(workers[0], signal.SIGKILL)

    ids = [f"t{i:04d}" for i in range(600)]
    with Simulator(latency_s=3.0) as sim:
        config = _config(tmp_path, [sim.openai_base_url], rpm=60_000, workers=600)
        result = _run(_tasks(600), config, on_progress=kill_one, checkpoint="kill")
        receipts = _receipts(sim)

    assert len(killed.get("workers", ())) == 2, killed
    assert "pid" in killed and not _alive(killed["pid"])
    assert result.success_rate == 1.0
    assert {result.results[cid].status for cid in ids} == {"succeeded"}
    entries = journaled(tmp_path / "ck" / "kill")
    assert sorted(entries) == ids and {e["status"] for e in entries.values()} == {"succeeded"}
    # a call lost with its process is the pool's failure: not an attempt, not a retry
    assert {e["attempts"] for e in entries.values()} == {1}
    assert result.metrics.retries == 0
    assert set(receipts) == set(ids)
    assert max(receipts.values()) <= 2, receipts.most_common(3)
    repeats = sum(1 for n in receipts.values() if n == 2)
    assert repeats > 100, f"the killed process held only {repeats} calls the server saw"
    log = (tmp_path / "ck" / "kill" / "run.log").read_text()
    held = [int(n) for n in re.findall(r"a worker process died holding (\d+) calls", log)]
    assert len(held) == 1, held
    assert repeats <= held[0] <= killed["in_flight"], (repeats, held, killed)


# ---- 5. an endpoint that stops answering is rested --------------------------------------


def test_endpoint_that_refuses_is_rested_and_its_work_moves_to_the_other(tmp_path):
    """Two servers behind one model; B stops once 50 tasks are done (its port then
    refuses). Every task still succeeds, on A after that, without retrying against B."""
    stopped: dict[str, float] = {}
    with Simulator(latency_s=0.5) as a, Simulator(latency_s=0.5) as b:

        def stop_b(snapshot: Progress) -> None:
            if not stopped and snapshot.done >= 50:
                b.stop()  # inside the supervisor's loop: nothing is dispatched meanwhile
                stopped["at"] = time.time()
                stopped["done"] = snapshot.done

        urls = [a.openai_base_url, b.openai_base_url]
        config = _config(tmp_path, urls, rpm=12_000)
        started = time.monotonic()
        result = _run(_tasks(300), config, on_progress=stop_b, checkpoint="two")
        wall_s = time.monotonic() - started
        a_log, b_log = _log(a), _log(b)

    assert "at" in stopped and stopped["done"] < 250, stopped
    assert result.success_rate == 1.0 and result.metrics.failed == 0
    entries = journaled(tmp_path / "ck" / "two")
    by = Counter(e["endpoint"] for e in entries.values())
    assert set(by) <= set(urls)
    early = Counter(e["endpoint"] for e in entries.values() if e["finished_at"] < stopped["at"])
    late = Counter(e["endpoint"] for e in entries.values() if e["finished_at"] > stopped["at"])
    assert early[urls[0]] >= 10 and early[urls[1]] >= 10, early
    # B's answers already on their way may be absorbed just after; nothing later
    b_after = [
        e["finished_at"] - stopped["at"]
        for e in entries.values()
        if e["endpoint"] == urls[1] and e["finished_at"] > stopped["at"]
    ]
    assert max(b_after, default=0.0) < 0.5, b_after
    assert late[urls[0]] >= 100, late
    assert all(e["t"] < stopped["at"] for e in b_log)
    # Requests B took and never answered were retried (on A); beyond those, only a few
    # went to B's closed port before it was rested, and its probes.
    lost_at_b = len(b_log) - by[urls[1]]
    assert lost_at_b >= 0
    assert lost_at_b <= result.metrics.retries <= lost_at_b + 20, (
        lost_at_b,
        result.metrics.retries,
    )
    assert len(a_log) == by[urls[0]]
    # 5 backed-off retries per task for B's share would take ~15 s
    assert wall_s < 10, f"{wall_s:.1f} s"


# ---- 6. a self-hosted server that publishes no limits ---------------------------------


def test_adaptive_limit_bounds_what_a_self_hosted_server_sees(tmp_path):
    """capacity 16, a queue of 16, 503 beyond, 0.2 s ± 20 %, no rate-limit headers:
    the fixed 120 of old would keep 32 outstanding and draw hundreds of 503s; the
    adaptive limit keeps roughly capacity..2×capacity outstanding."""
    capacity = 16
    with Simulator(
        latency_s=0.2, latency_jitter=0.2, capacity=capacity, queue_limit=capacity, seed=7
    ) as sim:
        config = _config(tmp_path, [sim.openai_base_url])
        result = _run(_tasks(800), config)
        log = sim.requests()

    assert result.success_rate == 1.0 and result.metrics.failed == 0
    refused = sum(1 for e in log if e["status"] == 503)
    assert refused < 0.05 * len(log), f"{refused} × 503 of {len(log)}"
    outstanding = [e["in_service"] + e["waiting"] for e in log[len(log) // 2 :]]
    median = statistics.median(outstanding)
    assert 0.8 * capacity <= median <= 2 * capacity, median
    assert result.metrics.peak_in_flight < DEFAULT_WORKERS


# ---- a configured limit equal to the server's -----------------------------------------


def test_a_configured_limit_equal_to_the_servers_draws_no_429(tmp_path):
    """400 requests, 400 in flight, 12,000 RPM configured and enforced by the server:
    the supervisor sends at most 200 in any 1.0256 s, and the server sees no more than
    200 in any second (it saw 201-206 before the worker processes stopped pausing for
    garbage collection with hundreds of requests in flight; see quiet_gc.py)."""
    with Simulator(latency_s=1.0, limits={MODEL: (12_000, None)}, capacity=1000) as sim:
        config = _config(tmp_path, [sim.openai_base_url], rpm=12_000, workers=400)
        result = _run(_tasks(400), config)
        times = sorted(e["t"] for e in sim.requests())
    assert result.success_rate == 1.0
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert result.metrics.rate_limited == 0, f"{result.metrics.rate_limited} × 429, {busiest}/s"
    assert busiest <= 200, busiest


# ---- the open-file limit ---------------------------------------------------------------


def test_open_file_limit_lowers_the_ceiling_and_says_so():
    """Every request in flight holds a socket: with a hard limit of 600 descriptors, two
    processes hold at most 2 × (600 − 128), however high --max-in-flight is, and the run
    log says which limit binds."""
    script = (
        "import logging, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 600))\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "from turborun.config import Config\n"
        "from turborun.session import _in_flight_target\n"
        "target = _in_flight_target(Config(max_in_flight=8192), 2)\n"
        "print('ceiling', target.ceiling, 'soft', resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "ceiling 944 soft 600" in done.stdout, done.stdout + done.stderr
    assert "open-file limit (soft 600, hard 600) allows at most 944" in done.stdout
