"""Spend control and the estimate, measured against the simulator through the command line:

1. cap:      10,000 tasks of about $0.001 each (gpt-4o-mini, ~6,600-token prompts) with
             --max-cost 1 → exit 3, spend in [$0.95, $1.00], 0 failed, the rest pending;
             then --resume --max-cost 20 → every task done, no journaled success sent again
2. estimate: `estimate` before each of three runs, beside the real run:
             - cost: its range contains the real run's cost (N tasks, default 100,000)
             - rate-bound: 1,500 tasks at --rpm 3000 → time within ±20 % of the wall time
             - critical-path-bound: 40 chains of 12 steps of ~0.55 s, limits configured far
               above the use → within ±20 %
             (the latency model learns the simulator's latency from a warm-up run first,
             as it would from a user's earlier runs)
3. quota:    the simulator answers insufficient_quota after 500 requests → exit 3, 0 failed,
             at most what was in flight + 1 requests reach it afterwards; a resume completes

Usage: python scripts/bench_spend.py [--only cap,estimate,quota] [--tasks N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, items: list[dict]) -> Path:
    with path.open("w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    return path


def _chat(cid: str, content: str, max_tokens: int, depends_on: list[str] | None = None) -> dict:
    item: dict = {
        "custom_id": cid,
        "body": {
            "model": "gpt-4o-mini",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}],
        },
    }
    if depends_on:
        item["depends_on"] = depends_on
    return item


def _cli(cwd: Path, *args: str, env: dict | None = None) -> tuple[int, float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "turborun", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    return done.returncode, time.monotonic() - started, done.stdout + done.stderr


def _results(path: Path) -> list[dict]:
    return [json.loads(line)["turborun"] for line in path.read_text().splitlines()]


def _wall(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("wall time "):
            return float(line.split()[2])
    raise ValueError("no wall time in the summary")


def bench_cap(work: Path) -> None:
    words = "word " * 6600
    _write(work / "cap.jsonl", [_chat(f"t{i}", f"q{i} {words}", 16) for i in range(10_000)])
    code, seconds, out = _cli(work, "batch", "cap.jsonl", "--simulate", "--no-progress",
                              "--max-cost", "1")  # fmt: skip
    rows = _results(work / "cap.results.jsonl")
    spent = sum(r["cost_usd"] or 0 for r in rows)
    done = sum(r["status"] == "succeeded" for r in rows)
    print(
        f"cap: exit {code}, spent ${spent:.4f} of $1 ({'ok' if 0.95 <= spent <= 1.0 else 'MISS'}),"
        f" {done} succeeded, {sum(r['status'] == 'failed' for r in rows)} failed, "
        f"{sum(r['status'] == 'pending' for r in rows)} pending, {seconds:.1f} s"
    )
    code, seconds, out = _cli(work, "batch", "cap.jsonl", "--simulate", "--no-progress",
                              "--resume", "--max-cost", "20")  # fmt: skip
    rows = _results(work / "cap.results.jsonl")
    print(
        f"cap resume --max-cost 20: exit {code}, "
        f"{sum(r['status'] == 'succeeded' for r in rows)} succeeded, "
        f"{sum(r['resumed'] for r in rows)} resumed (journaled before: {done}), "
        f"total ${sum(r['cost_usd'] or 0 for r in rows):.4f}, {seconds:.1f} s"
    )


def _estimate(work: Path, name: str, *flags: str) -> dict:
    code, _, out = _cli(work, "estimate", name, "--json", *flags)
    if code != 0:
        raise RuntimeError(out)
    return json.loads(out)


def bench_estimate(work: Path, n: int) -> None:
    # cost: the estimate's range against the run
    _write(work / "big.jsonl", [_chat(f"b{i}", f"summarise item {i} " * (1 + i % 20),
                                      50 + i % 200) for i in range(n)])  # fmt: skip
    est = _estimate(work, "big.jsonl")
    code, seconds, out = _cli(work, "batch", "big.jsonl", "--simulate", "--no-progress")
    real = sum(r["cost_usd"] or 0 for r in _results(work / "big.results.jsonl"))
    low, high = est["totals"]["cost_low_usd"], est["totals"]["cost_high_usd"]
    inside = low <= real <= high
    print(f"estimate cost ({n:,} tasks): range ${low:.4f}–${high:.4f}, real ${real:.4f} "
          f"({'inside' if inside else 'OUTSIDE'}), run {seconds:.1f} s")  # fmt: skip
    est = _estimate(work, "big.jsonl")  # what this machine's earlier run taught it
    likely = est["totals"]["cost_likely_usd"]
    print(f"estimate cost after one run: likely ${likely:.4f} vs real ${real:.4f} "
          f"({likely / real:.3f}x)")  # fmt: skip

    # The time estimates get a checkpoint folder of their own, so the latency model has
    # learned from the warm-up alone (the cost run above overloads this 2-core machine,
    # simulator and client together, and its latencies are not the simulator's).
    os.environ["TURBORUN_CHECKPOINT_DIR"] = str(work / "timing")
    # warm-up: the latency model learns the simulator (0.05 s + 0.5 ms per output token)
    _write(work / "warm.jsonl", [_chat(f"w{i}", f"warm {i}", 200 + 100 * (i % 10))
                                 for i in range(60)])  # fmt: skip
    _cli(work, "batch", "warm.jsonl", "--simulate", "--no-progress")

    # rate-bound: 1,500 tasks at 3,000 RPM → 30 s
    _write(work / "rate.jsonl", [_chat(f"r{i}", f"rate {i}", 20) for i in range(1500)])
    est = _estimate(work, "rate.jsonl", "--rpm", "3000")
    code, seconds, out = _cli(work, "batch", "rate.jsonl", "--simulate", "--no-progress",
                              "--rpm", "3000")  # fmt: skip
    wall = _wall(out)
    print(f"estimate time, rate-bound: {est['time_s']:.1f} s ({est['bound']}) vs wall "
          f"{wall:.1f} s: {est['time_s'] / wall:.2f}x")  # fmt: skip

    # critical-path-bound: 40 chains of 12 steps, 1,000 output tokens (~0.55 s) each
    chains = []
    for c in range(40):
        for step in range(12):
            deps = [f"c{c}-{step - 1}"] if step else None
            chains.append(_chat(f"c{c}-{step}", f"chain {c} step {step}", 1000, deps))
    _write(work / "dag.jsonl", chains)
    # limits configured (far above this use), as a user who knows them would: a model
    # whose limits are unknown first probes them, which the estimate does not model
    limits = ("--rpm", "100000", "--tpm", "100000000")
    est = _estimate(work, "dag.jsonl", *limits)
    code, seconds, out = _cli(work, "batch", "dag.jsonl", "--simulate", "--no-progress", *limits)
    wall = _wall(out)
    print(f"estimate time, critical-path-bound: {est['time_s']:.1f} s ({est['bound']}) vs "
          f"wall {wall:.1f} s: {est['time_s'] / wall:.2f}x")  # fmt: skip


def bench_quota(work: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from turborun.simulator import Simulator

    _write(work / "quota.jsonl", [_chat(f"q{i}", f"quota {i}", 16) for i in range(2000)])
    log = work / "sim.jsonl"
    with Simulator(latency_s=0.05, quota_after=500, log_path=log) as sim:
        env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": sim.openai_base_url}
        code, seconds, out = _cli(work, "batch", "quota.jsonl", "--no-progress",
                                  "--workers", "64", env=env)  # fmt: skip
    rows = _results(work / "quota.results.jsonl")
    refused = sum(1 for line in log.read_text().splitlines() if json.loads(line)["status"] == 429)
    print(
        f"quota after 500: exit {code}, {sum(r['status'] == 'succeeded' for r in rows)} "
        f"succeeded, {sum(r['status'] == 'failed' for r in rows)} failed, "
        f"{sum(r['status'] == 'pending' for r in rows)} pending; {refused} requests reached the "
        f"refusing provider after its first refusal (64 in flight at most), {seconds:.1f} s"
    )
    with Simulator(latency_s=0.05) as sim:
        env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": sim.openai_base_url}
        code, seconds, out = _cli(work, "batch", "quota.jsonl", "--no-progress", "--resume",
                                  env=env)  # fmt: skip
    rows = _results(work / "quota.results.jsonl")
    print(f"quota resume: exit {code}, {sum(r['status'] == 'succeeded' for r in rows)} "
          f"succeeded, {sum(r['resumed'] for r in rows)} resumed, {seconds:.1f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="cap,estimate,quota")
    parser.add_argument("--tasks", type=int, default=100_000, help="the estimate's cost run")
    args = parser.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-spend-") as tmp:
        work = Path(tmp)
        if "cap" in only:
            bench_cap(work)
        if "estimate" in only:
            bench_estimate(work, args.tasks)
        if "quota" in only:
            bench_quota(work)


if __name__ == "__main__":
    main()
