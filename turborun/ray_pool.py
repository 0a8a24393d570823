"""The worker pool on a Ray cluster (``--backend ray``): pool.py's interface, Ray actors
instead of local processes.

    supervisor (driver) ──socket per actor──► actor on any node: worker.py's worker_main
        │   ▲                                   (event loop for HTTP, threads for steps)
        │   └── one wait: actor sockets + this pool's wake-up pipe + the supervisor's own
        │                       ▲
        │        Ray callbacks ─┤ an actor ended (its ``serve`` ObjectRef resolved or failed)
        │                       │ a step with resources finished (a Ray task's ObjectRef)
        │                       │ an actor connected back (the accept thread)
        └── steps asking for num_cpus / num_gpus / memory ──► Ray tasks Ray places

Each actor runs worker.py's ``worker_main`` unchanged over one TCP connection back to
the driver (authenticated with a random key, as multiprocessing's listeners are), so
Calls and Outcomes travel exactly as they do over a local process's pipes and the
supervisor still blocks in one ``multiprocessing.connection.wait``. Ray's own results
(an actor's end, a placed step's outcome) arrive through ``ObjectRef.future()``
callbacks that put them in a queue and write a byte to this pool's wake-up pipe,
which is one of the handles of that same wait: nothing polls.

The API keys never enter Ray: the driver sends the worker settings (keys included)
over the actor's authenticated connection after it has started, so they are in no
actor constructor argument, runtime_env, job metadata or Ray log.

Actors are not detached and belong to the driver: when the driver dies (even kill -9)
Ray ends them with its job, and each actor also exits when its connection reads EOF.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge, wait
from typing import Any

from turborun.exceptions import WorkerStartError
from turborun.pool import PoolEvents
from turborun.records import FN_PROVIDER, Call, Outcome
from turborun.worker import RECYCLE_ATTEMPT, WorkerSettings, worker_main

log = logging.getLogger("turborun")

RAY_MISSING = "--backend ray needs Ray: pip install 'turborun[ray]'"
NAMESPACE = "turborun"  # Ray namespace of the worker actors' names
ACTOR_PREFIX = "turborun-worker-"  # + driver pid, a counter and a random suffix
_CONNECT_TIMEOUT_S = 60.0  # an actor that cannot reach the driver gives up


class TurborunWorker:
    """A Ray actor holding one worker process's share of the Calls. Its ``serve`` runs
    worker.py's loop for the actor's whole life, so the ObjectRef of that one method
    call resolves (or fails) exactly when the actor ends: the pool's death signal."""

    def serve(self, address: tuple[str, int], authkey: bytes, token: str) -> None:
        sock = socket.create_connection(address, timeout=_CONNECT_TIMEOUT_S)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock.detach())
        answer_challenge(conn, authkey)
        deliver_challenge(conn, authkey)
        import ray

        conn.send((token, ray.get_runtime_context().get_node_id()))
        settings: WorkerSettings = conn.recv()  # the keys arrive here, never through Ray
        worker_main(settings, conn, conn)


def _ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except ValueError:  # sys.modules["ray"] is None: imports of ray are blocked
        return False


def run_placed_step(call: Call) -> Outcome:
    """A Python step that asked for resources, as a Ray task Ray places. Bounded by its
    Call's timeout as on the local pool: past it the task returns a failure (its
    resources go back to Ray) and the step's thread, which cannot be stopped, is left
    to finish in the Ray worker process. Any exception, SystemExit included, is the
    step's failure."""
    import threading
    import time

    from turborun.providers import Providers
    from turborun.worker import _describe, _step_failure

    start = time.perf_counter()
    result: list[Outcome] = []

    def run() -> None:
        try:
            result.append(Providers({}, {}, call.timeout_s).call(call))
        except BaseException as error:  # SystemExit, KeyboardInterrupt, ...: its failure
            result.append(_step_failure(call.custom_id, call.attempt, _describe(error), start))

    thread = threading.Thread(target=run, name=f"turborun-step-{call.custom_id}", daemon=True)
    thread.start()
    thread.join(call.timeout_s)
    if result:
        return result[0]
    message = (
        f"Python step still running after the {call.timeout_s:g} s timeout (--timeout): "
        "failed; its thread cannot be stopped and is left to finish"
    )
    return _step_failure(call.custom_id, call.attempt, message, start)


