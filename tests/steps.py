"""Python steps (``fn``) used by the tests; imported inside worker processes.

Steps that need a scratch folder read it from STEP_DIR, which the tests set
before the workers start (spawned workers inherit the environment).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def _dir() -> Path:
    return Path(os.environ["STEP_DIR"])


def echo(deps: dict[str, Any]) -> dict[str, Any]:
    """Return what the step received, so a test can check it."""
    return {
        "deps": sorted(deps),
        "texts": {k: v["text"] for k, v in deps.items()},
        "values": {k: v["value"] for k, v in deps.items()},
    }


def answer(deps: dict[str, Any]) -> str:
    return "42"


def record_order(deps: dict[str, Any]) -> str:
    """Append a line to STEP_DIR/order when run: the order steps actually ran in."""
    with open(_dir() / "order", "a") as f:
        f.write(f"{time.monotonic():.6f} {os.getpid()} {sorted(deps)}\n")
    time.sleep(0.05)
    return "ok"


def fail(deps: dict[str, Any]) -> str:
    raise ValueError("this step always fails")


def slow(deps: dict[str, Any]) -> str:
    """Write our pid, then take a while: a test kills the process meanwhile."""
    (_dir() / f"pid-{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(1.0)
    return f"done by {os.getpid()}"


def die_once(deps: dict[str, Any]) -> str:
    """SIGKILL our own worker process the first time, succeed the second."""
    marker = _dir() / "died"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return f"survived in {os.getpid()}"


def always_die(deps: dict[str, Any]) -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def noop(deps: dict[str, Any]) -> None:
    return None


def exits(deps: dict[str, Any]) -> str:
    raise SystemExit(3)


def interrupts(deps: dict[str, Any]) -> str:
    raise KeyboardInterrupt


def sleeps_a_minute(deps: dict[str, Any]) -> str:
    """Runs far past any test's --timeout; threads cannot be stopped."""
    time.sleep(60)
    return "too late"
