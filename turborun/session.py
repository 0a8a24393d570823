"""The resources of one run, opened and closed in order: simulator (``--simulate``),
API keys check, checkpoint (lock, journal, log file), budgets, pricing, the
latency model and the worker pool. Shared by ``execute_batch`` and ``Runner``."""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from turborun.budget import Budget
from turborun.checkpoint import Checkpoint
from turborun.concurrency import InFlightTarget
from turborun.config import Config, require_keys
from turborun.endpoints import Endpoints
from turborun.exceptions import CheckpointError, WorkerStartError
from turborun.fdlimit import RESERVED_FDS, raise_open_file_limit, sockets_per_process
from turborun.latency import LatencyModel
from turborun.pool import MAIN_GUARD_HINT, WorkerPool
from turborun.pricing import Pricing
from turborun.spend import SpendCaps
from turborun.supervisor import DoneCallback, Progress, Supervisor
from turborun.tasks import Task
from turborun.worker import WorkerSettings

log = logging.getLogger("turborun")

SIMULATOR_KEY = "sk-simulated-no-cost"


class RunSession:
    def __init__(
        self,
        config: Config,
        run_name: str | None,
        *,
        resume: bool,
        fresh: bool,
        providers: Iterable[str],
        accept_lost_journal: bool = False,
    ) -> None:
        self.config = config
        self.run_name = run_name
        self._resume = resume
        self._fresh = fresh
        self._accept_lost_journal = accept_lost_journal
        self._providers = set(providers)
        self.checkpoint: Checkpoint | None = None
        self.pool: WorkerPool | None = None
        self.simulator: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_handler: logging.Handler | None = None
        self.budget: Budget | None = None
        self.latency: LatencyModel | None = None
        self.target: InFlightTarget | None = None
        self._supervisor: Supervisor | None = None

    def __enter__(self) -> RunSession:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        if getattr(mp.current_process(), "_inheriting", False):
            # A worker process importing the user's unguarded script: starting a run
            # here would open checkpoints and spawn processes from inside a worker.
            raise WorkerStartError(
                "a run cannot start inside a worker process that is importing the main module; "
                f"{MAIN_GUARD_HINT}"
            )
        if self.config.simulate:
            self._start_simulator()
        else:
            require_keys(self.config, self._providers)
        config = self.config
        checkpoint_dir = config.checkpoint_dir
        if self.run_name is None:  # Python API without a checkpoint name: a private one
            self._tmp = tempfile.TemporaryDirectory(prefix="turborun-")
            checkpoint_dir = Path(self._tmp.name)
            self.run_name = "run"
            self._resume = False  # nothing to resume in a folder made just now
        self.checkpoint = Checkpoint.open(
            checkpoint_dir,
            self.run_name,
            resume=self._resume,
            fresh=self._fresh,
            accept_lost_journal=self._accept_lost_journal,
        )
        self._attach_log(self.checkpoint.log_path)
        self.budget = Budget(
            config.limit_for,
            breaker_failures=config.breaker_failures,
            breaker_cooldown_s=config.breaker_cooldown_s,
        )
        self.pricing = Pricing.load(Pricing.default_paths(Path.cwd()))
        # Beside the checkpoints: a private run's temporary folder keeps its own, so a run
        # without a checkpoint name writes nothing into the caller's working directory.
        self.latency = LatencyModel(checkpoint_dir / "_latency.json")
        start = config.start_workers
        processes = max(1, min(config.processes, start))
        self.target = _in_flight_target(config, processes)
        settings = WorkerSettings(
            fn_threads=math.ceil(start / processes),
            timeout_s=config.timeout_s,
            base_urls=dict(config.base_urls),
            api_keys=dict(config.api_keys),
        )
        if config.backend == "ray":  # Ray is imported only when chosen
            from turborun.ray_pool import RayPool

            self.pool = RayPool(processes, settings)  # type: ignore[assignment]
        else:
            self.pool = WorkerPool(processes, settings)
        self.pool.launch()  # the supervisor waits for it when it has work
        sizing = "fixed" if config.workers is not None else f"auto, ceiling {self.target.ceiling}"
        log.info(
            "run %s: %d requests in flight to start (%s) in %d processes, strategy %s",
            self.run_name,
            self.target.value,
            sizing,
            processes,
            config.strategy,
        )

    def _start_simulator(self) -> None:
        self.simulator, self.config = start_simulator(
            self.config, latency_s=0.05, latency_per_token_s=0.0005
        )

    def _attach_log(self, path: Path) -> None:
        self._log_handler = attach_run_log(path)

    def supervisor(
        self,
        body_of: Callable[[Task], dict[str, Any]],
        on_done: DoneCallback | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        spend: SpendCaps | None = None,
    ) -> Supervisor:
        assert self.checkpoint is not None and self.pool is not None
        assert self.budget is not None and self.latency is not None
        assert self.target is not None
        config = self.config
        endpoints = Endpoints(
            config.endpoints_for,
            config.endpoint_cap,
            default_label=lambda provider: config.base_urls.get(provider) or provider,
            clock=time.monotonic,
        )
        self._supervisor = Supervisor(
            self.config,
            self.checkpoint.journal,
            self.budget,
            self.pricing,
            self.latency,
            body_of=body_of,
            pool=self.pool,
            target=self.target,
            endpoints=endpoints,
            on_done=on_done,
            on_progress=on_progress,
            spend=spend,
        )
        return self._supervisor

    def kill_workers(self) -> None:
        if self.pool is not None:
            self.pool.kill()

    def close(self) -> None:
        if self._supervisor is not None:  # its run is over and its wakers are gone
            self._supervisor.close()
            self._supervisor = None
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        if self.latency is not None:
            self.latency.save()
        if self._log_handler is not None:
            logging.getLogger("turborun").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if self.checkpoint is not None:
            self.checkpoint.close()
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None

    def cleanup_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _QuietFileHandler(logging.FileHandler):
    """run.log on a disk that fills up: a failed write drops that record instead of
    printing a logging traceback for each one (the journal reports the full disk)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


def _in_flight_target(config: Config, processes: int) -> InFlightTarget:
    """The run's in-flight target, its ceiling bounded by the open-file limit: the soft
    limit is raised toward the hard one first (worker processes raise their own too)."""
    ceiling = config.max_in_flight if config.workers is None else config.workers
    per_process = math.ceil(ceiling / processes) + RESERVED_FDS
    soft, hard = raise_open_file_limit(per_process)
    allowed = processes * sockets_per_process(soft)
    if allowed < ceiling:
        log.warning(
            "the open-file limit (soft %d, hard %d) allows at most %d requests in flight "
            "on %d processes, not %d: raise it (ulimit -n) or use more --processes",
            soft,
            hard,
            allowed,
            processes,
            ceiling,
        )
        ceiling = allowed
    if config.workers is not None:
        return InFlightTarget(start=ceiling, ceiling=ceiling, fixed=ceiling)
    return InFlightTarget(start=config.start_workers, ceiling=ceiling)


def start_simulator(config: Config, **options: Any) -> tuple[Any, Config]:
    """``--simulate``: the simulator (``options`` are Simulator's), and the run's own copy
    of ``config`` pointing at it (the caller's keeps its URLs and keys)."""
    from turborun.simulator import Simulator

    simulator = Simulator(**options).start()
    pointed = dataclasses.replace(
        config,
        base_urls={"openai": simulator.openai_base_url, "groq": simulator.base_url},
        api_keys={"openai": SIMULATOR_KEY, "groq": SIMULATOR_KEY},
    )
    return simulator, pointed


def attach_run_log(path: Path) -> logging.Handler:
    """The run log (INFO and up of the "turborun" logger) in the checkpoint folder; a
    write that fails later (a full disk) is dropped, never a traceback."""
    try:
        handler = _QuietFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot open the run log {path}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("turborun")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler
