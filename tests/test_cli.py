"""The command line as a user runs it (SPEC §3, §6): exit codes, the results file,
``status``, ``--simulate`` on the example, and the pinned surface (README flags,
``turborun.__all__``). Exit code 130 is covered in test_durability.py
(test_ctrl_c_journals_in_flight_work_prints_resume_command_and_exits_130)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

import turborun
from turborun.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
MODEL = "sim-cli"


def cli_env(tmp_path: Path, sim: Simulator, **extra: str) -> dict[str, str]:
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


def turborun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "turborun", *args]


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        turborun_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def task(tag: str, cid: str, extra: str = "", **keys: Any) -> dict[str, Any]:
    content = f"{tag}:{cid} {extra}".strip()
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 5}
    return {"custom_id": cid, "body": body, **keys}


def write_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tasks))
    return path


def results(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def sim_log(sim: Simulator) -> list[dict[str, Any]]:
    """The simulator's request log, complete lines only: polled while the server
    appends, the last line may be half-written (Simulator.requests() would raise)."""
    data = Path(sim.log_path).read_bytes() if sim.log_path else b""
    return [orjson.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


def sent(sim: Simulator, tag: str) -> list[str]:
    out = []
    for entry in sim_log(sim):
        messages = (entry.get("body") or {}).get("messages") or []
        content = messages[-1].get("content") if messages else None
        if isinstance(content, str) and content.startswith(f"{tag}:"):
            out.append(content[len(tag) + 1 :].split(" ", 1)[0])
    return out


# ---- exit codes and the results file -----------------------------------------------


def test_all_succeeded_exits_0_and_results_follow_the_batch_api_shape(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    ids = ["z-last-in-name", "a1", "m2", "b3"]  # file order is not name order
    tasks = [task(tag, cid) for cid in ids]
    tasks[2]["depends_on"] = ["a1"]  # nor completion order
    path = write_tasks(tmp_path / "ok.jsonl", tasks)
    env = cli_env(tmp_path, simulator)
    done = run_cli(["batch", str(path), "--workers", "4", "--no-progress"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert sorted(sent(simulator, tag)) == sorted(ids)
    lines = results(tmp_path / "ok.results.jsonl")
    assert [x["custom_id"] for x in lines] == ids
    for x in lines:
        assert set(x) == {"id", "custom_id", "response", "error", "turborun"}
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert set(x["response"]) == {"status_code", "request_id", "body"}
        assert x["response"]["status_code"] == 200
        assert x["response"]["request_id"].startswith("req_")
        assert x["response"]["body"]["choices"][0]["message"]["content"].startswith("echo: ")
        t = x["turborun"]
        assert set(t) == {
            "status",
            "attempts",
            "latency_s",
            "queued_s",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "endpoint",
            "resumed",
        }
        assert t["endpoint"].startswith("http://127.0.0.1:")
        assert (t["status"], t["attempts"], t["resumed"]) == ("succeeded", 1, False)
        assert t["latency_s"] >= 0 and t["queued_s"] >= 0
        assert t["input_tokens"] > 0 and t["output_tokens"] == 5
    assert len({x["id"] for x in lines}) == len(ids)
    assert "tasks 4: 4 succeeded" in done.stdout, done.stdout
    assert "openai/sim-cli" in done.stdout  # the per-model summary row


def test_dependency_may_come_later_in_the_file(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    tasks = [task(tag, "child", "{{parent}}", depends_on=["parent"]), task(tag, "parent")]
    path = write_tasks(tmp_path / "forward.jsonl", tasks)
    env = cli_env(tmp_path, simulator)
    done = run_cli(["batch", str(path), "--workers", "4", "--no-progress"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    lines = results(tmp_path / "forward.results.jsonl")
    assert [(x["custom_id"], x["turborun"]["status"]) for x in lines] == [
        ("child", "succeeded"),
        ("parent", "succeeded"),
    ]
    assert sent(simulator, tag) == ["parent", "child"]


def test_failure_exits_1_and_its_dependent_is_skipped(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    tasks = [
        task(tag, "fine"),
        task(tag, "bad", "[sim:status=400:message=no such thing]"),
        task(tag, "child", depends_on=["bad"]),
        task(tag, "flaky", "[sim:status=500:times=1]"),
    ]
    path = write_tasks(tmp_path / "mixed.jsonl", tasks)
    out = tmp_path / "elsewhere" / "out.jsonl"
    out.parent.mkdir()
    env = cli_env(tmp_path, simulator)
    args = ["batch", str(path), "-o", str(out), "--workers", "4", "--max-retries", "2"]
    done = run_cli([*args, "--no-progress"], tmp_path, env)
    assert done.returncode == 1, done.stderr
    assert not (tmp_path / "mixed.results.jsonl").exists(), "-o moves the results file"
    by_id = {x["custom_id"]: x for x in results(out)}
    assert list(by_id) == ["fine", "bad", "child", "flaky"]
    assert by_id["fine"]["turborun"]["status"] == "succeeded"
    bad = by_id["bad"]
    assert bad["turborun"]["status"] == "failed" and bad["turborun"]["attempts"] == 1
    assert bad["response"]["status_code"] == 400
    assert bad["error"]["code"] and "no such thing" in bad["error"]["message"]
    child = by_id["child"]
    assert child["turborun"]["status"] == "skipped"
    assert child["error"]["code"] == "dependency_failed" and child["response"] is None
    flaky = by_id["flaky"]["turborun"]
    assert (flaky["status"], flaky["attempts"]) == ("succeeded", 2)
    assert sorted(sent(simulator, tag)) == ["bad", "fine", "flaky", "flaky"]
    assert "1 failed, 1 skipped" in done.stdout, done.stdout


def test_bad_input_exits_2(tmp_path: Path, simulator: Simulator) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{nope\n")
    done = run_cli(["batch", str(path)], tmp_path, cli_env(tmp_path, simulator))
    assert done.returncode == 2 and f"{path}:1: malformed JSON" in done.stderr


def test_bad_flag_exits_2(tmp_path: Path, simulator: Simulator) -> None:
    path = write_tasks(tmp_path / "x.jsonl", [task("t", "x")])
    env = cli_env(tmp_path, simulator)
    for flags in (["--workers", "0"], ["--strategy", "random"], ["--resume", "--fresh"]):
        done = run_cli(["batch", str(path), *flags], tmp_path, env)
        assert done.returncode == 2, (flags, done.stderr)


# ---- status ------------------------------------------------------------------------


def test_status_shows_a_run_while_it_runs_and_after(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    tasks = [task(tag, f"q{i}") for i in range(5)] + [
        task(tag, "slow", "[sim:latency=4]", priority="low")
    ]
    # low priority: not the request that probes the model's unknown limits (the others
    # would wait for the probe's answer)
    path = write_tasks(tmp_path / "watched.jsonl", tasks)
    env = cli_env(tmp_path, simulator)
    args = ["batch", str(path), "--workers", "4", "--no-progress"]
    proc = subprocess.Popen(
        turborun_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while "slow" not in sent(simulator, tag) or len(sent(simulator, tag)) < 6:
            assert proc.poll() is None and time.monotonic() < deadline, "run ended early"
            time.sleep(0.05)
        # Sent is not journaled: ask status until the five quick answers are in.
        during = run_cli(["status", "watched"], tmp_path, env)
        while "journaled 5 of 6" not in during.stdout:
            assert proc.poll() is None and time.monotonic() < deadline, during.stdout
            time.sleep(0.05)
            during = run_cli(["status", "watched"], tmp_path, env)
        assert proc.poll() is None, "the slow request keeps the run going"
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert during.returncode == 0, during.stderr
    assert "run watched: running" in during.stdout, during.stdout
    assert f"(pid {proc.pid})" in during.stdout
    assert "journaled 5 of 6: 5 succeeded" in during.stdout, during.stdout
    assert proc.returncode == 0

    after = run_cli(["status", "watched"], tmp_path, env)
    assert after.returncode == 0
    assert "run watched: finished" in after.stdout, after.stdout
    assert "journaled 6 of 6: 6 succeeded, 0 failed, 0 skipped" in after.stdout
    assert str(path) in after.stdout
    listing = run_cli(["status"], tmp_path, env)
    assert listing.returncode == 0 and listing.stdout.split() == ["watched"]
    missing = run_cli(["status", "nope"], tmp_path, env)
    assert missing.returncode == 2 and "nope" in missing.stderr


# ---- --simulate --------------------------------------------------------------------


def test_simulate_runs_the_example_end_to_end(tmp_path: Path) -> None:
    source = ROOT / "examples" / "essay.jsonl"
    path = tmp_path / "essay.jsonl"
    shutil.copy(source, path)
    out = tmp_path / "essay.results.jsonl"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "OPENAI_", "GROQ_"))
    }
    env.update(TURBORUN_CHECKPOINT_DIR=str(tmp_path / "checkpoints"), PYTHONPATH=str(ROOT))
    # cwd: the repo root, so that the example's step `examples.steps` imports.
    args = ["batch", str(path), "-o", str(out), "--simulate", "--fresh", "--no-progress"]
    done = run_cli(args, ROOT, env)
    assert done.returncode == 0, done.stderr
    lines = results(out)
    expected = [orjson.loads(x)["custom_id"] for x in source.read_bytes().splitlines() if x.strip()]
    assert [x["custom_id"] for x in lines] == expected
    assert {x["turborun"]["status"] for x in lines} == {"succeeded"}
    assert (tmp_path / "checkpoints" / "essay" / "journal").is_dir()


# ---- the pinned surface ------------------------------------------------------------

BATCH_FLAGS = [
    "-o",
    "--resume",
    "--fresh",
    "--run-name",
    "--accept-lost-journal",
    "--workers",
    "--max-in-flight",
    "--endpoint-max-in-flight",
    "--processes",
    "--strategy",
    "--rpm",
    "--tpm",
    "--max-retries",
    "--timeout",
    "--simulate",
    "--no-progress",
    "--via",
    "--batch-max-lines",
    "--batch-max-bytes",
    "--batch-poll",
    "--batch-window",
    "--cancel-on-interrupt",
    "--flex-fallback",
    "--backend",
    "--max-cost",
    "--max-tokens-total",
    "--estimate",
]


def test_every_batch_flag_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    helptext = subprocess.run(
        turborun_cmd("batch", "--help"),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    ).stdout
    helptext = helptext.replace("python -m turborun", "")
    offered = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", helptext)) - {"-h", "--help"}
    assert offered == set(BATCH_FLAGS) | {"--output"}, "the CLI offers exactly the spec's flags"
    for flag in sorted(offered):
        assert re.search(rf"`{re.escape(flag)}`|\[{re.escape(flag)}[\] ]", readme), flag


def test_public_api_is_exactly_the_documented_list() -> None:
    assert turborun.__all__ == [
        "BatchResult",
        "CheckpointDamaged",
        "CheckpointError",
        "CheckpointExists",
        "CheckpointLocked",
        "CheckpointNotFound",
        "Config",
        "ConfigError",
        "InputError",
        "JournalWriteError",
        "Limit",
        "Metrics",
        "ModelStats",
        "Problem",
        "Progress",
        "Result",
        "ResultsPathError",
        "Runner",
        "Settings",
        "Status",
        "TaskFailed",
        "TurborunError",
        "WorkerStartError",
        "execute_batch",
    ]
    for name in turborun.__all__:
        assert getattr(turborun, name) is not None
    assert sorted(dir(turborun)) == sorted(turborun.__all__)
    with pytest.raises(AttributeError):
        turborun.Supervisor  # noqa: B018 - internal names are not public
