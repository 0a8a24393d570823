"""--via batch through the real openai and groq SDKs against the simulator's Files and
Batches APIs (accelerated time): splitting, intents and resume after kill -9, expiry,
line errors, DAG levels with templates, Ctrl-C detach or cancel, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from turborun import execute_batch
from turborun.batches.client import MARKER_KEY, BatchClient
from turborun.batches.registry import Registry
from turborun.config import load_config
from turborun.exceptions import InputError
from turborun.simulator import Simulator

OPENAI_KEY = "sk-test-" + "a" * 40
GROQ_KEY = "gsk_test" + "b" * 40
MODEL = "gpt-4o-mini"


def _env(sim: Simulator, tmp_path: Path) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": OPENAI_KEY,
        "GROQ_API_KEY": GROQ_KEY,
        "OPENAI_BASE_URL": sim.openai_base_url,
        "GROQ_BASE_URL": sim.base_url,
        "TURBORUN_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }


def _config(sim: Simulator, tmp_path: Path, **flags: Any) -> Any:
    settings = {"via": "batch", "batch_poll_s": 0.05, "progress": False, **flags}
    return load_config(settings, environ=_env(sim, tmp_path), cwd=tmp_path)


def _task(custom_id: str, text: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return {"custom_id": custom_id, "body": body, **extra}


def _write(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tasks))
    return path


def _client(sim: Simulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.openai_base_url, api_key=OPENAI_KEY, max_retries=0)


def _batches(sim: Simulator) -> list[Any]:
    """Every batch the simulator holds, oldest first, through the SDK's pagination."""
    return list(reversed(list(_client(sim).batches.list(limit=7))))


def _input_ids(sim: Simulator, batch: Any) -> list[str]:
    data = _client(sim).files.content(batch.input_file_id).read()
    return [orjson.loads(line)["custom_id"] for line in data.splitlines() if line.strip()]


def _input_bodies(sim: Simulator, batch: Any) -> dict[str, Any]:
    data = _client(sim).files.content(batch.input_file_id).read()
    lines = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    return {line["custom_id"]: line["body"] for line in lines}


def _answered(sim: Simulator) -> Counter[str]:
    """custom_id -> how many times a batch's output file answered it with a 200."""
    counts: Counter[str] = Counter()
    client = _client(sim)
    for batch in _batches(sim):
        if batch.output_file_id:
            for line in client.files.content(batch.output_file_id).read().splitlines():
                record = orjson.loads(line)
                if (record.get("response") or {}).get("status_code") == 200:
                    counts[record["custom_id"]] += 1
    return counts


def _results(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_files_split_by_line_limit_and_results_in_file_order(tmp_path: Path) -> None:
    tasks = [_task(f"t{i}", f"question {i}") for i in range(1_200)]
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.3}) as sim:
        config = _config(sim, tmp_path, batch_max_lines=500)
        result = execute_batch(path, checkpoint="split", config=config)
        batches = _batches(sim)
        sizes = [len(_input_ids(sim, b)) for b in batches]
        answered = _answered(sim)
    assert sizes == [500, 500, 200]
    assert all(b.status == "completed" for b in batches)
    lines = _results(tmp_path / "tasks.results.jsonl")
    assert [line["custom_id"] for line in lines] == [t["custom_id"] for t in tasks]
    assert all(line["turborun"]["status"] == "succeeded" for line in lines)
    assert lines[7]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 7"
    assert set(answered.values()) == {1} and len(answered) == 1_200  # each answered once
    assert result.metrics.succeeded == 1_200
    # batch prices: gpt-4o-mini at 0.075 / 0.30 USD per million tokens
    usage = lines[0]["response"]["body"]["usage"]
    expected = (usage["prompt_tokens"] * 0.075 + usage["completion_tokens"] * 0.30) / 1e6
    assert lines[0]["turborun"]["cost_usd"] == pytest.approx(expected)


