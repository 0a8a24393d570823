"""report.json: the report's numbers for dashboards and scripts (fields and units in
docs/REPORT.md). Built from ``RunData`` only; the page shows the same numbers."""

from __future__ import annotations

from typing import Any

from turborun.report.collect import SKIPPED, STATUS_CODES, RunData, critical_path, percentiles

SCHEMA = 1
CRITICAL_PATH_IDS = 50  # ids listed; the length is always given
_SKIPPED = STATUS_CODES[SKIPPED]


def summary(data: RunData) -> dict[str, Any]:
    models = [_model(data, label) for label in data.models]
    nodes = data.nodes
    attempts = [_attempt(a, data) for a in data.attempts]
    chain = critical_path(data)
    counted = [m for m in models if m["cost_usd"] is not None]
    sent_at = [s for s, status in zip(nodes.start, nodes.status, strict=True) if status != _SKIPPED]
    totals = {
        "tasks": sum(m["tasks"] for m in models),
        "succeeded": sum(m["succeeded"] for m in models),
        "failed": sum(m["failed"] for m in models),
        "skipped": sum(m["skipped"] for m in models),
        "pending": data.pending,
        "resumed": data.attempts[-1].resumed if data.attempts else 0,
        "attempts": sum(m["attempts"] for m in models),
        "retries": sum(m["retries"] for m in models),
        "rate_limited": sum(m["rate_limited"] for m in models),
        "requests_sent": sum(m["requests_sent"] for m in models),
        "input_tokens": sum(m["input_tokens"] for m in models),
        "output_tokens": sum(m["output_tokens"] for m in models),
        "cost_usd": _round(sum(m["cost_usd"] for m in counted)) if counted else None,
        "wall_s": _wall_s(data, attempts),
        "first_sent_at": round(min(sent_at), 3) if sent_at else None,
        "last_finished_at": round(max(nodes.end), 3) if nodes.end else None,
    }
    return {
        "schema": SCHEMA,
        "run_name": data.meta.get("run_name") or data.folder.name,
        "checkpoint": str(data.folder),
        "tasks_file": data.meta.get("tasks_file"),
        "generated_at": round(data.generated_at, 3),
        "state": data.state,
        "totals": totals,
        "attempts": attempts,
        "models": models,
        "errors": {
            "total": data.errors_total,
            "groups": [
                {
                    "status": g.status,
                    "code": g.code,
                    "message": g.message,
                    "count": g.count,
                    "examples": g.examples,
                    "models": sorted(g.models),
                }
                for g in data.errors
            ],
        },
        "slowest": [
            {
                "custom_id": custom_id,
                "model": label,
                "latency_s": round(latency, 4),
                "attempts": tries,
                "status": status,
            }
            for latency, custom_id, label, tries, status in data.slowest
        ],
        "pending": {"count": data.pending, "examples": data.pending_examples},
        "critical_path": {
            "length": len(chain),
            "custom_ids": [nodes.ids[i] for i in chain[:CRITICAL_PATH_IDS]],
            "span_s": round(nodes.end[chain[-1]] - nodes.start[chain[0]], 3) if chain else None,
        },
        "timeline": data.series,
        "log": data.log_lines,
    }


def _model(data: RunData, label: str) -> dict[str, Any]:
    totals = data.models[label]
    provider, _, name = label.partition("/")
    series = data.series.get("models", {}).get(label, {})
    dts = data.series.get("dt", [])
    return {
        "model": label,
        "provider": provider,
        "name": name,
        "tasks": totals.tasks,
        "succeeded": totals.succeeded,
        "failed": totals.failed,
        "skipped": totals.skipped,
        "pending": totals.pending,
        "attempts": totals.attempts,
        "retries": totals.retries,
        "rate_limited": sum(series.get("rate_limited", [])),
        "requests_sent": sum(series.get("sent", [])),
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cost_usd": _round(totals.cost_usd),
        "latency_s": percentiles(totals.latencies_s),
        "rpm_limit": _last(series.get("rpm", [])),
        "tpm_limit": _last(series.get("tpm", [])),
        "peak_rpm": _peak_per_min(series.get("sent", []), dts),
        "peak_tpm": _peak_per_min(series.get("sent_tokens", []), dts),
    }


def _attempt(attempt: Any, data: RunData) -> dict[str, Any]:
    end = attempt.ended_at if attempt.ended_at is not None else attempt.last_seen
    nodes = data.nodes
    finished = sum(
        1
        for t, status in zip(nodes.end, nodes.status, strict=True)
        if attempt.started_at <= t <= end + 1.0 and status != _SKIPPED
    )
    return {
        "started_at": attempt.started_at,
        "ended_at": attempt.ended_at,
        "wall_s": round(end - attempt.started_at, 3),
        "state": attempt.state,
        "tasks": attempt.total,
        "resumed": attempt.resumed,
        "changed": attempt.changed,
        "rerun_descendants": attempt.rerun_descendants,
        "finished": finished,
        "pending": attempt.pending,
    }


def _wall_s(data: RunData, attempts: list[dict[str, Any]]) -> float | None:
    if attempts:
        return round(sum(a["wall_s"] for a in attempts), 3)
    wall = data.meta.get("wall_s")
    return float(wall) if isinstance(wall, int | float) else None


def _last(values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    return known[-1] if known else None


def _peak_per_min(counts: list[int], dts: list[float]) -> float | None:
    rates = [c * 60.0 / dt for c, dt in zip(counts, dts, strict=False) if dt >= 0.5]
    return round(max(rates), 1) if rates else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 12)
