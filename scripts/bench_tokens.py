"""Prompt-token estimation speed: chat bodies through ``TokenEstimator`` (tiktoken),
as ``execute_batch`` and ``estimate`` count a task file before sending anything.

Prints bodies per second and microseconds per body, best of R rounds (the encodings
load once, before the timing). Target: 100,000 bodies in a few seconds (>= 10,000/s),
so that validating a large task file does not hold the run back.

Usage: python scripts/bench_tokens.py [--bodies 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turborun.tokens import TokenEstimator  # noqa: E402

CHAT = "/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    text = "Item {}: summarize the quick brown fox jumping over the lazy dog."
    bodies = [
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text.format(i)}],
            "max_tokens": 100,
        }
        for i in range(args.bodies)
    ]
    estimator = TokenEstimator()
    estimator.estimate("openai", CHAT, bodies[0])  # encodings load once, outside the timing
    best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        for body in bodies:
            estimator.estimate("openai", CHAT, body)
        best = min(best, time.perf_counter() - start)
    print(
        f"{args.bodies:,} chat bodies in {best:.3f} s (best of {args.rounds}): "
        f"{args.bodies / best:,.0f} bodies/s, {best / args.bodies * 1e6:.1f} µs per body"
    )


if __name__ == "__main__":
    main()
