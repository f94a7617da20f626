"""The daemon: ``pipework serve``, a WorkerService that other programs feed over ZeroMQ.

```
 clients (DEALER/REQ) ──JSON──▶ ROUTER ─┐
                                        ▼
                 ┌──────────── daemon loop (one thread) ─────────────┐
                 │ decode + validate (protocol.codec)                │
                 │ journal writes ── one COMMIT per pass ──▶ replies │
                 │ ready heap (priority, seq) · delay heap · waiters │
                 └───────┬───────────────────────────────▲───────────┘
                 submit  ▼                               │ completions (+ wake-up pipe)
                     WorkerService ─▶ workers ─▶ collector thread
```

One thread owns the socket, the journal and every in-memory index, so none
of them needs a lock; the only cross-thread traffic is the completion queue
the collector's callbacks fill, and a wake-up pipe that signal handlers and
callbacks write to.

Each pass reads every request waiting (up to a batch), handles completions,
starts due and ready tasks, then **commits the journal once** and only then
sends the replies: an accepted submit is acknowledged only once it is on
disk, and many submits share one fsync (group commit).

The daemon runs only registered task names (``service.daemon.registry``), with JSON
arguments; it never unpickles bytes from a socket. Tasks wait in the journal,
not in memory: the ready queue holds (priority, seq, id), and the records of
at most ``_HELD`` queued tasks are kept beside it so that starting one needs
no read; the others' arguments are read back when a worker is free. Replies
are built by ``service.daemon.replies``, results spliced in as the journal's
JSON text.

The daemon is three files, one part each: this one (the socket, the loop,
start and stop, signals, metrics and the status page), ``requests`` (the op
handlers, result waiters, ``task_done`` events, replies out) and
``scheduler`` (the heaps, dispatch to local and remote workers, settling a
run: retry, quarantine). ``Daemon`` combines the other two as mixins rather
than owning them: the parts share one thread's state (a submit reads the
running and queued sets and queues the task; settling a run answers the
result waiters and ``_out``; a journal failure here undoes both), and no lock
is needed because the one thread owns it all. Each part lists what it uses
of the others at its top, which mypy checks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import zmq

from pipework import __version__
from pipework.protocol.codec import MAX_MESSAGE_BYTES, error_reply
from pipework.protocol.errors import ErrorCode, ProtocolError
from pipework.service.daemon.config import DaemonSettings
from pipework.service.daemon.journal import (
    Journal,
    JournalDamaged,
    JournalError,
    JournalUnavailable,
    TaskRecord,
    salvage,
)
from pipework.service.daemon.outcomes import canonical_json
from pipework.service.daemon.registry import load_tasks
from pipework.service.daemon.replies import dumps
from pipework.service.daemon.requests import Requests
from pipework.service.daemon.scheduler import Scheduler
from pipework.service.daemon.security import (
    CLIENTS,
    WORKERS,
    CurveServer,
    SecurityError,
    needs_curve,
)
from pipework.service.daemon.sessions import RemoteWorkers
from pipework.service.errors import PipeworkError
from pipework.service.executor import WorkerService
from pipework.service.logs import get_logger
from pipework.service.ops.notify import Notifier
from pipework.service.waker import Waker

if TYPE_CHECKING:
    from pipework.service.ops.metrics import Metrics, MetricsServer
    from pipework.service.ops.status import StatusBoard, StatusServer

__all__ = ["EXIT_CANNOT_START", "EXIT_JOURNAL_DAMAGED", "Daemon", "DaemonError", "serve"]

_log = get_logger("pipework.daemon")

_PRUNE_EVERY = 60.0
_PRUNE_BATCH = 2_000  # per pass: a pass must stay short, replies wait for it
_MAX_SLEEP = 1.0
_OBSERVE_EVERY = 0.25  # gauges and the status page's snapshot: at most this often
# Startup waits this long at most for the local workers before READY=1 (the
# unit's TimeoutStartSec= must be longer; deploy/pipework.service).
_WORKERS_UP_TIMEOUT = 30.0
# Bodies this far over max_message_bytes are cut off by libzmq itself (the peer
# is disconnected, no reply): a hostile client cannot make us buffer gigabytes.
_HARD_CAP_FACTOR = 8


EXIT_CANNOT_START = 1
"""``pipework serve`` could not start: the log line ``cannot start`` says why."""
EXIT_JOURNAL_DAMAGED = 4
"""The journal failed its check at start; ``--journal-recover`` salvages it."""


class DaemonError(PipeworkError):
    """The daemon cannot start: the message says why (endpoint taken, journal locked...).

    Attributes:
        exit_code: what ``pipework serve`` exits with (``EXIT_CANNOT_START``, or
            ``EXIT_JOURNAL_DAMAGED``: restarting cannot fix that one).
    """

    def __init__(self, message: str, exit_code: int = EXIT_CANNOT_START) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _prepare_endpoint(endpoint: str, context: zmq.Context[Any]) -> None:
    """Refuse an endpoint another daemon serves; give an ipc socket a private directory."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return  # an abstract socket (ipc://@name) has no directory: CURVE guards it
    path = Path(endpoint[len("ipc://") :])
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True)
    info = parent.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        # Anyone who can reach the socket can submit tasks: the directory is the lock.
        raise DaemonError(
            f"ipc socket directory {parent} must be private to this user (owner uid "
            f"{os.getuid()}, mode 0700); it is owned by uid {info.st_uid} with mode "
            f"{stat.S_IMODE(info.st_mode):04o}"
        )
    if path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise DaemonError(f"{path} exists and is not a socket; refusing to replace it")
        probe = context.socket(zmq.DEALER)
        probe.setsockopt(zmq.LINGER, 0)
        try:
            probe.connect(endpoint)
            probe.send(dumps({"v": 1, "id": "probe", "op": "stats"}))
            if probe.poll(500):
                raise DaemonError(f"another pipework daemon is serving at {endpoint}")
        finally:
            probe.close()
        path.unlink()  # stale: left by a daemon that was killed


