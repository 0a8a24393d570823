"""``--backend ray`` (SPEC §11) on a real two-node Ray cluster on this machine, started once
for the module with ``ray.cluster_utils.Cluster``, through the command line, the real
SDKs and the simulator: the same results files as the local backend, actors spread over
both nodes, steps placed by their resources, an actor killed with ``ray.kill``, the
driver killed with kill -9 then ``--resume``, and no API key in Ray's session files.

Ray binds a machine's external address even when told otherwise, so these tests run
inside a network namespace of their own where loopback is the only interface: the
module re-runs itself under ``unshare -n`` (as root) and each test reports what its
run inside said. Without Ray, or where unshare is refused, the tests are skipped with
the reason. The backend selection tests below need neither.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import journaled
from test_durability import (
    cli_env,
    receipts,
    results,
    run_cli,
    start_cli,
    stop,
    task,
    wait_for,
    write_tasks,
)

from turborun.config import load_config
from turborun.exceptions import ConfigError
from turborun.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
NETNS_VARIABLE = "TURBORUN_TEST_IN_NETNS"  # set in the run inside the namespace
INSIDE = os.environ.get(NETNS_VARIABLE) == "1"
INNER_TIMEOUT_S = 900
PROCESSES = 4  # actors: two per node


def _ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install -e '.[ray]')"
    return None


# ---- the namespace: outside, run this module again inside one ------------------------


class _InnerRun:
    """The outcome of every test of this module run inside a network namespace."""

    def __init__(self) -> None:
        self.skip_reason: str | None = _ray_missing()
        self.cases: dict[str, tuple[str, str]] = {}  # name -> (passed|failed|skipped, text)
        self.output = ""
        if self.skip_reason is None:
            self._run()

    def _run(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.xml"
            inner = (
                f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider "
                f"{Path(__file__)} --junitxml={report}"
            )
            env = {**os.environ, NETNS_VARIABLE: "1"}
            try:
                proc = subprocess.run(
                    ["unshare", "-n", "bash", "-c", inner],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=INNER_TIMEOUT_S,
                )
            except FileNotFoundError:
                self.skip_reason = "unshare is not installed: Ray tests need a network namespace"
                return
            self.output = proc.stdout[-20000:] + proc.stderr[-5000:]
            if not report.exists():
                if "unshare" in proc.stderr and "Operation not permitted" in proc.stderr:
                    self.skip_reason = (
                        "unshare -n was refused (needs root or CAP_SYS_ADMIN): Ray tests need "
                        "a network namespace of their own"
                    )
                    return
                pytest.fail(f"the run inside the namespace failed:\n{self.output}")
            for case in ET.parse(report).getroot().iter("testcase"):
                status, text = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error"):
                        status, text = "failed", (child.text or child.get("message") or "")
                    elif child.tag == "skipped":
                        status, text = "skipped", child.get("message") or ""
                if status != "failed" or case.get("name") not in self.cases:
                    self.cases[case.get("name", "")] = (status, text)

    def report(self, name: str) -> None:
        if self.skip_reason is not None:
            pytest.skip(self.skip_reason)
        if name not in self.cases:
            pytest.fail(f"{name} did not run inside the namespace:\n{self.output}")
        status, text = self.cases[name]
        if status == "skipped":
            pytest.skip(text)
        if status == "failed":
            pytest.fail(f"inside the network namespace:\n{text}", pytrace=False)


@pytest.fixture(scope="module")
def inner_run() -> _InnerRun:
    return _InnerRun()


def in_netns(test: Callable[..., None]) -> Callable[..., None]:
    """Inside the namespace: the test itself. Outside: a test of the same name that
    reports how it went inside (so a failure is shown where it happened)."""
    if INSIDE:
        return test

    def outer(inner_run: _InnerRun) -> None:
        inner_run.report(test.__name__)

    outer.__name__ = outer.__qualname__ = test.__name__
    outer.__doc__ = test.__doc__
    # The first of these waits for the whole run inside (pytest-timeout counts setup).
    return pytest.mark.timeout(INNER_TIMEOUT_S)(outer)


# ---- inside: one cluster of two nodes for the module ----------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    if not INSIDE:
        pytest.skip("runs inside the network namespace only")
    import ray
    from ray.cluster_utils import Cluster

    # Every node's workers import turborun and the test steps, as installed packages would.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    loopback = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}  # nothing to detect
    nodes = Cluster(initialize_head=True, head_node_args={**loopback, "temp_dir": temp})
    nodes.add_node(**loopback)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, logging_level=logging.ERROR)
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    """Latency 0.05–0.2 s (grows with max_tokens): runs last long enough to act mid-run."""
    with Simulator(latency_s=0.05, latency_per_token_s=0.001) as server:
        yield server


def ray_env(tmp_path: Path, sim: Simulator, cluster: Any, **extra: str) -> dict[str, str]:
    return cli_env(tmp_path, sim, RAY_ADDRESS=cluster.address, **extra)


def normalized(path: Path) -> list[dict[str, Any]]:
    """A results file without what differs from run to run whatever the backend: timings,
    the endpoint's port, and the ids the simulator draws per request."""
    lines = results(path)
    for line in lines:
        for key in ("latency_s", "queued_s", "endpoint"):
            line["turborun"].pop(key, None)
        response = line.get("response") or {}
        response.pop("request_id", None)
        if isinstance(response.get("body"), dict):
            response["body"].pop("id", None)
    return lines


