"""--backend ray against the local backend, side by side in one run, on a two-node Ray
cluster started on this machine (ray.cluster_utils.Cluster).

1. Throughput: N chat requests at 50 ms simulated latency, no limits, through the
   command line on each backend in turn (local, ray, local, ray, ...): tasks/s of each
   and their ratio (target: ray >= 0.7 of local).
2. Steps: a DAG of Python steps that each sleep 0.2 s or burn 0.2 s of CPU, asking Ray
   for one CPU each (placed as Ray tasks) or running on the actors' threads, on one
   one-CPU node with one actor, then on two nodes with an actor each: the makespan
   ratio (two nodes should finish faster).

Ray binds the machine's external address unless it is alone in a network namespace, so
the script re-runs itself under ``unshare -n`` (as root) where loopback is the only
interface. Needs the ray extra: pip install -e '.[ray]'.

Usage: python scripts/bench_ray.py [--requests 6000] [--rounds 2] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from turborun.simulator import Simulator  # noqa: E402

INSIDE = "TURBORUN_BENCH_IN_NETNS"
MODEL = "bench-ray"


def _in_namespace() -> int:
    inner = f"ip link set lo up && exec {sys.executable} {' '.join(sys.argv)}"
    env = {**os.environ, INSIDE: "1"}
    return subprocess.run(["unshare", "-n", "bash", "-c", inner], env=env).returncode


def _env(tmp: Path, sim: Simulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "OPENAI_"))}
    env.update(
        OPENAI_BASE_URL=sim.openai_base_url,
        OPENAI_API_KEY="sk-bench-ray",
        TURBORUN_CHECKPOINT_DIR=str(tmp / "checkpoints"),
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        **extra,
    )
    return env


def _run(tasks: Path, env: dict[str, str], *args: str) -> float:
    """Wall time of one run, from its summary line (the run's own clock)."""
    cmd = [sys.executable, "-m", "turborun", "batch", str(tasks), "--fresh", "--no-progress"]
    done = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, cwd=tasks.parent)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    match = re.search(r"wall time ([\d.]+) s", done.stdout)
    if match is None:
        raise SystemExit(f"no wall time in:\n{done.stdout}")
    return float(match.group(1))


def throughput(tmp: Path, address: str, requests: int, rounds: int, processes: int) -> None:
    tasks = tmp / "throughput.jsonl"
    lines = (
        {
            "custom_id": f"r{i}",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"request {i}"}],
                "max_tokens": 16,
            },
        }  # fmt: skip
        for i in range(requests)
    )
    tasks.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    rates: dict[str, list[float]] = {"local": [], "ray": []}
    with Simulator(latency_s=0.05) as sim:
        env = _env(tmp, sim, RAY_ADDRESS=address)
        for _ in range(rounds):
            for backend in ("local", "ray"):
                wall = _run(tasks, env, "--backend", backend, "--processes", str(processes))
                rates[backend].append(requests / wall)
                print(f"  {backend:5s} {requests / wall:7.0f} tasks/s ({wall:.2f} s)", flush=True)
    local, ray = (sum(r) / len(r) for r in (rates["local"], rates["ray"]))
    print(
        f"throughput at 50 ms, no limits, {requests} requests, {processes} processes/actors: "
        f"local {local:.0f}/s, ray {ray:.0f}/s, ratio {ray / local:.2f} (target >= 0.7)"
    )


def steps(tmp: Path, cluster: object, count: int, step: str, placed: bool, actors: int) -> float:
    """Layers of 10 steps, each depending on one step of the layer before. ``placed``:
    each asks Ray for one CPU (Ray tasks); else they run on the actors' threads."""
    tasks = tmp / f"steps-{step}.jsonl"
    lines = []
    for i in range(count):
        line = {"custom_id": f"s{i}", "fn": f"ray_steps:{step}",
                "depends_on": [f"s{i - 10}"] if i >= 10 else []}  # fmt: skip
        if placed:
            line["resources"] = {"num_cpus": 1}
        lines.append(line)
    tasks.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    with Simulator(latency_s=0.0) as sim:
        env = _env(tmp, sim, RAY_ADDRESS=cluster.address)  # type: ignore[attr-defined]
        return _run(tasks, env, "--backend", "ray", "--processes", str(actors))


CASES = (  # (step, placed by Ray with num_cpus=1?)
    ("nap", True),
    ("burn", True),
    ("burn", False),
)


def _describe(step: str, placed: bool) -> str:
    what = "sleep 0.2 s" if step == "nap" else "burn 0.2 s of CPU"
    where = "as Ray tasks asking num_cpus=1" if placed else "on the actors' threads"
    return f"{what}, {where}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--only", choices=("throughput", "steps"))
    args = parser.parse_args()
    if os.environ.get(INSIDE) != "1":
        return _in_namespace()

    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "temp_dir": str(temp)})
    try:
        with tempfile.TemporaryDirectory() as scratch:
            tmp = Path(scratch)
            if args.only != "throughput":
                # One one-CPU node with one actor, then two nodes with an actor each.
                one = {case: steps(tmp, cluster, args.steps, *case, 1) for case in CASES}
                cluster.add_node(**node)
                cluster.wait_for_nodes()
                time.sleep(1.0)
                two = {case: steps(tmp, cluster, args.steps, *case, 2) for case in CASES}
                for case in CASES:
                    print(
                        f"{args.steps} steps ({_describe(*case)}): one node {one[case]:.2f} s, "
                        f"two nodes {two[case]:.2f} s: {one[case] / two[case]:.2f}x faster"
                    )
            if args.only != "steps":
                if len(cluster.list_all_nodes()) < 2:
                    cluster.add_node(**node)
                    cluster.wait_for_nodes()
                throughput(tmp, cluster.address, args.requests, args.rounds, args.processes)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
