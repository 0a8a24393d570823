"""Runs under faults, each beside the same run without the fault, in one process:

1. errors10:  3,000 requests at 200 ms, no faults vs 10 % HTTP 500
              → wall ≤ 2 × the clean run, every task succeeds
2. errors30:  2,000 requests at 200 ms, no faults vs 30 % HTTP 500
              → wall ≤ 3 × the clean run, every task succeeds
2b. hangs:    3,000 requests at 200 ms, no faults vs 5 % never answered, --timeout 3
              → no pause (timeouts are dated by when their request was sent), every
              task succeeds; the tail is timeouts: ~7 tasks hang twice (0.05² × 3,000),
              so wall ≈ the clean run + 2 × (3 s + a retry delay + 0.2 s)
3. kill:      6,000 requests at 200 ms, no fault vs one worker process SIGKILLed
              when a third is done → ≤ 1.3 × the clean run, every task succeeds
4. models:    20,000 requests at 200 ms over one model vs over 2,000 models
              → the ratio (the supervisor's work per bucket, not per request)
5. closed:    30 requests to a closed port with default retries, timeout and
              breaker → every task ends (failed) within the documented bound (2 min)

Every run goes through execute_batch, worker processes, the openai SDK over HTTP to
the simulator in its own process, and the journal. The limit (30,000 RPM, 500/s) is
configured and matches the simulator's, so the clean runs are paced and draw no 429.
"Wall" is the supervisor's run clock (first dispatch to last outcome); pauses are the
ones the progress line reported, with their reasons.

Usage: python scripts/bench_faults.py [--only errors10,errors30,hangs,kill,models,closed]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turborun import execute_batch  # noqa: E402
from turborun.config import Config, Limit  # noqa: E402
from turborun.simulator import Simulator  # noqa: E402

MODEL = "bench-faults"
RPM = 30_000.0
LATENCY_S = 0.2
HUGE_RPM = 10_000_000.0


def _tasks(n: int, models: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"r{i}",
            "body": {
                "model": MODEL if models == 1 else f"{MODEL}-{i % models}",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"fault {i}"}],
            },
        }
        for i in range(n)
    ]


def _config(url: str, folder: Path, **kw: Any) -> Config:
    kw.setdefault("provider_limits", {"openai": Limit(rpm=RPM, tpm=1e9)})
    return Config(
        checkpoint_dir=folder,
        base_urls={"openai": url},
        api_keys={"openai": "sk-bench"},
        progress=False,
        **kw,
    )


class _Watch:
    """Progress callback: the distinct pauses reported, and an optional action once a
    share of the tasks is done."""

    def __init__(self, at_share: float | None = None, action: Any = None) -> None:
        self.pauses: list[str] = []
        self._at, self._action, self._done = at_share, action, False

    def __call__(self, snapshot: Any) -> None:
        for reason in snapshot.paused:
            kind = reason.split(":", 2)[1].strip() if ":" in reason else reason
            if kind not in self.pauses:
                self.pauses.append(kind)
        if self._action and not self._done and snapshot.done >= self._at * snapshot.total:
            self._done = True
            self._action()


def _run(sim_kw: dict[str, Any], tasks: list[dict[str, Any]], folder: Path,
         watch: _Watch | None = None, **kw: Any) -> tuple[Any, float]:  # fmt: skip
    with Simulator(latency_s=LATENCY_S, **sim_kw) as sim:
        config = _config(sim.openai_base_url, folder, **kw)
        started = time.perf_counter()
        result = execute_batch(tasks, config=config, progress=watch, handle_signals=False)
        return result, time.perf_counter() - started


def _line(label: str, result: Any, wall: float, watch: _Watch | None = None) -> float:
    m = result.metrics
    pauses = f", pauses: {'; '.join(watch.pauses)}" if watch and watch.pauses else ", no pause"
    print(
        f"  {label}: {m.succeeded}/{m.total} ok, {m.failed} failed, wall {m.makespan_s:.1f} s "
        f"(process {wall:.1f} s), retries {m.retries}, 429s {m.rate_limited}{pauses}",
        flush=True,
    )
    return m.makespan_s


def errors(folder: Path, n: int, rate: float, bound: float, kind: str = "error") -> None:
    what = "HTTP 500" if kind == "error" else "never answered, --timeout 3"
    goal = f"bound {bound:g} x" if bound else "no pause; the tail is 2 timeouts"
    print(f"{kind}s: {n} requests at {LATENCY_S * 1000:.0f} ms, {rate:.0%} {what} "
          f"({goal})", flush=True)  # fmt: skip
    limits = {"limits": {MODEL: (RPM, None)}}
    kw: dict[str, Any] = {"timeout_s": 3.0} if kind == "hang" else {}
    clean, wall = _run(limits, _tasks(n), folder / f"clean{kind}{n}", **kw)
    base = _line("no faults", clean, wall)
    watch = _Watch()
    faulty, wall = _run({**limits, f"{kind}_rate": rate, "seed": 1}, _tasks(n),
                        folder / f"faulty{kind}{n}", watch, **kw)  # fmt: skip
    ratio = _line(f"{rate:.0%} {kind}s", faulty, wall, watch) / base
    print(f"  ratio {ratio:.2f} x ({goal})", flush=True)


def _worker_pids() -> list[int]:
    """The worker processes: children of our multiprocessing fork server."""
    pids = []
    for child in _children(os.getpid()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing.forkserver" in cmdline:
            pids.extend(_children(child))
    return sorted(pids)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task_dir in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task_dir / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return found


def kill(folder: Path, n: int) -> None:
    print(f"kill: {n} requests at {LATENCY_S * 1000:.0f} ms, one worker process "
          f"SIGKILLed when a third is done (bound 1.3 x)", flush=True)  # fmt: skip
    limits = {"limits": {MODEL: (RPM, None)}}
    clean, wall = _run(limits, _tasks(n), folder / "nokill")
    base = _line("no kill", clean, wall)
    killed: list[int] = []

    def kill_one() -> None:
        workers = _worker_pids()
        if workers:
            killed.append(workers[0])
            os.kill(workers[0], 9)

    watch = _Watch(1 / 3, kill_one)
    result, wall = _run(limits, _tasks(n), folder / "kill", watch)
    ratio = _line(f"killed pid {killed}", result, wall, watch) / base
    print(f"  ratio {ratio:.2f} x (bound 1.3 x)", flush=True)


def models(folder: Path, n: int, count: int) -> None:
    print(f"models: {n} requests at {LATENCY_S * 1000:.0f} ms, one model vs {count} models, "
          f"no limit binding ({HUGE_RPM:,.0f} RPM each), 500 in flight: the CPU sets the "
          "pace, so the ratio is the supervisor's cost of many buckets", flush=True)  # fmt: skip
    huge = {"provider_limits": {"openai": Limit(rpm=HUGE_RPM, tpm=1e12)}, "workers": 500}
    one, wall = _run({}, _tasks(n), folder / "one", **huge)
    base = _line("1 model", one, wall)
    many, wall = _run({}, _tasks(n, count), folder / "many", **huge)
    ratio = _line(f"{count} models", many, wall) / base
    print(f"  ratio {ratio:.2f} x", flush=True)


def closed(folder: Path, n: int) -> None:
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"closed: {n} requests to a closed port (127.0.0.1:{port}), default retries, "
          f"timeout and breaker (bound 120 s)", flush=True)  # fmt: skip
    config = Config(
        checkpoint_dir=folder / "closed",
        base_urls={"openai": f"http://127.0.0.1:{port}/v1"},
        api_keys={"openai": "sk-bench"},
        progress=False,
    )
    watch = _Watch()
    started = time.perf_counter()
    result = execute_batch(_tasks(n), config=config, progress=watch, handle_signals=False)
    wall = time.perf_counter() - started
    _line("closed port", result, wall, watch)
    codes = sorted({(r.error or {}).get("code", r.status) for r in result.results.values()})
    print(f"  ended in {wall:.1f} s (bound 120 s), error codes {codes}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="errors10,errors30,hangs,kill,models,closed")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    args = parser.parse_args()
    only = set(args.only.split(","))
    scale = args.scale
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "errors10" in only:
            errors(folder, int(3000 * scale), 0.10, 2.0)
        if "errors30" in only:
            errors(folder, int(2000 * scale), 0.30, 3.0)
        if "hangs" in only:
            errors(folder, int(3000 * scale), 0.05, 0.0, kind="hang")
        if "kill" in only:
            kill(folder, int(6000 * scale))
        if "models" in only:
            models(folder, int(20_000 * scale), 2000)
        if "closed" in only:
            closed(folder, 30)


if __name__ == "__main__":
    main()
