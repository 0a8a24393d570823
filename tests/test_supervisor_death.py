"""Workers must not outlive a SIGKILLed supervisor (they would keep spending)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


def test_workers_exit_within_5s_of_supervisor_sigkill(tmp_path):
    tasks = tmp_path / "slow.jsonl"
    tasks.write_text("".join(f'{{"custom_id": "s{i}", "fn": "steps:slow"}}\n' for i in range(8)))
    env = {
        **os.environ,
        "STEP_DIR": str(tmp_path),
        "PYTHONPATH": f"{TESTS}:{ROOT}",
        "TURBORUN_CHECKPOINT_DIR": str(tmp_path / "ck"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "turborun",
            "batch",
            str(tasks),
            "--workers",
            "4",
            "--processes",
            "2",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = {int(p.read_text()) for p in tmp_path.glob("pid-*") if p.read_text()}
            time.sleep(0.05)
        assert len(pids) == 2, "both worker processes should be running steps"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        while any(_alive(p) for p in pids) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "workers outlived the supervisor by 5 s"
    finally:
        if proc.poll() is None:
            proc.kill()
