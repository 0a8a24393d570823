"""The run report (report.html + report.json): its numbers against the results file, the
page in headless Chromium, an interrupted and a resumed run, a report made while the run
goes on, the page without matplotlib, and the timeline's bound.

Runs go through the command line against the session simulator (real SDKs, real worker
processes, real files)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import journaled

from turborun.report.browser import Chromium, find_chromium
from turborun.timeline import FIRST_INTERVAL_S, SAMPLES_PER_LEVEL, Timeline, read_timeline

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"  # priced: the report's cost must equal the results file's
CHART_NAMES = {"rate-0", "in-flight", "latency", "dag", "cost"}
_METRIC = re.compile(r'data-metric="([a-z_]+)" data-value="([^"]*)"')


def _env(tmp_path: Path, sim: Any) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "OPENAI_", "GROQ_"))
    }
    env.update(
        TURBORUN_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        OPENAI_BASE_URL=sim.openai_base_url,
        GROQ_BASE_URL=sim.base_url,
        OPENAI_API_KEY=f"sk-test-{uuid.uuid4().hex}",
        GROQ_API_KEY=f"gsk-test-{uuid.uuid4().hex}",
        PYTHONPATH=str(ROOT),
    )
    return env


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turborun", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _task(cid: str, text: str, tag: str, model: str = MODEL, **keys: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"{tag} {cid}: {text}"}],
            "max_tokens": 12}  # fmt: skip
    return {"custom_id": cid, "body": body, **keys}


def _write_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def _page_metrics(page: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in _METRIC.findall(page)}


@pytest.fixture(scope="module")
def finished_run(simulator, tmp_path_factory) -> dict[str, Any]:
    """One run with successes on two models, a 429 then success, failures of one kind
    with differing messages, and dependents of a failure (skipped)."""
    tmp_path = tmp_path_factory.mktemp("report")
    tag = uuid.uuid4().hex
    tasks = [_task(f"ok{i}", "say hi", tag) for i in range(6)]
    tasks += [_task(f"bad{i}", f"[sim:status=400:message=invalid value {i * 7}]", tag)
              for i in range(4)]  # fmt: skip
    tasks += [
        _task("child", "x", tag, depends_on=["bad0"]),
        _task("grandchild", "x", tag, depends_on=["child"]),
        _task("retried", "[sim:status=429:retry_after_ms=50:times=1]", tag),
        _task(
            "title",
            "name it [sim:latency=0.5]",
            tag,
            model="llama-3.1-8b-instant",
            provider="groq",
            # after every task that succeeds, and slower than any: it usually ends last
            # (the report's critical path is the chain that ended last)
            depends_on=[f"ok{i}" for i in range(6)] + ["retried"],
        ),  # fmt: skip
    ]
    path = _write_tasks(tmp_path / "mixed.jsonl", tasks)
    env = _env(tmp_path, simulator)
    done = _cli("batch", str(path), "--no-progress", cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stderr  # some failed
    folder = tmp_path / "checkpoints" / "mixed"
    return {"tmp": tmp_path, "folder": folder, "stdout": done.stdout, "results": path.with_name(
        "mixed.results.jsonl")}  # fmt: skip


def test_report_numbers_equal_the_results_file(finished_run):
    folder = finished_run["folder"]
    assert f"report: {folder / 'report.html'}" in finished_run["stdout"]
    lines = [json.loads(line) for line in finished_run["results"].read_text().splitlines()]
    parts = [line["turborun"] for line in lines]
    expected = {
        status: sum(1 for p in parts if p["status"] == status)
        for status in ("succeeded", "failed", "skipped", "pending")
    }
    expected["input_tokens"] = sum(p["input_tokens"] or 0 for p in parts)
    expected["output_tokens"] = sum(p["output_tokens"] or 0 for p in parts)
    expected["attempts"] = sum(p["attempts"] for p in parts)
    cost = sum(p["cost_usd"] for p in parts if p["cost_usd"] is not None)
    assert expected["succeeded"] == 8 and expected["failed"] == 4 and expected["skipped"] == 2
    assert expected["input_tokens"] > 0 and cost > 0

    report = json.loads((folder / "report.json").read_text())
    totals = report["totals"]
    for key, value in expected.items():
        assert totals[key] == value, key
    assert totals["cost_usd"] == pytest.approx(cost, rel=1e-9)
    assert sum(m["cost_usd"] or 0 for m in report["models"]) == pytest.approx(cost, rel=1e-9)
    assert report["state"] == "finished"

    page = _page_metrics((folder / "report.html").read_text())
    for key, value in expected.items():
        assert int(page[key]) == value, key
    assert float(page["cost_usd"]) == pytest.approx(cost, rel=1e-9)
    assert page["state"] == "finished"


def test_report_groups_errors_and_counts_429s_and_retries(finished_run):
    report = json.loads((finished_run["folder"] / "report.json").read_text())
    groups = {(g["status"], g["code"]): g for g in report["errors"]["groups"]}
    failed = groups[("failed", "client_error")]  # four messages differing only in a number
    assert failed["count"] == 4 and sorted(failed["examples"]) == [f"bad{i}" for i in range(4)]
    assert groups[("skipped", "dependency_failed")]["count"] == 2
    assert report["errors"]["total"] == 6 and len(report["errors"]["groups"]) == 2
    assert report["totals"]["rate_limited"] == 1 and report["totals"]["retries"] == 1
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == {f"openai/{MODEL}", "groq/llama-3.1-8b-instant"}
    assert models[f"openai/{MODEL}"]["requests_sent"] == 12  # 11 tasks sent, one twice
    # The chain that ended last: from the task that finished last (title, unless a loaded
    # machine held some other task longer), back through the parent that finished last.
    ends = {cid: e["finished_at"] for cid, e in journaled(finished_run["folder"]).items()}
    chain = report["critical_path"]["custom_ids"]
    assert chain[-1] == max(ends, key=ends.__getitem__)
    parents = {"title": [f"ok{i}" for i in range(6)] + ["retried"]}
    assert len(chain) == (2 if chain[-1] == "title" else 1)
    for parent, child in zip(chain, chain[1:], strict=False):
        assert parent == max(parents[child], key=ends.__getitem__)
    assert len(report["slowest"]) == 12  # every task that was sent (skips were not)


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_page_renders_in_headless_chromium_offline(finished_run):
    folder = finished_run["folder"]
    report = json.loads((folder / "report.json").read_text())
    with Chromium() as browser:
        check = browser.check(folder / "report.html")
    assert check.loaded
    assert check.console_errors == [] and check.exceptions == []
    assert check.requests == [check.url]  # the page itself, nothing else
    names = {chart["name"] for chart in check.charts}
    assert CHART_NAMES <= names
    for chart in check.charts:
        assert chart["width"] > 500 and chart["height"] > 100, chart
        assert chart["elements"] > 20, chart  # axes, ticks, lines: drawn, not an empty box
    for key in ("succeeded", "failed", "skipped", "pending", "input_tokens", "output_tokens"):
        assert int(check.metrics[key]) == report["totals"][key], key
    assert "invalid value # " not in check.text and "invalid value 0" in check.text


def test_interrupted_run_report_names_pending_and_resume_covers_both(simulator, tmp_path):
    tag = uuid.uuid4().hex
    tasks = [
        _task("slow", "[sim:latency=5]", tag),  # in flight through the report and the Ctrl-C
        _task("next", "x", tag, depends_on=["slow"]),
        _task("last", "x", tag, depends_on=["next"]),
        _task("quick", "x", tag),
    ]
    path = _write_tasks(tmp_path / "chain.jsonl", tasks)
    env = _env(tmp_path, simulator)
    folder = tmp_path / "checkpoints" / "chain"
    run = subprocess.Popen(
        # a configured limit: no probe request first (the slow one would hold the rest)
        [sys.executable, "-m", "turborun", "batch", str(path), "--no-progress", "--rpm", "60000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: any(f"{tag} slow" in str(r.get("body")) for r in simulator.requests()))
        # while the run goes on: made from the checkpoint without its lock
        during = _cli("report", "chain", cwd=tmp_path, env=env)
        assert during.returncode == 0, during.stderr
        snapshot = json.loads((folder / "report.json").read_text())
        assert snapshot["state"] == "running" and snapshot["totals"]["pending"] >= 3
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, err
    assert f"report: {folder / 'report.html'}" in out, (out, err)
    report = json.loads((folder / "report.json").read_text())
    assert report["state"] == "interrupted"
    assert report["pending"] == {"count": 2, "examples": ["next", "last"]}
    assert report["totals"]["succeeded"] == 2
    page = (folder / "report.html").read_text()
    assert "The run was interrupted: 2 tasks pending" in page and "next, last" in page

    resumed = _cli("batch", str(path), "--no-progress", "--resume", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((folder / "report.json").read_text())
    assert report["state"] == "finished" and report["totals"]["pending"] == 0
    assert [a["state"] for a in report["attempts"]] == ["interrupted", "finished"]
    first, second = report["attempts"]
    assert (first["finished"], second["finished"]) == (2, 2)
    assert second["resumed"] == 2 and report["totals"]["resumed"] == 2
    assert report["totals"]["succeeded"] == 4
    assert report["critical_path"]["custom_ids"] == ["slow", "next", "last"]
    page = (folder / "report.html").read_text()
    assert page.count("<td>interrupted</td>") == 1 and page.count("<td>finished</td>") == 1


def _wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_page_without_matplotlib_has_the_tables_and_the_same_json(finished_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(finished_run["folder"], folder, ignore=shutil.ignore_patterns("lock"))
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # import matplotlib -> ImportError
        "from pathlib import Path; from turborun.report import write_report\n"
        f"print(write_report(Path({str(folder)!r})).charts)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    page = (folder / "report.html").read_text()
    assert '<figure class="chart"' not in page and "pip install 'turborun[report]'" in page
    assert "<h2>Per model</h2>" in page and "Errors: 6 tasks" in page
    plain = json.loads((folder / "report.json").read_text())
    charted = json.loads((finished_run["folder"] / "report.json").read_text())
    for report in (plain, charted):
        report.pop("generated_at")
        report.pop("checkpoint")
    assert plain == charted


def test_timeline_interval_doubles_so_long_runs_stay_bounded(tmp_path):
    now = [1_000_000.0]
    timeline = Timeline(tmp_path, fresh=True, clock=lambda: now[0])
    timeline.start(total=1, resumed=0, changed=0, rerun_descendants=0)
    hours = 5
    while now[0] < 1_000_000.0 + hours * 3600:
        now[0] += 0.25  # the supervisor's loop wakes more often than it samples
        if timeline.due():
            timeline.sent(("openai", MODEL), 10)
            timeline.sample(in_flight=1, target=2, ready=0, retrying=0, done=0, models=[])
    timeline.end(state="finished", pending=0)
    timeline.close()
    samples = [r for r in read_timeline(tmp_path) if r["kind"] == "sample"]
    expected, covered_s, interval_s = 0.0, 0.0, FIRST_INTERVAL_S  # levels of doubling interval
    while covered_s < hours * 3600:
        count = min(SAMPLES_PER_LEVEL, (hours * 3600 - covered_s) / interval_s)
        expected += count
        covered_s += count * interval_s
        interval_s *= 2
    assert len(samples) == pytest.approx(expected, abs=2)  # 9,000, not 18,000
    assert samples[0]["dt"] == FIRST_INTERVAL_S and samples[-1]["dt"] == 4 * FIRST_INTERVAL_S
    assert [r["kind"] for r in read_timeline(tmp_path)][::9001] == ["start", "end"]


def test_runner_leaves_a_report_of_what_was_submitted(simulator, tmp_path, monkeypatch):
    from turborun import Runner, TaskFailed

    for key, value in _env(tmp_path, simulator).items():
        monkeypatch.setenv(key, value)
    tag = uuid.uuid4().hex
    with Runner(checkpoint="submitted", workers=4, processes=1) as run:
        first = run.submit(_task("a", "x", tag))
        second = run.submit(_task("b", "[sim:status=400]", tag), depends_on=[first])
        assert first.result().ok
        with pytest.raises(TaskFailed):
            second.result()
    assert run.report_path == tmp_path / "checkpoints" / "submitted" / "report.html"
    report = json.loads(run.report_path.with_name("report.json").read_text())
    assert report["state"] == "finished"
    assert (report["totals"]["succeeded"], report["totals"]["failed"]) == (1, 1)
    assert report["critical_path"]["custom_ids"] == ["a", "b"]
