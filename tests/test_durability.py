"""Checkpoint and resume through the command line (SPEC §4), with real processes, real
signals and the real SDKs against the simulator: kill -9 and Ctrl-C mid-run, then
--resume; the run lock; refusing a checkpoint that holds results; re-running a changed
task with its descendants; no API key in anything a run writes."""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import children, journaled

from turborun.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
MODEL = "sim-durable"
WORKERS = 60
PROCESSES = 2
BIG = 2000


# ---- helpers -----------------------------------------------------------------------


def cli_env(tmp_path: Path, sim: Simulator, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: fresh random keys, the simulator's URLs, the
    checkpoint dir in tmp_path; nothing inherited that could configure turborun."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "OPENAI_", "GROQ_"))
    }
    env.update(
        TURBORUN_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        OPENAI_BASE_URL=sim.openai_base_url,
        GROQ_BASE_URL=sim.base_url,
        OPENAI_API_KEY=f"sk-test-{uuid.uuid4().hex}",
        GROQ_API_KEY=f"gsk-test-{uuid.uuid4().hex}",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
    )
    env.update(extra)
    return env


def turborun(*args: str) -> list[str]:
    return [sys.executable, "-m", "turborun", *args]


def run_cli(
    args: list[str], tmp_path: Path, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        turborun(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def start_cli(args: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        turborun(*args),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def task(tag: str, cid: str, *, max_tokens: int = 4, extra: str = "", **keys: Any) -> dict:
    """A chat task whose prompt starts with ``tag:cid`` (how the log is matched)."""
    content = f"{tag}:{cid} {extra}".strip()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    return {"custom_id": cid, "body": body, **keys}


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tasks))
    return path


def sim_log(sim: Simulator) -> list[dict[str, Any]]:
    """The simulator's request log, complete lines only: polled while the server
    appends, the last line may be half-written (Simulator.requests() would raise)."""
    data = Path(sim.log_path).read_bytes() if sim.log_path else b""
    return [orjson.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


def receipts(sim: Simulator, tag: str) -> Counter[str]:
    """Requests the simulator received per custom_id, for tasks of ``tag``."""
    pattern = re.compile(rf"^{re.escape(tag)}:(\S+)")
    counts: Counter[str] = Counter()
    for entry in sim_log(sim):
        body = entry.get("body") or {}
        messages = body.get("messages") or []
        content = messages[-1].get("content") if messages else None
        match = pattern.match(content) if isinstance(content, str) else None
        if match:
            counts[match.group(1)] += 1
    return counts


def prompts(sim: Simulator, tag: str, cid: str) -> list[str]:
    out = []
    for entry in sim_log(sim):
        messages = (entry.get("body") or {}).get("messages") or []
        content = messages[-1].get("content") if messages else None
        if isinstance(content, str) and content.startswith(f"{tag}:{cid} "):
            out.append(content)
    return out


def results(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def wait_gone(pids: set[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = set()
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            if "\nState:\tZ" not in status:
                alive.add(pid)
        if not alive:
            return
        time.sleep(0.05)


def wait_for(predicate: Any, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def slow_sim() -> Any:
    """Latency 0.05–0.2 s (grows with max_tokens) so that a signal lands mid-run."""
    with Simulator(latency_s=0.05, latency_per_token_s=0.001) as sim:
        yield sim


def big_run(tmp_path: Path, tag: str) -> tuple[Path, list[str]]:
    rng = random.Random(tag)
    tasks = [task(tag, f"t{i:04d}", max_tokens=rng.randint(1, 150)) for i in range(BIG)]
    path = write_tasks(tmp_path / "big.jsonl", tasks)
    args = ["batch", str(path), "--workers", str(WORKERS), "--processes", str(PROCESSES)]
    return path, [*args, "--no-progress"]


def assert_resume_sent_no_journaled_task(
    before: Counter[str], after: Counter[str], journal_ids: set[str]
) -> None:
    resent = sorted(cid for cid in journal_ids if after[cid] != before[cid])
    assert not resent, f"journaled tasks sent again on resume: {resent[:10]} ({len(resent)})"


def assert_every_task_succeeded_once(path: Path, count: int, journal_ids: set[str]) -> None:
    lines = results(path)
    ids = [line["custom_id"] for line in lines]
    assert ids == [f"t{i:04d}" for i in range(count)], "one line per task, in file order"
    statuses = Counter(line["turborun"]["status"] for line in lines)
    assert statuses == {"succeeded": count}
    resumed = {line["custom_id"] for line in lines if line["turborun"]["resumed"]}
    assert resumed == journal_ids, "exactly the journaled tasks count as resumed"


# ---- 1. kill -9 --------------------------------------------------------------------


def test_sigkill_mid_run_then_resume_loses_nothing_and_resends_no_journaled_task(
    tmp_path: Path, slow_sim: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path, args = big_run(tmp_path, tag)
    env = cli_env(tmp_path, slow_sim)
    proc = start_cli(args, tmp_path, env)
    try:
        kill_after = random.randint(150, 1500)  # requests received: a random moment
        wait_for(lambda: sum(receipts(slow_sim, tag).values()) >= kill_after, 60, "requests", proc)
        workers = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        stop(proc)
    wait_gone(workers, 10)  # nothing the dead run holds may still be sending
    entries = journaled(tmp_path / "checkpoints" / "big")
    journal_ids = set(entries)
    before = receipts(slow_sim, tag)
    assert 0 < len(journal_ids) < BIG, f"the kill should land mid-run ({len(journal_ids)})"
    assert {e["status"] for e in entries.values()} == {"succeeded"}
    assert all(before[cid] == 1 for cid in journal_ids), "journaled tasks were sent once"
    in_flight = set(before) - journal_ids
    # At most one Call per worker thread plus one queued per process was handed over.
    assert len(in_flight) <= WORKERS + PROCESSES, f"{len(in_flight)} sent, not journaled"

    done = run_cli([*args, "--resume"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    after = receipts(slow_sim, tag)
    assert_resume_sent_no_journaled_task(before, after, journal_ids)
    assert set(after) == {f"t{i:04d}" for i in range(BIG)}
    assert_every_task_succeeded_once(tmp_path / "big.results.jsonl", BIG, journal_ids)


# ---- 2. Ctrl-C ---------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_journals_in_flight_work_prints_resume_command_and_exits_130(
    tmp_path: Path, slow_sim: Simulator, signum: int
) -> None:
    tag = uuid.uuid4().hex
    path, args = big_run(tmp_path, tag)
    env = cli_env(tmp_path, slow_sim)
    proc = start_cli(args, tmp_path, env)
    try:
        stop_after = random.randint(150, 1500)
        wait_for(lambda: sum(receipts(slow_sim, tag).values()) >= stop_after, 60, "requests", proc)
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=25)  # grace is 15 s
    finally:
        stop(proc)
    assert proc.returncode == 130, err
    command = next((line for line in err.splitlines() if "--resume" in line), None)
    assert command is not None, f"no resume command in stderr:\n{err}"
    journal_ids = set(journaled(tmp_path / "checkpoints" / "big"))
    before = receipts(slow_sim, tag)
    assert 0 < len(journal_ids) < BIG, f"Ctrl-C should land mid-run ({len(journal_ids)})"
    assert set(before) <= journal_ids, "in-flight requests finish and are journaled"
    lines = results(tmp_path / "big.results.jsonl")
    assert [line["custom_id"] for line in lines] == [f"t{i:04d}" for i in range(BIG)]
    by_status: dict[str, set[str]] = {}
    for line in lines:
        by_status.setdefault(line["turborun"]["status"], set()).add(line["custom_id"])
    assert set(by_status) == {"succeeded", "pending"}
    assert by_status["succeeded"] == journal_ids

    # The printed command, run as it is, finishes the run.
    resume = shlex.split(command[command.index(sys.executable) :])
    assert resume[:3] == [sys.executable, "-m", "turborun"] and "--resume" in resume
    done = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = receipts(slow_sim, tag)
    assert_resume_sent_no_journaled_task(before, after, journal_ids)
    assert_every_task_succeeded_once(tmp_path / "big.results.jsonl", BIG, journal_ids)


def test_second_ctrl_c_exits_at_once_leaving_a_consistent_journal(
    tmp_path: Path, slow_sim: Simulator
) -> None:
    tag = uuid.uuid4().hex
    # ~4 s per request: the first Ctrl-C's grace would wait for them; the second must not.
    # The quick ones go first ("high"; priority 1 is "low", below the default "normal",
    # and let the long ones go first: the Ctrl-C then came when only quick ones were left).
    quick = [task(tag, f"t{i:04d}", max_tokens=1, priority="high") for i in range(40)]
    tasks = quick + [task(tag, f"t{i:04d}", max_tokens=4000) for i in range(40, 80)]
    path = write_tasks(tmp_path / "long.jsonl", tasks)
    args = ["batch", str(path), "--workers", "40", "--processes", "2", "--no-progress"]
    env = cli_env(tmp_path, slow_sim)
    proc = start_cli(args, tmp_path, env)
    try:
        wait_for(lambda: len(receipts(slow_sim, tag)) >= 60, 60, "long requests", proc)
        wait_for(lambda: len(journaled_ids(tmp_path / "checkpoints" / "long")) >= 1, 30, "a commit")
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None, "the first Ctrl-C waits for in-flight requests"
        os.kill(proc.pid, signal.SIGINT)
        started = time.monotonic()
        proc.communicate(timeout=10)
        exited_after = time.monotonic() - started
    finally:
        stop(proc)
    assert proc.returncode == 130
    assert exited_after < 3, f"second Ctrl-C took {exited_after:.1f} s"
    entries = journaled(tmp_path / "checkpoints" / "long")  # opens and decodes: consistent
    before = receipts(slow_sim, tag)
    assert {e["status"] for e in entries.values()} == {"succeeded"}
    assert set(before) - set(entries), "requests still in flight were not waited for"

    done = run_cli([*args, "--resume"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    after = receipts(slow_sim, tag)
    assert_resume_sent_no_journaled_task(before, after, set(entries))
    lines = results(tmp_path / "long.results.jsonl")
    assert [line["custom_id"] for line in lines] == [t["custom_id"] for t in tasks]
    assert {line["turborun"]["status"] for line in lines} == {"succeeded"}


def journaled_ids(checkpoint: Path) -> set[str]:
    if not (checkpoint / "journal").exists():
        return set()
    return set(journaled(checkpoint))


# ---- 3. run lock -------------------------------------------------------------------


def test_second_run_on_a_busy_checkpoint_exits_2_naming_the_first_pid(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = write_tasks(
        tmp_path / "busy.jsonl",
        [task(tag, "slow", extra="[sim:latency=20]"), task(tag, "quick")],
    )
    env = cli_env(tmp_path, simulator)
    first = start_cli(["batch", str(path), "--workers", "2", "--no-progress"], tmp_path, env)
    try:
        wait_for(lambda: receipts(simulator, tag)["slow"], 30, "the slow request", first)
        wait_for(lambda: receipts(simulator, tag)["quick"], 30, "the quick request", first)
        before = receipts(simulator, tag)
        second = run_cli(["batch", str(path), "--resume", "--no-progress"], tmp_path, env)
        after = receipts(simulator, tag)
        assert first.poll() is None, "the first run is still going"
    finally:
        stop(first)
    assert second.returncode == 2, second.stderr
    assert re.search(rf"\b{first.pid}\b", second.stderr), second.stderr
    assert after == before == {"slow": 1, "quick": 1}, "the second run sent nothing"


# ---- 4. existing checkpoint --------------------------------------------------------


def test_finished_checkpoint_is_refused_without_resume_and_fresh_reruns_everything(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    ids = ["a", "b", "c"]
    path = write_tasks(tmp_path / "again.jsonl", [task(tag, cid) for cid in ids])
    env = cli_env(tmp_path, simulator)
    args = ["batch", str(path), "--workers", "4", "--no-progress"]
    assert run_cli(args, tmp_path, env).returncode == 0
    assert receipts(simulator, tag) == dict.fromkeys(ids, 1)

    refused = run_cli(args, tmp_path, env)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr and "--fresh" in refused.stderr, refused.stderr
    assert receipts(simulator, tag) == dict.fromkeys(ids, 1), "a refused run sends nothing"

    resumed = run_cli([*args, "--resume"], tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr
    assert receipts(simulator, tag) == dict.fromkeys(ids, 1), "resume of a finished run"

    fresh = run_cli([*args, "--fresh"], tmp_path, env)
    assert fresh.returncode == 0, fresh.stderr
    assert receipts(simulator, tag) == dict.fromkeys(ids, 2)
    lines = results(tmp_path / "again.results.jsonl")
    assert [(x["custom_id"], x["turborun"]["resumed"]) for x in lines] == [
        (cid, False) for cid in ids
    ]


# ---- 5. changed task ---------------------------------------------------------------


def test_changed_task_reruns_with_its_descendants_and_nothing_else(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex

    def dag(b_extra: str) -> list[dict]:
        return [
            task(tag, "a"),
            task(tag, "b", extra=f"{b_extra} from {{{{a}}}}", depends_on=["a"]),
            task(tag, "c", extra="from {{b}}", depends_on=["b"]),
            task(tag, "d", extra="from {{a}}", depends_on=["a"]),
            task(tag, "e"),
        ]

    path = write_tasks(tmp_path / "dag.jsonl", dag("first"))
    env = cli_env(tmp_path, simulator)
    args = ["batch", str(path), "--workers", "4", "--no-progress"]
    assert run_cli(args, tmp_path, env).returncode == 0
    assert receipts(simulator, tag) == dict.fromkeys("abcde", 1)

    write_tasks(path, dag("second"))
    done = run_cli([*args, "--resume"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert receipts(simulator, tag) == {"a": 1, "b": 2, "c": 2, "d": 1, "e": 1}
    rendered = prompts(simulator, tag, "b")[-1]
    assert rendered.startswith(f"{tag}:b second from echo: {tag}:a"), rendered
    assert "{{a}}" not in rendered
    assert "changed: 1, with 1 descendants" in done.stdout, done.stdout
    lines = {
        x["custom_id"]: x["turborun"]["resumed"] for x in results(tmp_path / "dag.results.jsonl")
    }
    assert lines == {"a": True, "b": False, "c": False, "d": True, "e": True}


# ---- 6. keys -----------------------------------------------------------------------


def test_no_api_key_in_any_file_a_run_writes(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    path = write_tasks(
        tmp_path / "keys.jsonl",
        [
            task(tag, "ok"),
            task(tag, "bad", extra="[sim:status=400]"),
            task(tag, "child", depends_on=["bad"]),
            task(tag, "flaky", extra="[sim:status=500:times=1]"),
            task(tag, "groq-auth", extra="[sim:status=401]", provider="groq"),
        ],
    )
    env = cli_env(tmp_path, simulator)
    args = ["batch", str(path), "--workers", "4", "--no-progress"]
    first = run_cli(args, tmp_path, env)
    assert first.returncode == 1, first.stderr
    again = run_cli([*args, "--resume"], tmp_path, env)
    assert again.returncode == 1, again.stderr
    written = [p for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()]
    written.append(tmp_path / "keys.results.jsonl")
    assert any(p.name == "run.log" for p in written)
    secrets = [env["OPENAI_API_KEY"], env["GROQ_API_KEY"]]
    for file in written:
        data = file.read_bytes()
        for secret in secrets:
            for needle in (secret, secret[-16:]):  # the key, or its tail in a masked form
                assert needle.encode() not in data, f"{needle[:8]}… found in {file}"
    for output in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert not any(s[-16:] in output for s in secrets)
