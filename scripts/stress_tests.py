"""Run tests many times beside CPU-burning processes and print how many runs passed.

A test that passes alone but fails under load decides by chance what lands. This runs
the given pytest node ids (default: tests/test_retries.py) N times (default 50) while
B processes (default 2) spin on the CPU, and prints passes out of runs with the first
failure's output.

    python scripts/stress_tests.py [--runs 50] [--burners 2] [TEST ...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import time


def _burn() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", default=["tests/test_retries.py"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--burners", type=int, default=2)
    args = parser.parse_args()
    burners = [mp.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for burner in burners:
        burner.start()
    passed, first_failure = 0, None
    started = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests],
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                passed += 1
            elif first_failure is None:
                first_failure = done.stdout[-3000:] + done.stderr[-1000:]
            print(f"run {run}: {'pass' if done.returncode == 0 else 'FAIL'}", flush=True)
    finally:
        for burner in burners:
            burner.terminate()
    elapsed = time.monotonic() - started
    print(
        f"{' '.join(args.tests)}: {passed} of {args.runs} runs passed beside "
        f"{args.burners} CPU-burning processes ({elapsed:.0f} s)"
    )
    if first_failure:
        print("first failure:\n" + first_failure)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
