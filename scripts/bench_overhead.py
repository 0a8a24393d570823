"""Engine overhead: 100,000 independent no-op Python steps through the full pool
(task file → validation → supervisor → worker processes → journal → results file).

Prints nodes per second (whole run and supervisor loop only) and the
supervisor's peak RSS. Targets on 2 cores: >= 5,000 nodes/s, <= 300 MiB.

Usage: python scripts/bench_overhead.py [--tasks 100000] [--workers 120]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))  # bench_steps, importable in the spawned workers too

from turborun import execute_batch  # noqa: E402
from turborun.config import Config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=120)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noop.jsonl"
        with path.open("w") as f:
            for i in range(args.tasks):
                f.write(f'{{"custom_id": "n{i}", "fn": "bench_steps:noop"}}\n')
        config = Config(
            workers=args.workers,
            processes=args.processes,
            checkpoint_dir=Path(tmp) / "ck",
            progress=False,
        )
        started = time.perf_counter()
        result = execute_batch(path, config=config, handle_signals=False)
        wall = time.perf_counter() - started
        m = result.metrics
        assert m.succeeded == args.tasks, m
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.tasks} no-op steps, {args.workers} workers in {args.processes} processes")
        print(
            f"  whole run (load, validate, pool start, run, results file): {wall:.2f} s, "
            f"{args.tasks / wall:,.0f} nodes/s"
        )
        print(f"  supervisor loop: {m.makespan_s:.2f} s, {m.throughput:,.0f} nodes/s")
        print(f"  supervisor peak RSS: {rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