@dataclass(slots=True)
class _Slot:
    actor: Any
    token: str  # names the connection the actor opens back to us
    conn: Connection | None = None  # None until the actor has connected
    backlog: list[Call] = field(default_factory=list)  # handed over before it connected
    held: dict[str, Call] = field(default_factory=dict)
    steps: int = 0  # Python steps among ``held``
    ref: Any = None  # the ObjectRef of its serve(): resolves or fails when the actor ends
    hello: bool = False  # worker_main is ready
    draining: bool = False  # asked to be recycled (worker.py): no new Calls, then ended
    node: str = ""  # the Ray node id it runs on, once connected
    ended: bool = False


class RayPool:
    """``WorkerPool``'s interface (launch, wait_started, send, wait, in_flight,
    steps_in_flight, fn_slots, shutdown, kill) over Ray actors spread across the
    cluster's nodes. ``RAY_ADDRESS`` joins an existing cluster; otherwise a local Ray
    starts (and stops with the pool)."""

    def __init__(self, processes: int, settings: WorkerSettings) -> None:
        if not _ray_installed():  # said before the run opens anything
            raise WorkerStartError(RAY_MISSING)
        self._processes = processes
        self._settings = settings
        self._slots: list[_Slot] = []
        self._placed: dict[str, Call] = {}  # steps running as Ray tasks, by custom_id
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_lock = threading.Lock()  # no write after the pipe is closed
        self._closed = False
        self._authkey = secrets.token_bytes(32)
        self._server: socket.socket | None = None
        self._address: tuple[str, int] = ("", 0)
        self._ray: Any = None
        self._owns_ray = False
        self._actor_class: Any = None
        self._step_task: Any = None
        self._started = False
        self._launcher: threading.Thread | None = None
        self._launched = threading.Event()
        self._stopped = threading.Event()
        self._launch_error: BaseException | None = None
        self._spawned = 0
        self._placing = ""  # the node the actor being spawned is meant for
        self.deaths = 0

    # ---- start -----------------------------------------------------------------

    @property
    def processes(self) -> int:
        return self._processes

    @property
    def fn_slots(self) -> int:
        """Python steps the actors run at once (steps placed by Ray not counted apart:
        Ray queues them until their resources are free)."""
        return self._processes * self._settings.fn_threads

    def start(self, timeout_s: float = 120.0) -> None:
        self._launch()
        self.wait_started(timeout_s)

    def launch(self) -> None:
        """Connect to Ray and create the actors from a thread: a local Ray takes
        seconds to start, which overlap reading the journal and building the graph."""
        self._launcher = threading.Thread(
            target=self._launch, args=(True,), name="turborun-ray-launch", daemon=True
        )
        self._launcher.start()

    def _launch(self, hold: bool = False) -> None:
        try:
            self._connect_ray()
            self._listen()
            for _ in range(self._processes):
                self._slots.append(self._spawn())
        except BaseException as error:  # re-raised by wait_started()
            self._launch_error = error
        finally:
            self._launched.set()
        if hold and self._owns_ray:
            # A local Ray's processes get the parent-death signal when the *thread* that
            # started them ends (PR_SET_PDEATHSIG): this thread lives as long as the pool.
            self._stopped.wait()

    def _connect_ray(self) -> None:
        try:
            import ray
        except ImportError as error:
            raise WorkerStartError(RAY_MISSING) from error
        self._ray = ray
        if not ray.is_initialized():
            # "local": a new Ray of our own. With None, ray.init would join whatever
            # cluster it finds recorded in /tmp/ray, which is not what was asked for.
            address = os.environ.get("RAY_ADDRESS") or "local"
            # From the launch thread Ray installs no signal handlers: Ctrl-C and SIGTERM
            # stay the supervisor's. log_to_driver keeps the steps' prints visible.
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True)
            self._owns_ray = True
        self._actor_class = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(
            TurborunWorker
        )
        # A placed step that dies with its node comes back as a lost Call: the supervisor
        # retries it (and fails it after three deaths), not Ray behind its back.
        self._step_task = ray.remote(max_retries=0)(run_placed_step)

    def _listen(self) -> None:
        host = self._ray.util.get_node_ip_address()  # where the cluster reaches this node
        self._server = socket.create_server((host, 0))
        self._address = (host, self._server.getsockname()[1])
        threading.Thread(target=self._accept, name="turborun-ray-accept", daemon=True).start()

    def _accept(self) -> None:
        """Take each connection; its handshake runs on a thread of its own, so a peer
        that connects and never answers holds nothing but that thread."""
        assert self._server is not None
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return  # shut down
            threading.Thread(target=self._greet, args=(sock,), daemon=True).start()

    def _greet(self, sock: socket.socket) -> None:
        """Authenticate an actor's connection, give it the settings, hand it over."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock.detach())
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
            token, node = conn.recv()
            conn.send(self._settings)
        except Exception as error:  # a stranger, or an actor that died meanwhile
            log.warning("refused a connection to the Ray pool: %s", error)
            conn.close()
            return
        self._post(("connected", token, node, conn))

    def _spawn(self, avoid: str = "") -> _Slot:
        self._spawned += 1
        token = f"{os.getpid()}-{self._spawned}-{secrets.token_hex(4)}"
        # The name (not detached: the actor still ends with this driver) lets an operator
        # find it; the node is the one running the fewest of our actors.
        actor = self._actor_class.options(
            scheduling_strategy=self._next_node(avoid),
            name=f"{ACTOR_PREFIX}{token}",
            namespace=NAMESPACE,
        ).remote()
        ref = actor.serve.remote(self._address, self._authkey, token)
        ref.future().add_done_callback(partial(self._actor_ended, token))
        return _Slot(actor, token, ref=ref, node=self._placing)

    def _next_node(self, avoid: str = "") -> Any:
        """Spread the actors evenly over the cluster's alive nodes. Ray placed zero-CPU
        actors unevenly both with SPREAD (four actors on one of two nodes) and with a soft
        node affinity (two of three on one node), so the affinity is strict; an actor
        aimed at a node that has just died fails to start and is replaced elsewhere."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = sorted(n["NodeID"] for n in self._ray.nodes() if n.get("Alive"))
        # A replacement avoids the node its predecessor died on: Ray may still list a
        # node as alive for seconds after it is gone.
        alive = [node for node in alive if node != avoid] or alive
        if not alive:
            self._placing = ""
            return "SPREAD"
        load = Counter(slot.node for slot in self._slots if not slot.ended)
        self._placing = min(alive, key=lambda node: load[node])
        return NodeAffinitySchedulingStrategy(self._placing, soft=False)

    def _actor_ended(self, token: str, future: Any) -> None:  # on a Ray thread
        try:
            future.result()
            reason = "its serve loop returned"
        except BaseException as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        self._post(("ended", token, reason))

    def _post(self, item: tuple[Any, ...]) -> None:
        self._inbox.put(item)
        with self._wake_lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"x")

    def _join_launcher(self) -> None:
        if self._launcher is not None:
            self._launched.wait()
            self._launcher = None
        if self._launch_error is not None:
            error, self._launch_error = self._launch_error, None
            self.kill()
            if isinstance(error, WorkerStartError):
                raise error
            raise WorkerStartError(f"Ray worker actors could not start: {error}") from error

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Wait until every actor has connected back and said hello. An actor that ends
        first is replaced on another node (its node may have just died: Ray lists a node
        as alive for a while after); more such ends than there are actors (turborun not
        importable on the nodes, the driver unreachable) stop the run with
        WorkerStartError instead of an endless respawn. Idempotent."""
        if self._started:
            return
        self._join_launcher()
        deadline = time.monotonic() + timeout_s
        failures = 0
        while not all(slot.hello for slot in self._slots):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerStartError(f"Ray worker actors did not start within {timeout_s:.0f} s")
            try:
                ended = self._wait_once(remaining, [], PoolEvents())
            except Exception as error:  # Ray refused to create a replacement
                self.kill()
                raise WorkerStartError(f"Ray worker actors could not start: {error}") from error
            failures += len(ended)
            if failures > self._processes:
                self.kill()
                raise WorkerStartError(f"Ray worker actors ended at start: {ended[0]}")
        self._started = True
        log.info("%d Ray worker actors on %d nodes", len(self._slots), len(self.nodes()))

    def nodes(self) -> set[str]:
        """Ray node ids the connected actors run on."""
        return {slot.node for slot in self._slots if slot.conn is not None}

    # ---- the pool's interface ------------------------------------------------------

    def pids(self) -> list[int]:
        return []  # actors' processes may live on other machines

    def alive(self) -> int:
        return sum(1 for s in self._slots if not s.ended)

    def in_flight(self) -> int:
        """Calls handed over and not yet answered, steps (placed ones too) included."""
        return sum(len(s.held) for s in self._slots) + len(self._placed)

    def steps_in_flight(self) -> int:
        return sum(s.steps for s in self._slots) + len(self._placed)

    def send(self, calls: list[Call]) -> None:
        """Steps that ask for resources go to Ray as tasks; every other Call to the actor
        holding the fewest of its kind (HTTP calls and steps balanced apart), preferring
        actors already connected (a replacement takes a second or two to start)."""
        batches: dict[int, list[Call]] = {}
        open_ = [i for i, s in enumerate(self._slots) if not s.draining]
        ready = [i for i in open_ if self._slots[i].conn is not None] or open_
        requests = {i: len(self._slots[i].held) - self._slots[i].steps for i in ready}
        steps = {i: self._slots[i].steps for i in ready}
        for call in calls:
            if call.resources:
                self._place(call)
                continue
            load = steps if call.provider == FN_PROVIDER else requests
            i = min(load, key=load.__getitem__)
            load[i] += 1
            batches.setdefault(i, []).append(call)
        for i, batch in batches.items():
            slot = self._slots[i]
            for call in batch:
                slot.held[call.custom_id] = call
                slot.steps += call.provider == FN_PROVIDER
            if slot.conn is None:
                slot.backlog.extend(batch)
                continue
            try:
                slot.conn.send(batch)
            except (OSError, ValueError):
                pass  # a dying actor: its end comes through the wait and its Calls as lost

    def _place(self, call: Call) -> None:
        ref = self._step_task.options(**dict(call.resources)).remote(call)
        self._placed[call.custom_id] = call
        ref.future().add_done_callback(partial(self._placed_done, call))

    def _placed_done(self, call: Call, future: Any) -> None:  # on a Ray thread
        try:
            outcome = future.result()
        except BaseException as error:  # the task's worker or node died
            log.warning("a placed step %s was lost: %s", call.custom_id, error)
            outcome = None
        self._post(("placed", call, outcome))

    def wait(self, timeout: float | None, extra: list[Any] = ()) -> PoolEvents:  # type: ignore[assignment]
        """Block until an outcome, an actor's end, an extra handle (the supervisor's
        wake-up), or the timeout."""
        events = PoolEvents()
        self._wait_once(timeout, list(extra), events)
        if any(slot.draining for slot in self._slots):
            self._retire_drained()
        return events

    def _wait_once(self, timeout: float | None, extra: list[Any], events: PoolEvents) -> list[str]:
        """One wait; returns why actors ended (they are replaced, their Calls in
        ``events.lost``) — wait_started treats any such end as a failed start."""
        conns = {s.conn: s for s in self._slots if s.conn is not None and not s.ended}
        ready = wait([*conns, self._wake_r, *extra], timeout)
        ended: list[str] = []
        for handle in ready:
            if isinstance(handle, int) and handle == self._wake_r:
                ended += self._drain(events)
            elif handle in conns:
                reason = self._receive(conns[handle], events)
                if reason:
                    ended.append(reason)
            else:
                events.woken.append(handle)
        return ended

    def _drain(self, events: PoolEvents) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        ended: list[str] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return ended
            kind = item[0]
            if kind == "connected":
                self._attach(item[1], item[2], item[3])
            elif kind == "ended":
                slot = self._slot(item[1])
                if slot is not None and not slot.ended:
                    if slot.conn is not None and slot.conn.poll(0):
                        reason = self._receive(slot, events)  # answers sent before it died
                        if reason:
                            ended.append(reason)
                    if not slot.ended:
                        self._replace(slot, events, item[2])
                        ended.append(item[2])
            elif kind == "placed":
                call, outcome = item[1], item[2]
                if self._placed.pop(call.custom_id, None) is not None:
                    if outcome is None:
                        events.lost.append(call)
                        events.deaths += 1
                    else:
                        events.outcomes.append(outcome)

    def _slot(self, token: str) -> _Slot | None:
        return next((s for s in self._slots if s.token == token), None)

    def _attach(self, token: str, node: str, conn: Connection) -> None:
        slot = self._slot(token)
        if slot is None or slot.ended:
            conn.close()  # an actor we replaced already
            return
        slot.conn, slot.node = conn, node
        if slot.backlog:
            backlog, slot.backlog = slot.backlog, []
            with contextlib.suppress(OSError, ValueError):
                conn.send(backlog)

    def _receive(self, slot: _Slot, events: PoolEvents) -> str | None:
        """Read every waiting batch; on EOF the actor is gone: replace it."""
        assert slot.conn is not None
        try:
            while True:
                for outcome in slot.conn.recv():
                    if not outcome.custom_id:
                        if outcome.attempt == RECYCLE_ATTEMPT:
                            self._recycle(slot)
                        else:
                            slot.hello = True
                        continue
                    call = slot.held.pop(outcome.custom_id, None)
                    if call is not None:
                        slot.steps -= call.provider == FN_PROVIDER
                        events.outcomes.append(outcome)
                if not slot.conn.poll(0):
                    return None
        except (EOFError, OSError):
            reason = "its connection closed"
            self._replace(slot, events, reason)
            return reason

    def _recycle(self, slot: _Slot) -> None:
        """Too many Python steps stuck past their timeout in this actor (worker.py): its
        replacement starts now, and it is ended once what it holds is answered."""
        if slot.draining or not self._started:
            return
        slot.draining = True
        log.warning(
            "a Ray worker actor has Python steps still running long past their timeout: "
            "replacing it (it ends once its %d calls in flight are answered)",
            len(slot.held),
        )
        self._slots.append(self._spawn())

    def _retire_drained(self) -> None:
        for slot in [s for s in self._slots if s.draining and not s.held]:
            slot.ended = True
            self._slots.remove(slot)
            with contextlib.suppress(Exception):
                self._ray.kill(slot.actor, no_restart=True)
            if slot.conn is not None:
                slot.conn.close()

    def _replace(self, slot: _Slot, events: PoolEvents, reason: str) -> None:
        if slot.draining:  # a recycled actor that ended: its replacement runs already
            slot.ended = True
            if slot.conn is not None:
                slot.conn.close()
            events.lost.extend(slot.held.values())
            self._slots.remove(slot)
            return
        slot.ended = True
        if slot.conn is not None:
            slot.conn.close()
        with contextlib.suppress(Exception):
            self._ray.kill(slot.actor, no_restart=True)  # a half-open connection: make sure
        events.lost.extend(slot.held.values())
        events.deaths += 1
        self.deaths += 1
        log.warning("a Ray worker actor ended (%s) holding %d calls", reason, len(slot.held))
        self._slots[self._slots.index(slot)] = self._spawn(avoid=slot.node)

    # ---- stop ------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """End every actor (ray.kill: nothing is waited for, nothing is in flight that a
        caller still wants), stop listening, and stop the local Ray this pool started."""
        with contextlib.suppress(WorkerStartError):
            self._join_launcher()
        self.kill(timeout_s)

    def kill(self, timeout_s: float = 5.0) -> None:
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.ended = True
            with contextlib.suppress(Exception):
                self._ray.kill(slot.actor, no_restart=True)
        # Close the connections once the actors are gone: one that read EOF first would
        # exit by itself, and Ray would log that as an unexpected death.
        refs = [slot.ref for slot in slots if slot.ref is not None]
        if refs:
            with contextlib.suppress(Exception):
                self._ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for slot in slots:
            if slot.conn is not None:
                slot.conn.close()
        self._placed.clear()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._wake_lock:
            if not self._closed:
                self._closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)
        if self._owns_ray:
            self._owns_ray = False
            self._ray.shutdown()
        self._stopped.set()
