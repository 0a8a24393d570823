"""What a run will cost and how long it will take, before anything is sent.

Per (provider, model): tasks, prompt tokens (counted with the model's encoding, as
the budget counts them), output tokens and cost as ranges, and the run's time:

* output: at most what the tasks request (``max_tokens`` and its kin); likely the
  requested amount × the output/requested ratio seen before (this checkpoint's
  journal first, then the ratios earlier runs on this machine left in
  ``_outputs.json`` beside the checkpoints);
* cost: from prompt only (no output at all) up to the requested maximum, with the
  likely value between; a task that requests no maximum leaves no upper bound;
* time: the larger of what the rate limits allow for this much work (per bucket,
  the longer of requests ÷ RPM and reserved tokens ÷ TPM, plus one latency), what
  the in-flight ceiling allows at the expected latencies, and the DAG's critical
  path at the expected latencies (the latency model the scheduler learns).

For a resume, what the journal already holds (successes whose task did not
change, with every ancestor also done) is left out, as the run would skip it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turborun.budget import DEFAULT_OUTPUT_RESERVATION, MARGIN
from turborun.config import Config
from turborun.graph import longest_path
from turborun.latency import LatencyModel
from turborun.pricing import Pricing
from turborun.records import FN_PROVIDER
from turborun.resume import plan_resume
from turborun.status import SUCCEEDED
from turborun.tasks import Task

# Endpoints whose answers are generated text, bounded only by a requested maximum.
GENERATING = ("/chat/completions", "/completions", "/responses")
OUTPUTS_FILE = "_outputs.json"  # per provider/model: output tokens produced / requested


@dataclass(slots=True)
class ModelEstimate:
    provider: str
    model: str
    tasks: int = 0
    prompt_tokens: int = 0
    max_output_tokens: int = 0
    unbounded: int = 0  # tasks that generate text and request no maximum output
    generates: bool = False  # any of its tasks generates text (not embeddings)
    output_ratio: float | None = None  # produced / requested, from earlier runs
    cost_low_usd: float | None = None  # prompts only
    cost_likely_usd: float | None = None
    cost_high_usd: float | None = None  # None: unknown price, or unbounded output
    priced: bool = True
    rpm: float | None = None
    tpm: float | None = None
    limit_s: float | None = None  # what the limits allow; None: no limit known
    latency_s: float = 0.0  # expected latency of one of its requests (mean)

    @property
    def likely_output_tokens(self) -> int | None:
        if self.output_ratio is None:
            return None
        return round(self.max_output_tokens * self.output_ratio)


@dataclass(slots=True)
class Estimate:
    models: list[ModelEstimate]
    tasks: int  # to run
    skipped: int  # already done (a resume)
    steps: int  # Python steps among the tasks to run
    limit_s: float | None
    concurrency_s: float
    critical_path_s: float
    bound: str  # what binds the time
    notes: list[str] = field(default_factory=list)

    @property
    def time_s(self) -> float:
        return max(self.limit_s or 0.0, self.concurrency_s, self.critical_path_s)

    def totals(self) -> dict[str, Any]:
        def total(values: Iterable[float | None]) -> float | None:
            values = list(values)
            return None if any(v is None for v in values) else sum(v or 0.0 for v in values)

        return {
            "tasks": self.tasks,
            "prompt_tokens": sum(m.prompt_tokens for m in self.models),
            "max_output_tokens": sum(m.max_output_tokens for m in self.models),
            "cost_low_usd": total(m.cost_low_usd for m in self.models),
            "cost_likely_usd": total(m.cost_likely_usd for m in self.models),
            "cost_high_usd": total(m.cost_high_usd for m in self.models),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "skipped": self.skipped,
            "steps": self.steps,
            "time_s": round(self.time_s, 3),
            "limit_s": None if self.limit_s is None else round(self.limit_s, 3),
            "concurrency_s": round(self.concurrency_s, 3),
            "critical_path_s": round(self.critical_path_s, 3),
            "bound": self.bound,
            "totals": self.totals(),
            "models": [
                {
                    "provider": m.provider,
                    "model": m.model,
                    "tasks": m.tasks,
                    "prompt_tokens": m.prompt_tokens,
                    "max_output_tokens": m.max_output_tokens,
                    "likely_output_tokens": m.likely_output_tokens,
                    "tasks_without_max_output": m.unbounded,
                    "output_ratio": m.output_ratio,
                    "cost_low_usd": m.cost_low_usd,
                    "cost_likely_usd": m.cost_likely_usd,
                    "cost_high_usd": m.cost_high_usd,
                    "priced": m.priced,
                    "rpm": m.rpm,
                    "tpm": m.tpm,
                    "limit_s": m.limit_s,
                    "latency_s": round(m.latency_s, 3),
                }
                for m in self.models
            ],
            "notes": self.notes,
        }


def remaining(
    tasks: list[Task], done: Mapping[str, tuple[str, str]], deps: list[tuple[int, ...]]
) -> list[bool]:
    """Which tasks a resume would run: not those whose journaled success matches the
    task's fingerprint with every ancestor also skipped (the supervisor's rule)."""
    resumed = plan_resume(deps, tasks, done).resumed
    return [node not in resumed for node in range(len(tasks))]


def estimate(
    tasks: list[Task],
    config: Config,
    *,
    pricing: Pricing,
    latency: LatencyModel,
    ratios: Mapping[str, float],
    done: Mapping[str, tuple[str, str]] | None = None,
) -> Estimate:
    """The estimate of running ``tasks`` (prompt tokens counted) under ``config``.
    ``ratios``: "provider/model" → output produced / requested; ``done``: the journal
    being resumed, custom_id → (status, fingerprint)."""
    deps = _deps(tasks)
    run = remaining(tasks, done or {}, deps)
    models: dict[tuple[str, str], ModelEstimate] = {}
    durations: list[float] = []
    busy_s = 0.0
    steps = 0
    for task, runs in zip(tasks, run, strict=True):
        if not runs:
            durations.append(0.0)
            continue
        if task.provider == FN_PROVIDER:
            steps += 1
            duration = latency.expected_s(FN_PROVIDER, task.fn or "", 0)
            durations.append(duration)
            busy_s += duration
            continue
        duration = latency.expected_s(task.provider, task.model, task.max_output_tokens)
        durations.append(duration)
        busy_s += duration
        m = models.get((task.provider, task.model))
        if m is None:
            m = models[(task.provider, task.model)] = ModelEstimate(task.provider, task.model)
        m.tasks += 1
        m.prompt_tokens += max(task.prompt_tokens, 0)
        m.max_output_tokens += max(task.max_output_tokens, 0)
        generates = task.url.endswith(GENERATING)
        m.generates = m.generates or generates
        m.unbounded += generates and task.max_output_tokens <= 0
        m.latency_s += duration
    for m in models.values():
        _price(m, config, pricing, ratios)
    order = sorted(models.values(), key=lambda m: (m.provider, m.model))
    ceiling = config.workers if config.workers is not None else config.max_in_flight
    concurrency_s = busy_s / max(ceiling, 1)
    critical_s = longest_path(deps, durations)
    limited = [m.limit_s for m in order if m.limit_s is not None]
    limit_s = max(limited) if limited else None
    notes = _notes(order)
    candidates = {
        "critical path": critical_s,
        "in-flight ceiling": concurrency_s,
    }
    if limit_s is not None:
        slowest = max((m for m in order if m.limit_s is not None), key=lambda m: m.limit_s or 0)
        candidates[f"rate limit of {slowest.provider}/{slowest.model}"] = limit_s
    bound = max(candidates, key=lambda k: candidates[k])
    return Estimate(
        models=order,
        tasks=sum(run),
        skipped=len(tasks) - sum(run),
        steps=steps,
        limit_s=limit_s,
        concurrency_s=concurrency_s,
        critical_path_s=critical_s,
        bound=bound,
        notes=notes,
    )


def _deps(tasks: list[Task]) -> list[tuple[int, ...]]:
    index = {t.custom_id: i for i, t in enumerate(tasks)}
    return [tuple(index[d] for d in t.depends_on) for t in tasks]


def _price(m: ModelEstimate, config: Config, pricing: Pricing, ratios: Mapping[str, float]) -> None:
    m.output_ratio = ratios.get(f"{m.provider}/{m.model}")
    if m.tasks:
        m.latency_s /= m.tasks
    limit = config.limit_for(m.provider, m.model)
    m.rpm, m.tpm = limit.rpm, limit.tpm
    reserved = m.prompt_tokens + m.max_output_tokens + m.unbounded * DEFAULT_OUTPUT_RESERVATION
    spans = []  # at the pace the buckets keep: MARGIN below each limit
    if m.rpm:
        spans.append(m.tasks / (m.rpm * (1.0 - MARGIN)) * 60.0)
    if m.tpm:
        spans.append(reserved / (m.tpm * (1.0 - MARGIN)) * 60.0)
    if spans:
        m.limit_s = max(spans) + m.latency_s  # the last request still takes its latency
    low = pricing.cost_usd(m.provider, m.model, m.prompt_tokens, 0)
    if low is None:
        m.priced = False
        return
    m.cost_low_usd = low
    if not m.unbounded:
        m.cost_high_usd = pricing.cost_usd(
            m.provider, m.model, m.prompt_tokens, m.max_output_tokens
        )
    likely = m.likely_output_tokens
    if likely is not None:
        m.cost_likely_usd = pricing.cost_usd(m.provider, m.model, m.prompt_tokens, likely)


def _notes(models: list[ModelEstimate]) -> list[str]:
    notes = []
    for m in models:
        name = f"{m.provider}/{m.model}"
        if not m.priced:
            notes.append(f"{name}: no known price (configs/pricing.toml gives one)")
        if m.unbounded:
            notes.append(
                f"{name}: {m.unbounded} tasks request no maximum output: no upper bound on cost"
            )
        if m.rpm is None and m.tpm is None:
            notes.append(f"{name}: no configured limit; the run learns it from the provider")
        if m.output_ratio is None and m.generates:
            notes.append(f"{name}: no earlier run to learn its output length from")
    return notes


def estimate_file(
    path: Path, config: Config, *, run_name: str | None = None, resume: bool = False
) -> Estimate:
    """The estimate of ``turborun batch PATH`` (with ``--resume``: of what remains of
    the run ``run_name``, default the file's run name). Sends nothing, takes no lock."""
    from turborun.checkpoint import default_run_name, open_journal_readonly
    from turborun.tasks import load_tasks
    from turborun.tokens import TokenEstimator

    checkpoint_dir = Path(config.checkpoint_dir)
    with load_tasks(Path(path), TokenEstimator()) as taskset:
        tasks = taskset.tasks
    ratios = load_ratios(checkpoint_dir)
    done: dict[str, tuple[str, str]] = {}
    if resume:
        opened = open_journal_readonly(checkpoint_dir, run_name or default_run_name(Path(path)))
        if opened is not None:
            journal = opened[1]
            try:
                entries = list(journal.entries())
            finally:
                journal.close()
            done = {cid: (e.get("status", ""), e.get("fingerprint", "")) for cid, e in entries}
            ratios.update(journal_ratios(tasks, entries))
    return estimate(
        tasks,
        config,
        pricing=Pricing.load(Pricing.default_paths(Path.cwd())),
        latency=LatencyModel(checkpoint_dir / "_latency.json"),
        ratios=ratios,
        done=done,
    )


# ---- output ratios kept between runs ------------------------------------------------


def load_ratios(checkpoint_dir: Path) -> dict[str, float]:
    """ "provider/model" → produced / requested output tokens, from ``_outputs.json``
    (absent, unreadable or malformed: {})."""
    try:
        data = json.loads((Path(checkpoint_dir) / OUTPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ratios: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict):
                produced, requested = value.get("produced"), value.get("requested")
                if number(produced) and number(requested) and requested > 0:
                    ratios[key] = produced / requested
    return ratios


def journal_ratios(
    tasks: list[Task], entries: Iterable[tuple[str, Mapping[str, Any] | None]]
) -> dict[str, float]:
    """Ratios from a journal's successes for these tasks (a resume's own history)."""
    sums = usage_sums(tasks, entries)
    return {k: p / r for k, (p, r) in sums.items() if r > 0}


def usage_sums(
    tasks: list[Task], entries: Iterable[tuple[str, Mapping[str, Any] | None]]
) -> dict[str, tuple[int, int]]:
    """ "provider/model" → (output tokens produced, requested) over journaled successes
    of tasks that name a maximum output."""
    by_id = {t.custom_id: t for t in tasks}
    sums: dict[str, tuple[int, int]] = {}
    for custom_id, entry in entries:
        task = by_id.get(custom_id)
        if task is None or entry is None or task.provider == FN_PROVIDER:
            continue
        produced = entry.get("output_tokens")
        if entry.get("status") != SUCCEEDED or not number(produced):
            continue
        if task.max_output_tokens <= 0:
            continue
        key = f"{task.provider}/{task.model}"
        p, r = sums.get(key, (0, 0))
        sums[key] = (p + int(produced), r + task.max_output_tokens)
    return sums


def record_ratios(checkpoint_dir: Path, sums: Mapping[str, tuple[int, int]]) -> None:
    """Add one run's sums to ``_outputs.json`` (written atomically; failures ignored:
    this only improves later estimates)."""
    if not sums:
        return
    path = Path(checkpoint_dir) / OUTPUTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    for key, (produced, requested) in sums.items():
        old = data.get(key) if isinstance(data.get(key), dict) else {}
        old_p = old.get("produced") if number(old.get("produced")) else 0
        old_r = old.get("requested") if number(old.get("requested")) else 0
        data[key] = {"produced": old_p + produced, "requested": old_r + requested}
    tmp = path.with_name(f".{OUTPUTS_FILE}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)


def number(value: Any) -> bool:
    """A finite int or float, not a bool (values read back from JSON files)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---- the table ---------------------------------------------------------------------------


def render(est: Estimate) -> str:
    """The estimate as the command line prints it."""
    lines = []
    header = f"{'model':<32} {'tasks':>8} {'prompt tok':>12} {'output tok':>22} {'cost USD':>24}"
    lines.append(header)
    for m in est.models:
        likely = m.likely_output_tokens
        output = f"≤{m.max_output_tokens:,}" if not m.unbounded else "unbounded"
        if likely is not None:
            output = f"~{likely:,} ({output})"
        lines.append(
            f"{m.provider + '/' + m.model:<32} {m.tasks:>8,} {m.prompt_tokens:>12,} "
            f"{output:>22} {_cost_range(m.cost_low_usd, m.cost_likely_usd, m.cost_high_usd):>24}"
        )
    t = est.totals()
    lines.append(
        f"{'total':<32} {t['tasks']:>8,} {t['prompt_tokens']:>12,} "
        f"{'≤' + format(t['max_output_tokens'], ','):>22} "
        f"{_cost_range(t['cost_low_usd'], t['cost_likely_usd'], t['cost_high_usd']):>24}"
    )
    if est.steps:
        lines.append(f"Python steps: {est.steps:,}")
    if est.skipped:
        lines.append(f"already done (a resume skips them): {est.skipped:,}")
    limit = "none known" if est.limit_s is None else _duration(est.limit_s)
    lines.append(
        f"time: ~{_duration(est.time_s)}, bound by the {est.bound} "
        f"(rate limits: {limit}; in-flight ceiling: {_duration(est.concurrency_s)}; "
        f"critical path: {_duration(est.critical_path_s)})"
    )
    lines.extend(f"note: {note}" for note in est.notes)
    return "\n".join(lines)


def _cost_range(low: float | None, likely: float | None, high: float | None) -> str:
    if low is None:
        return "unknown"
    top = "?" if high is None else f"{high:.4f}"
    text = f"{low:.4f}–{top}"
    return text if likely is None else f"{text} (~{likely:.4f})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
