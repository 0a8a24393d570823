"""Run metrics and the end-of-run summary table (SPEC §6)."""

from __future__ import annotations

from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an unsorted list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(slots=True)
class ModelStats:
    """Per (provider, model): every attempt counts as a request."""

    provider: str
    model: str
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latencies_s: list[float] = field(default_factory=list, repr=False)

    def add_cost(self, cost: float | None) -> None:
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost

    @property
    def p50_s(self) -> float | None:
        return percentile(self.latencies_s, 50)

    @property
    def p95_s(self) -> float | None:
        return percentile(self.latencies_s, 95)


@dataclass(slots=True)
class Metrics:
    """A run's figures (SPEC §6). Task counts cover the whole task set; ``succeeded``
    includes the ``resumed`` successes taken from the journal, while requests, retries,
    tokens, cost and latencies count only what this run sent."""

    total: int = 0  # tasks in the run
    succeeded: int = 0  # resumed ones included
    failed: int = 0
    skipped: int = 0  # a dependency failed or was skipped
    pending: int = 0  # not finished (an interrupted or capped run)
    resumed: int = 0  # journaled successes not sent again
    changed: int = 0  # journaled successes re-run because their task changed
    rerun_descendants: int = 0  # ... and their descendants re-run with them
    retries: int = 0  # attempts after each task's first
    rate_limited: int = 0  # 429 answers
    makespan_s: float = 0.0  # wall time of the run loop, from the workers ready to its end
    critical_path_s: float = 0.0  # lower bound: longest chain of measured durations
    busy_s: float = 0.0  # summed attempt latencies
    workers: int = 0  # the in-flight target at its peak (--workers N: N)
    peak_in_flight: int = 0  # requests and steps held by workers at once, at the most
    peak_target: int = 0  # the in-flight target at its highest
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latencies_s: list[float] = field(default_factory=list, repr=False)
    per_model: list[ModelStats] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C/SIGTERM
    stopped_by: str | None = None  # a cap bound or a provider refused the account

    @property
    def completed(self) -> int:
        """Nodes finished in this run (resumed ones excluded)."""
        return self.succeeded + self.failed + self.skipped - self.resumed

    @property
    def throughput(self) -> float:
        return self.completed / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def latency_avg_s(self) -> float | None:
        return sum(self.latencies_s) / len(self.latencies_s) if self.latencies_s else None

    @property
    def latency_p50_s(self) -> float | None:
        return percentile(self.latencies_s, 50)

    @property
    def latency_p95_s(self) -> float | None:
        return percentile(self.latencies_s, 95)

    @property
    def utilization(self) -> float:
        denominator = self.workers * self.makespan_s
        return self.busy_s / denominator if denominator > 0 else 0.0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(m: Metrics) -> str:
    header = (
        f"{'provider/model':<34} {'requests':>8} {'ok':>7} {'failed':>6} {'retries':>7} "
        f"{'429s':>5} {'tok in':>9} {'tok out':>9} {'cost $':>10} {'p50 s':>7} {'p95 s':>7}"
    )
    lines = [header, "-" * len(header)]
    for s in m.per_model:
        lines.append(
            f"{(s.provider + '/' + s.model)[:34]:<34} {s.requests:>8} {s.succeeded:>7} "
            f"{s.failed:>6} {s.retries:>7} {s.rate_limited:>5} {s.input_tokens:>9} "
            f"{s.output_tokens:>9} {_fmt(s.cost_usd, '.6f'):>10} {_fmt(s.p50_s, '.3f'):>7} "
            f"{_fmt(s.p95_s, '.3f'):>7}"
        )
    bound = m.critical_path_s
    ratio = f" ({m.makespan_s / bound:.2f}x)" if bound > 0 else ""
    lines += [
        "",
        f"tasks {m.total}: {m.succeeded} succeeded ({m.resumed} resumed), {m.failed} failed, "
        f"{m.skipped} skipped" + (f", {m.pending} not run" if m.pending else ""),
        f"wall time {m.makespan_s:.2f} s, throughput {m.throughput:.1f} tasks/s, "
        f"critical-path lower bound {bound:.2f} s{ratio}, "
        f"worker utilization {m.utilization:.0%} of {m.workers}",
        f"tokens in {m.input_tokens}, out {m.output_tokens}, cost $" + _fmt(m.cost_usd, ".6f"),
    ]
    if m.changed:
        lines.append(
            f"re-run because their task changed: {m.changed}, with {m.rerun_descendants} "
            "descendants"
        )
    return "\n".join(lines)
