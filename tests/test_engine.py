"""The engine end to end through real worker processes, with Python steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from turborun import InputError, Runner, TaskFailed, execute_batch


@pytest.fixture(autouse=True)
def step_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STEP_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(tasks, tmp_path, **kw):
    kw.setdefault("workers", 4)
    kw.setdefault("processes", 2)
    return execute_batch(tasks, checkpoint_dir=str(tmp_path / "ck"), **kw)


def _order(step_dir):
    lines = (step_dir / "order").read_text().splitlines()
    return [(float(t), eval(deps)) for t, _, deps in (line.split(" ", 2) for line in lines)]


def test_dag_runs_in_dependency_order(step_dir):
    tasks = [
        {"custom_id": "a", "fn": "steps:record_order"},
        {"custom_id": "b", "fn": "steps:record_order", "depends_on": ["a"]},
        {"custom_id": "c", "fn": "steps:record_order", "depends_on": ["a"]},
        {"custom_id": "d", "fn": "steps:record_order", "depends_on": ["b", "c"]},
    ]
    result = _run(tasks, step_dir)
    assert result.success_rate == 1.0
    runs = _order(step_dir)
    started = {tuple(deps): t for t, deps in runs}
    assert started[()] < started[("a",)] < started[("b", "c")]
    assert [r.status for r in result.results.values()] == ["succeeded"] * 4


def test_cycle_error_names_its_members(step_dir):
    tasks = [
        {"custom_id": "x", "fn": "steps:answer"},
        {"custom_id": "a", "fn": "steps:answer", "depends_on": ["c"]},
        {"custom_id": "b", "fn": "steps:answer", "depends_on": ["a"]},
        {"custom_id": "c", "fn": "steps:answer", "depends_on": ["b"]},
    ]
    with pytest.raises(InputError) as info:
        _run(tasks, step_dir)
    message = str(info.value)
    assert "cycle" in message and all(name in message for name in ("a", "b", "c"))
    assert not (step_dir / "ck").exists() or not any((step_dir / "ck").iterdir())


def test_dependents_of_a_failure_are_skipped_transitively(step_dir):
    tasks = [
        {"custom_id": "bad", "fn": "steps:fail"},
        {"custom_id": "child", "fn": "steps:answer", "depends_on": ["bad"]},
        {"custom_id": "grandchild", "fn": "steps:answer", "depends_on": ["child"]},
        {"custom_id": "fine", "fn": "steps:answer"},
    ]
    result = _run(tasks, step_dir)
    r = result.results
    assert r["bad"].status == "failed" and r["bad"].error["code"] == "fn_error"
    for name in ("child", "grandchild"):
        assert r[name].status == "skipped"
        assert r[name].error["code"] == "dependency_failed"
    assert r["fine"].text == "42"
    assert (result.metrics.failed, result.metrics.skipped) == (1, 2)


def test_task_of_a_killed_worker_completes_on_another(step_dir):
    tasks = [{"custom_id": "victim", "fn": "steps:die_once"}]
    result = _run(tasks, step_dir)
    died_in = int((step_dir / "died").read_text())
    assert result.results["victim"].status == "succeeded"
    assert result.results["victim"].text.startswith("survived in ")
    assert int(result.results["victim"].text.split()[-1]) != died_in


def test_task_that_keeps_killing_workers_fails_instead_of_looping(step_dir):
    result = _run([{"custom_id": "killer", "fn": "steps:always_die"}], step_dir)
    assert result.results["killer"].error["code"] == "worker_died"


def test_fn_steps_receive_their_dependencies_results(step_dir):
    tasks = [
        {"custom_id": "p", "fn": "steps:answer"},
        {"custom_id": "q", "fn": "steps:echo", "depends_on": ["p"]},
        {"custom_id": "r", "fn": "steps:echo", "depends_on": ["p", "q"]},
    ]
    result = _run(tasks, step_dir)
    r = result.results["r"].body
    assert r["deps"] == ["p", "q"]
    assert r["texts"]["p"] == "42" and r["values"]["p"] == "42"
    assert r["values"]["q"]["deps"] == ["p"]


def test_runner_futures_resolve_in_dependency_order(step_dir):
    done = []
    with Runner(workers=4, processes=2, checkpoint_dir=str(step_dir / "ck")) as run:
        first = run.submit({"fn": "steps:record_order"})
        second = run.submit({"fn": "steps:record_order"}, depends_on=[first])
        third = run.submit({"fn": "steps:echo"}, depends_on=[second, first])
        for name, f in (("first", first), ("second", second), ("third", third)):
            f.add_done_callback(lambda _f, n=name: done.append(n))
        assert third.result(timeout=30).body["deps"] == sorted([first.custom_id, second.custom_id])
    assert done == ["first", "second", "third"]


def test_runner_failure_sets_exception_on_dependents(step_dir):
    with Runner(workers=2, processes=1, checkpoint_dir=str(step_dir / "ck")) as run:
        bad = run.submit({"fn": "steps:fail"})
        child = run.submit({"fn": "steps:answer"}, depends_on=[bad])
        with pytest.raises(TaskFailed):
            bad.result(timeout=30)
        with pytest.raises(TaskFailed) as info:
            child.result(timeout=30)
    assert info.value.result.status == "skipped"


def test_unguarded_script_fails_fast_naming_the_main_guard(step_dir):
    """Worker processes import the main module: a script that runs a batch at import
    time must get a clear error, not a hang or a run whose every task dies."""
    script = step_dir / "unguarded.py"
    script.write_text(
        "from turborun import execute_batch\n"
        "tasks = [{'custom_id': 'a', 'fn': 'steps:record_order'}]\n"
        "execute_batch(tasks, workers=2, processes=2, checkpoint_dir='ck')\n"
    )
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=step_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "WorkerStartError: a worker process exited at start" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert not (step_dir / "order").exists(), "no step ran"


def test_progress_takes_a_callable_true_or_false(step_dir, capsys):
    tasks = [{"custom_id": f"n{i}", "fn": "steps:noop"} for i in range(3)]
    snapshots = []
    assert _run(tasks, step_dir, progress=snapshots.append).success_rate == 1.0
    assert snapshots[-1].done == snapshots[-1].total == 3

    assert _run(tasks, step_dir, progress=True).success_rate == 1.0
    assert "[turborun] 3/3 done" in capsys.readouterr().err  # not a terminal: lines

    assert _run(tasks, step_dir, progress=False).success_rate == 1.0
    assert capsys.readouterr().err == ""

    with pytest.raises(TypeError, match="progress must be"):
        _run(tasks, step_dir, progress="yes")
