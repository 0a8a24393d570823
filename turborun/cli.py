"""Command line: argv → Config → execute_batch → exit code. The only sys.exit.

Exit codes: 0 all succeeded; 1 some failed or were skipped; 2 bad input, bad
configuration, refused checkpoint or results path (nothing sent); 4 a file could
not be written during or after the run (a full disk while journaling, the results
file): the checkpoint holds everything journaled and the printed --resume command
finishes the run; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from turborun.config import BACKENDS, STRATEGIES, VIAS, load_config
from turborun.exceptions import InputError, TurborunError
from turborun.metrics import summary_table
from turborun.status import DONE_STATUSES

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WRITE_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 4, 130
EXIT_HELD = 3  # stopped with work pending that --resume can finish (a spend cap, the account)
# Flags that do not belong in the printed resume command.
_NOT_RESUMED = ("--resume", "--fresh", "--accept-lost-journal")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m turborun")
    sub = parser.add_subparsers(dest="command", required=True)
    batch = sub.add_parser("batch", help="run a task file")
    batch.add_argument("tasks", type=Path, help="the task file (JSONL)")
    batch.add_argument("-o", "--output", type=Path, help="results file")
    mode = batch.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run's checkpoint")
    mode.add_argument("--fresh", action="store_true", help="discard the run's checkpoint")
    batch.add_argument(
        "--run-name",
        help="checkpoint name: letters, digits, '.', '_', '-' (default: task file name)",
    )
    batch.add_argument(
        "--accept-lost-journal",
        action="store_true",
        help="run a checkpoint whose journal is missing or empty although run.json "
        "records work done (every task not journaled is sent again)",
    )
    batch.add_argument(
        "--workers",
        type=int,
        help="requests in flight, fixed (default: auto, 120 to start, sized by rate x latency)",
    )
    batch.add_argument(
        "--max-in-flight", type=int, help="ceiling of the auto sizing (default 8192)"
    )
    batch.add_argument(
        "--endpoint-max-in-flight", type=int, help="cap on requests in flight per base URL"
    )
    batch.add_argument("--processes", type=int, help="worker processes (default min(8, CPUs))")
    batch.add_argument("--strategy", choices=STRATEGIES, help="ready-queue order")
    batch.add_argument(
        "--backend", choices=BACKENDS, help="worker processes: local (default) or Ray actors"
    )
    batch.add_argument("--rpm", type=float, help="requests per minute, every model")
    batch.add_argument("--tpm", type=float, help="tokens per minute, every model")
    batch.add_argument("--max-retries", type=int, help="retries after the first attempt")
    batch.add_argument("--timeout", type=float, help="seconds per request")
    batch.add_argument(
        "--simulate",
        action="store_true",
        default=None,
        help="run against a local simulated server: no key, no cost",
    )
    batch.add_argument("--no-progress", action="store_true", help="no progress display")
    batch.add_argument("--via", choices=VIAS, help="live requests (default) or Batch APIs")
    batch.add_argument("--batch-max-lines", type=int, help="--via batch: lines per file")
    batch.add_argument("--batch-max-bytes", type=int, help="--via batch: bytes per file")
    batch.add_argument("--batch-poll", type=float, help="--via batch: first poll after S s")
    batch.add_argument("--batch-window", help="--via batch: completion window (24h)")
    batch.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        default=None,
        help="--via batch: Ctrl-C cancels the run's batches (default: leaves them running)",
    )
    batch.add_argument(
        "--flex-fallback", type=int, help="after N flex capacity errors, use the standard tier"
    )
    batch.add_argument(
        "--max-cost", type=float, help="spend cap in USD: never passed, the rest stays pending"
    )
    batch.add_argument(
        "--max-tokens-total", type=int, help="cap on tokens (prompt + output), any model"
    )
    batch.add_argument(
        "--estimate", action="store_true", help="print the estimate and send nothing"
    )
    estimate = sub.add_parser(
        "estimate", help="tokens, cost and time of a task file; sends nothing"
    )
    estimate.add_argument("tasks", type=Path, help="the task file (JSONL)")
    estimate.add_argument("--run-name", help="checkpoint name (default: task file name)")
    estimate.add_argument("--resume", action="store_true", help="only what a resume would run")
    estimate.add_argument("--json", action="store_true", help="print JSON")
    for name, kind, text in (
        ("--rpm", float, "requests per minute, every model"),
        ("--tpm", float, "tokens per minute, every model"),
        ("--workers", int, "requests in flight, fixed"),
        ("--max-in-flight", int, "ceiling of the auto sizing"),
    ):
        estimate.add_argument(name, type=kind, help=text)
    status = sub.add_parser("status", help="show a run's state from its checkpoint")
    status.add_argument("run_name", nargs="?", help="run name (default: list runs)")
    report = sub.add_parser("report", help="write report.html + report.json in a run's checkpoint")
    report.add_argument("run_name", nargs="?", help="run name (default: the latest run)")
    sim = sub.add_parser(
        "simulate", help="serve the local OpenAI-compatible simulator", add_help=False
    )
    sim.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        from turborun.simulator import main as simulate_main

        return simulate_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "batch":
            return _batch(args, argv)
        if args.command == "report":
            return _report(args)
        if args.command == "estimate":
            return _estimate(args.tasks, load_config(_estimate_flags(args)), args)
        return _status(args)
    except InputError as exc:
        from turborun.tasks import problem_lines  # the first 20, then a count

        for text in problem_lines(exc.problems):
            print(text, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing was sent", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TurborunError as exc:
        print(f"turborun: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "workers": args.workers,
        "max_in_flight": args.max_in_flight,
        "endpoint_max_in_flight": args.endpoint_max_in_flight,
        "processes": args.processes,
        "strategy": args.strategy,
        "backend": args.backend,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_retries": args.max_retries,
        "timeout_s": args.timeout,
        "simulate": args.simulate,
        "via": args.via,
        "batch_max_lines": args.batch_max_lines,
        "batch_max_bytes": args.batch_max_bytes,
        "batch_poll_s": args.batch_poll,
        "batch_window": args.batch_window,
        "cancel_on_interrupt": args.cancel_on_interrupt,
        "flex_fallback": args.flex_fallback,
        "max_cost": args.max_cost,
        "max_tokens_total": args.max_tokens_total,
        "progress": False if args.no_progress else None,
    }


def _batch(args: argparse.Namespace, argv: list[str]) -> int:
    from turborun.api import execute_batch
    from turborun.progress import ProgressDisplay

    config = load_config(_flags(args))
    if args.estimate:
        return _estimate(args.tasks, config, args)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("turborun: %(message)s"))
    logging.getLogger("turborun").addHandler(console)
    display = ProgressDisplay(enabled=config.progress)
    try:
        result = execute_batch(
            args.tasks,
            checkpoint=args.run_name,
            resume=args.resume,
            fresh=args.fresh,
            output=args.output,
            config=config,
            progress=display,
            accept_lost_journal=args.accept_lost_journal,
        )
    finally:
        display.close()
        logging.getLogger("turborun").removeHandler(console)
    print(summary_table(result.metrics))
    if result.results_path is not None:
        print(f"results: {result.results_path}")
    if result.report_path is not None:
        print(f"report: {result.report_path}")
    pending = result.metrics.pending
    if result.journal_error is not None:
        print(
            f"stopped: {pending} tasks not finished (the journal could not be written); the "
            f"checkpoint {result.checkpoint} holds everything journaled. Free space, then "
            "resume with: "
            f"{_resume_command(argv)}",
            file=sys.stderr,
        )
        return EXIT_WRITE_FAILED
    if result.results_error is not None:
        print(
            f"{result.results_error}. The checkpoint {result.checkpoint} holds every "
            f"result; write them elsewhere (nothing is sent again) with: "
            f"{_resume_command(argv, other_output=True)}",
            file=sys.stderr,
        )
        return EXIT_WRITE_FAILED
    if result.stopped_by is not None:
        again = _resume_command(argv)
        if "cap" in result.stopped_by:
            again = _resume_command(argv, drop=("--max-cost", "--max-tokens-total"))
            again += " --max-cost NEW_CAP"
        print(
            f"stopped: {result.stopped_by}. {pending} tasks not sent (pending, not failed); "
            f"the checkpoint {result.checkpoint} holds everything done.\n"
            f"continue with: {again}",
            file=sys.stderr,
        )
        return EXIT_HELD
    if result.interrupted:
        print(
            f"interrupted: {pending} tasks not finished; the checkpoint "
            f"{result.checkpoint} holds everything done.\nresume with: {_resume_command(argv)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    m = result.metrics
    return EXIT_OK if m.failed == 0 and m.skipped == 0 else EXIT_FAILED


def _without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` without these flags and their values (``--flag V``, ``--flag=V``, and
    for a short flag ``-fV``)."""
    attached = tuple(flag if len(flag) == 2 else f"{flag}=" for flag in flags)
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not arg.startswith(attached):
            kept.append(arg)
    return kept


