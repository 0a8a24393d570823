"""The report's charts: matplotlib figures rendered to SVG text, inlined in the page.

matplotlib is an optional dependency (``pip install 'turborun[report]'``); without it
``render_charts`` returns nothing and the page shows its tables alone. Figures are built
with ``matplotlib.figure.Figure`` (no pyplot: no global figure state, no GUI backend),
text stays text in the SVG (``svg.fonttype: none``: smaller, selectable, styled by the
page), and every figure gets its own ``svg.hashsalt`` so the ids of several SVGs inlined
in one page never collide.
"""

from __future__ import annotations

import io
import logging
import math
import random
import re
from typing import Any

from turborun.report.collect import FAILED, STATUS_CODES, RunData, critical_path

log = logging.getLogger("turborun")

GANTT_ALL = 3000  # nodes drawn one by one up to this many; a sample beyond
GANTT_SAMPLE = 2000
GANTT_ROWS_PER_LANE = 48  # bars of one model stack in this many rows at most
MAX_RATE_MODELS = 6  # models with their own rate chart (the busiest)
MAX_MODELS_DRAWN = 10  # models with their own histogram, lane or bar; the rest as "other"
_WIDTH_IN = 10.0
_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22")
_FAILED_COLOR = "#d62728"
_CRITICAL_COLOR = "#ff7f0e"
_SVG_PROLOGUE = re.compile(rb"^.*?(?=<svg)", re.S)

_STYLE = {
    "svg.fonttype": "none",
    "font.size": 9,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}

Chart = tuple[str, str, str]  # name, title, SVG text


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_charts(data: RunData) -> list[Chart]:
    """(name, title, SVG) of each chart the run has data for; [] without matplotlib."""
    if not available():
        return []
    from matplotlib import rc_context

    charts: list[Chart] = []
    builders = [_rate_charts, _in_flight_chart, _latency_chart, _dag_chart, _cost_chart]
    with rc_context(_STYLE):
        for builder in builders:
            try:
                charts += [(name, title, _svg(name, fig)) for name, title, fig in builder(data)]
            except Exception:  # one chart's odd data must not cost the page
                log.exception("report: chart %s failed", builder.__name__.lstrip("_"))
    return charts


def _svg(name: str, figure: Any) -> str:
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": f"turborun-{name}"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return _SVG_PROLOGUE.sub(b"", buffer.getvalue(), count=1).decode("utf-8")


def _figure(height_in: float, rows: int = 1, left_in: float = 0.85) -> Any:
    """A figure with fixed margins (in inches: room for tick labels and the date line).
    Not matplotlib's constrained layout: it draws every figure once more to measure it,
    a third of the report's time."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(_WIDTH_IN, height_in))
    figure.subplots_adjust(
        left=left_in / _WIDTH_IN,
        right=1 - 0.2 / _WIDTH_IN,
        top=1 - 0.12 / height_in,
        bottom=0.62 / height_in,
        hspace=0.28 / max(0.5, height_in / rows),
    )
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return figure, list(axes)


def _label_margin_in(labels: list[str]) -> float:
    """Left margin that fits ``labels`` as y tick labels (9 pt sans-serif)."""
    return 0.3 + 0.068 * max((len(label) for label in labels), default=8)


def _dates(axis: Any) -> None:
    from matplotlib import dates

    locator = dates.AutoDateLocator(tz="UTC")
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz="UTC"))
    axis.set_xlabel("time (UTC)")


def _days(t: float) -> float:
    """matplotlib's date number (days since its epoch, 1970-01-01) of epoch seconds."""
    return t / 86400.0


def _segments(series: dict[str, Any]) -> list[range]:
    """Index ranges of each attempt's points: lines break between attempts."""
    attempt = series.get("attempt", [])
    ranges, first = [], 0
    for i in range(1, len(attempt) + 1):
        if i == len(attempt) or attempt[i] != attempt[first]:
            ranges.append(range(first, i))
            first = i
    return ranges


def _per_min(counts: list[float], dts: list[float]) -> list[float]:
    return [c * 60.0 / dt if dt > 0 else math.nan for c, dt in zip(counts, dts, strict=True)]


# ---- charts ------------------------------------------------------------------------------


