"""Resume and journaling cost at scale: 100,000 chat requests against the simulator
(20 ms latency, no limits, 120 workers).

Phases, each in a fresh process so that peak RSS is per phase:

* first   execute_batch of the whole file: wall time, throughput, supervisor peak RSS.
* resume  ``resume=True`` on the finished checkpoint: wall time (target ≤ 10 s); it
          must send nothing (the simulator's request log must not grow).
* memory  the same first run with the journal kept in memory (a Journal whose
          record_many stores the encoded entries in a dict): "the same run without
          a checkpoint", run before the first run in the same way; the ratio of the
          two throughputs is the journaling cost (target <= 10 %).
* journal the supervisor's own group commits are timed during the first run
          (Journal.record_many wrapped with a timer in that process); then the
          run's entries written again with ``Journal.record_many`` into a
          fresh journal, in groups as the supervisor commits them (one transaction
          per wake-up), timed per group size and set against the first run's wall
          time (target ≤ 10 %).

turborun has no user-facing mode without a durable checkpoint; the memory phase
swaps the journal class in its own process only. The journal is written by the
supervisor's one thread, so its time is time the supervisor loop cannot spend
elsewhere; the script also reports that fraction of wall time.

Also: journal size on disk and results file size.

Usage: python scripts/bench_resume.py [--tasks 100000] [--latency-ms 20]
       [--workers 120] [--processes P] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "bench-resume"
RUN = "bench"
GROUP_SIZES = (1, 16, 64, 256)
_SINGLE_SAMPLE = 20_000  # group size 1 is timed on this many entries and scaled


def _write_tasks(path: Path, count: int) -> None:
    with open(path, "wb", buffering=1 << 20) as file:
        for i in range(count):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"question number {i}: say hi"}],
                "max_tokens": 16,
            }
            file.write(orjson.dumps({"custom_id": f"q{i}", "body": body}) + b"\n")


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _time_journal_writes() -> dict[str, float]:
    """Time every Journal.record_many of this process (the supervisor's group commits)."""
    from turborun.checkpoint import Journal

    spent = {"s": 0.0, "calls": 0, "entries": 0}
    record_many = Journal.record_many

    def timed(self: Journal, entries: Any) -> None:
        started = time.perf_counter()
        try:
            record_many(self, entries)
        finally:
            spent["s"] += time.perf_counter() - started
            spent["calls"] += 1
            spent["entries"] += len(entries)

    Journal.record_many = timed  # type: ignore[method-assign]
    return spent


def _journal_in_memory() -> None:
    """Swap the checkpoint's journal for one that keeps entries in a dict (this process
    only): the run is then the same run without a durable checkpoint."""
    from turborun import checkpoint
    from turborun.checkpoint import Journal, decode_entry, encode_entry

    class MemoryJournal(Journal):
        def __init__(self, directory: Path) -> None:
            super().__init__(directory)
            self._memory: dict[str, bytes] = {}

        def record_many(self, entries: Any) -> None:
            for custom_id, entry in entries:
                self._memory[custom_id] = encode_entry(entry)

        def get(self, custom_id: str) -> dict[str, Any] | None:
            value = self._memory.get(custom_id)
            return None if value is None else decode_entry(value)

        def _raw_rows(self) -> Any:
            return iter(list(self._memory.items()))

        def _raw_values(self, custom_ids: list[str]) -> dict[str, bytes]:
            return {cid: self._memory[cid] for cid in custom_ids if cid in self._memory}

        def __len__(self) -> int:
            return len(self._memory)

    checkpoint.Journal = MemoryJournal  # type: ignore[misc]


def _phase_run(work: Path, phase: str, workers: int, processes: int | None) -> dict[str, Any]:
    from turborun import execute_batch

    resume = phase == "resume"
    if phase == "memory":
        _journal_in_memory()
    journal_writes = _time_journal_writes()
    settings: dict[str, Any] = {"workers": workers, "checkpoint_dir": str(work / "checkpoints")}
    if processes:
        settings["processes"] = processes
    started = time.perf_counter()
    result = execute_batch(
        work / "tasks.jsonl",
        checkpoint=RUN + "-memory" if phase == "memory" else RUN,
        resume=resume,
        fresh=not resume,
        output=work / "tasks.results.jsonl",
        handle_signals=False,
        **settings,
    )
    wall_s = time.perf_counter() - started
    m = result.metrics
    return {
        "wall_s": wall_s,
        "makespan_s": m.makespan_s,
        "throughput": m.throughput,
        "succeeded": m.succeeded,
        "failed": m.failed,
        "resumed": m.resumed,
        "completed": m.completed,
        "utilization": m.utilization,
        "supervisor_peak_rss_mib": _peak_rss_mib(resource.RUSAGE_SELF),
        "journal_write_s": journal_writes["s"],
        "journal_commits": journal_writes["calls"],
        "journal_entries": journal_writes["entries"],
    }


def _phase_journal(work: Path) -> dict[str, Any]:
    from turborun.checkpoint import Journal

    source = Journal(work / "checkpoints" / RUN / "journal")
    try:
        entries = []
        for custom_id, entry in source.entries():
            body = entry.get("body")
            if body is not None and not isinstance(body, str):
                entry["body"] = orjson.dumps(body)  # as the supervisor holds it: raw bytes
            entries.append((custom_id, entry))
    finally:
        source.close()
    timings: dict[str, float] = {}
    for size in GROUP_SIZES:
        sample = entries[:_SINGLE_SAMPLE] if size == 1 else entries
        folder = Path(tempfile.mkdtemp(prefix="journal-", dir=work))
        journal = Journal(folder)
        started = time.perf_counter()
        for i in range(0, len(sample), size):
            journal.record_many(sample[i : i + size])
        elapsed = time.perf_counter() - started
        journal.close()
        shutil.rmtree(folder)
        timings[str(size)] = elapsed * len(entries) / len(sample)
    return {"entries": len(entries), "record_many_s": timings}


def _child(args: argparse.Namespace) -> int:
    work = Path(args.dir)
    if args.phase == "journal":
        figures = _phase_journal(work)
    else:
        figures = _phase_run(work, args.phase, args.workers, args.processes)
    print("FIGURES " + json.dumps(figures), flush=True)
    return 0


def _run_phase(phase: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--dir", str(work)]
    command += ["--workers", str(args.workers)]
    if args.processes:
        command += ["--processes", str(args.processes)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"phase {phase} failed ({done.returncode})")
    line = next(x for x in done.stdout.splitlines() if x.startswith("FIGURES "))
    figures = json.loads(line.removeprefix("FIGURES "))
    figures["process_s"] = process_s
    return figures


def _size_mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _log_lines(path: str) -> int:
    with open(path, "rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


def _parent(args: argparse.Namespace) -> int:
    from turborun.simulator import Simulator

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    tasks = work / "tasks.jsonl"
    _write_tasks(tasks, args.tasks)
    log_path = work / "simulator.log"
    log_path.unlink(missing_ok=True)
    with Simulator(latency_s=args.latency_ms / 1000, log_path=log_path) as sim:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TURBORUN_", "OPENAI_", "GROQ_"))
        }
        env.update(
            OPENAI_BASE_URL=sim.openai_base_url,
            OPENAI_API_KEY="sk-bench-resume",
            PYTHONPATH=str(ROOT),
        )
        memory = _run_phase("memory", args, work, env)
        sent_memory = _log_lines(sim.log_path)
        first = _run_phase("first", args, work, env)
        sent_first = _log_lines(sim.log_path) - sent_memory
        resume = _run_phase("resume", args, work, env)
        sent_resume = _log_lines(sim.log_path) - sent_first - sent_memory
    journal = _phase_after(args, work, env)
    _report(args, work, memory, first, resume, journal, sent_first, sent_resume)
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _phase_after(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict:
    figures = _run_phase("journal", args, work, env)
    figures["journal_mib"] = _size_mib(work / "checkpoints" / RUN / "journal")
    figures["results_mib"] = _size_mib(work / "tasks.results.jsonl")
    return figures


def _report(
    args: argparse.Namespace,
    work: Path,
    memory: dict,
    first: dict,
    resume: dict,
    journal: dict,
    sent_first: int,
    sent_resume: int,
) -> None:
    n = args.tasks
    wall = first["makespan_s"]
    print(f"bench_resume: {n} tasks, {args.latency_ms} ms latency, {args.workers} workers")
    print(
        f"(a) first run: {first['succeeded']} succeeded, {first['failed']} failed; "
        f"makespan {wall:.1f} s, execute_batch {first['wall_s']:.1f} s, "
        f"process {first['process_s']:.1f} s; throughput {first['throughput']:.0f} tasks/s "
        f"(utilization {first['utilization']:.0%}); requests at the simulator {sent_first}"
    )
    ok = "OK" if resume["wall_s"] <= 10 and sent_resume == 0 else "MISSED"
    print(
        f"(b) resume of the finished run: execute_batch {resume['wall_s']:.2f} s, "
        f"process {resume['process_s']:.2f} s, {resume['resumed']} resumed, "
        f"requests sent {sent_resume} (target <= 10 s, 0 sent: {ok})"
    )
    cost = 1 - first["throughput"] / memory["throughput"] if memory["throughput"] else 0.0
    print(
        f"(c) the same run with the journal in memory: makespan {memory['makespan_s']:.1f} s, "
        f"throughput {memory['throughput']:.0f} tasks/s; with the diskcache journal "
        f"{first['throughput']:.0f} tasks/s: journaling costs {cost:.1%} of throughput "
        f"({'OK' if cost <= 0.10 else 'over 10 %'})"
    )
    commits = first["journal_commits"]
    share = first["journal_write_s"] / wall if wall else 0.0
    print(
        f"    journaling in the first run: {first['journal_write_s']:.2f} s in {commits} "
        f"group commits (mean {first['journal_entries'] / max(commits, 1):.1f} entries each) "
        f"= {share:.1%} of the makespan (time the loop spent, not all of it lost: "
        f"SQLite releases the GIL and the workers keep going)"
    )
    print("    the same entries written again with Journal.record_many, by group size:")
    for size, seconds in journal["record_many_s"].items():
        share = seconds / wall if wall else 0.0
        print(
            f"    groups of {size:>3}: {seconds:6.2f} s ({seconds / n * 1e6:.0f} us/entry) "
            f"= {share:6.1%} of the first run's makespan"
        )
    for label, figures in (("first", first), ("resume", resume)):
        peak = figures["supervisor_peak_rss_mib"]
        print(
            f"(d) peak RSS, {label}: supervisor {peak:.0f} MiB "
            f"({'OK' if peak <= 500 else 'over 500 MiB'})"
        )
    print(
        f"(e) journal on disk {journal['journal_mib']:.1f} MiB "
        f"({journal['journal_mib'] * 2**20 / n:.0f} B/task); "
        f"results file {journal['results_mib']:.1f} MiB; work dir {work}"
        + ("" if args.dir else " (removed)")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=120)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--dir", default=None, help="work folder (kept); default: a temp one")
    phases = ("memory", "first", "resume", "journal")
    parser.add_argument("--phase", choices=phases, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return _child(args) if args.phase else _parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
