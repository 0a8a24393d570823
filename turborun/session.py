"""The resources of one run, opened and closed in order: simulator (``--simulate``),
API keys check, checkpoint (lock, journal, log file), budgets, pricing, the
latency model and the worker pool. Shared by ``execute_batch`` and ``Runner``."""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from turborun.budget import Budget
from turborun.checkpoint import Checkpoint
from turborun.config import Config, require_keys
from turborun.exceptions import WorkerStartError
from turborun.latency import LatencyModel
from turborun.pool import MAIN_GUARD_HINT, WorkerPool
from turborun.pricing import Pricing
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
    ) -> None:
        self.config = config
        self.run_name = run_name
        self._resume = resume
        self._fresh = fresh
        self._providers = set(providers)
        self.checkpoint: Checkpoint | None = None
        self.pool: WorkerPool | None = None
        self.simulator: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_handler: logging.Handler | None = None
        self.budget: Budget | None = None
        self.latency: LatencyModel | None = None

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
        config = self.config
        if config.simulate:
            self._start_simulator()
        else:
            require_keys(config, self._providers)
        checkpoint_dir = config.checkpoint_dir
        if self.run_name is None:  # Python API without a checkpoint name: a private one
            self._tmp = tempfile.TemporaryDirectory(prefix="turborun-")
            checkpoint_dir = Path(self._tmp.name)
            self.run_name = "run"
        self.checkpoint = Checkpoint.open(
            checkpoint_dir, self.run_name, resume=self._resume, fresh=self._fresh
        )
        self._attach_log(self.checkpoint.log_path)
        self.budget = Budget(
            config.limit_for,
            breaker_failures=config.breaker_failures,
            breaker_cooldown_s=config.breaker_cooldown_s,
        )
        self.pricing = Pricing.load(Pricing.default_paths(Path.cwd()))
        self.latency = LatencyModel(config.checkpoint_dir / "_latency.json")
        processes = max(1, min(config.processes, config.workers))
        threads = math.ceil(config.workers / processes)
        settings = WorkerSettings(
            threads=threads,
            timeout_s=config.timeout_s,
            base_urls=dict(config.base_urls),
            api_keys=dict(config.api_keys),
        )
        self.pool = WorkerPool(processes, threads, settings)
        self.pool.launch()  # the supervisor waits for it when it has work
        log.info(
            "run %s: %d workers in %d processes, strategy %s",
            self.run_name,
            config.workers,
            processes,
            config.strategy,
        )

    def _start_simulator(self) -> None:
        from turborun.simulator import Simulator

        self.simulator = Simulator(latency_s=0.05, latency_per_token_s=0.0005).start()
        self.config.base_urls = {
            "openai": self.simulator.openai_base_url,
            "groq": self.simulator.base_url,
        }
        self.config.api_keys = {"openai": SIMULATOR_KEY, "groq": SIMULATOR_KEY}

    def _attach_log(self, path: Path) -> None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("turborun")
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        self._log_handler = handler

    def supervisor(
        self,
        body_of: Callable[[Task], dict[str, Any]],
        on_done: DoneCallback | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Supervisor:
        assert self.checkpoint is not None and self.pool is not None
        assert self.budget is not None and self.latency is not None
        return Supervisor(
            self.config,
            self.checkpoint.journal,
            self.budget,
            self.pricing,
            self.latency,
            body_of=body_of,
            pool=self.pool,
            on_done=on_done,
            on_progress=on_progress,
        )

    def kill_workers(self) -> None:
        if self.pool is not None:
            self.pool.kill()

    def close(self) -> None:
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
