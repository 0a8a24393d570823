"""What a run's outcomes add to its figures: the run's ``Metrics`` and each model's
``ModelStats``, kept by the supervisor as attempts are answered and nodes finish.

Every attempt counts as a request of its model; a node counts once, when it is done
(resumed successes included in the run's totals, never in a model's: the model did
not answer them in this run).
"""

from __future__ import annotations

from turborun.metrics import Metrics, ModelStats
from turborun.records import RATE_LIMITED, Outcome
from turborun.status import FAILED, SUCCEEDED, Status

ModelKey = tuple[str, str]  # (provider, model or a step's function)


class Accounts:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.models: dict[ModelKey, ModelStats] = {}

    def model(self, key: ModelKey) -> ModelStats:
        stats = self.models.get(key)
        if stats is None:
            stats = self.models[key] = ModelStats(*key)
        return stats

    def attempt(self, key: ModelKey, outcome: Outcome, cost_usd: float | None) -> None:
        """One answered attempt: its latency, tokens, cost and whether it was a 429."""
        m = self.metrics
        stats = self.model(key)
        stats.requests += 1
        stats.latencies_s.append(outcome.latency_s)
        m.latencies_s.append(outcome.latency_s)
        m.busy_s += outcome.latency_s
        stats.input_tokens += outcome.input_tokens or 0
        stats.output_tokens += outcome.output_tokens or 0
        m.input_tokens += outcome.input_tokens or 0
        m.output_tokens += outcome.output_tokens or 0
        stats.add_cost(cost_usd)
        if cost_usd is not None:
            m.cost_usd = (m.cost_usd or 0.0) + cost_usd
        if outcome.error_kind == RATE_LIMITED:
            stats.rate_limited += 1
            m.rate_limited += 1

    def retry(self, key: ModelKey) -> None:
        self.model(key).retries += 1
        self.metrics.retries += 1

    def finished(self, key: ModelKey, status: Status, *, sent: bool) -> None:
        """A node done; ``sent``: it was sent in this run (not a resumed success)."""
        m = self.metrics
        if status == SUCCEEDED:
            m.succeeded += 1
            if sent:
                self.model(key).succeeded += 1
        elif status == FAILED:
            m.failed += 1
            self.model(key).failed += 1
        else:
            m.skipped += 1

    def close(self, *, pending: int, critical_path_s: float, peak_target: int) -> Metrics:
        """The figures once the loop has ended."""
        m = self.metrics
        m.per_model = sorted(self.models.values(), key=lambda s: (s.provider, s.model))
        m.pending = pending
        m.critical_path_s = critical_path_s
        m.peak_target = peak_target
        m.workers = peak_target
        return m
