"""Rate limits spent fully without 429s, measured at the simulator.

The simulator enforces each model's limits over a rolling minute AND a rolling
second (limit/60), with 200 ms latency. Achieved rates are read from the
simulator's request log: (requests - 1) / (last arrival - first arrival).

1. 2,000 requests, 6,000 RPM configured           → zero 429s, >= 0.97 of the limit
2. the same with no limit configured (learned)    → <= 2 % 429s, >= 0.85 of the limit
3. TPM-bound mix, max_tokens 50–2,000, configured → zero 429s, >= 0.95 of the TPM limit
4. two models with separate limits at once        → each >= 0.95 of its limit

Usage: python scripts/bench_ratelimit.py [--requests 2000]
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
from turborun.simulator import Simulator  # noqa: E402


def _task(cid: str, model: str, max_tokens: int) -> dict:
    return {
        "custom_id": cid,
        "body": {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"benchmark request {cid}"}],
        },
    }


def _run(sim: Simulator, tasks: list[dict], limits: dict[str, Limit], folder: Path) -> object:
    config = Config(
        workers=120,
        processes=2,
        checkpoint_dir=folder,
        base_urls={"openai": sim.openai_base_url, "groq": sim.base_url},
        api_keys={"openai": "sk-bench", "groq": "gsk-bench"},
        model_limits={("openai", m): lim for m, lim in limits.items()},
        progress=False,
    )
    return execute_batch(tasks, config=config, handle_signals=False)


def _achieved(log: list[dict], model: str, what: str) -> tuple[float, int, int]:
    """(per-minute rate, 200s, 429s) of one model at the simulator."""
    ok = sorted(
        (r for r in log if r["model"] == model and r["status"] == 200), key=lambda r: r["t"]
    )
    limited = sum(1 for r in log if r["model"] == model and r["status"] == 429)
    span = ok[-1]["t"] - ok[0]["t"]
    if what == "requests":
        amount = len(ok) - 1
    else:  # tokens charged as the simulator charges them: prompt + requested output
        amount = sum(r["prompt_tokens"] + r["max_tokens"] for r in ok[1:])
    return amount / span * 60, len(ok), limited


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    n, latency = args.requests, args.latency_ms / 1000
    rng = random.Random(3)
    rpm, tpm = 6000.0, 3_000_000.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def scenario(
            label: str,
            limits_sim: dict,
            tasks: list[dict],
            configured: dict[str, Limit],
            checks: list[tuple[str, str, float]],
        ) -> None:
            with Simulator(latency_s=latency, limits=limits_sim) as sim:
                result = _run(sim, tasks, configured, folder / label.split()[0])
                log = sim.requests()
            print(
                f"{label}: {len(tasks)} tasks, success {result.success_rate:.3f}, "
                f"turborun saw {result.metrics.rate_limited} 429s"
            )
            for model, what, limit in checks:
                rate, ok, limited = _achieved(log, model, what)
                print(
                    f"    {model}: {rate:,.0f} {what}/min of {limit:,.0f} = {rate / limit:.3f}; "
                    f"429s {limited} ({limited / max(1, ok + limited):.2%})"
                )

        tasks = [_task(f"r{i}", "rl-a", 16) for i in range(n)]
        scenario(
            "1-configured 6,000 RPM",
            {"rl-a": (rpm, None)},
            tasks,
            {"rl-a": Limit(rpm=rpm)},
            [("rl-a", "requests", rpm)],
        )
        scenario(
            "2-learned (no limit configured)",
            {"rl-a": (rpm, None)},
            tasks,
            {},
            [("rl-a", "requests", rpm)],
        )
        mix = [_task(f"t{i}", "rl-t", rng.randint(50, 2000)) for i in range(n // 2)]
        scenario(
            "3-TPM-bound mix, 3M TPM configured",
            {"rl-t": (None, tpm)},
            mix,
            {"rl-t": Limit(tpm=tpm)},
            [("rl-t", "tokens", tpm)],
        )
        both = [
            t
            for pair in zip(
                [_task(f"a{i}", "rl-a", 16) for i in range(n // 2)],
                [_task(f"b{i}", "rl-b", 16) for i in range(n // 2)],
                strict=True,
            )
            for t in pair
        ]
        scenario(
            "4-two models, 6,000 and 3,000 RPM",
            {"rl-a": (rpm, None), "rl-b": (3000, None)},
            both,
            {"rl-a": Limit(rpm=rpm), "rl-b": Limit(rpm=3000)},
            [("rl-a", "requests", rpm), ("rl-b", "requests", 3000)],
        )


if __name__ == "__main__":
    main()