def actors_of(pid: int) -> list[str]:
    """Names of the live worker actors a driver process created."""
    import ray

    from turborun.ray_pool import ACTOR_PREFIX, NAMESPACE

    names = ray.util.list_named_actors(all_namespaces=True)
    prefix = f"{ACTOR_PREFIX}{pid}-"
    return [
        n["name"] for n in names if n["namespace"] == NAMESPACE and n["name"].startswith(prefix)
    ]


def actor_nodes(pid: int) -> dict[str, str]:
    """Node id of each live worker actor a driver process created (Ray's actor table,
    read from the GCS: the state API would need the dashboard)."""
    from ray._private import state

    from turborun.ray_pool import ACTOR_PREFIX

    prefix = f"{ACTOR_PREFIX}{pid}-"
    actors = state.actors(actor_state_name="ALIVE").values()
    return {a["Name"]: a["Address"]["NodeID"] for a in actors if a["Name"].startswith(prefix)}


def dag_tasks(tag: str, count: int) -> list[dict[str, Any]]:
    """``count`` tasks in layers: chat tasks whose prompts quote their parents' answers,
    and Python steps joining them."""
    rng = random.Random(tag)
    tasks: list[dict[str, Any]] = []
    for i in range(count):
        cid = f"t{i:04d}"
        parents = sorted(
            {f"t{rng.randrange(i):04d}" for _ in range(rng.randint(0, 2))} if i else set()
        )
        if i % 10 == 9:
            tasks.append({"custom_id": cid, "fn": "ray_steps:text_of", "depends_on": parents})
            continue
        refs = " ".join("{{" + p + "}}" for p in parents)
        tasks.append(task(tag, cid, max_tokens=rng.randint(1, 40), extra=refs, depends_on=parents))
    return tasks


def ended_holding(log: str) -> list[int]:
    """Calls held by each Ray worker actor that ended during a run, from its run.log."""
    return [
        int(line.split("holding ")[1].split()[0])
        for line in log.splitlines()
        if "Ray worker actor ended" in line
    ]


# ---- behaviour --------------------------------------------------------------------------


