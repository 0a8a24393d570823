"""Worker process entry: T threads turn Calls into Outcomes.

Workers are stateless. They hold their SDK clients and nothing else: no budget,
no journal, no retry, no sleeping. Each process has its own pair of pipes to the
supervisor (a SIGKILLed process corrupts only its own channel, never a queue
shared with the others):

    supervisor ──calls pipe──► reader thread ─► SimpleQueue ─► T caller threads
    supervisor ◄─outcomes pipe── sender thread ◄─ SimpleQueue ◄─┘

The process exits on its own when the supervisor is gone: the calls pipe reads
EOF once the supervisor's end is closed (also by a kill -9), and a watchdog
notices the parent pid change as a second line of defence. Ctrl-C reaches the
whole process group: workers ignore SIGINT and let the supervisor decide.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from turborun.records import Call, Outcome

_WATCHDOG_PERIOD_S = 0.5
# The first message of every process: an Outcome for no node, meaning "ready".
_HELLO = Outcome("", 0, None, None, None, None)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    threads: int
    timeout_s: float
    base_urls: dict[str, str]
    api_keys: dict[str, str] = field(repr=False)  # crosses to the child in memory only


def worker_main(
    settings: WorkerSettings,
    calls: Connection,
    outcomes: Connection,
    environ: dict[str, str] | None = None,
) -> None:
    """Serve Calls until the supervisor says stop (None) or disappears.

    ``environ``: the supervisor's environment when this process was started. A
    fork-server child would otherwise see the environment the fork server had
    when it started, and Python steps that read variables would see stale ones.
    """
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from turborun.providers import Providers  # after start: clients belong to this process

    providers = Providers(settings.api_keys, settings.base_urls, settings.timeout_s)
    providers.warm_up()  # before the hello: a run's clock starts with clients ready
    inbox: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
    outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    parent = os.getppid()

    def serve() -> None:
        while True:
            call = inbox.get()
            if call is None:
                return
            outbox.put(providers.call(call))

    def send() -> None:
        while True:
            batch = [outbox.get()]
            while True:
                try:
                    batch.append(outbox.get(block=False))
                except queue.Empty:
                    break
            try:
                outcomes.send(batch)
            except (OSError, ValueError):
                os._exit(0)  # supervisor gone: stop, do not send more requests

    def watchdog() -> None:
        while True:
            time.sleep(_WATCHDOG_PERIOD_S)
            if os.getppid() != parent:
                os._exit(0)

    for target in [serve] * settings.threads + [send, watchdog]:
        threading.Thread(target=target, daemon=True).start()
    outbox.put(_HELLO)  # ready: modules imported, threads started
    while True:
        try:
            message = calls.recv()
        except (EOFError, OSError):
            os._exit(0)
        if message is None:
            os._exit(0)
        for call in message:
            inbox.put(call)
