"""``--via batch``: a run through the providers' Files and Batches APIs (SPEC §11).

Used through one door, ``run_via_batch`` (and ``describe`` for ``status``); see
docs/BATCH.md for the behaviour and ``driver.py`` for the loop. The checkpoint is the live
run's (same journal, same lock, same results file); the batches a run hands over live in
a registry beside the journal (``registry.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from turborun.batches.client import BatchClient
from turborun.batches.driver import BatchDriver, DriverSettings
from turborun.batches.registry import Registry, describe
from turborun.checkpoint import Checkpoint
from turborun.config import Config, require_keys
from turborun.exceptions import CheckpointError
from turborun.pricing import Pricing
from turborun.results import write_results
from turborun.session import attach_run_log, start_simulator
from turborun.tasks import TaskSet

__all__ = ["run_via_batch", "describe"]

log = logging.getLogger("turborun")

SIMULATED_BATCH_S = 2.0  # --simulate: a batch takes this long (its 24 h window: 10 s)


def run_via_batch(
    taskset: TaskSet,
    run_name: str | None,
    config: Config,
    *,
    resume: bool,
    fresh: bool,
    output: str | os.PathLike[str] | None,
    progress: Any,
    handle_signals: bool | None,
) -> Any:
    """Run ``taskset`` through Batch APIs to the end (or to Ctrl-C); a ``BatchResult``."""
    from turborun.api import BatchResult, _JournalResults

    simulator = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    report_path: Path | None = None
    checkpoint: Checkpoint | None = None
    registry: Registry | None = None
    clients: dict[str, BatchClient] = {}
    handler: logging.Handler | None = None
    try:
        if config.simulate:
            simulator, config = start_simulator(
                config, latency_s=0.05, batches={"latency_s": SIMULATED_BATCH_S}
            )
        else:
            require_keys(config, taskset.providers())
        checkpoint_dir = config.checkpoint_dir
        if run_name is None:
            tmp = tempfile.TemporaryDirectory(prefix="turborun-")
            checkpoint_dir, run_name, resume = Path(tmp.name), "run", False
        checkpoint = Checkpoint.open(checkpoint_dir, run_name, resume=resume, fresh=fresh)
        handler = attach_run_log(checkpoint.log_path)
        registry = Registry(checkpoint.folder)
        _check_registry(registry, checkpoint.folder, resume=resume, fresh=fresh)
        journal = checkpoint.journal
        previous = {cid: (e["status"], e.get("fingerprint", "")) for cid, e in journal.entries()}
        for provider in taskset.providers():
            clients[provider] = BatchClient(
                provider,
                config.api_keys.get(provider) or "missing-key",
                config.base_urls.get(provider),
                timeout_s=config.timeout_s,
            )
        settings = DriverSettings(
            max_lines=config.batch_max_lines,
            max_bytes=config.batch_max_bytes,
            poll_s=config.batch_poll_s,
            window=config.batch_window,
            max_retries=config.max_retries,
            cancel_on_interrupt=config.cancel_on_interrupt,
        )
        pricing = Pricing.load(Pricing.default_paths(Path.cwd()))
        say = _sayer(progress is not None and config.progress)
        snapshots = progress if callable(progress) else None
        driver = BatchDriver(taskset, journal, registry, clients, pricing, settings, previous,
                             say=say, on_progress=snapshots)  # fmt: skip
        meta = _meta(taskset, run_name, "running")
        checkpoint.write_meta(meta)
        restore = _install_signals(driver, handle_signals)
        try:
            metrics = driver.run()
        finally:
            restore()
        ids = [t.custom_id for t in taskset.tasks]
        results_path = None
        if output is not None:
            results_path = Path(output)
            write_results(results_path, journal.get_many(ids), run_name=run_name,
                          resumed=driver.resumed)  # fmt: skip
        state = "interrupted" if metrics.interrupted else "finished"
        checkpoint.write_meta(
            {
                **_meta(taskset, run_name, state),
                "succeeded": metrics.succeeded,
                "failed": metrics.failed,
                "skipped": metrics.skipped,
                "wall_s": round(metrics.makespan_s, 3),
            }  # fmt: skip
        )
        folder = checkpoint.folder
        if tmp is None:  # a kept checkpoint: its report, as a live run leaves one
            from turborun.api import _write_report

            report_path = _write_report(folder, journal, taskset.tasks)
    finally:
        for client in clients.values():
            client.close()
        if registry is not None:
            registry.close()
        if checkpoint is not None:
            checkpoint.close()
        if handler is not None:
            logging.getLogger("turborun").removeHandler(handler)
            handler.close()
        if simulator is not None:
            simulator.stop()
    return BatchResult(
        results=_JournalResults(folder, ids, driver.resumed, tmp),
        metrics=metrics,
        run_name=run_name,
        checkpoint=folder,
        results_path=results_path,
        interrupted=metrics.interrupted,
        stopped_by=metrics.stopped_by,
        report_path=report_path,
    )


def _check_registry(registry: Registry, folder: Path, *, resume: bool, fresh: bool) -> None:
    """Batches of an earlier run still at the provider: only --resume may go on
    (collecting them); --fresh abandons them (they run on, and are billed)."""
    active = registry.active()
    if fresh:
        if active:
            ids = ", ".join(str(r.get("batch_id") or r["marker"]) for r in active[:5])
            log.warning("--fresh abandons %d batch(es) of the earlier run: %s", len(active), ids)
        registry.clear()
    elif active and not resume:
        raise CheckpointError(
            f"checkpoint {folder} has {len(active)} batch(es) at the provider; use --resume "
            "to collect them or --fresh to abandon them"
        )


def _meta(taskset: TaskSet, run_name: str, state: str) -> dict[str, Any]:
    return {"run_name": run_name, "tasks_file": str(taskset.path) if taskset.path else None,
            "total": len(taskset.tasks), "pid": os.getpid(), "state": state,
            "via": "batch"}  # fmt: skip


def _sayer(enabled: bool) -> Any:
    def say(message: str) -> None:
        log.info("%s", message)
        if enabled:
            print(f"turborun: {message}", file=sys.stderr, flush=True)

    return say


def _install_signals(driver: BatchDriver, handle: bool | None) -> Any:
    """First SIGINT/SIGTERM: detach (or cancel) and stop; a second SIGINT exits at once
    (every journal and registry commit is atomic)."""
    if handle is None:
        handle = threading.current_thread() is threading.main_thread()
    if not handle:
        return lambda: None

    def on_signal(signum: int, frame: Any) -> None:
        if driver.stop.is_set() and signum == signal.SIGINT:
            os._exit(130)
        driver.request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, previous in old.items():
            signal.signal(s, previous)

    return restore
