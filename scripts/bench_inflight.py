"""Requests in flight at real-world latencies: limits used fully, thousands in flight,
adaptive concurrency against self-hosted servers. Every scenario runs the whole
pipeline (execute_batch, worker processes, the openai SDK, the journal) against
the simulator in its own process.

1. limit:    6,000 requests, 3 s ± 30 %, 30,000 RPM configured, default sizing
             → wire time ≤ 1.15 × (n / rate + latency), 0 × 429; beside it the same run
               with the fixed pool of 120 that turborun had before (--workers 120)
2. learned:  the same with nothing configured (limits learned from headers)
             → ≤ 1.3 × that bound, ≤ 1 % of requests drawing a 429
3. long:     3,000 requests at 20 s under 12,000 RPM
             → ≥ 3,000 in flight at the peak; RSS of supervisor + workers ≤ 1.5 GiB
4. selfhost: a server with capacity 64 (FIFO queue of 64 beyond it, 503 past that),
             no rate-limit headers, 0.5 s ± 20 % per request
             → adaptive concurrency settles in 0.8–1.5 × 64, ≥ 90 % of the best
               throughput (64 / 0.5 s), nothing lost or timed out
5. two:      twice the requests on two such servers behind one model → ≥ 1.8 × the
             steady rate of scenario 4

"Wire time" is the supervisor's run clock (first dispatch to last outcome; pool start
and file writing excluded). In-flight counts at a server come from its request log.

Usage: python scripts/bench_inflight.py [--only limit,learned,long,selfhost,two] [--scale 1]
                                        [--repeat N]  (N runs of limit's and learned's auto,
                                                       and how many drew no 429)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turborun import execute_batch  # noqa: E402
from turborun.config import Config, Limit  # noqa: E402
from turborun.simulator import Simulator  # noqa: E402

MODEL = "bench-inflight"


def _tasks(n: int, max_tokens: int = 200) -> list[dict]:
    return [
        {
            "custom_id": f"r{i}",
            "body": {
                "model": MODEL,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"in flight {i}"}],
            },
        }
        for i in range(n)
    ]


def _config(urls: list[str], folder: Path, **kw: object) -> Config:
    if len(urls) > 1:
        kw["provider_endpoints"] = {"openai": tuple(urls)}
    return Config(
        checkpoint_dir=folder,
        base_urls={"openai": urls[0]},
        api_keys={"openai": "sk-bench"},
        progress=False,
        **kw,  # type: ignore[arg-type]
    )


class _RssSampler:
    """Peak summed RSS of this process and its descendants, the simulators excluded."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, sum(_rss(p) for p in self._ours()))

    def _ours(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        ours, frontier = [os.getpid()], [os.getpid()]
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in self.exclude:
                    ours.append(pid)
                    frontier.append(pid)
        return ours


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run(sims: list[Simulator], tasks: list[dict], folder: Path, **kw: object):  # type: ignore[no-untyped-def]
    config = _config([s.openai_base_url for s in sims], folder, **kw)
    exclude = {s._process.pid for s in sims if s._process is not None}  # noqa: SLF001
    with _RssSampler(exclude) as rss:
        started = time.perf_counter()
        result = execute_batch(tasks, config=config, handle_signals=False)
        wall = time.perf_counter() - started
    return result, wall, rss.peak


def _line(label: str, result, wall: float, extra: str = "") -> None:  # type: ignore[no-untyped-def]
    m = result.metrics
    print(
        f"  {label}: {m.succeeded}/{m.total} ok, wire {m.makespan_s:.1f} s (process {wall:.1f} s), "
        f"429s {m.rate_limited}, retries {m.retries}, peak in flight {m.peak_in_flight}, "
        f"peak target {m.peak_target}{extra}",
        flush=True,
    )


def limit(folder: Path, scale: float, learned: bool, repeat: int) -> None:
    n, rpm, latency = int(6000 * scale), 30_000.0, 3.0
    bound = n / (rpm / 60) + latency
    print(f"{'2-learned' if learned else '1-limit'}: {n} requests, 3 s ± 30 %, {rpm:,.0f} RPM "
          f"at the server, bound n/rate + latency = {bound:.1f} s", flush=True)  # fmt: skip
    limits = {} if learned else {("openai", MODEL): Limit(rpm=rpm)}
    runs = [(f"auto {i + 1}" if repeat > 1 else "auto", {}) for i in range(repeat)]
    if not learned:
        runs.append(("fixed 120", {"workers": 120}))
    drew: list[int] = []
    for label, kw in runs:
        with Simulator(latency_s=latency, latency_jitter=0.3, limits={MODEL: (rpm, None)}) as sim:
            result, wall, _ = _run([sim], _tasks(n), folder / label, model_limits=limits, **kw)
            log = sim.requests()
        limited = sum(1 for r in log if r["status"] == 429)
        if label.startswith("auto"):
            drew.append(limited)
        ratio = result.metrics.makespan_s / bound
        _line(label, result, wall, f", {ratio:.3f} x bound, server 429s {limited} "
              f"({limited / max(1, len(log)):.2%})")  # fmt: skip
    if repeat > 1:
        print(f"  auto: 0 × 429 in {drew.count(0)} of {repeat} runs; 429s per run {drew}")


def long(folder: Path, scale: float) -> None:
    n, rpm = int(3000 * scale), 12_000.0
    print(f"3-long: {n} requests at 20 s, {rpm:,.0f} RPM configured", flush=True)
    with Simulator(latency_s=20.0, limits={MODEL: (rpm, None)}) as sim:
        limits = {("openai", MODEL): Limit(rpm=rpm)}
        result, wall, rss = _run([sim], _tasks(n), folder / "long", model_limits=limits)
    _line("auto", result, wall, f", peak RSS supervisor + workers {rss / 2**20:.0f} MiB")


def selfhost(folder: Path, scale: float, servers: int) -> float:
    n, capacity, latency = int(3000 * scale), 64, 0.5
    best = servers * capacity / latency
    print(f"{'5-two' if servers > 1 else '4-selfhost'}: {n} requests, {servers} server(s) of "
          f"capacity {capacity}, queue 64 then 503, {latency} s ± 20 %, no rate headers; "
          f"best {best:.0f} req/s", flush=True)  # fmt: skip
    sims = [
        Simulator(
            latency_s=latency, latency_jitter=0.2, capacity=capacity, queue_limit=64, seed=i
        ).start()  # fmt: skip
        for i in range(servers)
    ]
    try:
        result, wall, _ = _run(sims, _tasks(n, 100), folder / f"self{servers}")
        logs = [s.requests() for s in sims]
    finally:
        for sim in sims:
            sim.stop()
    m = result.metrics
    rate = m.succeeded / m.makespan_s
    for i, log in enumerate(logs):
        _server_line(i, log, capacity)
    steady = _steady_rate([r for log in logs for r in log])
    _line("auto", result, wall, f", failed {m.failed}; whole run {rate:.1f} req/s = "
          f"{rate / best:.3f} of best; after the first quarter {steady:.1f} req/s = "
          f"{steady / best:.3f} of best")  # fmt: skip
    return steady


def _server_line(i: int, log: list[dict], capacity: int) -> None:
    refused = sum(1 for r in log if r["status"] == 503)
    half = [r["in_service"] + r["waiting"] for r in log[len(log) // 2 :] if r["status"] == 200]
    settle = statistics.median(half) if half else 0
    print(f"    server {i}: {len(log)} requests, {refused} × 503, outstanding at arrival in "
          f"the second half: median {settle:.0f} = {settle / capacity:.2f} x capacity")  # fmt: skip


def _steady_rate(log: list[dict]) -> float:
    """Requests accepted per second between a quarter and nine tenths of the run (slow start
    and the tail excluded), at the server."""
    times = sorted(r["t"] for r in log if r["status"] == 200)
    span = times[-1] - times[0]
    low, high = times[0] + span / 4, times[0] + span * 0.9
    return sum(1 for t in times if low <= t < high) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="limit,learned,long,selfhost,two")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    parser.add_argument("--repeat", type=int, default=1, help="runs of limit/learned's auto")
    args = parser.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "limit" in only:
            limit(folder, args.scale, learned=False, repeat=args.repeat)
        if "learned" in only:
            limit(folder, args.scale, learned=True, repeat=args.repeat)
        if "long" in only:
            long(folder, args.scale)
        one = selfhost(folder, args.scale, 1) if "selfhost" in only else None
        if "two" in only:
            two = selfhost(folder, args.scale * 2, 2)
            if one:
                print(f"  two servers / one, steady rate: {two / one:.2f} x")


if __name__ == "__main__":
    main()
