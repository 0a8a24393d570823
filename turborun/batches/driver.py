"""The batch driver: a run whose API tasks go through the providers' Batch APIs.

It shares the journal, the tasks, the templates, the prices and the results file with a
live run, and nothing else: no pool, no pacing (a batch is not charged to RPM/TPM), no
worker. One thread, one loop::

    release ready tasks (parents journaled)  ─► render, split by (provider, model, url)
        and limits ─► intent in the registry ─► upload ─► batches.create ─► batch id
    poll each batch when due (backoff 1.5x from poll_s to 60 x poll_s, at most 10 min)
        ─► terminal: download output and error files ─► journal their lines by custom_id
        (one commit) ─► mark the batch collected ─► release dependents

Python steps (``fn``) of the graph run inline when ready. A dependent is submitted only
once its parents' results are committed, with its templates rendered then: a DAG goes
through level by level.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from turborun.account import account_problem
from turborun.batches.client import BatchAPIError, BatchClient
from turborun.batches.lines import (
    FINAL,
    RETRY,
    SUCCESS,
    UNRUN,
    input_line,
    line_outcome,
    parse_lines,
)
from turborun.batches.registry import COLLECTED, INTENT, SUBMITTED, Registry
from turborun.entries import failure_entry, outcome_entry
from turborun.journal import Journal
from turborun.metrics import Metrics, ModelStats
from turborun.pricing import Pricing
from turborun.records import FN_ERROR, FN_PROVIDER
from turborun.status import DEPENDENCY_FAILED, FAILED, SKIPPED, SUCCEEDED
from turborun.supervisor import Progress
from turborun.tasks import TaskSet
from turborun.templates import render_body

log = logging.getLogger("turborun")

TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})
# Documented per-file limits: OpenAI 50,000 requests / 200 MB (batches.create reference);
# Groq 50,000 lines, 100 MB (groq SDK 1.7 batches.create docstring).
DEFAULT_MAX_LINES = 50_000
DEFAULT_MAX_BYTES = {"openai": 200 * 1024 * 1024, "groq": 100 * 1024 * 1024}
POLL_GROWTH = 1.5
POLL_MAX_FACTOR = 60.0
POLL_CAP_S = 600.0
FINGERPRINT_CHARS = 16  # of each task's fingerprint kept in its batch's record
RETRY_SUBMIT_S = 5.0  # an intent whose upload or create failed is tried again after this

_PENDING, _QUEUED, _IN_BATCH, _DONE = 0, 1, 2, 3


@dataclass(slots=True)
class DriverSettings:
    max_lines: int | None = None  # None: DEFAULT_MAX_LINES
    max_bytes: int | None = None  # None: the provider's DEFAULT_MAX_BYTES
    poll_s: float = 5.0
    window: str = "24h"
    max_retries: int = 5
    cancel_on_interrupt: bool = False

    def limits(self, provider: str) -> tuple[int, int]:
        lines = self.max_lines or DEFAULT_MAX_LINES
        size = self.max_bytes or DEFAULT_MAX_BYTES.get(provider, DEFAULT_MAX_BYTES["openai"])
        return lines, size


class BatchDriver:
    def __init__(
        self,
        taskset: TaskSet,
        journal: Journal,
        registry: Registry,
        clients: dict[str, BatchClient],
        pricing: Pricing,
        settings: DriverSettings,
        previous: dict[str, tuple[str, str]],
        *,
        say: Callable[[str], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tasks = taskset.tasks
        self.taskset = taskset
        self.journal = journal
        self.registry = registry
        self.clients = clients
        self.pricing = pricing
        self.settings = settings
        self.clock = clock
        self._say = say or (lambda message: None)
        self._on_progress = on_progress
        self._next_progress = 0.0
        self.stop = threading.Event()
        self.index = {t.custom_id: i for i, t in enumerate(self.tasks)}
        n = len(self.tasks)
        self.state = [_PENDING] * n
        self.attempts = [0] * n
        self.waiting = [0] * n  # parents not yet succeeded
        self.children: list[list[int]] = [[] for _ in range(n)]
        for i, task in enumerate(self.tasks):
            for dep in task.depends_on:
                self.children[self.index[dep]].append(i)
            self.waiting[i] = len(task.depends_on)
        self.ready: list[int] = []
        self.resumed: set[str] = set()
        self.metrics = Metrics(total=n)
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self._next_poll: dict[str, float] = {}
        self._poll_every: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._lookup_first: set[str] = set()  # markers whose batch may exist already
        self._submitted_at: dict[str, float] = {}
        self._active: dict[str, dict[str, Any]] = {}
        self._batch_of: dict[int, str] = {}  # node in a batch at the provider -> its marker
        self._refused_account: dict[str, str] = {}  # provider -> why it cannot bill us
        self._held: list[int] = []  # tasks kept pending until the account is fixed
        self._done = 0
        self._started = clock()
        self._resume(previous)

    # ---- start -------------------------------------------------------------------

    def _resume(self, previous: dict[str, tuple[str, str]]) -> None:
        """Journaled successes whose definition and ancestors are unchanged are done;
        batches not yet collected are polled again (intents are looked up first)."""
        order = self._topological()
        rerun = [False] * len(self.tasks)
        for i in order:
            task = self.tasks[i]
            prev = previous.get(task.custom_id)
            parents_rerun = any(rerun[self.index[d]] for d in task.depends_on)
            if prev is not None and prev[0] == SUCCEEDED and not parents_rerun:
                if prev[1] == task.fingerprint:
                    self.resumed.add(task.custom_id)
                    continue
                self.metrics.changed += 1
            elif prev is not None and prev[0] == SUCCEEDED:
                self.metrics.rerun_descendants += 1
            rerun[i] = True
        for record in self.registry.records():
            for custom_id in record["custom_ids"]:
                node = self.index.get(custom_id)
                if node is not None:
                    self.attempts[node] += 1
            if record["state"] == COLLECTED:
                continue
            self._active[record["marker"]] = record
            self._lookup_first.add(record["marker"])
            prints = record.get("fingerprints") or []
            for at, custom_id in enumerate(record["custom_ids"]):
                node = self.index.get(custom_id)
                if node is None or custom_id in self.resumed:
                    continue
                sent = prints[at] if at < len(prints) else None
                if sent is not None and sent != self.tasks[node].fingerprint[:FINGERPRINT_CHARS]:
                    continue  # edited since its batch went out: its answer there is stale
                self.state[node] = _IN_BATCH
                self._batch_of[node] = record["marker"]
        for custom_id in self.resumed:
            node = self.index[custom_id]
            self.state[node] = _DONE
            self.metrics.resumed += 1
            self.metrics.succeeded += 1
            self._done += 1
        for node in range(len(self.tasks)):
            if self.state[node] == _DONE:
                for child in self.children[node]:
                    self.waiting[child] -= 1
        for node in order:
            if self.state[node] == _PENDING and self.waiting[node] == 0:
                self.state[node] = _QUEUED
                self.ready.append(node)
        if self._active:
            self._say(f"resuming {len(self._active)} batch(es) left at the provider")

    def _topological(self) -> list[int]:
        order: list[int] = []
        waiting = [len(t.depends_on) for t in self.tasks]
        stack = [i for i, w in enumerate(waiting) if w == 0]
        stack.reverse()
        while stack:
            node = stack.pop()
            order.append(node)
            for child in self.children[node]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    stack.append(child)
        return order

    # ---- loop --------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop.set()

    def run(self) -> Metrics:
        try:
            while self._done < len(self.tasks):
                if self.stop.is_set():
                    self._detach()
                    break
                self._run_steps()
                self._submit_ready()
                self._advance_intents()
                self._poll_due()
                self._report()
                if self._done >= len(self.tasks):
                    break
                if not self.ready and not self._active:
                    self._stop_pending()
                    break
                self.stop.wait(self._wait_s())
        finally:
            self._close_metrics()
            self._report(force=True)
        return self.metrics

    def _report(self, force: bool = False) -> None:
        """A Progress snapshot (at most every 0.5 s): in flight = lines at the provider."""
        now = self.clock()
        if self._on_progress is None or (now < self._next_progress and not force):
            return
        self._next_progress = now + 0.5
        out = sum(r["lines"] for r in self._active.values())
        m = self.metrics
        self._on_progress(
            Progress(done=self._done, total=len(self.tasks), failed=m.failed,
                     retrying=len(self.ready), rate_limited=m.rate_limited, tokens_per_min=0,
                     tpm_limit=None, cost_usd=m.cost_usd, in_flight=out, target=out)
        )  # fmt: skip

    def _wait_s(self) -> float:
        if self.ready:
            return 0.0
        now = self.clock()
        due = list(self._next_poll.values()) + list(self._retry_at.values())
        return max(0.0, min(due) - now) if due else 0.05

    def _detach(self) -> None:
        """Ctrl-C: leave batches running at the provider (or cancel them, with
        --cancel-on-interrupt); a --resume collects them."""
        self.metrics.interrupted = True
        running = [r for r in self._active.values() if r.get("batch_id")]
        if self.settings.cancel_on_interrupt:
            for record in running:
                try:
                    self.clients[record["provider"]].cancel(record["batch_id"])
                    self.registry.update(record, cancel_requested=True)
                    self._say(f"batch {record['batch_id']}: cancel requested")
                except BatchAPIError as exc:
                    log.warning("could not cancel batch %s: %s", record["batch_id"], exc)
            if running:
                log.warning(
                    "cancelled %d batch(es); their finished lines are collected by --resume",
                    len(running),
                )
        elif running:
            log.warning(
                "left %d batch(es) running at the provider (%s); --resume collects them "
                "(--cancel-on-interrupt cancels them instead)",
                len(running),
                ", ".join(r["batch_id"] for r in running[:5])
                + (" ..." if len(running) > 5 else ""),
            )

    # ---- submitting --------------------------------------------------------------

    def _run_steps(self) -> None:
        """Python steps run here, inline, when their parents are journaled."""
        steps = [n for n in self.ready if self.tasks[n].provider == FN_PROVIDER]
        if not steps:
            return
        self.ready = [n for n in self.ready if self.tasks[n].provider != FN_PROVIDER]
        for node in steps:
            task = self.tasks[node]
            self._stats_for(task.provider, task.model or task.fn or "").requests += 1
        entries = [(node, self._step_entry(node)) for node in steps]
        self._finish(entries)

    def _step_entry(self, node: int) -> dict[str, Any]:
        task = self.tasks[node]
        self.attempts[node] += 1
        inputs = {}
        for dep in task.depends_on:
            entry = self.journal.get(dep) or {}
            inputs[dep] = {"text": entry.get("text"), "value": entry.get("body")}
        start = time.perf_counter()
        try:
            module, _, name = (task.fn or "").partition(":")
            value = getattr(importlib.import_module(module), name)(inputs)
            body = orjson.dumps(value)
        except Exception as exc:
            return failure_entry(task, FN_ERROR, f"{type(exc).__name__}: {exc}", attempts=1)
        entry = failure_entry(task, "", "", attempts=self.attempts[node], status=SUCCEEDED)
        entry.update(error=None, body=body, text=value if isinstance(value, str) else body.decode(),
                     latency_s=round(time.perf_counter() - start, 6))  # fmt: skip
        return entry

    def _submit_ready(self) -> None:
        if self._refused_account:  # nothing more to a provider that cannot bill us
            held = [n for n in self.ready if self.tasks[n].provider in self._refused_account]
            if held:
                self._held += held
                waiting = set(held)
                self.ready = [n for n in self.ready if n not in waiting]
                for node in held:
                    self.state[node] = _PENDING
        if not self.ready:
            return
        groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for node in self.ready:
            task = self.tasks[node]
            groups[(task.provider, task.model, task.url)].append(node)
        self.ready = []
        for (provider, model, url), nodes in groups.items():
            max_lines, max_bytes = self.settings.limits(provider)
            chunk: list[int] = []
            lines: list[bytes] = []
            size = 0
            for node in nodes:
                try:
                    line = self._line(node)
                except Exception as exc:  # a body that cannot be read back or rendered
                    message = f"{type(exc).__name__}: {exc}"
                    self._finish([(node, failure_entry(self.tasks[node], "render_error", message,
                                                       attempts=self.attempts[node]))])  # fmt: skip
                    continue
                if chunk and (len(chunk) >= max_lines or size + len(line) > max_bytes):
                    self._submit(provider, model, url, chunk, lines)
                    chunk, lines, size = [], [], 0
                chunk.append(node)
                lines.append(line)
                size += len(line)
            if chunk:
                self._submit(provider, model, url, chunk, lines)

    def _line(self, node: int) -> bytes:
        task = self.tasks[node]
        body = self.taskset.body(task)
        if task.templated:
            outputs = {}
            for dep in task.depends_on:
                entry = self.journal.get(dep) or {}
                outputs[dep] = entry.get("text") or ""
            body = render_body(body, outputs)
        return input_line(task.custom_id, task.method, task.url, orjson.dumps(body))

    def _submit(
        self, provider: str, model: str, url: str, nodes: list[int], lines: list[bytes]
    ) -> None:
        ids = [self.tasks[n].custom_id for n in nodes]
        prints = [self.tasks[n].fingerprint[:FINGERPRINT_CHARS] for n in nodes]
        data = b"".join(lines)
        record = self.registry.new_intent(provider, model, url, ids, len(data), prints)
        for node in nodes:
            self.state[node] = _IN_BATCH
            self._batch_of[node] = record["marker"]
            self.attempts[node] += 1
        self._active[record["marker"]] = record
        self._stats_for(provider, model).requests += len(nodes)
        self._create(record, data)

    def _advance_intents(self) -> None:
        now = self.clock()
        for marker, record in list(self._active.items()):
            if record["state"] == INTENT and self._retry_at.get(marker, 0.0) <= now:
                self._create(record, None)
            elif record["state"] == SUBMITTED and marker not in self._next_poll:
                self._schedule_poll(record, first=True)

    def _create(self, record: dict[str, Any], data: bytes | None) -> None:
        """Take an intent to a created batch: look its marker up first when the batch
        may exist (a resumed intent, an ambiguous failure), else upload and create."""
        marker = record["marker"]
        client = self.clients[record["provider"]]
        self._retry_at.pop(marker, None)
        try:
            if marker in self._lookup_first:
                found = client.find_by_marker(marker)
                self._lookup_first.discard(marker)
                if found is not None:
                    self._created(record, found, adopted=True)
                    return
            if record.get("file_id") is None:
                if data is None:
                    data = b"".join(self._line(self.index[c]) for c in record["custom_ids"])
                name = f"{marker}.jsonl"
                self.registry.update(record, file_id=client.upload(name, data))
            batch = client.create_batch(record["file_id"], record["url"],
                                        self.settings.window, marker)  # fmt: skip
        except BatchAPIError as exc:
            if exc.ambiguous:
                self._lookup_first.add(marker)
            if (
                exc.status is not None
                and 400 <= exc.status < 500
                and exc.status not in (408, 409, 429)
            ):
                self._refused(record, exc)
                return
            log.warning("batch %s not created yet (%s); trying again", marker, exc)
            self._retry_at[marker] = self.clock() + RETRY_SUBMIT_S
            return
        self._created(record, batch, adopted=False)

    def _created(self, record: dict[str, Any], batch: dict[str, Any], adopted: bool) -> None:
        # The batch id is journaled before anything else is done with the batch.
        self.registry.update(record, state=SUBMITTED, batch_id=batch["id"],
                             batch_status=batch.get("status"))  # fmt: skip
        self._submitted_at[record["marker"]] = self.clock()
        how = "found at the provider" if adopted else "created"
        self._say(
            f"batch {batch['id']} {how}: {record['provider']}/{record['model']}, "
            f"{record['lines']:,} lines, {record['bytes'] / 1e6:.1f} MB"
        )
        self._schedule_poll(record, first=True)

    def _refused(self, record: dict[str, Any], exc: BatchAPIError) -> None:
        """The provider refused the file or the batch (a 4xx): its tasks fail."""
        entries = []
        for custom_id in record["custom_ids"]:
            node = self.index.get(custom_id)
            if node is not None and self._batch_of.get(node) == record["marker"]:
                entries.append((node, failure_entry(self.tasks[node], "client_error",
                                                    f"batch refused: {exc}",
                                                    attempts=self.attempts[node])))  # fmt: skip
        self._finish(entries)
        self.registry.update(record, state=COLLECTED, batch_status="refused")
        self._active.pop(record["marker"], None)

    # ---- polling -----------------------------------------------------------------

    def _schedule_poll(self, record: dict[str, Any], first: bool = False) -> None:
        marker = record["marker"]
        poll_s = self.settings.poll_s
        every = poll_s if first else min(
            self._poll_every.get(marker, poll_s) * POLL_GROWTH,
            min(POLL_CAP_S, poll_s * POLL_MAX_FACTOR),
        )  # fmt: skip
        self._poll_every[marker] = every
        self._next_poll[marker] = self.clock() + every

    def _poll_due(self) -> None:
        now = self.clock()
        for marker, due in list(self._next_poll.items()):
            if due > now or self.stop.is_set():
                continue
            record = self._active[marker]
            try:
                batch = self.clients[record["provider"]].retrieve(record["batch_id"])
            except BatchAPIError as exc:
                if exc.status == 404:
                    self._vanished(record)
                    continue
                log.warning("polling batch %s failed: %s", record["batch_id"], exc)
                self._schedule_poll(record)
                continue
            status = batch.get("status")
            counts = batch.get("request_counts") or {}
            if status != record.get("batch_status") or counts != record.get("counts"):
                done = counts.get("completed", 0) + counts.get("failed", 0)
                line = f"batch {record['batch_id']}: {status}, {done:,}/{record['lines']:,} done"
                if status != record.get("batch_status"):
                    self._say(line)
                else:
                    log.info("%s", line)
                self.registry.update(record, batch_status=status, counts=counts)
            if status in TERMINAL:
                del self._next_poll[marker]
                self._collect(record, batch)
            else:
                self._schedule_poll(record)

    def _stop_pending(self) -> None:
        """Nothing left to send or poll with tasks unfinished: a provider refused the
        account (its tasks wait, unjournaled, for --resume) or nothing can run."""
        pending = len(self.tasks) - self._done
        if self._refused_account:
            why = "; ".join(f"{p}: {w}" for p, w in self._refused_account.items())
            log.error(
                "stopped with %d tasks pending: the provider refused the account (%s); "
                "fix the account and run again with --resume",
                pending,
                why,
            )
            self.metrics.stopped_by = f"the provider refused the account ({why})"  # exit 3
        else:
            log.error("%d tasks can no longer run", pending)

    def _vanished(self, record: dict[str, Any]) -> None:
        """The provider knows no such batch (deleted, another account or server): it will
        answer nothing, so its tasks are sent again, without counting an attempt."""
        log.warning("batch %s is unknown to the provider; its %d tasks are sent again",
                    record["batch_id"], record["lines"])  # fmt: skip
        self._next_poll.pop(record["marker"], None)
        self._collect(record, {"id": record["batch_id"], "status": "not_found"})

    def _collect(self, record: dict[str, Any], batch: dict[str, Any]) -> None:
        """Download the output and error files, journal every line by custom_id in one
        commit, then mark the batch collected (a crash between the two journals nothing
        twice: lines already journaled are skipped when it is collected again)."""
        client = self.clients[record["provider"]]
        found: dict[str, dict[str, Any]] = {}
        try:
            for key in ("error_file_id", "output_file_id"):  # output wins over error
                if batch.get(key):
                    found.update(parse_lines(client.content(batch[key], errors=key[0] == "e")))
        except BatchAPIError as exc:
            log.warning("downloading results of batch %s failed: %s", record["batch_id"], exc)
            self._schedule_poll(record)
            return
        status = batch.get("status")
        latency_s = max(0.0, self.clock() - self._submitted_at.get(record["marker"], self._started))
        journaled = {cid for cid, e in self.journal.get_many(record["custom_ids"]) if e is not None}
        finished: list[tuple[int, dict[str, Any]]] = []
        again: list[int] = []
        failed_batch = _batch_errors(batch) if status == "failed" else None
        for custom_id in record["custom_ids"]:
            node = self.index.get(custom_id)
            if node is None or self._batch_of.get(node) != record["marker"]:
                continue
            if custom_id in journaled and custom_id not in self.resumed:
                entry = self.journal.get(custom_id) or {}
                if entry.get("fingerprint") == self.tasks[node].fingerprint:
                    earlier = entry.get("status", FAILED)
                    self._mark_done(node, earlier)
                    if earlier != SUCCEEDED:  # its dependents' skips may not be journaled
                        self._finish(self._skip_descendants(node, custom_id))
                    continue
            line = found.get(custom_id)
            if line is None:
                if failed_batch is not None:
                    message = f"batch {record['batch_id']} failed: {failed_batch}"
                    entry = failure_entry(self.tasks[node], "batch_failed", message,
                                          attempts=self.attempts[node])  # fmt: skip
                    finished.append((node, entry))
                else:  # not in either file: not run
                    self.attempts[node] -= 1
                    again.append(node)
                continue
            why = _account_problem(line)
            if why is not None:  # the account cannot pay: neither a failure nor a retry
                self.attempts[node] -= 1
                self.state[node] = _PENDING
                self._held.append(node)
                provider = self.tasks[node].provider
                if provider not in self._refused_account:
                    self._refused_account[provider] = why
                    log.error("%s refused the account: %s; its tasks wait", provider, why)
                continue
            what, outcome = line_outcome(line, self.attempts[node], latency_s)
            if what == UNRUN:
                self.attempts[node] -= 1
                again.append(node)
            elif what == RETRY and self.attempts[node] <= self.settings.max_retries:
                self.metrics.retries += 1
                self._stats_for(self.tasks[node].provider, self.tasks[node].model).retries += 1
                again.append(node)
            else:
                finished.append((node, self._entry(node, outcome, record["batch_id"])))
            if what in (SUCCESS, RETRY, FINAL):
                self._count(node, outcome)
        self._finish(finished)
        self.registry.update(record, state=COLLECTED)
        self._active.pop(record["marker"], None)
        self._poll_every.pop(record["marker"], None)
        for node in again:
            self.state[node] = _QUEUED
            self.ready.append(node)
        if again:
            self._say(
                f"batch {record['batch_id']} {status}: {len(record['custom_ids']) - len(again):,} "
                f"lines kept, {len(again):,} submitted again"
            )

    def _entry(self, node: int, outcome: Any, batch_id: str) -> dict[str, Any]:
        task = self.tasks[node]
        cost = self.pricing.cost_usd(task.provider, task.model, outcome.input_tokens,
                                     outcome.output_tokens, outcome.cached_tokens or 0,
                                     tier="batch")  # fmt: skip
        entry = outcome_entry(task, outcome, attempts=self.attempts[node], queued_s=0.0,
                              cost_usd=cost if outcome.ok else None,
                              endpoint=f"batch:{batch_id}")  # fmt: skip
        entry["batch_id"] = batch_id
        entry["service_tier"] = "batch"
        return entry

    def _count(self, node: int, outcome: Any) -> None:
        task = self.tasks[node]
        stats = self._stats_for(task.provider, task.model)
        stats.input_tokens += outcome.input_tokens or 0
        stats.output_tokens += outcome.output_tokens or 0
        stats.latencies_s.append(outcome.latency_s)
        self.metrics.input_tokens += outcome.input_tokens or 0
        self.metrics.output_tokens += outcome.output_tokens or 0
        if outcome.error_kind == "rate_limited":
            stats.rate_limited += 1
            self.metrics.rate_limited += 1

    # ---- finishing ---------------------------------------------------------------

    def _finish(self, entries: list[tuple[int, dict[str, Any]]]) -> None:
        """Journal ``entries`` in one commit, then release or skip dependents."""
        while entries:
            self.journal.record_many([(self.tasks[n].custom_id, e) for n, e in entries])
            skipped: list[tuple[int, dict[str, Any]]] = []
            for node, entry in entries:
                status = entry["status"]
                self._mark_done(node, status)
                task = self.tasks[node]
                stats = self._stats_for(task.provider, task.model or task.fn or "")
                if entry.get("cost_usd") is not None:
                    stats.add_cost(entry["cost_usd"])
                    self.metrics.cost_usd = (self.metrics.cost_usd or 0.0) + entry["cost_usd"]
                if status == SUCCEEDED:
                    stats.succeeded += 1
                elif status == FAILED:
                    stats.failed += 1
                if status != SUCCEEDED:
                    skipped += self._skip_descendants(node, task.custom_id)
            entries = skipped

    def _mark_done(self, node: int, status: str) -> None:
        if self.state[node] == _DONE:
            return
        self.state[node] = _DONE
        self._done += 1
        if status == SUCCEEDED:
            self.metrics.succeeded += 1
            for child in self.children[node]:
                self.waiting[child] -= 1
                if self.waiting[child] == 0 and self.state[child] == _PENDING:
                    self.state[child] = _QUEUED
                    self.ready.append(child)
        elif status == SKIPPED:
            self.metrics.skipped += 1
        else:
            self.metrics.failed += 1

    def _skip_descendants(self, node: int, why: str) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for child in self.children[node]:
            if self.state[child] in (_PENDING, _QUEUED):
                if self.state[child] == _QUEUED:
                    self.ready = [n for n in self.ready if n != child]
                self.state[child] = _IN_BATCH  # about to be journaled as skipped
                message = f"dependency {why} did not succeed"
                out.append((child, failure_entry(self.tasks[child], DEPENDENCY_FAILED, message,
                                                 attempts=0, status=SKIPPED)))  # fmt: skip
        return out

    def _stats_for(self, provider: str, model: str) -> ModelStats:
        key = (provider, model)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ModelStats(provider, model)
        return stats

    def _close_metrics(self) -> None:
        m = self.metrics
        m.pending = len(self.tasks) - self._done
        m.makespan_s = self.clock() - self._started
        m.per_model = sorted(self._stats.values(), key=lambda s: (s.provider, s.model))

    @property
    def active_batches(self) -> list[dict[str, Any]]:
        return list(self._active.values())


def _account_problem(line: dict[str, Any]) -> str | None:
    response = line.get("response")
    if not isinstance(response, dict) or response.get("status_code") == 200:
        return None
    body = response.get("body")
    return account_problem(response.get("status_code"), orjson.dumps(body) if body else None)


def _batch_errors(batch: dict[str, Any]) -> str:
    errors = batch.get("errors") or {}
    data = errors.get("data") if isinstance(errors, dict) else None
    if isinstance(data, list) and data:
        first = data[0] if isinstance(data[0], dict) else {}
        return f"{first.get('code')}: {first.get('message')}"
    return "no reason given"