def test_byte_limit_and_one_model_per_file(tmp_path: Path) -> None:
    tasks = [_task(f"a{i}", "x" * 900) for i in range(10)]
    tasks += [_task(f"b{i}", "y", model="gpt-4.1-nano") for i in range(3)]
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        execute_batch(
            path, checkpoint="bytes", config=_config(sim, tmp_path, batch_max_bytes=4_000)
        )
        batches = _batches(sim)
        per_file = [(_input_bodies(sim, b), b) for b in batches]
    for bodies, _ in per_file:
        assert len({body["model"] for body in bodies.values()}) == 1
    big = [len(bodies) for bodies, _ in per_file if "a0" in bodies or "a9" in bodies]
    assert sum(len(b) for b, _ in per_file) == 13
    assert max(big) <= 4  # ~1 KB a line, 4,000 bytes a file
    assert all(line["turborun"]["status"] == "succeeded"
               for line in _results(tmp_path / "tasks.results.jsonl"))  # fmt: skip


def test_expired_batch_resubmits_exactly_the_unfinished_lines(tmp_path: Path) -> None:
    tasks = [_task(f"t{i}", f"q {i}") for i in range(100)]
    path = _write(tmp_path / "tasks.jsonl", tasks)
    options = {"latency_s": 0.4, "expire_fraction": 0.3, "expire_count": 1}
    with Simulator(batches=options) as sim:
        execute_batch(path, checkpoint="expire", config=_config(sim, tmp_path))
        first, second = _batches(sim)
        resubmitted = _input_ids(sim, second)
        answered = _answered(sim)
    assert first.status == "expired" and first.request_counts.completed == 30
    assert second.status == "completed"
    assert resubmitted == [f"t{i}" for i in range(30, 100)]  # exactly the other 70 %
    assert set(answered.values()) == {1} and len(answered) == 100
    lines = _results(tmp_path / "tasks.results.jsonl")
    assert all(line["turborun"]["status"] == "succeeded" for line in lines)
    assert all(line["turborun"]["attempts"] == 1 for line in lines)  # expiry is no attempt


