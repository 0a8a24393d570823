"""report.html: one self-contained page (inline CSS, inline SVG charts, no script, no
external reference), built from report.json's numbers so the two always agree.

Every headline number carries ``data-metric="NAME"`` and its exact value in
``data-value``, so a test (or a scraper) reads the page's numbers without parsing
formatted text.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

from turborun.report.charts import Chart

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1d2430;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6576;font-size:13px}.sub code{font-size:12px}
.state{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;
 font-size:13px;margin-left:8px;vertical-align:middle}
.state-finished{background:#dff3e4;color:#17602c}.state-running{background:#e3edfb;color:#1b4f9c}
.state-interrupted,.state-killed,.state-stopped{background:#fde5e2;color:#9b1c10}
.banner{background:#fff4e0;border:1px solid #f0c36d;border-radius:6px;padding:10px 14px;
 margin:14px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;
 margin-top:14px}
.card{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:10px 12px}
.card .v{display:block;font-size:20px;font-weight:600}.card .k{color:#5b6576;font-size:12px}
.card.bad .v{color:#b3261e}
figure.chart{background:#fff;border:1px solid #e1e4ea;border-radius:8px;margin:0 0 14px;
 padding:8px}
figure.chart figcaption{font-weight:600;margin:2px 6px 4px}
figure.chart svg{width:100%;height:auto;display:block}
.wide{overflow-x:auto}
table{border-collapse:collapse;background:#fff;width:100%;font-size:12.5px}
th,td{border:1px solid #e1e4ea;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ids{font-family:ui-monospace,Menlo,monospace;font-size:12px;color:#3c4657}
pre{background:#fff;border:1px solid #e1e4ea;padding:8px;overflow-x:auto;font-size:12px}
.note{color:#5b6576}
"""


