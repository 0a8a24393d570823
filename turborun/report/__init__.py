"""A run's report: ``report.json`` (numbers for dashboards, docs/REPORT.md) and
``report.html`` (one offline page with charts and tables) in its checkpoint folder.

Made from the checkpoint folder alone (journal, run.json, timeline.jsonl, run.log; the
task file when it still exists), so ``python -m turborun report RUN`` makes it at any
time, also while the run goes on (nothing takes the run's lock). The run makes it at its
end, interrupted or not.

    collect.py   checkpoint folder -> RunData (series.py: attempts, timeline columns)
    summary.py   RunData -> report.json's dict
    charts.py    RunData -> SVG charts (matplotlib, optional: turborun[report])
    page.py      report dict + charts -> the page
    browser.py   headless Chromium: load a page, check it, screenshot it (tests, docs)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from turborun.checkpoint import Journal
from turborun.report.charts import available, render_charts
from turborun.report.collect import TaskInfo, collect
from turborun.report.page import render_page
from turborun.report.summary import summary

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"

__all__ = ["REPORT_HTML", "REPORT_JSON", "ReportFiles", "TaskInfo", "write_report"]


@dataclass(frozen=True, slots=True)
class ReportFiles:
    html: Path
    json: Path
    charts: int  # charts on the page (0: matplotlib is not installed, or no data)


def write_report(
    folder: Path, *, journal: Journal | None = None, tasks: Iterable[TaskInfo] | None = None
) -> ReportFiles:
    """Write report.json and report.html into the checkpoint ``folder`` (each replaced
    atomically). ``journal``: the run's own open journal; ``tasks``: (custom_id,
    depends_on, "provider/model") of every task, when the caller has them (otherwise
    read from the task file run.json names)."""
    folder = Path(folder)
    data = collect(folder, journal=journal, tasks=tasks)
    report = summary(data)
    charts = render_charts(data)
    page = render_page(report, charts, charts_available=available())
    json_path, html_path = folder / REPORT_JSON, folder / REPORT_HTML
    _replace(json_path, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    _replace(html_path, page.encode("utf-8"))
    return ReportFiles(html=html_path, json=json_path, charts=len(charts))


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