def _estimate_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "rpm": args.rpm,
        "tpm": args.tpm,
        "workers": args.workers,
        "max_in_flight": args.max_in_flight,
    }


def _estimate(tasks: Path, config: Any, args: argparse.Namespace) -> int:
    """``estimate`` / ``batch --estimate``: print what the run would cost and take."""
    import json

    from turborun.estimate import estimate_file, render

    est = estimate_file(tasks, config, run_name=args.run_name, resume=args.resume)
    if getattr(args, "json", False):
        print(json.dumps(est.as_dict(), indent=1))
    else:
        print(render(est))
    return EXIT_OK


def _resume_command(
    argv: list[str], *, other_output: bool = False, drop: tuple[str, ...] = ()
) -> str:
    """The command line that resumes this run, without the flags in ``drop`` (and their
    values); ``other_output``: with ``-o OTHER`` in place of the results path given (a
    placeholder for the user to fill in)."""
    again = [arg for arg in argv if arg not in _NOT_RESUMED]
    again = _without(again, *drop, *(("-o", "--output") if other_output else ()))
    command = shlex.join([sys.executable, "-m", "turborun", *again, "--resume"])
    return command + (" -o OTHER" if other_output else "")


def _status(args: argparse.Namespace) -> int:
    from turborun.checkpoint import (
        check_checkpoint_dir,
        list_runs,
        meta_problem,
        open_journal_readonly,
    )

    config = load_config({})
    if not args.run_name:
        check_checkpoint_dir(config.checkpoint_dir)
        runs = list_runs(config.checkpoint_dir)
        if not runs:
            print(f"no runs in {config.checkpoint_dir}")
        for name in runs:
            print(name)
        return EXIT_OK
    opened = open_journal_readonly(config.checkpoint_dir, args.run_name)
    if opened is None:
        runs = list_runs(config.checkpoint_dir)
        there = f"runs there: {', '.join(runs)}" if runs else "no runs there"
        print(
            f"turborun: no run {args.run_name!r} in {config.checkpoint_dir} ({there})",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    meta, journal = opened
    try:
        counts = journal.counts()
    finally:
        journal.close()
    total = meta.get("total", "?")
    done = sum(counts.values())
    state = meta.get("state", "unknown")
    problem = meta_problem(config.checkpoint_dir / args.run_name)
    if problem is not None:
        state = f"state unknown (run.json unreadable: {problem})"
    print(f"run {args.run_name}: {state} (pid {meta.get('pid')})")
    print(f"tasks file: {meta.get('tasks_file')}")
    print(
        f"journaled {done} of {total}: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in DONE_STATUSES)
    )
    from turborun.batches import describe  # --via batch: each batch and its state

    for line in describe(config.checkpoint_dir / args.run_name):
        print(line)
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    """report.html and report.json of a run, from its checkpoint alone; no lock is taken,
    so this works while the run goes on."""
    from turborun.checkpoint import list_runs, open_journal_readonly
    from turborun.report import write_report
    from turborun.report.charts import available

    config = load_config({})
    runs = list_runs(config.checkpoint_dir)
    name = args.run_name
    if not name and runs:  # the run whose journal changed last
        name = max(runs, key=lambda r: (config.checkpoint_dir / r / "journal").stat().st_mtime)
    opened = open_journal_readonly(config.checkpoint_dir, name) if name else None
    if opened is None:
        there = f"runs there: {', '.join(runs)}" if runs else "no runs there"
        print(f"turborun: no run {name or ''!r} in {config.checkpoint_dir} ({there})",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
    _, journal = opened
    try:
        files = write_report(config.checkpoint_dir / name, journal=journal)
    finally:
        journal.close()
    print(f"report: {files.html}")
    print(f"json: {files.json}")
    if not available():
        print("no charts: pip install 'turborun[report]' for them", file=sys.stderr)
    return EXIT_OK
