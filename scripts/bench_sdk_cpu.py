"""CPU per request of the openai SDK in one process, as a worker process uses it: T
threads posting raw chat bodies through ``client.post`` against the simulator, with one
client shared by all threads or one client per group of threads. Explains the ceiling of
scripts/bench_throughput.py on small machines.

Prints, per setting, requests per second and CPU milliseconds per request of this
process (the simulator runs in its own process and is not counted).

Usage: python scripts/bench_sdk_cpu.py [--requests 6000] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import httpx2
import openai
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turborun.simulator import Simulator  # noqa: E402

BODY = orjson.dumps(
    {"model": "bench-sdk", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
)
OPTIONS = {"headers": {"Content-Type": "application/json"}, "timeout": 30}


def measure(base_url: str, requests: int, threads: int, clients: int) -> tuple[float, float]:
    """(requests per second, CPU ms per request) with ``threads`` threads on ``clients``
    clients (thread i uses client i % clients)."""
    pool = [
        openai.OpenAI(api_key="sk-bench", base_url=base_url, max_retries=0) for _ in range(clients)
    ]
    warm = [pool[0]] * 50 + pool[1:]  # lazy imports, caches, connections: not timed
    for client in warm:
        client.post("/chat/completions", content=BODY, cast_to=httpx2.Response, options=OPTIONS)
    left = [requests]
    lock = threading.Lock()

    def run(i: int) -> None:
        client = pool[i % clients]
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            client.post("/chat/completions", content=BODY, cast_to=httpx2.Response, options=OPTIONS)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    wall, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu / requests * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    settings = [(1, 1, 0.0), (1, 1, None), (60, 1, None), (60, 15, None)]
    print(f"openai {openai.__version__}, {args.requests} requests per setting")
    for threads, clients, latency_s in settings:
        latency = args.latency_ms / 1000 if latency_s is None else latency_s
        count = args.requests if threads > 1 else min(args.requests, 300 if latency else 3000)
        with Simulator(latency_s=latency) as sim:
            rate, cpu_ms = measure(sim.openai_base_url, count, threads, clients)
        print(
            f"  {threads:>2} threads, {clients:>2} clients, latency {latency * 1000:>3.0f} ms: "
            f"{rate:7.0f} req/s, {cpu_ms:.2f} ms CPU per request"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
