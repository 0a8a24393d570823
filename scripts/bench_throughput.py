"""End-to-end throughput: turborun against a minimal asyncio HTTP client, same
simulator, same run.

12,000 chat requests, 50 ms simulated latency, no limits, 120 workers. The
baseline keeps 120 requests in flight on 120 keep-alive connections with a
hand-written HTTP/1.1 exchange: about the least work a Python client can do per
request. turborun does what a real run does: validate the file, estimate tokens,
pace budgets, go through the openai SDK, journal every result, write the
results file. Target: turborun >= 0.5 of the baseline's rate.

Usage: python scripts/bench_throughput.py [--requests 12000] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turborun import execute_batch  # noqa: E402
from turborun.config import Config  # noqa: E402
from turborun.simulator import Simulator  # noqa: E402

MODEL = "bench-throughput"


def _body(i: int) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"request {i}"}],
        "max_tokens": 16,
    }


async def _baseline(base_url: str, n: int, concurrency: int) -> float:
    url = urlparse(base_url)
    counter = iter(range(n))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        for i in counter:
            payload = orjson.dumps(_body(i))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            assert b"choices" in body, body[:200]
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


def _turborun(sim: Simulator, n: int, workers: int, processes: int, folder: Path) -> tuple:
    path = folder / "throughput.jsonl"
    with path.open("wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"custom_id": f"r{i}", "body": _body(i)}) + b"\n")
    config = Config(
        workers=workers,
        processes=processes,
        checkpoint_dir=folder / "ck",
        base_urls={"openai": sim.openai_base_url, "groq": sim.base_url},
        api_keys={"openai": "sk-bench", "groq": "gsk-bench"},
        progress=False,
    )
    started = time.perf_counter()
    result = execute_batch(path, config=config, handle_signals=False)
    wall = time.perf_counter() - started
    assert result.success_rate == 1.0, result.metrics
    return n / wall, result.metrics.throughput


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=12_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=120)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Simulator(latency_s=args.latency_ms / 1000) as sim:
        baseline = asyncio.run(_baseline(sim.base_url, args.requests, args.workers))
        whole, loop = _turborun(sim, args.requests, args.workers, args.processes, Path(tmp))
        ceiling = args.workers / (args.latency_ms / 1000)
    print(
        f"{args.requests} requests, {args.latency_ms:.0f} ms latency, {args.workers} in flight "
        f"(ceiling {ceiling:,.0f} req/s)"
    )
    print(f"  asyncio baseline client: {baseline:,.0f} req/s")
    print(f"  turborun whole run:      {whole:,.0f} req/s  ({whole / baseline:.2f} of baseline)")
    print(f"  turborun supervisor loop:{loop:,.0f} req/s  ({loop / baseline:.2f} of baseline)")


if __name__ == "__main__":
    main()