def _rate_charts(data: RunData) -> list[tuple[str, str, Any]]:
    series = data.series
    per_model = series.get("models", {})
    busiest = sorted(
        (label for label in per_model if not label.startswith("fn/")),
        key=lambda label: -sum(per_model[label]["sent"]),
    )[:MAX_RATE_MODELS]
    charts = []
    for position, label in enumerate(busiest):
        columns = per_model[label]
        figure, (requests_ax, tokens_ax) = _figure(4.2, rows=2)
        x = [_days(t) for t in series["t"]]
        dts = series["dt"]
        sent = _per_min(columns["sent"], dts)
        tokens = _per_min(columns["sent_tokens"], dts)
        used = _per_min(columns["tokens"], dts)
        for n, seg in enumerate(_segments(series)):
            first = n == 0
            steps = _stepper(series, seg)
            requests_ax.plot(*steps(sent), color=_COLORS[0],
                             label="requests sent / min" if first else None)  # fmt: skip
            _limit_line(requests_ax, *steps(columns["rpm"]), "RPM limit" if first else None)
            tokens_ax.plot(*steps(tokens), color=_COLORS[1],
                           label="tokens reserved / min" if first else None)  # fmt: skip
            tokens_ax.plot(*steps(used), color=_COLORS[2], linewidth=0.8,
                           label="tokens used / min" if first else None)  # fmt: skip
            _limit_line(tokens_ax, *steps(columns["tpm"]), "TPM limit" if first else None)
        _marks(requests_ax, x, sent, columns["rate_limited"], "x", _FAILED_COLOR, "429s")
        _marks(requests_ax, x, [0.0] * len(x), columns["retries"], "^", _CRITICAL_COLOR, "retries")
        requests_ax.set_ylabel("requests / min")
        tokens_ax.set_ylabel("tokens / min")
        for ax in (requests_ax, tokens_ax):
            ax.set_ylim(bottom=0)
            ax.legend(loc="upper left", fontsize=8, ncols=4)
        _dates(tokens_ax)
        charts.append((f"rate-{position}", f"{label}: rate against its limits", figure))
    return charts


def _pick(seg: range) -> Any:
    return lambda values: [values[i] for i in seg]


def _stepper(series: dict[str, Any], seg: range) -> Any:
    """values -> (x, y) drawing each point's value over its whole interval [t - dt, t]:
    a count over an interval is a level, not a point (a run of seconds has two samples)."""
    t, dt = series["t"], series["dt"]

    def steps(values: list[Any]) -> tuple[list[float], list[float]]:
        x: list[float] = []
        y: list[float] = []
        for i in seg:
            value = math.nan if values[i] is None else values[i]
            x += [_days(t[i] - dt[i]), _days(t[i])]
            y += [value, value]
        return x, y

    return steps


def _limit_line(ax: Any, x: list[float], limits: list[Any], label: str | None) -> None:
    values = [math.nan if v is None else v for v in limits]
    if any(not math.isnan(v) for v in values):
        ax.plot(x, values, color="black", linestyle="--", linewidth=1, label=label)


def _marks(
    ax: Any, x: list[float], y: list[float], counts: list[int], marker: str, color: str, what: str
) -> None:
    points = [(xi, yi) for xi, yi, c in zip(x, y, counts, strict=True) if c]
    if points:
        total = sum(counts)
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, marker=marker, color=color, s=24, zorder=3,
                   label=f"{what} ({total})")  # fmt: skip


def _in_flight_chart(data: RunData) -> list[tuple[str, str, Any]]:
    series = data.series
    if not series.get("t"):
        return []
    figure, (ax,) = _figure(2.8)
    x = [_days(t) for t in series["t"]]
    for n, seg in enumerate(_segments(series)):
        pick = _pick(seg)
        ax.plot(pick(x), pick(series["in_flight"]), color=_COLORS[0],
                label="in flight" if n == 0 else None)  # fmt: skip
        ax.plot(pick(x), pick(series["target"]), color="black", linestyle="--", linewidth=1,
                drawstyle="steps-post", label="target" if n == 0 else None)  # fmt: skip
    ax.set_ylabel("requests")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    _dates(ax)
    return [("in-flight", "Requests in flight against the target", figure)]


def _latency_chart(data: RunData) -> list[tuple[str, str, Any]]:
    measured = [(label, m.latencies_s) for label, m in data.models.items() if m.latencies_s]
    if not measured:
        return []
    if len(measured) > MAX_MODELS_DRAWN:  # thousands of models: the busiest, then the rest
        measured.sort(key=lambda item: -len(item[1]))
        rest = measured[MAX_MODELS_DRAWN - 1 :]
        merged = [v for _, values in rest for v in values]
        measured = [*measured[: MAX_MODELS_DRAWN - 1], (f"other ({len(rest)} models)", merged)]
    figure, (ax,) = _figure(2.8)
    low = max(1e-4, min(min(values) for _, values in measured))
    high = max(max(values) for _, values in measured)
    if high / low > 50:
        bins = [low * (high / low) ** (i / 40) for i in range(41)]
        ax.set_xscale("log")
    else:
        bins = 40
    for position, (label, values) in enumerate(measured):
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5,
                color=_COLORS[position % len(_COLORS)], label=label)  # fmt: skip
    ax.set_xlabel("latency of the last attempt (s)")
    ax.set_ylabel("tasks")
    ax.legend(loc="upper right", fontsize=8)
    return [("latency", "Latency distribution per model", figure)]