class Daemon(Requests, Scheduler):
    """One ``pipework serve``: a ROUTER socket, a journal, a WorkerService.

    The op handlers come from ``Requests`` (``service.daemon.requests``), the
    queues and dispatch from ``Scheduler`` (``service.daemon.scheduler``); see
    the module docstring for why they are mixins.

    Args:
        settings: what to serve and how (``service.daemon.config.DaemonSettings``).

    Raises:
        DaemonError: from ``start()``, when it cannot start.
    """

    def __init__(self, settings: DaemonSettings, *, journal_recover: bool = False) -> None:
        super().__init__()  # the request handlers' state, then the scheduler's
        self.settings = settings
        self._journal_recover = journal_recover
        # The journal cannot write (disk full...): why, or None. Submits are refused.
        self._journal_down: str | None = None
        self._tasks: Mapping[str, Callable[..., Any]] = {}
        self._journal: Journal | None = None
        self._pool: WorkerService | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._remotes: RemoteWorkers | None = None
        self._curve: CurveServer | None = None
        self._monitors: list[zmq.Socket[Any]] = []
        self._waker = Waker()
        self._signals: list[int] = []
        self._draining = False
        self._drain_deadline = math.inf
        self._started = time.monotonic()
        self._accepted = 0
        self._finished = 0
        self._next_prune = 0.0
        # Metrics and the status page (service.ops.metrics, service.ops.status): None when off.
        self._metrics: Metrics | None = None
        self._status: StatusBoard | None = None
        self._http: list[MetricsServer | StatusServer] = []
        self._next_observe = 0.0
        # sd_notify (service.ops.notify); unset so that workers cannot speak for us.
        self._systemd = Notifier.from_environ(unset=True)
        self._stop_status = "stopped"

    # -- start and stop -------------------------------------------------------------

    def start(self) -> None:
        """Load tasks, open the journal, recover, start workers, bind; then ``run()``.

        Raises:
            DaemonError: the task module, the journal or the endpoint is unusable.
        """
        s = self.settings
        try:
            self._tasks = load_tasks(s.tasks)
        except Exception as exc:
            raise DaemonError(str(exc)) from exc
        self._ctx = zmq.Context()
        _prepare_endpoint(s.endpoint, self._ctx)
        endpoints = [e for e in (s.endpoint, s.workers_endpoint) if e is not None]
        if any(needs_curve(e) for e in endpoints):
            if s.curve_secret_key is None or s.curve_allow_dir is None:
                raise DaemonError(
                    "tcp:// and abstract ipc://@ endpoints require CURVE (anyone on the "
                    "host or network can reach them): set curve_secret_key (the daemon's "
                    "NAME.key_secret) and curve_allow_dir (the allowed NAME.key files); "
                    "`pipework keys generate DIR NAME` makes key pairs"
                )
            try:
                self._curve = CurveServer(
                    self._ctx, s.curve_secret_key, s.curve_allow_dir, s.curve_worker_dir
                )
            except (SecurityError, OSError, ValueError) as exc:
                raise DaemonError(str(exc)) from exc
            if s.workers_endpoint and needs_curve(s.workers_endpoint) and not s.curve_worker_dir:
                _log.warning(
                    "clients and remote workers share one allow-list: any client key may "
                    "connect as a worker and be sent task arguments; set curve_worker_dir",
                    allow_dir=str(s.curve_allow_dir),
                )
        self._journal = self._open_journal()
        recovered = self._journal.recover()
        now = time.time()
        unrunnable: list[tuple[TaskRecord, str, str]] = []
        for rec in recovered:
            why = self._unrunnable(rec)
            if why is not None:
                unrunnable.append((rec, *why))
                continue
            self._enqueue(rec, now, rec.seq, hold=True)
        if self._journal.failure is not None:
            self._journal_failed(JournalUnavailable(str(s.journal_path), self._journal.failure))
        if s.workers:
            self._pool = WorkerService(
                s.workers,
                transport=s.transport,
                retries=0,  # the daemon retries itself, so each attempt is journalled
                max_pending=max(16, 4 * s.workers),
                shutdown_timeout=0.0,
                max_tasks_per_worker=s.max_tasks_per_worker,
                max_memory_per_worker=s.max_memory_per_worker,
            )
        self._router = self._bind(s.endpoint, CLIENTS)
        # Full queue to one client: zmq.Again, so it is counted (not dropped silently).
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if s.workers_endpoint is not None:
            self._remotes = RemoteWorkers(
                self._bind(s.workers_endpoint, WORKERS),
                self._tasks,
                s.heartbeat,
                s.heartbeat_expiry,
                s.max_message_bytes,
            )
        self._start_observers()
        self._end_unrunnable(unrunnable)
        up = self._await_workers()
        _log.info(
            "daemon ready",
            endpoint=s.endpoint,
            workers_endpoint=s.workers_endpoint,
            curve=self._curve is not None,
            journal=str(s.journal_path) if s.journal else None,
            workers=s.workers,
            tasks=sorted(self._tasks),
            recovered=len(recovered),
            pid=os.getpid(),
        )
        workers = f"{up} workers" if up == s.workers else f"{up} of {s.workers} workers"
        self._systemd.notify(
            "READY=1", f"STATUS=serving at {s.endpoint}, {workers}, {len(recovered)} recovered"
        )

    def _open_journal(self) -> Journal:
        s = self.settings
        path = s.journal_path if s.journal else None
        try:
            try:
                return Journal(path, sync=s.journal_sync)
            except JournalDamaged as exc:
                if not self._journal_recover or path is None:
                    raise DaemonError(str(exc), EXIT_JOURNAL_DAMAGED) from exc
                _log.warning("journal damaged; salvaging it (--journal-recover)", error=str(exc))
                _log.warning("journal salvaged", outcome=salvage(path))
                return Journal(path, sync=s.journal_sync)
        except JournalError as exc:
            raise DaemonError(str(exc)) from exc

    def _unrunnable(self, rec: TaskRecord) -> tuple[str, str] | None:
        """Why a task the journal holds cannot be run here (error type, message), or None.

        The journal is data, not trust: a release may have removed or renamed the
        task, and a row may hold what this version cannot read.
        """
        if rec.name not in self._tasks:
            return (
                "UnknownTask",
                f"no task named {rec.name!r} is registered in this daemon (task module "
                f"{self.settings.tasks!r}); it was queued by a daemon that had it",
            )
        problem = None
        try:
            # SQLite keeps whatever a row was given, whatever the column's type.
            numbers: tuple[object, ...] = (
                rec.priority,
                rec.retries,
                rec.attempts,
                rec.not_before,
                rec.created_at,
                0 if rec.timeout is None else rec.timeout,
            )
            if not all(isinstance(n, (int, float)) for n in numbers):
                problem = "a number field holds something else"
            elif not isinstance(json.loads(rec.args_json), list):
                problem = "its arguments are not a JSON array"
            elif not isinstance(json.loads(rec.kwargs_json), dict):
                problem = "its keyword arguments are not a JSON object"
            elif not isinstance(json.loads(rec.history_json), list):
                problem = "its history is not a JSON array"
        except (TypeError, ValueError) as exc:
            problem = f"a JSON field cannot be read ({exc})"
        if problem is None:
            return None
        return "BadRecord", f"the journal's row for this task cannot be run: {problem}"

    def _end_unrunnable(self, tasks: list[tuple[TaskRecord, str, str]]) -> None:
        """Fail the recovered tasks this daemon cannot run: logged, counted, never run."""
        by_kind: dict[tuple[str, str], int] = {}
        for rec, kind, message in tasks:
            error = {"type": kind, "message": message, "traceback": ""}
            self._finish(rec, "failed", error_json=canonical_json(error))
            by_kind[rec.name, kind] = by_kind.get((rec.name, kind), 0) + 1
            if self._metrics is not None:
                self._metrics.unrunnable(kind)
        for (name, kind), count in sorted(by_kind.items()):
            _log.warning(
                "journal holds tasks this daemon cannot run; they end failed",
                task=name,
                error=kind,
                count=count,
            )

    def _await_workers(self) -> int:
        """Wait (bounded) until the local pool has all its workers; return how many it has."""
        if self._pool is None:
            return 0
        deadline = time.monotonic() + _WORKERS_UP_TIMEOUT
        while True:
            up = len(self._pool.worker_pids())
            if up >= self.settings.workers or self._signals:
                return up  # a stop signal during startup: stop waiting, the loop drains
            if time.monotonic() >= deadline:
                _log.warning(
                    "not every worker started in time; serving anyway",
                    workers=self.settings.workers,
                    started=up,
                    waited=_WORKERS_UP_TIMEOUT,
                )
                return up
            time.sleep(0.01)

    def _bind(self, endpoint: str, domain: str) -> zmq.Socket[Any]:
        assert self._ctx is not None
        sock: zmq.Socket[Any] = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        limit = self.settings.max_message_bytes
        sock.setsockopt(zmq.MAXMSGSIZE, max(_HARD_CAP_FACTOR * limit, MAX_MESSAGE_BYTES))
        # A connection that has not finished its handshake by then is closed:
        # an unauthenticated peer holds a file descriptor for this long, not
        # libzmq's default 30 s.
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(self.settings.handshake_timeout * 1000))
        if self._curve is not None and needs_curve(endpoint):
            self._monitors.append(self._curve.secure(sock, domain))
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise DaemonError(f"cannot bind {endpoint}: {exc}") from exc
        return sock

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: drain (a second one: stop now); SIGHUP: restart workers."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)
        self._waker.wake()

    def notify_stopped(self, how: str | None = None) -> None:
        """Tell systemd (STATUS=) how the daemon stopped; a no-op outside systemd."""
        self._systemd.status(how or self._stop_status)

    def close(self) -> None:
        """Requeue what still runs (it runs again on restart), commit, stop workers, unbind.

        Never raises: a journal that cannot write (disk full) leaves those tasks
        ``running`` in it, and a restart queues them again anyway.
        """
        self._stop_observers()
        if self._remotes is not None:
            # They run again after the restart: stop them now, or a quick
            # restart could run them twice at once.
            for task_id, run in self._running.items():
                if run.future is None:
                    self._remotes.cancel(task_id)
            self._remotes.flush()
        if self._journal is not None:
            try:
                for task_id in list(self._running):
                    with contextlib.suppress(KeyError):
                        self._journal.requeue(task_id, None)
                self._journal.flush()
            except JournalError as exc:
                _log.error("journal not committed at stop", error=str(exc))
            self._running.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._remotes is not None:
            self._remotes.flush()
            self._remotes.sock.close(linger=1000)
            self._remotes = None
        if self._router is not None:
            self._router.close(linger=1000)
            self._router = None
            if self.settings.endpoint.startswith("ipc://"):
                with contextlib.suppress(OSError):
                    Path(self.settings.endpoint[len("ipc://") :]).unlink()
        if self._curve is not None:
            self._curve.close()
            self._curve = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._waker.close()

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Serve until drained (after SIGTERM/SIGINT) or stopped by a second signal."""
        assert self._router is not None
        assert self._journal is not None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        remotes = self._remotes
        if remotes is not None:
            poller.register(remotes.sock, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        journal = self._journal
        while True:
            # WATCHDOG=1 from this loop itself, so that a wedged loop stops
            # pinging and systemd restarts it; no sleep outlasts the next ping.
            ping_in = self._systemd.ping()
            timeout = self._sleep()
            if ping_in is not None:
                timeout = ping_in if timeout is None else min(timeout, ping_in)
            events = dict(poller.poll(None if timeout is None else int(timeout * 1000)))
            if self._waker.fileno() in events:
                self._waker.drain()  # before taking: a later completion wakes us again
            if self._handle_signals():
                return
            self._refill()  # first: the workers idle while requests are read
            if self._router in events:
                self._read_requests()
            for monitor in self._monitors:
                if monitor in events:
                    refused = CurveServer.log_refusals(monitor)
                    if refused and self._metrics is not None:
                        self._metrics.refused(refused)
            if remotes is not None:
                ended = remotes.read() if remotes.sock in events else []
                for event in [*ended, *remotes.tick()]:
                    self._remote_ended(event)
                if self._parked and remotes.sock in events:
                    self._unpark()
            now = time.time()
            self._promote(now)
            if not self._draining:
                self._dispatch(now)
            self._expire_waiters(time.monotonic())
            if now >= self._next_prune:
                pruned = journal.prune(now - self.settings.result_ttl, _PRUNE_BATCH)
                # A full batch means more expired meanwhile: keep up a batch per
                # pass rather than one batch a minute, or the file would grow.
                self._next_prune = now + (0.0 if pruned == _PRUNE_BATCH else _PRUNE_EVERY)
            self._commit()
            self._send()
            if remotes is not None:
                remotes.flush()
            if self._http and time.monotonic() >= self._next_observe:
                self._observe()
            if self._draining:
                running, queued = len(self._running), len(self._queued)
                self._systemd.status(f"draining: {running} running, {queued} queued")
                if not self._running:
                    _log.info("drained", queued=len(self._queued))
                    self._stop_status = f"stopped: drained, {queued} queued for the next start"
                    return
                if time.monotonic() >= self._drain_deadline:
                    _log.warning(
                        "drain deadline passed; killing running tasks (they stay queued)",
                        running=len(self._running),
                    )
                    self._stop_status = (
                        f"stopped: drain deadline passed, {running} running tasks killed "
                        f"(they stay queued with {queued} more)"
                    )
                    return

    def _commit(self) -> None:
        """Flush the journal; on failure refuse this pass's submits and keep serving."""
        assert self._journal is not None
        flushing = time.perf_counter()
        try:
            committed = self._journal.flush()
        except JournalUnavailable as exc:
            self._journal_failed(exc)
        else:
            if committed and self._metrics is not None:
                self._metrics.committed(time.perf_counter() - flushing)
            if self._journal_down is not None and self._journal.failure is None:
                _log.warning("journal writable again; accepting submits", was=self._journal_down)
                self._journal_down = None
                if self._metrics is not None:
                    self._metrics.journal_writable(True)
        self._pass_acks.clear()

    def _journal_failed(self, exc: JournalUnavailable) -> None:
        """The journal cannot write: undo the submits it lost, refuse them, carry on."""
        if self._journal_down is None:
            _log.error(
                "journal cannot write; refusing submits, serving reads and running what it holds",
                error=exc.reason,
            )
        self._journal_down = exc.reason
        if self._metrics is not None:
            self._metrics.journal_writable(False)
        for task_id in exc.lost:
            self._accepted -= 1
            self._queued.discard(task_id)
            self._held.pop(task_id, None)
            self._notify.pop(task_id, None)
            run = self._pop_running(task_id)
            if run is not None:  # started in the same pass: it was never accepted
                if run.future is not None:
                    run.future.cancel()
                elif self._remotes is not None:
                    self._remotes.cancel(task_id)
            for index, peer in self._pass_acks.pop(task_id, []):
                error = self._unavailable(exc.reason)
                self._out[index] = peer.frames(
                    error_reply(peer.request_id, error.code, error.message, error.detail)
                )

    @staticmethod
    def _unavailable(reason: str) -> ProtocolError:
        return ProtocolError(
            ErrorCode.JOURNAL_UNAVAILABLE,
            f"the journal cannot record new tasks now ({reason}); nothing was accepted: "
            "submit again later (with the same key, if you gave one)",
            {"reason": reason},
        )

    def _sleep(self) -> float | None:
        if self._ready and not self._draining and self._has_capacity() and not self._stalled:
            return 0.0
        when = _MAX_SLEEP
        if self._delayed:
            when = min(when, self._delayed[0][0] - time.time())
        if self._waiter_heap:
            when = min(when, self._waiter_heap[0].deadline - time.monotonic())
        if self._draining:
            when = min(when, self._drain_deadline - time.monotonic())
        if self._remotes is not None:
            when = min(when, self._remotes.next_deadline() - time.monotonic())
        return max(0.0, when)

    def _handle_signals(self) -> bool:
        """Apply signals that arrived; True when the daemon must stop now."""
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                _log.info("SIGHUP: restarting workers, reloading the key allow-list")
                if self._pool is not None:
                    if self._metrics is not None:
                        self._metrics.restarted("recycled", len(self._pool.worker_pids()))
                    self._pool.restart_workers()
                if self._curve is not None:
                    try:
                        allowed = self._curve.allow.reload()
                        if self._curve.workers is not self._curve.allow:
                            allowed += self._curve.workers.reload()
                    except SecurityError as exc:
                        _log.error("allow-list not reloaded; the old one stays", error=str(exc))
                    else:
                        _log.info("allow-list reloaded", keys=allowed)
            elif self._draining:
                _log.warning("second stop signal: stopping now", signal=signal.Signals(signum).name)
                self._stop_status = (
                    f"stopped by a second signal: {len(self._running)} running tasks killed "
                    f"(they stay queued with {len(self._queued)} more)"
                )
                return True
            else:
                self._draining = True
                self._drain_deadline = time.monotonic() + self.settings.drain_timeout
                _log.info(
                    "draining",
                    signal=signal.Signals(signum).name,
                    running=len(self._running),
                    queued=len(self._queued),
                    deadline=self.settings.drain_timeout,
                )
                self._systemd.notify("STOPPING=1")
                self._unstart_pending()
        return False

    def _unstart_pending(self) -> None:
        """Take back tasks the pool holds but has not started: they wait in the journal."""
        assert self._journal is not None
        for task_id, run in list(self._running.items()):
            future = run.future
            if future is not None and not future.running() and future.cancel():
                self._pop_running(task_id)
                self._journal.requeue(task_id, None)
                self._queued.add(task_id)

    # -- metrics and the status page ------------------------------------------------

    def _start_observers(self) -> None:
        """Serve the metrics and the status page, each if its port is set."""
        s = self.settings
        # Imported here: prometheus_client and http.server load only when asked for.
        if s.metrics_port is not None:
            from pipework.service.ops.metrics import Metrics, MetricsServer  # noqa: PLC0415

            self._metrics = Metrics(self._tasks)
            try:
                metrics = MetricsServer(self._metrics, s.metrics_host, s.metrics_port)
            except OSError as exc:
                raise DaemonError(
                    f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc}"
                ) from exc
            self._http.append(metrics)
            _log.info("metrics serving", host=s.metrics_host, port=metrics.port)
        if s.status_port is not None:
            from pipework.service.ops.status import StatusBoard, StatusServer  # noqa: PLC0415

            self._status = StatusBoard(__version__, journal=s.journal)
            self._status.seed(self._journal_failures())  # one source with `pipework status`
            self._observe()
            try:
                self._http.append(StatusServer(self._status, s.status_host, s.status_port))
            except OSError as exc:
                raise DaemonError(
                    f"cannot serve the status page on {s.status_host}:{s.status_port}: {exc}"
                ) from exc

    def _journal_failures(self) -> list[dict[str, Any]]:
        from pipework.service.ops.status import FAILURE_STATES, RECENT_FAILURES  # noqa: PLC0415

        assert self._journal is not None
        out = []
        for state in sorted(FAILURE_STATES):
            for rec in self._journal.recent(state, RECENT_FAILURES):
                out.append(
                    {
                        "task_id": rec.task_id,
                        "task": rec.name,
                        "state": rec.state,
                        "attempts": rec.attempts,
                        "finished_at": rec.finished_at,
                        "error_json": rec.error_json,
                    }
                )
        return out

    def _stop_observers(self) -> None:
        for server in self._http:
            server.close()
        self._http.clear()

    def _observe(self) -> None:
        """Set the gauges and publish the status page's snapshot (a few times a second)."""
        self._next_observe = time.monotonic() + _OBSERVE_EVERY
        queued, running = len(self._queued), len(self._running)
        if self._metrics is not None:
            sessions = 0 if self._remotes is None else len(self._remotes.sessions())
            self._metrics.gauges(queued, running, sessions)
        if self._status is not None:
            self._status.publish(
                queued=queued,
                running=running,
                accepted=self._accepted,
                finished=self._finished,
                draining=self._draining,
                workers=self._workers(),
                journal_error=self._journal_down,
            )


def serve(settings: DaemonSettings, *, journal_recover: bool = False) -> int:
    """Run a daemon in this process until it is told to stop; return the exit code.

    Args:
        settings: what to serve.
        journal_recover: if the journal fails its check at start, keep the damaged
            files aside and start on a new journal of every task still readable
            (``pipework serve --journal-recover``); otherwise refuse to start.

    Returns:
        0 after a drain (or a stop by a second signal), ``EXIT_CANNOT_START`` (1)
        if it could not start, ``EXIT_JOURNAL_DAMAGED`` (4) if the journal failed
        its check.
    """
    daemon = Daemon(settings, journal_recover=journal_recover)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except DaemonError as exc:
        _log.error("cannot start", error=str(exc), exit_code=exc.exit_code)
        daemon.close()
        daemon.notify_stopped(f"cannot start: {exc}")
        return exc.exit_code
    try:
        daemon.run()
    except Exception:
        # A bug of ours: what was accepted is in the journal and runs after a restart.
        _log.exception("daemon failed; stopping")
        daemon._stop_status = "failed (see the log); accepted tasks stay in the journal"
        return 1
    finally:
        daemon.close()
        _log.info("stopped")
        daemon.notify_stopped()
    return 0
