"""120,000 tasks through --via batch against the simulator's Batch API (real openai SDK).

Checks and prints: the input files the provider received (three, of at most 50,000 lines:
50,000 + 50,000 + 20,000), each custom_id answered exactly once across the output files,
the results file (120,000 lines, in task-file order, all succeeded), the journal (120,000
entries), and the time each phase took.

    python scripts/bench_batches.py [--tasks 120000] [--batch-seconds 5]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import openai
import orjson

from turborun import execute_batch
from turborun.checkpoint import Journal
from turborun.config import load_config
from turborun.simulator import Simulator

KEY = "sk-bench-" + "x" * 40


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=120_000)
    parser.add_argument("--batch-seconds", type=float, default=5.0)
    args = parser.parse_args()
    n = args.tasks
    with (
        tempfile.TemporaryDirectory() as tmp,
        Simulator(batches={"latency_s": args.batch_seconds}) as sim,
    ):
        folder = Path(tmp)
        path = folder / "tasks.jsonl"
        with open(path, "wb") as out:
            for i in range(n):
                text = f"question number {i}"
                body = {"model": "gpt-4o-mini", "max_tokens": 8,
                        "messages": [{"role": "user", "content": text}]}  # fmt: skip
                out.write(orjson.dumps({"custom_id": f"q{i}", "body": body}) + b"\n")
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": sim.openai_base_url,
               "TURBORUN_CHECKPOINT_DIR": str(folder / "checkpoints")}  # fmt: skip
        config = load_config({"via": "batch", "batch_poll_s": 0.5, "progress": False},
                             environ=env, cwd=folder)  # fmt: skip
        start = time.perf_counter()
        result = execute_batch(path, checkpoint="bench", config=config)
        wall = time.perf_counter() - start
        client = openai.OpenAI(base_url=sim.openai_base_url, api_key=KEY, max_retries=0)
        batches = list(reversed(list(client.batches.list(limit=100))))
        sizes = []
        answered: Counter[str] = Counter()
        for batch in batches:
            data = client.files.content(batch.input_file_id).read()
            sizes.append((data.count(b"\n"), len(data)))
            for line in client.files.content(batch.output_file_id).read().splitlines():
                answered[orjson.loads(line)["custom_id"]] += 1
        lines = (folder / "tasks.results.jsonl").read_bytes().splitlines()
        ids = [orjson.loads(line)["custom_id"] for line in lines]
        statuses = Counter(orjson.loads(line)["turborun"]["status"] for line in lines)
        journal = Journal(folder / "checkpoints" / "bench" / "journal")
        journaled = len(journal)
        journal.close()
    print(f"tasks {n:,}; batches {len(batches)}: " + ", ".join(
        f"{count:,} lines / {size / 1e6:.1f} MB" for count, size in sizes))  # fmt: skip
    print(f"each answered once: {set(answered.values()) == {1} and len(answered) == n}")
    print(f"results: {len(lines):,} lines, file order: {ids == [f'q{i}' for i in range(n)]}, "
          f"{dict(statuses)}")  # fmt: skip
    print(f"journal entries: {journaled:,}")
    print(f"wall {wall:.1f} s (batches take {args.batch_seconds:g} s at the simulator), "
          f"cost ${result.metrics.cost_usd:.4f} at batch prices")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process {peak:.0f} MiB")


if __name__ == "__main__":
    main()