@in_netns
def test_example_gives_the_same_results_as_the_local_backend_with_actors_on_both_nodes(
    tmp_path: Path, cluster: Any
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "RAY_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    base = ["batch", "examples/essay.jsonl", "--simulate", "--fresh", "--no-progress"]
    env["TURBORUN_CHECKPOINT_DIR"] = str(tmp_path / "local")  # one run name, two folders
    local = run_cli([*base, "-o", "local.jsonl"], tmp_path, env)
    assert local.returncode == 0, local.stderr
    env["TURBORUN_CHECKPOINT_DIR"] = str(tmp_path / "ray")
    env["RAY_ADDRESS"] = cluster.address
    remote = run_cli(
        [*base, "-o", "ray.jsonl", "--backend", "ray", "--processes", "4"], tmp_path, env
    )
    assert remote.returncode == 0, remote.stderr
    assert normalized(tmp_path / "ray.jsonl") == normalized(tmp_path / "local.jsonl")
    log = (tmp_path / "ray" / "essay" / "run.log").read_text()
    assert "4 Ray worker actors on 2 nodes" in log


def ray_processes() -> set[int]:
    """Pids of the Ray control processes (GCS, raylets) alive on this machine."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv0 = cmdline.read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith((b"/gcs_server", b"/raylet")):
            found.add(int(cmdline.parent.name))
    return found


@in_netns
def test_without_ray_address_a_local_ray_starts_and_stops_with_the_run(
    tmp_path: Path, cluster: Any
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "RAY_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    env["TURBORUN_CHECKPOINT_DIR"] = str(tmp_path / "checkpoints")
    before = ray_processes()
    # A namespace of its own again: two Ray instances on one address clash over their
    # fixed ports (the module's cluster is here); --simulate serves inside it.
    run = "batch examples/essay.jsonl --simulate --no-progress --backend ray"
    inner = f"ip link set lo up && exec {sys.executable} -m turborun {run}"
    done = subprocess.run(
        ["unshare", "-n", "bash", "-c", inner],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = results(tmp_path / "examples" / "essay.results.jsonl")
    assert {line["turborun"]["status"] for line in lines} == {"succeeded"}
    assert "1 nodes" in (tmp_path / "checkpoints" / "essay" / "run.log").read_text()
    wait_for(lambda: ray_processes() == before, 10, "the run's own Ray to stop")


@in_netns
def test_dag_of_2000_tasks_gives_the_same_results_as_the_local_backend(
    tmp_path: Path, cluster: Any, sim: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = write_tasks(tmp_path / "dag.jsonl", dag_tasks(tag, 2000))
    args = ["batch", str(path), "--no-progress", "--processes", str(PROCESSES)]
    env = ray_env(tmp_path, sim, cluster, TURBORUN_CHECKPOINT_DIR=str(tmp_path / "local"))
    local = run_cli([*args, "-o", "local.jsonl"], tmp_path, env)
    assert local.returncode == 0, local.stderr
    env["TURBORUN_CHECKPOINT_DIR"] = str(tmp_path / "ray")  # one run name, two folders
    remote = run_cli([*args, "-o", "ray.jsonl", "--backend", "ray"], tmp_path, env)
    assert remote.returncode == 0, remote.stderr
    ours, theirs = normalized(tmp_path / "ray.jsonl"), normalized(tmp_path / "local.jsonl")
    assert len(ours) == 2000
    assert {line["turborun"]["status"] for line in ours} == {"succeeded"}
    assert ours == theirs


@in_netns
def test_steps_asking_for_resources_are_placed_by_ray_on_both_nodes(
    tmp_path: Path, cluster: Any, sim: Simulator
) -> None:
    steps = [
        {"custom_id": f"s{i}", "fn": "ray_steps:where_slowly", "resources": {"num_cpus": 1}}
        for i in range(8)
    ]
    steps.append({"custom_id": "plain", "fn": "ray_steps:where", "depends_on": ["s0"]})
    path = write_tasks(tmp_path / "steps.jsonl", steps)
    done = run_cli(
        ["batch", str(path), "--no-progress", "--backend", "ray", "--processes", "2"],
        tmp_path,
        ray_env(tmp_path, sim, cluster),
    )
    assert done.returncode == 0, done.stderr
    values = {
        line["custom_id"]: line["response"]["body"]
        for line in results(tmp_path / "steps.results.jsonl")
    }
    placed = {values[f"s{i}"]["node"] for i in range(8)}
    assert len(placed) == 2, "eight one-CPU steps on two one-CPU nodes use both"
    assert values["plain"]["deps"] == ["s0"]


@in_netns
def test_ray_kill_of_an_actor_mid_run_requeues_its_calls_and_sends_nothing_journaled_twice(
    tmp_path: Path, cluster: Any, sim: Simulator
) -> None:
    import ray

    from turborun.ray_pool import NAMESPACE

    tag = uuid.uuid4().hex
    count = 1000
    path = write_tasks(
        tmp_path / "big.jsonl", [task(tag, f"t{i:04d}", max_tokens=150) for i in range(count)]
    )
    args = [
        "batch",
        str(path),
        "--no-progress",
        "--backend",
        "ray",
        "--processes",
        str(PROCESSES),
        "--workers",
        "200",
    ]
    proc = start_cli(args, tmp_path, ray_env(tmp_path, sim, cluster))
    try:
        names = wait_for(
            lambda: len(actors_of(proc.pid)) == PROCESSES and actors_of(proc.pid),
            60,
            "actors",
            proc,
        )
        wait_for(lambda: sum(receipts(sim, tag).values()) >= 300, 60, "requests", proc)
        ray.kill(ray.get_actor(names[0], namespace=NAMESPACE), no_restart=True)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    lines = results(tmp_path / "big.results.jsonl")
    assert Counter(line["turborun"]["status"] for line in lines) == {"succeeded": count}
    log = (tmp_path / "checkpoints" / "big" / "run.log").read_text()
    held = ended_holding(log)
    assert len(held) == 1 and held[0] > 0, log[-2000:]
    sent = receipts(sim, tag)
    assert set(sent) == {f"t{i:04d}" for i in range(count)}
    twice = [cid for cid, n in sent.items() if n > 1]
    # Only the killed actor's calls went again, each once: nothing journaled was re-sent.
    assert len(twice) <= held[0] and max(sent.values()) <= 2
    assert sum(line["turborun"]["attempts"] > 1 for line in lines) == 0, "a lost call is no attempt"


@in_netns
def test_sigkill_of_the_driver_leaves_no_actor_and_resume_resends_no_journaled_task(
    tmp_path: Path, cluster: Any, sim: Simulator
) -> None:
    tag = uuid.uuid4().hex
    count = 1000
    rng = random.Random(tag)
    path = write_tasks(
        tmp_path / "big.jsonl",
        [task(tag, f"t{i:04d}", max_tokens=rng.randint(1, 150)) for i in range(count)],
    )
    args = [
        "batch",
        str(path),
        "--no-progress",
        "--backend",
        "ray",
        "--processes",
        str(PROCESSES),
        "--workers",
        "60",
    ]
    env = ray_env(tmp_path, sim, cluster)
    proc = start_cli(args, tmp_path, env)
    try:
        wait_for(
            lambda: sum(receipts(sim, tag).values()) >= rng.randint(100, 600), 60, "requests", proc
        )
        assert actors_of(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        stop(proc)
    wait_for(lambda: not actors_of(proc.pid), 30, "the dead driver's actors to end")
    time.sleep(0.5)  # anything still sending would show up in the log now
    entries = journaled(tmp_path / "checkpoints" / "big")
    before = receipts(sim, tag)
    assert 0 < len(entries) < count, f"the kill should land mid-run ({len(entries)})"
    assert all(before[cid] == 1 for cid in entries), "journaled tasks were sent once"
    assert len(set(before) - set(entries)) <= 60, "at most what was in flight is unjournaled"

    done = run_cli([*args, "--resume"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    after = receipts(sim, tag)
    assert [cid for cid in entries if after[cid] != before[cid]] == []
    assert set(after) == {f"t{i:04d}" for i in range(count)}
    lines = results(tmp_path / "big.results.jsonl")
    assert Counter(line["turborun"]["status"] for line in lines) == {"succeeded": count}
    assert {line["custom_id"] for line in lines if line["turborun"]["resumed"]} == set(entries)


@in_netns
def test_a_node_that_dies_mid_run_gives_back_exactly_its_actors_calls(
    tmp_path: Path, cluster: Any, sim: Simulator
) -> None:
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")  # a third node, to lose
    cluster.wait_for_nodes()
    tag = uuid.uuid4().hex
    count = 1000
    tasks = [task(tag, f"t{i:04d}", max_tokens=150) for i in range(count)]
    path = write_tasks(tmp_path / "big.jsonl", tasks)
    args = ["batch", str(path), "--no-progress", "--backend", "ray", "--processes", "3"]
    proc = start_cli([*args, "--workers", "150"], tmp_path, ray_env(tmp_path, sim, cluster))
    try:
        wait_for(lambda: len(actor_nodes(proc.pid)) == 3, 60, "three live actors", proc)
        placed = Counter(actor_nodes(proc.pid).values())
        assert len(placed) == 3, f"an actor on each node: {placed}"
        # Kill a node that is not the head (the one holding most of our actors).
        victim = max(cluster.worker_nodes, key=lambda node: placed[node.node_id])
        wait_for(lambda: sum(receipts(sim, tag).values()) >= 300, 60, "requests", proc)
        cluster.remove_node(victim, allow_graceful=False)  # its raylet and workers killed
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    lines = results(tmp_path / "big.results.jsonl")
    assert Counter(line["turborun"]["status"] for line in lines) == {"succeeded": count}
    held = ended_holding((tmp_path / "checkpoints" / "big" / "run.log").read_text())
    assert len(held) == placed[victim.node_id] and min(held) > 0, "its actors, holding calls"
    sent = receipts(sim, tag)
    assert set(sent) == {f"t{i:04d}" for i in range(count)}
    twice = [cid for cid, n in sent.items() if n > 1]
    assert len(twice) <= sum(held) and max(sent.values()) <= 2


@in_netns
def test_no_api_key_in_rays_session_files_after_a_run(
    tmp_path: Path, cluster: Any, sim: Simulator
) -> None:
    tag = uuid.uuid4().hex
    tasks = [task(tag, f"t{i}") for i in range(50)]
    tasks.append({"custom_id": "step", "fn": "ray_steps:where", "resources": {"num_cpus": 1}})
    path = write_tasks(tmp_path / "keys.jsonl", tasks)
    env = ray_env(tmp_path, sim, cluster)
    done = run_cli(["batch", str(path), "--no-progress", "--backend", "ray"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert sum(receipts(sim, tag).values()) == 50
    time.sleep(1.0)  # Ray's log monitor and event writers flush about once a second
    keys = [env["OPENAI_API_KEY"].encode(), env["GROQ_API_KEY"].encode()]
    root = Path(cluster.head_node.get_session_dir_path())
    searched = 0
    for file in root.rglob("*"):
        if file.is_file() and not file.is_socket():
            data = file.read_bytes()
            searched += 1
            assert not any(key in data for key in keys), f"an API key in {file}"
    assert searched > 20, "Ray's session folder holds its logs"


# ---- selection: no Ray needed ---------------------------------------------------------

outside = pytest.mark.skipif(INSIDE, reason="runs outside the namespace (no Ray needed)")


@outside
def test_backend_is_local_by_default_and_ray_by_flag_or_variable(tmp_path: Path) -> None:
    assert load_config({}, environ={}, cwd=tmp_path).backend == "local"
    assert load_config({}, environ={"TURBORUN_BACKEND": "Ray"}, cwd=tmp_path).backend == "ray"
    flags = {"backend": "local"}
    assert load_config(flags, environ={"TURBORUN_BACKEND": "ray"}, cwd=tmp_path).backend == "local"
    with pytest.raises(ConfigError) as error:
        load_config({}, environ={"TURBORUN_BACKEND": "dask"}, cwd=tmp_path)
    assert "TURBORUN_BACKEND" in str(error.value) and "dask" in str(error.value)


@outside
def test_local_runs_never_import_ray(tmp_path: Path, simulator: Simulator) -> None:
    code = (
        "import sys; from turborun import execute_batch\n"
        "r = execute_batch([{'custom_id': 'a', 'body': {'model': 'm', 'messages': []}}])\n"
        "assert r.success_rate == 1.0, r\n"
        "print('ray' in sys.modules)\n"
    )
    env = cli_env(tmp_path, simulator)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@outside
def test_backend_ray_without_ray_installed_says_how_to_install_it(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = write_tasks(tmp_path / "t.jsonl", [task(tag, "a")])
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if ray were not installed
        "from turborun.cli import main\n"
        f"raise SystemExit(main(['batch', {str(path)!r}, '--backend', 'ray', '--no-progress']))\n"
    )
    env = cli_env(tmp_path, simulator)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "--backend ray needs Ray: pip install 'turborun[ray]'" in done.stderr
    assert sum(receipts(simulator, tag).values()) == 0


@outside
def test_resources_are_checked_before_anything_is_sent(
    tmp_path: Path, simulator: Simulator
) -> None:
    tasks = [
        {"custom_id": "a", "fn": "ray_steps:nap", "resources": {"num_cpus": -1}},
        {"custom_id": "b", "fn": "ray_steps:nap", "resources": {"gpus": 1}},
        {**task("x", "c"), "resources": {"num_cpus": 1}},
        {"custom_id": "d", "fn": "ray_steps:nap", "resources": {"num_cpus": 2, "memory": 1e9}},
    ]
    path = write_tasks(tmp_path / "bad.jsonl", tasks)
    done = run_cli(["batch", str(path), "--no-progress"], tmp_path, cli_env(tmp_path, simulator))
    assert done.returncode == 2
    assert "bad.jsonl:1: resources must map num_cpus, num_gpus, memory" in done.stderr
    assert "bad.jsonl:2: resources must map" in done.stderr
    assert "bad.jsonl:3: resources apply to Python steps (fn) only" in done.stderr
    assert "bad.jsonl:4" not in done.stderr
