"""The report of a 100,000-task run: time and extra memory to write it, and its size.

Phases, each in a fresh process:

* run     execute_batch of TASKS tasks against the simulator: two models configured at
          60,000 RPM, one of which (a twentieth of the tasks) the simulator limits to
          6,000 RPM (429s, learned from their message, slow it down); 50 ms ± 50 %
          latency; 0.2 % random 500s that are retried; 0.1 % of tasks refused with a
          400; a DAG part (every 100th task summarises the 10 before it); at most 2,048
          in flight (on 2 cores a larger pool only queues in the simulator). The run
          writes its own report at its end. Skipped with --reuse when the checkpoint is
          there.
* report  write_report on the finished checkpoint, as ``python -m turborun report``
          does: wall time (target <= 5 s) and peak RSS above the RSS before the call
          (target <= 300 MiB; matplotlib's import is inside both), page and JSON size
          (target: a few MB).
* page    (with --screenshot PATH) the page in headless Chromium: console errors,
          requests, charts drawn, and a full-page screenshot.

Usage: python scripts/bench_report.py [--tasks 100000] [--dir DIR] [--reuse]
       [--screenshot docs/report-100k.png]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUN = "bench-report"
MODELS = ("gpt-4o-mini", "gpt-4.1-nano")
RPM = 60_000
SIM_RPM = 6_000  # what the simulator allows the second model


def _write_tasks(path: Path, count: int) -> None:
    with open(path, "wb", buffering=1 << 20) as file:
        for i in range(count):
            model = MODELS[i % 20 == 0]
            text = f"question number {i}: say hi"
            task: dict[str, Any] = {"custom_id": f"q{i}"}
            if i % 100 == 99:  # a summary of the ten tasks before it
                deps = [f"q{j}" for j in range(i - 10, i)]
                text = "summarise: " + " ".join(f"{{{{{d}}}}}" for d in deps[:3])
                task["depends_on"] = deps
            elif i % 1000 == 500:
                text += f" [sim:status=400:message=max_tokens is too large, {i % 7 + 4097} given]"
            task["body"] = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 16 + i % 48,
            }
            file.write(orjson.dumps(task) + b"\n")


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _phase_run(work: Path, tasks: int) -> dict[str, Any]:
    from turborun import execute_batch
    from turborun.simulator import Simulator

    path = work / "tasks.jsonl"
    _write_tasks(path, tasks)
    limits = {MODELS[1]: (SIM_RPM, None)}
    with Simulator(latency_s=0.05, latency_jitter=0.5, latency_per_token_s=0.0,
                   error_rate=0.002, seed=7, limits=limits) as sim:  # fmt: skip
        os.environ.update(
            OPENAI_BASE_URL=sim.openai_base_url,
            GROQ_BASE_URL=sim.base_url,
            OPENAI_API_KEY="sk-bench",
            GROQ_API_KEY="gsk-bench",
        )
        started = time.perf_counter()
        result = execute_batch(
            path,
            checkpoint=RUN,
            fresh=True,
            output=work / "tasks.results.jsonl",
            handle_signals=False,
            checkpoint_dir=str(work / "checkpoints"),
            rpm=RPM,
            max_in_flight=2048,
        )
        wall_s = time.perf_counter() - started
    m = result.metrics
    return {"wall_s": wall_s, "succeeded": m.succeeded, "failed": m.failed,
            "skipped": m.skipped, "report": str(result.report_path)}  # fmt: skip


def _phase_report(work: Path) -> dict[str, Any]:
    from turborun.checkpoint import open_journal_readonly
    from turborun.report import write_report

    before = _rss_mib()
    load = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    opened = open_journal_readonly(work / "checkpoints", RUN)
    assert opened is not None, "no checkpoint: run without --reuse first"
    _, journal = opened
    try:
        files = write_report(work / "checkpoints" / RUN, journal=journal)
    finally:
        journal.close()
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    timeline = work / "checkpoints" / RUN / "timeline.jsonl"
    report = orjson.loads(files.json.read_bytes())
    return {
        "report_s": wall_s,
        "cpu_s": cpu_s,
        "load": load,
        "extra_rss_mib": _peak_rss_mib() - before,
        "rss_before_mib": before,
        "html_bytes": files.html.stat().st_size,
        "json_bytes": files.json.stat().st_size,
        "charts": files.charts,
        "timeline_bytes": timeline.stat().st_size,
        "timeline_lines": sum(1 for _ in open(timeline, "rb")),
        "tasks": report["totals"]["tasks"],
        "html": str(files.html),
    }


def _phase_page(html: Path, screenshot: Path) -> dict[str, Any]:
    from turborun.report.browser import Chromium

    with Chromium(timeout_s=120) as browser:
        check = browser.check(html, screenshot=screenshot)
    return {
        "loaded": check.loaded,
        "load_s": check.load_s,
        "console_errors": check.console_errors + check.exceptions,
        "network_requests": check.network_requests,
        "charts_drawn": sum(1 for c in check.charts if c["width"] > 0 and c["elements"] > 20),
        "charts": len(check.charts),
        "screenshot": str(screenshot),
    }


def _child(args: argparse.Namespace) -> int:
    work = Path(args.dir)
    if args.phase == "run":
        figures = _phase_run(work, args.tasks)
    elif args.phase == "report":
        figures = _phase_report(work)
    else:
        figures = _phase_page(Path(args.html), Path(args.screenshot))
    print("FIGURES " + json.dumps(figures), flush=True)
    return 0


def _run_phase(phase: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--phase", phase, "--dir", args.dir,
               "--tasks", str(args.tasks), *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"phase {phase} failed")
    line = [x for x in done.stdout.splitlines() if x.startswith("FIGURES ")][-1]
    return json.loads(line[len("FIGURES ") :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--dir", default="/tmp/turborun-bench-report")
    parser.add_argument("--reuse", action="store_true", help="keep a finished run's checkpoint")
    parser.add_argument("--screenshot", help="PNG of the page (headless Chromium)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--html", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return _child(args)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    if not (args.reuse and (work / "checkpoints" / RUN / "journal").is_dir()):
        run = _run_phase("run", args)
        print(f"run: {args.tasks:,} tasks in {run['wall_s']:.1f} s: {run['succeeded']:,} "
              f"succeeded, {run['failed']:,} failed, {run['skipped']:,} skipped")  # fmt: skip
    report = _run_phase("report", args)
    ok_time = "ok" if report["report_s"] <= 5 else "OVER 5 s"
    ok_memory = "ok" if report["extra_rss_mib"] <= 300 else "OVER 300 MiB"
    print(f"report of {report['tasks']:,} tasks: {report['report_s']:.2f} s ({ok_time}; CPU "
          f"{report['cpu_s']:.2f} s, load average {report['load']:.1f} on {os.cpu_count()} "
          "cores), "
          f"extra memory {report['extra_rss_mib']:.0f} MiB ({ok_memory}; RSS before "
          f"{report['rss_before_mib']:.0f} MiB)")  # fmt: skip
    html_mib, json_mib = report["html_bytes"] / 2**20, report["json_bytes"] / 2**20
    print(f"report.html {html_mib:.2f} MiB with {report['charts']} charts, report.json "
          f"{json_mib:.2f} MiB, timeline.jsonl {report['timeline_bytes'] / 2**10:.0f} KiB "
          f"({report['timeline_lines']:,} lines)")  # fmt: skip
    print(f"page: {report['html']}")
    if args.screenshot:
        page = _run_phase("page", args, "--html", report["html"], "--screenshot", args.screenshot)
        print(f"chromium: loaded {page['loaded']} in {page['load_s']:.2f} s, "
              f"{page['charts_drawn']}/{page['charts']} charts drawn, console errors "
              f"{page['console_errors'] or 'none'}, network requests "
              f"{page['network_requests'] or 'none'}; screenshot {page['screenshot']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