def render_page(report: dict[str, Any], charts: list[Chart], *, charts_available: bool) -> str:
    totals = report["totals"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>turborun report: {escape(str(report['run_name']))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        _header(report),
        _banner(report),
        _cards(totals),
        _attempts(report["attempts"]),
        _charts(charts, charts_available),
        _models(report["models"]),
        _errors(report["errors"]),
        _slowest(report["slowest"]),
        _pending(report["pending"]),
        _critical_path(report["critical_path"]),
        _log(report["log"]),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


# ---- formatting ----------------------------------------------------------------------------


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s"


def _int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _cost(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 100 else f"${value:.6f}".rstrip("0").rstrip(".")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="wide">{table}</div>'  # scrolls sideways rather than being cut


# ---- sections --------------------------------------------------------------------------------


def _header(report: dict[str, Any]) -> str:
    state = escape(str(report["state"]))
    tasks_file = report.get("tasks_file")
    source = f" · tasks <code>{escape(str(tasks_file))}</code>" if tasks_file else ""
    return (
        f"<h1>Run {escape(str(report['run_name']))}"
        f'<span class="state state-{state}" data-metric="state" data-value="{state}">'
        f"{state}</span></h1>"
        f'<div class="sub">checkpoint <code>{escape(report["checkpoint"])}</code>{source} · '
        f"report made {_when(report['generated_at'])}</div>"
    )


def _banner(report: dict[str, Any]) -> str:
    state, pending = report["state"], report["pending"]
    if state == "interrupted":
        why = "The run was interrupted"
    elif state == "killed":
        why = "The run's process ended without finishing (killed)"
    elif state == "running":
        why = "The run is still going; this report is a snapshot"
    elif state == "stopped":
        why = "The run stopped: a journal commit failed (run.log says why)"
    else:
        if not pending["count"]:
            return ""
        why = "The run finished"
    names = ", ".join(escape(i) for i in pending["examples"])
    more = " …" if pending["count"] > len(pending["examples"]) else ""
    left = (
        f": {pending['count']:,} tasks pending"
        + (f' (<span class="ids">{names}{more}</span>)' if names else "")
        + ". Run the same command again with <code>--resume</code> to finish them."
        if pending["count"]
        else "."
    )
    return f'<div class="banner" data-metric="banner">{why}{left}</div>'


def _cards(totals: dict[str, Any]) -> str:
    cards = [
        ("succeeded", totals["succeeded"], _int(totals["succeeded"]), False),
        ("failed", totals["failed"], _int(totals["failed"]), bool(totals["failed"])),
        ("skipped", totals["skipped"], _int(totals["skipped"]), bool(totals["skipped"])),
        ("pending", totals["pending"], _int(totals["pending"]), bool(totals["pending"])),
        ("wall_s", totals["wall_s"], _duration(totals["wall_s"]), False),
        ("input_tokens", totals["input_tokens"], _int(totals["input_tokens"]), False),
        ("output_tokens", totals["output_tokens"], _int(totals["output_tokens"]), False),
        ("cost_usd", totals["cost_usd"], _cost(totals["cost_usd"]), False),
        ("attempts", totals["attempts"], _int(totals["attempts"]), False),
        ("retries", totals["retries"], _int(totals["retries"]), False),
        ("rate_limited", totals["rate_limited"], _int(totals["rate_limited"]), False),
        ("resumed", totals["resumed"], _int(totals["resumed"]), False),
    ]
    names = {
        "wall_s": "wall time",
        "input_tokens": "tokens in",
        "output_tokens": "tokens out",
        "cost_usd": "cost",
        "attempts": "requests (attempts)",
        "rate_limited": "429s",
        "resumed": "resumed (not sent again)",
    }
    html = []
    for key, value, shown, bad in cards:
        raw = "" if value is None else escape(str(value))
        html.append(
            f'<div class="card{" bad" if bad else ""}"><span class="v" data-metric="{key}" '
            f'data-value="{raw}">{escape(shown)}</span>'
            f'<span class="k">{escape(names.get(key, key))}</span></div>'
        )
    return f'<div class="cards">{"".join(html)}</div>'


def _attempts(attempts: list[dict[str, Any]]) -> str:
    if not attempts:
        return ""
    rows = [
        [
            str(n + 1),
            _when(a["started_at"]),
            _when(a["ended_at"]),
            _duration(a["wall_s"]),
            escape(a["state"]),
            _int(a["resumed"]),
            _int(a["changed"]),
            _int(a["finished"]),
            _int(a["pending"]),
        ]
        for n, a in enumerate(attempts)
    ]
    headers = ["#", "started", "ended", "wall time", "state", "resumed", "changed",
               "finished", "pending at end"]  # fmt: skip
    return (
        '<h2>Attempts</h2><p class="note">Each invocation of the run; a resume is a new '
        "attempt and skips (resumes) what the journal already holds.</p>"
        + _table(headers, rows, {0, 5, 6, 7, 8})
    )


def _charts(charts: list[Chart], available: bool) -> str:
    if not available:
        return (
            '<h2>Charts</h2><p class="note" data-metric="no-charts">Charts need matplotlib: '
            "<code>pip install 'turborun[report]'</code>, then "
            "<code>python -m turborun report RUN</code>.</p>"
        )
    if not charts:
        return ""
    figures = [
        f'<figure class="chart" data-chart="{escape(name)}"><figcaption>{escape(title)}'
        f"</figcaption>{svg}</figure>"
        for name, title, svg in charts
    ]
    return "<h2>Over time</h2>" + "".join(figures)


def _models(models: list[dict[str, Any]]) -> str:
    if not models:
        return ""
    rows = []
    for m in models:
        latency = m["latency_s"]
        rows.append(
            [
                escape(m["model"]),
                _int(m["tasks"]),
                _int(m["succeeded"]),
                _int(m["failed"]),
                _int(m["skipped"]),
                _int(m["pending"]),
                _int(m["attempts"]),
                _int(m["retries"]),
                _int(m["rate_limited"]),
                _int(m["input_tokens"]),
                _int(m["output_tokens"]),
                _cost(m["cost_usd"]),
                _seconds(latency["p50"]),
                _seconds(latency["p95"]),
                _seconds(latency["max"]),
                _int(m["rpm_limit"]),
                _int(m["tpm_limit"]),
            ]
        )
    headers = ["model", "tasks", "ok", "failed", "skipped", "pending", "attempts", "retries",
               "429s", "tokens in", "tokens out", "cost", "p50 s", "p95 s", "max s",
               "RPM limit", "TPM limit"]  # fmt: skip
    return "<h2>Per model</h2>" + _table(headers, rows, set(range(1, 17)))


def _errors(errors: dict[str, Any]) -> str:
    groups = errors["groups"]
    if not groups:
        return '<h2>Errors</h2><p class="note">No task failed or was skipped.</p>'
    rows = [
        [
            _int(g["count"]),
            escape(g["status"]),
            escape(g["code"]),
            escape(g["message"]),
            escape(", ".join(g["models"])),
            f'<span class="ids">{escape(", ".join(g["examples"]))}</span>',
        ]
        for g in groups
    ]
    shown = sum(g["count"] for g in groups)
    more = "" if shown == errors["total"] else f" (the {len(groups)} largest groups shown)"
    return (
        f"<h2>Errors: {errors['total']:,} tasks, grouped by kind and message{more}</h2>"
        + _table(["tasks", "status", "code", "message", "models", "examples"], rows, {0})
    )


def _slowest(slowest: list[dict[str, Any]]) -> str:
    if not slowest:
        return ""
    rows = [
        [
            f'<span class="ids">{escape(s["custom_id"])}</span>',
            escape(s["model"]),
            _seconds(s["latency_s"]),
            _int(s["attempts"]),
            escape(s["status"]),
        ]
        for s in slowest
    ]
    headers = ["task", "model", "latency s (last attempt)", "attempts", "status"]
    return "<h2>Slowest tasks</h2>" + _table(headers, rows, {2, 3})


def _pending(pending: dict[str, Any]) -> str:
    if not pending["count"]:
        return ""
    names = escape(", ".join(pending["examples"]))
    more = " …" if pending["count"] > len(pending["examples"]) else ""
    return (
        f'<h2>Pending: {pending["count"]:,} tasks</h2><p><span class="ids">{names}{more}</span></p>'
    )


def _critical_path(path: dict[str, Any]) -> str:
    if not path["length"]:
        return ""
    ids = " → ".join(escape(i) for i in path["custom_ids"])
    more = " …" if path["length"] > len(path["custom_ids"]) else ""
    return (
        f"<h2>Critical path: {path['length']:,} tasks, {_duration(path['span_s'])}</h2>"
        '<p class="note">The chain that ended last: from the task that finished last, back '
        "through the dependency that finished last.</p>"
        f'<p class="ids">{ids}{more}</p>'
    )


def _log(lines: list[str]) -> str:
    if not lines:
        return ""
    return "<h2>Warnings in run.log (latest)</h2><pre>" + escape("\n".join(lines)) + "</pre>"