def _dag_chart(data: RunData) -> list[tuple[str, str, Any]]:
    nodes = data.nodes
    skipped = STATUS_CODES["skipped"]
    drawn = [i for i in range(len(nodes.ids)) if nodes.status[i] != skipped]
    if not drawn:
        return []
    chain = critical_path(data)
    sampled = len(drawn) > GANTT_ALL
    if sampled:
        drawn = sorted(set(random.Random(0).sample(drawn, GANTT_SAMPLE)) | set(chain))
    lane_of = _lanes(data, drawn)
    lanes: dict[str, list[int]] = {}
    for i in sorted(drawn, key=nodes.start.__getitem__):
        lanes.setdefault(lane_of(nodes.model[i]), []).append(i)
    row_of: dict[int, float] = {}
    ticks, tick_labels, offset = [], [], 0.0
    spans = []
    for lane in sorted(lanes, key=lambda name: (name.startswith("other ("), name)):
        rows = _pack(lanes[lane], nodes.start, nodes.end, row_of, offset)
        ticks.append(offset + (rows - 1) / 2)
        tick_labels.append(lane)
        spans.append((offset - 0.75, offset + rows - 0.25))
        offset += rows + 1.5
    height = min(9.0, max(2.4, 1.0 + offset * 0.09))
    figure, (ax,) = _figure(height, left_in=_label_margin_in(tick_labels))
    for n, (low, high) in enumerate(spans):
        ax.axhspan(low, high, color="#eef1f5" if n % 2 == 0 else "#f8f9fb", zorder=0)
    width = max(0.6, min(6.0, 0.8 * height * 72 / max(offset, 1)))
    failed = STATUS_CODES[FAILED]
    for status_color, keep in ((_COLORS[0], False), (_FAILED_COLOR, True)):
        chosen = [i for i in drawn if (nodes.status[i] == failed) == keep]
        if chosen:
            ax.hlines([row_of[i] for i in chosen], [_days(nodes.start[i]) for i in chosen],
                      [_days(nodes.end[i]) for i in chosen], colors=status_color,
                      linewidth=width, label="failed" if keep else "task")  # fmt: skip
    if chain:
        ax.hlines([row_of[i] for i in chain], [_days(nodes.start[i]) for i in chain],
                  [_days(nodes.end[i]) for i in chain], colors=_CRITICAL_COLOR,
                  linewidth=width * 1.6, label="critical path", zorder=3)  # fmt: skip
        ax.plot([_days(nodes.end[i]) if k % 2 else _days(nodes.start[i])
                 for i in chain for k in (0, 1)],
                [row_of[i] for i in chain for _ in (0, 1)],
                color=_CRITICAL_COLOR, linewidth=0.8, zorder=3)  # fmt: skip
    ax.set_yticks(ticks, tick_labels)
    ax.set_ylim(offset - 1.0, -1.0)
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right", fontsize=8)
    _dates(ax)
    what = f"a sample of {len(drawn):,} of {len(nodes.ids):,} tasks" if sampled else "each task"
    title = f"Tasks over time, one lane per model ({what}; bars: last attempt)"
    return [("dag", title, figure)]


def _lanes(data: RunData, drawn: list[int]) -> Any:
    """model index -> its lane's name: one lane per model, or for the busiest
    MAX_MODELS_DRAWN - 1 of many, the rest sharing an "other" lane."""
    counts: dict[int, int] = {}
    for i in drawn:
        model = data.nodes.model[i]
        counts[model] = counts.get(model, 0) + 1
    if len(counts) <= MAX_MODELS_DRAWN:
        return lambda model: data.labels[model]
    own = set(sorted(counts, key=lambda m: -counts[m])[: MAX_MODELS_DRAWN - 1])
    other = f"other ({len(counts) - len(own)} models)"
    return lambda model: data.labels[model] if model in own else other


def _pack(members: list[int], start: Any, end: Any, row_of: dict[int, float], offset: float) -> int:
    """Place ``members`` (sorted by start) in rows so that bars in a row do not overlap,
    at most GANTT_ROWS_PER_LANE rows (then the row that frees first); returns the rows
    used."""
    row_ends: list[float] = []
    for i in members:
        free = next((r for r, t in enumerate(row_ends) if t <= start[i]), None)
        if free is None:
            if len(row_ends) < GANTT_ROWS_PER_LANE:
                free = len(row_ends)
                row_ends.append(0.0)
            else:
                free = min(range(len(row_ends)), key=row_ends.__getitem__)
        row_ends[free] = end[i]
        row_of[i] = offset + free
    return max(1, len(row_ends))


def _cost_chart(data: RunData) -> list[tuple[str, str, Any]]:
    priced = [(label, m.cost_usd) for label, m in data.models.items() if m.cost_usd]
    if not priced:
        return []
    if len(priced) > MAX_MODELS_DRAWN:
        priced.sort(key=lambda item: -item[1])
        rest = priced[MAX_MODELS_DRAWN - 1 :]
        other = (f"other ({len(rest)} models)", sum(cost for _, cost in rest))
        priced = [*priced[: MAX_MODELS_DRAWN - 1], other]
    labels = [label for label, _ in priced]
    height = max(1.6, 0.9 + 0.35 * len(priced))
    figure, (ax,) = _figure(height, left_in=_label_margin_in(labels))
    ax.barh(labels, [cost for _, cost in priced], color=_COLORS[0])
    ax.invert_yaxis()
    ax.set_xlabel("cost (USD)")
    ax.grid(axis="y", visible=False)
    return [("cost", "Cost by model", figure)]
