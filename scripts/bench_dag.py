"""Makespan of critical-path scheduling against tokens-first and fifo, side by side.

Durations come from the simulator: latency = UNIT_S per 100 requested output
tokens, so a task of u units asks for 100·u tokens, and turborun learns nothing
it is not told (its expected durations grow with max_tokens like real models').

1. The 17-task DAG of issue 2 (S1–S4 1 unit, M1–M8 5 units, Gate after all S
   (1 unit), then C1 20 → C2 15 → C3 10 → End 5) on 4 workers and with
   unlimited workers, against the lower bound of 52 units.
2. A random 300-node DAG (durations 1–20 units, file order shuffled, 8
   workers): makespan / max(critical path, total work / 8).

Usage: python scripts/bench_dag.py [--unit-ms 50] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turborun import execute_batch  # noqa: E402
from turborun.config import Config, Limit  # noqa: E402
from turborun.graph import longest_path  # noqa: E402
from turborun.simulator import Simulator  # noqa: E402

TOKENS_PER_UNIT = 100


def _task(cid: str, units: int, deps: list[str]) -> dict:
    return {
        "custom_id": cid,
        "depends_on": deps,
        "body": {
            "model": "bench-dag",
            "messages": [{"role": "user", "content": f"task {cid}"}],
            "max_tokens": units * TOKENS_PER_UNIT,
        },
    }


def seventeen() -> tuple[list[dict], dict[str, int]]:
    units = {f"S{i}": 1 for i in range(1, 5)}
    units |= {f"M{i}": 5 for i in range(1, 9)}
    units |= {"Gate": 1, "C1": 20, "C2": 15, "C3": 10, "End": 5}
    deps = {
        "Gate": [f"S{i}" for i in range(1, 5)],
        "C1": ["Gate"],
        "C2": ["C1"],
        "C3": ["C2"],
        "End": ["C3"],
    }
    # file order puts the long fan-out first, as a fifo-hostile file would
    order = (
        [f"S{i}" for i in range(1, 5)]
        + [f"M{i}" for i in range(1, 9)]
        + ["Gate", "C1", "C2", "C3", "End"]
    )
    return [_task(c, units[c], deps.get(c, [])) for c in order], units


def random_dag(n: int, seed: int) -> tuple[list[dict], dict[str, int], float]:
    rng = random.Random(seed)
    units = {f"n{i}": rng.randint(1, 20) for i in range(n)}
    deps: dict[str, list[str]] = {}
    for i in range(n):
        k = rng.choice([0, 0, 1, 1, 2, 3]) if i else 0
        parents = rng.sample(range(max(0, i - 40), i), min(k, i))
        deps[f"n{i}"] = [f"n{p}" for p in parents]
    index = {f"n{i}": i for i in range(n)}
    bound = longest_path(
        [[index[d] for d in deps[f"n{i}"]] for i in range(n)], [units[f"n{i}"] for i in range(n)]
    )
    tasks = [_task(c, units[c], deps[c]) for c in units]
    rng.shuffle(tasks)
    return tasks, units, bound


def run(
    tasks: list[dict], workers: int, strategy: str, unit_s: float, sim: Simulator, folder: Path
) -> float:
    config = Config(
        workers=workers,
        processes=min(2, workers),
        strategy=strategy,
        checkpoint_dir=folder,
        base_urls={"openai": sim.openai_base_url, "groq": sim.base_url},
        api_keys={"openai": "sk-bench", "groq": "gsk-bench"},
        override_limit=Limit(rpm=1e7, tpm=1e12),  # no budget in the way: scheduling only
        progress=False,
    )
    result = execute_batch(tasks, config=config, handle_signals=False)
    assert result.success_rate == 1.0, result.metrics
    return result.metrics.makespan_s / unit_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unit-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=300)
    args = parser.parse_args()
    unit_s = args.unit_ms / 1000
    per_token = unit_s / TOKENS_PER_UNIT
    with (
        tempfile.TemporaryDirectory() as tmp,
        Simulator(latency_s=0.0, latency_per_token_s=per_token) as sim,
    ):
        folder = Path(tmp)
        tasks, units = seventeen()
        print(f"17-task DAG, unit {args.unit_ms:.0f} ms, lower bound 52 units")
        for workers in (4, 17):
            row = []
            for strategy in ("critical-path", "tokens", "fifo"):
                span = run(tasks, workers, strategy, unit_s, sim, folder)
                row.append(f"{strategy} {span:5.1f} ({span / 52:.3f}x)")
            label = "4 workers" if workers == 4 else "unlimited"
            print(f"  {label:>10}: " + " | ".join(row))
        tasks, units, bound = random_dag(args.nodes, args.seed)
        work = sum(units.values())
        lower = max(bound, work / 8)
        print(
            f"random {args.nodes}-node DAG, 8 workers: critical path {bound:.0f} units, "
            f"work/8 {work / 8:.1f} units, lower bound {lower:.1f}"
        )
        for strategy in ("critical-path", "fifo"):
            span = run(tasks, 8, strategy, unit_s, sim, folder)
            print(f"  {strategy:>13}: makespan {span:6.1f} units, ratio {span / lower:.3f}")


if __name__ == "__main__":
    main()