def test_three_level_dag_renders_templates_between_batches(tmp_path: Path) -> None:
    tasks = []
    for i in range(3):
        tasks.append(_task(f"root{i}", f"topic {i}"))
        tasks.append(_task(f"mid{i}", f"expand {{{{root{i}}}}}", depends_on=[f"root{i}"]))
        tasks.append(
            _task(
                f"leaf{i}",
                f"title {{{{mid{i}}}}}",
                model="llama-3.1-8b-instant",
                depends_on=[f"mid{i}"],
                provider="groq",
            )  # fmt: skip
        )
    path = _write(tmp_path / "dag.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        execute_batch(path, checkpoint="dag", config=_config(sim, tmp_path))
        batches = _batches(sim)
        levels = [_input_bodies(sim, b) for b in batches]
    assert [sorted(level) for level in levels] == [
        ["root0", "root1", "root2"],
        ["mid0", "mid1", "mid2"],
        ["leaf0", "leaf1", "leaf2"],
    ]
    assert levels[1]["mid1"]["messages"][0]["content"] == "expand echo: topic 1"
    assert levels[2]["leaf2"]["messages"][0]["content"] == "title echo: expand echo: topic 2"
    assert levels[2]["leaf2"]["model"] == "llama-3.1-8b-instant"  # Groq's batch path
    lines = {line["custom_id"]: line for line in _results(tmp_path / "dag.results.jsonl")}
    leaf = lines["leaf0"]["response"]["body"]["choices"][0]["message"]["content"]
    assert leaf == "echo: title echo: expand echo: topic 0"


def test_line_errors_are_retried_or_fail_like_live_requests(tmp_path: Path) -> None:
    tasks = [
        _task("flaky", "once [sim:status=500:times=1]"),
        _task("bad", "never [sim:status=400]"),
        _task("child", "after {{bad}}", depends_on=["bad"]),
        _task("fine", "ok"),
    ]
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        result = execute_batch(path, checkpoint="errors", config=_config(sim, tmp_path))
        first_ids = _input_ids(sim, _batches(sim)[0])
        second_ids = _input_ids(sim, _batches(sim)[1])
    lines = {line["custom_id"]: line for line in _results(tmp_path / "tasks.results.jsonl")}
    assert sorted(first_ids) == ["bad", "fine", "flaky"] and second_ids == ["flaky"]
    assert lines["flaky"]["turborun"]["status"] == "succeeded"
    assert lines["flaky"]["turborun"]["attempts"] == 2
    assert lines["bad"]["turborun"]["status"] == "failed"
    assert lines["bad"]["error"]["code"] == "client_error"
    assert lines["bad"]["response"]["status_code"] == 400
    assert lines["child"]["error"]["code"] == "dependency_failed"
    assert (result.metrics.succeeded, result.metrics.failed, result.metrics.skipped) == (2, 1, 1)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "turborun", "batch", *args],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_batches(folder: Path, count: int, timeout_s: float = 20.0) -> None:
    """Until the run's registry holds ``count`` created batches (read from disk)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if Registry.exists(folder):
            registry = Registry(folder)
            try:
                created = [r for r in registry.records() if r.get("batch_id")]
            finally:
                registry.close()
            if len(created) >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"{count} batches were not created in {timeout_s} s")


def test_kill_9_while_polling_then_resume_creates_no_batch_twice(tmp_path: Path) -> None:
    tasks = [_task(f"t{i}", f"q {i}") for i in range(300)]
    _write(tmp_path / "tasks.jsonl", tasks)
    args = ["tasks.jsonl", "--batch-max-lines", "100", "--batch-poll", "0.05", "--no-progress"]
    with Simulator(batches={"latency_s": 5.0}) as sim:
        env = _env(sim, tmp_path) | {"TURBORUN_VIA": "batch"}
        run = _cli(args, env, tmp_path)
        _wait_for_batches(tmp_path / "checkpoints" / "tasks", 3)
        time.sleep(0.3)  # polling now
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        assert all(b.status != "completed" for b in _batches(sim))
        again = _cli([*args, "--resume"], env, tmp_path)
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err.decode()
        batches = _batches(sim)
        answered = _answered(sim)
    assert len(batches) == 3  # none created a second time
    markers = [b.metadata[MARKER_KEY] for b in batches]
    assert len(set(markers)) == 3
    assert set(answered.values()) == {1} and len(answered) == 300
    lines = _results(tmp_path / "tasks.results.jsonl")
    assert [line["custom_id"] for line in lines] == [t["custom_id"] for t in tasks]
    assert all(line["turborun"]["status"] == "succeeded" for line in lines)


def test_a_task_edited_while_its_batch_is_out_is_sent_again(tmp_path: Path) -> None:
    tasks = [_task(f"t{i}", f"q {i}") for i in range(20)]
    _write(tmp_path / "tasks.jsonl", tasks)
    args = ["tasks.jsonl", "--via", "batch", "--batch-poll", "0.05", "--no-progress"]
    with Simulator(batches={"latency_s": 1.5}) as sim:
        env = _env(sim, tmp_path)
        run = _cli(args, env, tmp_path)
        _wait_for_batches(tmp_path / "checkpoints" / "tasks", 1)
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        tasks[3] = _task("t3", "edited")
        _write(tmp_path / "tasks.jsonl", tasks)
        again = _cli([*args, "--resume"], env, tmp_path)
        _, err = again.communicate(timeout=60)
        batches = _batches(sim)
        second = _input_ids(sim, batches[1]) if len(batches) > 1 else []
    assert again.returncode == 0, err.decode()
    assert len(batches) == 2 and second == ["t3"]
    lines = {line["custom_id"]: line for line in _results(tmp_path / "tasks.results.jsonl")}
    assert lines["t3"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: edited"
    assert lines["t4"]["turborun"]["endpoint"] == f"batch:{batches[0].id}"


def test_resume_adopts_a_batch_created_but_not_journaled(tmp_path: Path) -> None:
    """The window between batches.create and journaling its id: the intent is on disk,
    the batch exists at the provider, its id is not. --resume finds it by its marker."""
    tasks = [_task(f"t{i}", f"q {i}") for i in range(5)]
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        config = _config(sim, tmp_path)
        folder = config.checkpoint_dir / "window"
        (folder / "journal").mkdir(parents=True)
        registry = Registry(folder)
        ids = [t["custom_id"] for t in tasks]
        intent = registry.new_intent("openai", MODEL, "/v1/chat/completions", ids, 0)
        registry.close()
        # What the killed run had sent: the file and the batch, under the intent's marker.
        client = BatchClient("openai", OPENAI_KEY, sim.openai_base_url)
        data = b"".join(
            orjson.dumps({"custom_id": t["custom_id"], "method": "POST",
                          "url": "/v1/chat/completions", "body": t["body"]}) + b"\n"
            for t in tasks
        )  # fmt: skip
        file_id = client.upload("in.jsonl", data)
        created = client.create_batch(file_id, "/v1/chat/completions", "24h", intent["marker"])
        client.close()
        execute_batch(path, checkpoint="window", resume=True, config=config)
        batches = _batches(sim)
    assert [b.id for b in batches] == [created["id"]]
    lines = _results(tmp_path / "tasks.results.jsonl")
    assert all(line["turborun"]["status"] == "succeeded" for line in lines)
    assert {line["turborun"]["endpoint"] for line in lines} == {f"batch:{created['id']}"}


def test_a_batch_the_provider_does_not_know_is_sent_again(tmp_path: Path) -> None:
    """A journaled batch id the provider answers 404 for (deleted, another server): its
    tasks go out again in a new batch instead of being polled forever."""
    tasks = [_task(f"t{i}", f"q {i}") for i in range(4)]
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        config = _config(sim, tmp_path)
        folder = config.checkpoint_dir / "gone"
        (folder / "journal").mkdir(parents=True)
        registry = Registry(folder)
        ids = [t["custom_id"] for t in tasks]
        intent = registry.new_intent("openai", MODEL, "/v1/chat/completions", ids, 0)
        registry.update(intent, state="submitted", batch_id="batch_gone")
        registry.close()
        result = execute_batch(path, checkpoint="gone", resume=True, config=config)
        batches = _batches(sim)
        sent = _input_ids(sim, batches[0])
    assert len(batches) == 1 and sorted(sent) == ids
    assert result.metrics.succeeded == 4
    lines = _results(tmp_path / "tasks.results.jsonl")
    assert all(line["turborun"]["attempts"] == 1 for line in lines)


@pytest.mark.parametrize("cancel", [False, True], ids=["detach", "cancel"])
def test_ctrl_c_detaches_or_cancels_and_resume_collects(tmp_path: Path, cancel: bool) -> None:
    tasks = [_task(f"t{i}", f"q {i}") for i in range(50)]
    _write(tmp_path / "tasks.jsonl", tasks)
    args = ["tasks.jsonl", "--via", "batch", "--batch-poll", "0.05", "--no-progress"]
    args += ["--cancel-on-interrupt"] if cancel else []
    with Simulator(batches={"latency_s": 4.0 if cancel else 3.0}) as sim:
        env = _env(sim, tmp_path)
        run = _cli(args, env, tmp_path)
        _wait_for_batches(tmp_path / "checkpoints" / "tasks", 1)
        time.sleep(0.6)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=20)
        (batch,) = _batches(sim)
        status = subprocess.run(
            [sys.executable, "-m", "turborun", "status", "tasks"], cwd=tmp_path,
            env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        again = _cli([*args, "--resume"], env, tmp_path)
        _, err_again = again.communicate(timeout=60)
        batches = _batches(sim)
        answered = _answered(sim)
        second = _input_ids(sim, batches[1]) if len(batches) > 1 else []
    assert run.returncode == 130
    assert "--resume" in err.decode()
    assert batch.id in status.stdout
    if cancel:
        assert "cancelled 1 batch" in err.decode()
        assert batch.status == "cancelled"
        done = batch.request_counts.completed
        assert done < 50 and len(batches) == 2
        assert second == [f"t{i}" for i in range(done, 50)]  # finished lines kept, the rest sent
    else:
        assert batch.status != "cancelled" and "left 1 batch(es) running" in err.decode()
        assert len(batches) == 1  # resume collected it; nothing sent again
    assert again.returncode == 0, err_again.decode()
    assert set(answered.values()) == {1} and len(answered) == 50


def test_tasks_that_all_ask_for_batch_mode_run_through_batches(tmp_path: Path) -> None:
    tasks = [_task(f"t{i}", f"q {i}", mode="batch") for i in range(3)]
    tasks.append({"custom_id": "count", "fn": "json:dumps", "depends_on": ["t0"]})
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        config = _config(sim, tmp_path, via="live")
        result = execute_batch(path, checkpoint="modes", config=config)
        batches = _batches(sim)
        live = [e for e in sim.requests() if e["path"].endswith("/chat/completions")]
    assert len(batches) == 1 and live == []
    assert result.metrics.succeeded == 4


def test_a_file_mixing_live_and_batch_modes_is_refused_before_sending(tmp_path: Path) -> None:
    tasks = [_task("a", "x"), _task("b", "y", mode="batch"), _task("c", "z", mode="batch")]
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        config = _config(sim, tmp_path, via="live")
        with pytest.raises(InputError) as caught:
            execute_batch(path, checkpoint="mixed", config=config)
        with pytest.raises(InputError):
            execute_batch([{**t, "mode": "fast"} for t in tasks], config=config)
        sent = sim.requests()
    (problem,) = caught.value.problems
    assert problem.line == 2 and "lines 2, 3" in problem.message
    assert sent == []


def test_lines_refused_for_the_account_wait_for_resume_instead_of_failing(
    tmp_path: Path,
) -> None:
    quota = " [sim:status=429:message=You exceeded your current quota:times=1]"
    pad = "." * 60  # the answer echoes 60 characters: the directive stays out of {{b}}
    tasks = [_task("a", "fine"), _task("b", "broke" + pad + quota), _task("c", "also" + quota)]
    tasks.append(_task("d", "after {{b}}", depends_on=["b"]))
    path = _write(tmp_path / "tasks.jsonl", tasks)
    with Simulator(batches={"latency_s": 0.2}) as sim:
        config = _config(sim, tmp_path)
        first = execute_batch(path, checkpoint="quota", config=config)
        lines = {line["custom_id"]: line for line in _results(tmp_path / "tasks.results.jsonl")}
        again = execute_batch(path, checkpoint="quota", resume=True, config=config)
        batches = _batches(sim)
        resent = _input_ids(sim, batches[1])
    assert first.stopped_by is not None and "refused the account" in first.stopped_by
    assert not first.interrupted and first.metrics.failed == 0
    assert [lines[c]["turborun"]["status"] for c in "abcd"] == [
        "succeeded", "pending", "pending", "pending"]  # fmt: skip
    assert sorted(resent) == ["b", "c"]  # nothing failed, nothing lost: sent again
    assert again.stopped_by is None and again.metrics.succeeded == 4


def test_a_key_echoed_in_batch_error_lines_is_stored_nowhere(tmp_path: Path) -> None:
    echo = f" [sim:status=401:message=Incorrect API key provided {OPENAI_KEY}:times=9]"
    path = _write(tmp_path / "tasks.jsonl", [_task("ok", "fine"), _task("bad", "no" + echo)])
    with Simulator(batches={"latency_s": 0.1}) as sim:
        result = execute_batch(path, checkpoint="keys", config=_config(sim, tmp_path))
    assert result.results["ok"].status == "succeeded"
    assert result.results["bad"].status == "failed"
    stored = [tmp_path / "tasks.results.jsonl"]
    stored += [p for p in (tmp_path / "checkpoints" / "keys").rglob("*") if p.is_file()]
    for file in stored:
        assert OPENAI_KEY.encode() not in file.read_bytes(), file
    body = json.dumps([line for line in _results(tmp_path / "tasks.results.jsonl")])
    assert "Incorrect API key provided ***" in body  # the echo came back, scrubbed
