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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import json
import math
import os
import signal
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from types import FrameType
from typing import TYPE_CHECKING, Any

import zmq

from pipework import __version__
from pipework.protocol.codec import MAX_MESSAGE_BYTES, decode_request, error_reply
from pipework.protocol.errors import ErrorCode, ProtocolError
from pipework.protocol.messages import (
    CancelRequest,
    ListRequest,
    Request,
    ResultRequest,
    StatsRequest,
    StatusRequest,
    SubmitRequest,
    TasksRequest,
    WorkersRequest,
)
from pipework.service.daemon.config import DaemonSettings
from pipework.service.daemon.journal import (
    TERMINAL,
    Journal,
    JournalDamaged,
    JournalError,
    JournalUnavailable,
    TaskRecord,
    salvage,
)
from pipework.service.daemon.outcomes import (
    Outcome,
    canonical_json,
    clip_error,
    outcome_of,
    worker_lost_message,
)
from pipework.service.daemon.registry import describe, load_tasks
from pipework.service.daemon.replies import (
    Peer,
    dumps,
    event,
    ok_reply,
    submit_reply,
    task_info,
    task_reply,
)
from pipework.service.daemon.security import (
    CLIENTS,
    WORKERS,
    CurveServer,
    SecurityError,
    needs_curve,
)
from pipework.service.daemon.sessions import RemoteEvent, RemoteWorkers
from pipework.service.daemon.task_output import run_task
from pipework.service.errors import PipeworkError
from pipework.service.executor import TaskOptions, WorkerService
from pipework.service.logs import TASK_LABELS, get_logger, json_output
from pipework.service.ops.notify import Notifier
from pipework.service.waker import Waker

if TYPE_CHECKING:
    from pipework.service.ops.metrics import Metrics, MetricsServer
    from pipework.service.ops.status import StatusBoard, StatusServer

__all__ = ["EXIT_CANNOT_START", "EXIT_JOURNAL_DAMAGED", "Daemon", "DaemonError", "serve"]

_log = get_logger("pipework.daemon")

# Requests read per pass. A pass commits once and starts tasks once, so a
# smaller batch starts tasks sooner during a submit flood (benchmarks.daemon:
# at 1024 a flood starved execution); 256 still fills a group commit.
_BATCH = 256
# Within a batch, runs that ended are settled and replaced every this many
# requests: a worker then waits for a slice of a batch, not for all of it.
_REFILL_EVERY = 32
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
# Reading requests stops for a pass once the pass has spent this long on them:
# its replies go out, and the next pass reads again. ROUTER fair-queues
# between connections, so a client flooding costly reads (`list limit=1000`,
# ~7 ms each) gets its share of each pass and the others keep their latency.
_READ_BUDGET = 0.05
# A reply this large is sent tracked (libzmq says when it has written it out);
# so is any reply after this many untracked bytes to the same client. What a
# client has not drained is then known to within this, and bounded in bytes.
_TRACK_BYTES = 64 * 1024
# Forget the send account of a client silent this long with nothing queued.
_PEER_IDLE = 60.0
# Queued tasks whose records are kept in memory (so that starting one needs no
# journal read), at most; the rest wait in the journal alone.
_HELD = 4096
# Ready tasks a dispatch pass may step over (their workers are busy) to reach others.
_SKIP = 256
_Frames = list[bytes]
_REVOKED = "\0revoked"  # the user of a CURVE peer whose key left the allow-list


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


@dataclass(slots=True)
class _Outbox:
    """What was sent to one client: bytes handed to libzmq, and how far it has written them.

    libzmq queues replies per connection without a byte limit; a client that
    never reads would make the daemon hold every reply it asked for. Replies
    go out in order on one connection, so once a tracked reply is written out
    every reply before it is too: ``sent - written`` is what is still queued.
    """

    sent: int = 0
    written: int = 0
    untracked: int = 0  # bytes since the last tracked reply
    trackers: deque[tuple[zmq.MessageTracker, int]] = field(default_factory=deque)
    last: float = 0.0
    dropping: bool = False  # logged as not reading; logged again once it reads

    def queued(self) -> int:
        """Bytes handed to libzmq for this client and not yet written to its connection."""
        trackers = self.trackers
        while trackers and trackers[0][0].done:
            self.written = trackers.popleft()[1]
        if not trackers and self.untracked == 0:
            self.written = self.sent
        return self.sent - self.written


@dataclass(slots=True)
class _Running:
    """A task handed to the pool."""

    record: TaskRecord
    seq: int
    attempt: int
    started_at: float
    future: Future[Any] | None = None
    where: str = "local"


@dataclass(slots=True, order=True)
class _Waiter:
    deadline: float
    seq: int
    task_id: str = field(compare=False)
    peer: Peer = field(compare=False)
    done: bool = field(default=False, compare=False)


def _random_words() -> Iterator[int]:
    """Unguessable 64-bit words from os.urandom, 256 per read (one each was 4% of a submit)."""
    while True:
        yield from struct.unpack("=256Q", os.urandom(2048))


_words = _random_words()


def _reseed() -> None:
    # A forked child must not replay its parent's buffer.
    global _words
    _words = _random_words()


os.register_at_fork(after_in_child=_reseed)


def _new_task_id() -> str:
    """32 hex digits: nanoseconds since the epoch, then 64 random bits.

    Time-ordered ids land on the journal index's last page instead of a random
    one: 5-8x fewer bytes written per accepted task than uuid4 (benchmarks.journal).
    """
    return f"{time.time_ns():016x}{next(_words):016x}"


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


class Daemon:
    """One ``pipework serve``: a ROUTER socket, a journal, a WorkerService.

    Args:
        settings: what to serve and how (``service.daemon.config.DaemonSettings``).

    Raises:
        DaemonError: from ``start()``, when it cannot start.
    """

    def __init__(self, settings: DaemonSettings, *, journal_recover: bool = False) -> None:
        self.settings = settings
        self._journal_recover = journal_recover
        # The journal cannot write (disk full...): why, or None. Submits are refused.
        self._journal_down: str | None = None
        # Submits acknowledged since the last flush: task id -> (reply index in _out, peer).
        self._pass_acks: dict[str, list[tuple[int, Peer]]] = {}
        self._acked: str | None = None  # the task the submit being handled answers with
        self._tasks: Mapping[str, Callable[..., Any]] = {}
        self._journal: Journal | None = None
        self._pool: WorkerService | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._remotes: RemoteWorkers | None = None
        self._curve: CurveServer | None = None
        self._monitors: list[zmq.Socket[Any]] = []
        self._local_running = 0
        self._waker = Waker()
        self._json_logs = json_output()  # how run_task writes a task's prints
        self._completions: SimpleQueue[tuple[str, Future[Any]]] = SimpleQueue()
        self._ready: list[tuple[int, int, str]] = []  # (-priority, seq, task_id)
        # Ready tasks of names no worker serves now (no local pool, no remote worker
        # offering the name): set aside by name until a worker that serves it says hello.
        self._parked: dict[str, list[tuple[int, int, str]]] = {}
        self._stalled = False  # ready tasks, free credit, but none of it fits them
        self._delayed: list[tuple[float, int, str]] = []  # (not_before, seq, task_id)
        self._queued: set[str] = set()
        self._held: dict[str, TaskRecord] = {}  # records of some queued tasks; see _HELD
        self._options: dict[float | None, TaskOptions] = {}  # pool options by task timeout
        self._running: dict[str, _Running] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._waiter_heap: list[_Waiter] = []
        self._waiter_seq = 0
        self._notify: dict[str, list[Peer]] = {}
        self._out: list[_Frames] = []
        self._outboxes: dict[bytes, _Outbox] = {}
        self._next_outbox_sweep = 0.0
        self._dropped = 0
        self._events_after_reply: list[_Frames] = []
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

    # -- requests -------------------------------------------------------------------

    def _refill(self) -> None:
        """Settle the runs that ended and start queued tasks in their place."""
        self._take_completions()
        if not self._draining:
            self._dispatch(time.time())

    def _read_requests(self) -> None:
        assert self._router is not None
        curve = self._curve is not None and needs_curve(self.settings.endpoint)
        stop_at = time.perf_counter() + _READ_BUDGET
        for i in range(1, _BATCH + 1):
            if i % _REFILL_EVERY == 0 and not self._completions.empty():
                self._refill()
            if time.perf_counter() >= stop_at:
                return  # the rest waits for the next pass; see _READ_BUDGET
            try:
                if curve:
                    # Frames, not bytes: the sender's CURVE key rides on them.
                    parts = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    assert self._curve is not None
                    key = parts[-1].get("User-Id")
                    name = self._curve.allow.name_of(key if isinstance(key, str) else None)
                    # A key taken out of the allow-list (SIGHUP) keeps its open
                    # connection: refuse its requests rather than trust it.
                    self._on_message([p.bytes for p in parts], name or _REVOKED)
                else:
                    self._on_message(self._router.recv_multipart(zmq.NOBLOCK), None)
            except zmq.Again:
                return

    def _on_message(self, frames: _Frames, user: str | None) -> None:
        identity, body = frames[0], frames[1:]
        try:
            request, delimiter = decode_request(body, self.settings.max_message_bytes)
        except ProtocolError as exc:
            delimiter = len(body) == 2 and body[0] == b""
            peer = Peer(identity, delimiter, exc.request_id or "", user)
            self._out.append(
                peer.frames(error_reply(exc.request_id, exc.code, exc.message, exc.detail))
            )
            return
        peer = Peer(identity, delimiter, request.id, user)
        try:
            if user == _REVOKED:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN, "this client's key is no longer in the allow-list"
                )
            reply = self._handle(request, peer)
        except ProtocolError as exc:
            reply = error_reply(request.id, exc.code, exc.message, exc.detail)
        except Exception as exc:
            _log.exception("request failed", request_id=request.id, op=request.op)
            reply = error_reply(request.id, ErrorCode.INTERNAL, f"internal error: {exc!r}", {})
        if reply is not None:
            self._out.append(peer.frames(self._fit(request.id, reply)))
            if self._acked is not None:
                self._pass_acks.setdefault(self._acked, []).append((len(self._out) - 1, peer))
        self._acked = None
        if self._events_after_reply:
            self._out.extend(self._events_after_reply)
            self._events_after_reply.clear()

    def _fit(self, request_id: str, reply: bytes) -> bytes:
        """``reply``, or a ``too_large`` error if it is over ``max_message_bytes``.

        Results and errors are limited when a run ends (``service.daemon.outcomes``),
        so only what grows beside them (a long history, a list) can get here.
        """
        limit = self.settings.max_message_bytes
        if len(reply) <= limit:
            return reply
        return error_reply(
            request_id,
            ErrorCode.TOO_LARGE,
            f"the reply would be {len(reply)} bytes, over max_message_bytes ({limit}); "
            "ask for less (a smaller list limit), or raise max_message_bytes",
            {"limit": limit, "size": len(reply)},
        )

    def _ok(self, request: Request, **fields: Any) -> bytes:
        return ok_reply(request.id, request.op, **fields)

    def _handle(self, request: Request, peer: Peer) -> bytes | None:
        if isinstance(request, SubmitRequest):
            return self._submit(request, peer)
        if isinstance(request, StatusRequest):
            return task_reply(request.id, "status", self._get(request.task_id))
        if isinstance(request, ResultRequest):
            return self._result(request, peer)
        if isinstance(request, CancelRequest):
            return self._cancel(request)
        if isinstance(request, ListRequest):
            assert self._journal is not None
            state = None if request.state is None else str(request.state)
            recs = self._journal.recent(state, request.limit)
            return self._ok(request, tasks=[task_info(r, full=False) for r in recs])
        if isinstance(request, StatsRequest):
            return self._ok(request, stats=self._stats())
        if isinstance(request, WorkersRequest):
            return self._ok(request, workers=self._workers())
        if isinstance(request, TasksRequest):
            return self._ok(request, tasks=self._task_summaries())
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {request.op!r}")

    def _task_summaries(self) -> list[dict[str, str]]:
        out = []
        for name in sorted(self._tasks):
            signature, doc = describe(self._tasks[name])
            out.append({"name": name, "signature": signature, "doc": doc})
        return out

    def _get(self, task_id: str) -> TaskRecord:
        assert self._journal is not None
        rec = self._journal.get(task_id)
        if rec is None:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"no task {task_id!r} (never existed, or pruned)"
            )
        return rec

    def _submit(self, req: SubmitRequest, peer: Peer) -> bytes:
        assert self._journal is not None
        if self._draining:
            raise ProtocolError(ErrorCode.DRAINING, "the daemon is shutting down")
        if req.task not in self._tasks:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TASK,
                f"no task named {req.task!r} is registered",
                {"registered": sorted(self._tasks)},
            )
        allowed = self.settings.client_tasks.get(peer.user) if peer.user else None
        if allowed is not None and req.task not in allowed:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"key {peer.user!r} may not submit {req.task!r}",
                {"allowed": sorted(allowed)},
            )
        try:
            args_json = canonical_json(req.args) if req.args else "[]"
            kwargs_json = canonical_json(req.kwargs) if req.kwargs else "{}"
        except ValueError as exc:  # NaN/Infinity smuggled in as a float
            raise ProtocolError(ErrorCode.INVALID, f"arguments are not JSON: {exc}") from None
        unfinished = len(self._queued) + len(self._running)
        if unfinished >= self.settings.max_queued:
            # A duplicate adds nothing: it is answered even when the daemon is full.
            old = None if req.key is None else self._journal.by_key(req.key)
            if old is not None:
                return self._duplicate(req, peer, old, args_json, kwargs_json)
            raise ProtocolError(
                ErrorCode.QUEUE_FULL,
                f"the daemon holds {unfinished} unfinished tasks already",
                {"limit": self.settings.max_queued},
            )
        now = time.time()
        rec = TaskRecord(
            task_id=_new_task_id(),
            name=req.task,
            key=req.key,
            args_json=args_json,
            kwargs_json=kwargs_json,
            state="queued",
            priority=req.priority,
            not_before=now + req.delay if req.delay else 0.0,
            timeout=req.timeout,
            retries=self.settings.retries if req.retries is None else req.retries,
            attempts=0,
            created_at=now,
            started_at=None,
            finished_at=None,
            result_json=None,
            error_json=None,
            history_json="[]",
            seq=0,  # the journal's seq rides beside it, in the ready heap
        )
        # The key's unique index finds a duplicate: no lookup before the insert.
        try:
            seq = self._journal.insert(rec)
        except JournalUnavailable as exc:
            self._journal_failed(exc)
            raise self._unavailable(exc.reason) from None
        if seq is None:
            assert req.key is not None
            old = self._journal.by_key(req.key)
            assert old is not None
            return self._duplicate(req, peer, old, args_json, kwargs_json)
        self._accepted += 1
        self._acked = rec.task_id
        if self._metrics is not None:
            self._metrics.accepted(req.task)
        self._enqueue(rec, now, seq, hold=True)
        if req.notify:
            self._notify.setdefault(rec.task_id, []).append(peer)
        return submit_reply(req.id, rec.task_id, "queued", duplicate=False)

    def _duplicate(
        self, req: SubmitRequest, peer: Peer, old: TaskRecord, args_json: str, kwargs_json: str
    ) -> bytes:
        """The reply to a submit whose key names task ``old`` already."""
        if (old.name, old.args_json, old.kwargs_json) != (req.task, args_json, kwargs_json):
            raise ProtocolError(
                ErrorCode.KEY_CONFLICT,
                f"key {req.key!r} already names task {old.task_id} with another task or arguments",
                {"task_id": old.task_id},
            )
        if req.notify:
            self._watch(old, peer)
        if old.task_id in self._pass_acks:  # not committed yet: refused with it if it fails
            self._acked = old.task_id
        return submit_reply(req.id, old.task_id, old.state, duplicate=True)

    def _watch(self, rec: TaskRecord, peer: Peer) -> None:
        """Push a task_done event to ``peer`` when ``rec`` finishes (now, if it has)."""
        if rec.state in TERMINAL:
            self._events_after_reply.append(peer.frames(event(peer.request_id, rec)))
        else:
            self._notify.setdefault(rec.task_id, []).append(peer)

    def _result(self, req: ResultRequest, peer: Peer) -> bytes | None:
        rec = self._get(req.task_id)
        if rec.state in TERMINAL:
            return task_reply(req.id, "result", rec)
        if req.wait <= 0:
            raise self._not_ready(rec)
        self._waiter_seq += 1
        waiter = _Waiter(time.monotonic() + req.wait, self._waiter_seq, rec.task_id, peer)
        self._waiters.setdefault(rec.task_id, []).append(waiter)
        heapq.heappush(self._waiter_heap, waiter)
        return None

    @staticmethod
    def _not_ready(rec: TaskRecord) -> ProtocolError:
        return ProtocolError(
            ErrorCode.TIMEOUT,
            f"task {rec.task_id} has not finished (state {rec.state})",
            {"task": task_info(rec)},
        )

    def _expire_waiters(self, now: float) -> None:
        heap = self._waiter_heap
        while heap and (heap[0].done or heap[0].deadline <= now):
            waiter = heapq.heappop(heap)
            if waiter.done:
                continue
            waiter.done = True
            waiting = self._waiters.get(waiter.task_id, [])
            with contextlib.suppress(ValueError):
                waiting.remove(waiter)
            if not waiting:
                self._waiters.pop(waiter.task_id, None)
            assert self._journal is not None
            rec = self._journal.get(waiter.task_id)
            exc = (
                self._not_ready(rec)
                if rec is not None
                else ProtocolError(ErrorCode.NOT_FOUND, f"task {waiter.task_id!r} was pruned")
            )
            body = error_reply(waiter.peer.request_id, exc.code, exc.message, exc.detail)
            self._out.append(waiter.peer.frames(body))

    def _cancel(self, req: CancelRequest) -> bytes:
        assert self._journal is not None
        rec = self._get(req.task_id)
        if rec.state in TERMINAL:
            return self._ok(req, cancelled=False, task=task_info(rec))
        run = self._running.get(rec.task_id)
        if run is not None and run.future is not None:
            started = run.future.running()  # then cancel() kills its worker
            if not run.future.cancel():
                # It finished while we looked: its completion is queued. Settle it now.
                self._take_completions()
                return self._ok(req, cancelled=False, task=task_info(self._get(rec.task_id)))
            self._pop_running(rec.task_id)
            if started and self._metrics is not None:
                self._metrics.restarted("cancelled")
        elif run is not None:
            assert self._remotes is not None
            # Its session may be gone: nothing to kill then.
            if self._remotes.cancel(rec.task_id) and self._metrics is not None:
                self._metrics.restarted("cancelled")
            self._pop_running(rec.task_id)
        self._queued.discard(rec.task_id)
        self._held.pop(rec.task_id, None)
        error = {"type": "Cancelled", "message": "cancelled by a client", "traceback": ""}
        self._finish(rec, "cancelled", error_json=canonical_json(error))
        return self._ok(req, cancelled=True, task=task_info(self._get(rec.task_id)))

    def _stats(self) -> dict[str, Any]:
        assert self._journal is not None
        counts = self._journal.counts()
        return {
            "version": __version__,
            "uptime": round(time.monotonic() - self._started, 3),
            "draining": self._draining,
            "journal": self.settings.journal,
            "workers": len(self._workers()),
            "queued": len(self._queued),
            "running": len(self._running),
            "states": {s: counts.get(s, 0) for s in sorted(TERMINAL)},
            "accepted": self._accepted,
            "finished": self._finished,
            "journal_error": self._journal_down,
        }

    def _workers(self) -> list[dict[str, Any]]:
        """Local worker processes, then one entry per remote slot (with ``remote``: where)."""
        out: list[dict[str, Any]] = []
        if self._pool is not None:
            running = self._pool.running_tasks()
            by_pool_id = {
                run.future.task_id: run  # type: ignore[attr-defined]
                for run in self._running.values()
                if run.future is not None
            }
            for pid in self._pool.worker_pids():
                run = by_pool_id.get(running.get(pid, -1))
                out.append(
                    {
                        "pid": pid,
                        "task_id": run.record.task_id if run else None,
                        "task": run.record.name if run else None,
                        "since": run.started_at if run else None,
                        "remote": None,
                    }
                )
        if self._remotes is not None:
            for entry in self._remotes.describe():
                run = self._running.get(entry["task_id"]) if entry["task_id"] else None
                if run is not None:
                    entry["task"] = run.record.name
                out.append(entry)
        return out

    # -- scheduling -----------------------------------------------------------------

    def _enqueue(self, rec: TaskRecord, now: float, seq: int, *, hold: bool = False) -> None:
        """Queue a task; ``hold`` keeps its record in memory if ``rec`` is the journal's."""
        self._queued.add(rec.task_id)
        if rec.not_before > now:
            heapq.heappush(self._delayed, (rec.not_before, seq, rec.task_id))
            return
        heapq.heappush(self._ready, (-rec.priority, seq, rec.task_id))
        if hold and len(self._held) < _HELD:
            self._held[rec.task_id] = rec

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, task_id = heapq.heappop(self._delayed)
            if task_id in self._queued:
                rec = self._get(task_id)
                heapq.heappush(self._ready, (-rec.priority, seq, task_id))

    def _local_free(self) -> bool:
        # One task per worker, none waiting inside the pool: "running" then
        # means started, and priority order holds for every queued task. A
        # prefetched task would save a hand-off per task but break both.
        return self._pool is not None and self._local_running < self.settings.workers

    def _has_capacity(self) -> bool:
        return self._local_free() or (self._remotes is not None and self._remotes.credit() > 0)

    def _pop_running(self, task_id: str) -> _Running | None:
        run = self._running.pop(task_id, None)
        if run is not None and run.future is not None:
            self._local_running -= 1
        return run

    def _unpark(self) -> None:
        """Put back in the ready queue the parked tasks a remote worker now serves."""
        assert self._remotes is not None
        served = {name for s in self._remotes.sessions() for name in s.tasks}
        for name in [n for n in self._parked if n in served]:
            entries = self._parked.pop(name)
            _log.info("a worker serves the task again", task=name, count=len(entries))
            for entry in entries:
                heapq.heappush(self._ready, entry)

    def _dispatch(self, now: float) -> None:
        assert self._journal is not None
        # Tasks that wait for a remote worker serving their name, while others behind
        # them can run; at most _SKIP per pass, so a deep queue costs a bounded pass.
        skipped: list[tuple[int, int, str]] = []
        self._stalled = False
        while self._ready and self._has_capacity():
            entry = heapq.heappop(self._ready)
            _, seq, task_id = entry
            if task_id not in self._queued:
                self._held.pop(task_id, None)
                continue  # cancelled while it waited
            rec = self._held.get(task_id) or self._get(task_id)
            session = None
            if not self._local_free():
                assert self._remotes is not None
                session = self._remotes.pick(rec.name)
                if session is None:
                    if self._pool is None and not self._remotes.serves(rec.name):
                        # Nobody serves it at all: park it, visibly queued, until a
                        # worker that does connects. It must not hold up the others.
                        if rec.name not in self._parked:
                            _log.warning(
                                "no worker serves this task now; its tasks wait for one",
                                task=rec.name,
                            )
                        self._parked.setdefault(rec.name, []).append(entry)
                        continue
                    # Its workers are busy: it waits, and what other workers can run goes.
                    skipped.append(entry)
                    if len(skipped) >= _SKIP:
                        self._stalled = True
                        break
                    continue
            self._queued.discard(task_id)
            self._held.pop(task_id, None)
            attempt = rec.attempts + 1
            self._journal.started(task_id, attempt, now)
            run = _Running(rec, seq, attempt, now)
            self._running[task_id] = run
            timeout = rec.timeout if rec.timeout is not None else self.settings.task_timeout
            if session is not None:
                assert self._remotes is not None
                run.where = session.where
                self._remotes.send_task(
                    session, task_id, attempt, rec.name, rec.args_json, rec.kwargs_json, timeout
                )
                continue
            assert self._pool is not None
            fn = self._tasks[rec.name]
            args = json.loads(rec.args_json)
            kwargs = {} if rec.kwargs_json == "{}" else json.loads(rec.kwargs_json)
            options = self._options.get(timeout)
            if options is None:
                options = self._options[timeout] = self._pool.options(timeout=timeout, retries=0)
            # run_task: the task's prints become log events with its id (task_output).
            future = options.submit(run_task, task_id, rec.name, self._json_logs, fn, args, kwargs)
            TASK_LABELS[future.task_id] = task_id  # pool log lines name the daemon's id
            run.future = future
            self._local_running += 1
            future._pw_listen(functools.partial(self._completed, task_id))
        for entry in skipped:
            heapq.heappush(self._ready, entry)
        if skipped and self._ready and self._has_capacity():
            self._stalled = True  # the capacity left fits none of them: sleep until news

    def _remote_ended(self, event: RemoteEvent) -> None:
        run = self._running.get(event.task_id)
        if run is None or run.future is not None or run.attempt != event.attempt:
            return  # cancelled, or settled already
        self._pop_running(event.task_id)
        self._settle(run, event.outcome)

    def _completed(self, task_id: str, future: Future[Any]) -> None:
        """Dispatcher or collector thread: hand the outcome to the loop (one wake-up per pass)."""
        self._completions.put((task_id, future))
        self._waker.wake()

    def _take_completions(self) -> None:
        while True:
            try:
                task_id, future = self._completions.get_nowait()
            except Empty:
                return
            TASK_LABELS.pop(getattr(future, "task_id", -1), None)
            run = self._running.get(task_id)
            if run is None or run.future is not future:
                continue  # cancelled by a client, or taken back at drain: settled already
            self._pop_running(task_id)
            self._settle(run, outcome_of(future, self.settings.max_message_bytes))

    def _settle(self, run: _Running, outcome: Outcome) -> None:
        """Record how one run ended: finish the task, or queue it again."""
        assert self._journal is not None
        rec = run.record  # as it was queued: the run holds its attempt and start
        if outcome.error is not None:
            # A task's error goes into replies: clipped, for local and remote runs
            # alike; the whole of it goes to the log.
            error, clipped = clip_error(outcome.error, self.settings.max_message_bytes)
            if clipped:
                _log.warning(
                    "task error clipped; the full text follows",
                    task_id=rec.task_id,
                    task=rec.name,
                    error_type=outcome.error.get("type"),
                    message=outcome.error.get("message"),
                    traceback=outcome.error.get("traceback"),
                )
                outcome = dataclasses.replace(outcome, error=error)
        state = outcome.state
        if self._metrics is not None:
            self._metrics.run_ended(rec.name, state, time.time() - run.started_at)
        if state == "interrupted":  # the pool stopped under it: it runs again later
            self._journal.requeue(rec.task_id, None)
            return
        if state != "worker_lost":
            self._finish(
                rec,
                state,
                run=run,
                result_json=outcome.result_json,
                error_json=None if outcome.error is None else canonical_json(outcome.error),
                worker_pid=outcome.worker_pid,
            )
            return
        entry = {
            "attempt": run.attempt,
            "worker_pid": outcome.worker_pid,
            "outcome": "worker_lost",
            "exitcode": outcome.exitcode,
            "signal": outcome.signal,
            "at": time.time(),
        }
        losses = len(json.loads(rec.history_json)) + 1
        _log.warning(
            "worker lost running a task",
            task_id=rec.task_id,
            task=rec.name,
            worker_pid=outcome.worker_pid,
            signal=outcome.signal,
            exitcode=outcome.exitcode,
            attempt=run.attempt,
            where=run.where,
        )
        if losses <= rec.retries:
            self._journal.requeue(rec.task_id, entry)
            self._enqueue(rec, 0.0, run.seq)  # not held: its history just grew
            return
        if losses > 1:
            last = worker_lost_message(outcome.worker_pid, outcome.exitcode)
            message = f"its worker died on each of its {losses} attempts; last: {last}"
        else:
            message = outcome.error["message"] if outcome.error else "worker lost"
        error = {"type": "WorkerLost", "message": message, "traceback": ""}
        self._finish(
            rec,
            "quarantined",
            run=run,
            error_json=canonical_json(error),
            history_entry=entry,
            worker_pid=outcome.worker_pid,
        )

    def _finish(
        self,
        rec: TaskRecord,
        state: str,
        *,
        run: _Running | None = None,
        result_json: str | None = None,
        error_json: str | None = None,
        history_entry: Mapping[str, Any] | None = None,
        worker_pid: int | None = None,
    ) -> None:
        """Move ``rec`` (as queued, if ``run`` ended; else as the journal holds it) to ``state``."""
        assert self._journal is not None
        attempts = rec.attempts if run is None else run.attempt
        at = time.time()
        self._journal.finish(
            rec.task_id,
            state,
            at,
            result_json=result_json,
            error_json=error_json,
            history_entry=history_entry,
        )
        self._finished += 1
        if self._metrics is not None:
            self._metrics.finished(rec.name, state)
        if self._status is not None:
            self._status.finished(
                rec.task_id,
                rec.name,
                state,
                attempts=attempts,
                finished_at=at,
                error_json=error_json,
            )
        if state == "done":
            _log.debug(  # one line per task is noise
                "task finished",
                task_id=rec.task_id,
                task=rec.name,
                state=state,
                worker_pid=worker_pid,
                attempt=attempts,
            )
        else:
            error = {} if error_json is None else json.loads(error_json)
            _log.info(
                "task finished",
                task_id=rec.task_id,
                task=rec.name,
                state=state,
                error_type=error.get("type"),
                error=error.get("message"),
                worker_pid=worker_pid,
                attempt=attempts,
            )
        waiters = self._waiters.pop(rec.task_id, [])
        peers = self._notify.pop(rec.task_id, [])
        if not waiters and not peers:
            return
        if history_entry is None:  # the record as finish() left it, without reading it back
            done = TaskRecord(
                task_id=rec.task_id,
                name=rec.name,
                key=rec.key,
                args_json=rec.args_json,
                kwargs_json=rec.kwargs_json,
                state=state,
                priority=rec.priority,
                not_before=rec.not_before,
                timeout=rec.timeout,
                retries=rec.retries,
                attempts=attempts,
                created_at=rec.created_at,
                started_at=rec.started_at if run is None else run.started_at,
                finished_at=at,
                result_json=result_json,
                error_json=error_json,
                history_json=rec.history_json,
                seq=rec.seq,
            )
        else:
            done = self._get(rec.task_id)
        for waiter in waiters:
            waiter.done = True
            body = self._fit(
                waiter.peer.request_id, task_reply(waiter.peer.request_id, "result", done)
            )
            self._out.append(waiter.peer.frames(body))
        for peer in peers:
            body = event(peer.request_id, done)
            if len(body) <= self.settings.max_message_bytes:
                self._out.append(peer.frames(body))
            # else: not pushed; the client asks with `result`, which says why.

    def _send(self) -> None:
        """Send the replies of this pass; drop (and count) those for a client not reading."""
        assert self._router is not None
        out, self._out = self._out, []
        budget = max(self.settings.max_reply_bytes_queued, 2 * self.settings.max_message_bytes)
        now = time.monotonic()
        for frames in out:
            identity, body = frames[0], frames[-1]
            size = len(body)
            box = self._outboxes.get(identity)
            if box is None:
                box = self._outboxes[identity] = _Outbox()
            box.last = now
            queued = box.queued()
            if queued and queued + size > budget:
                # It has a budget's worth of replies it has not read: drop
                # this one (it can ask again) rather than hold it in memory.
                self._drop(box, "not_reading", queued=queued, size=size)
                continue
            track = size >= _TRACK_BYTES or box.untracked + size >= _TRACK_BYTES
            try:
                if track:
                    last = zmq.Frame(body, track=True, copy=False, copy_threshold=0)
                    self._router.send_multipart([*frames[:-1], last], zmq.NOBLOCK, copy=False)
                else:
                    self._router.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:  # libzmq's own per-client message limit (SNDHWM)
                self._drop(box, "not_reading", queued=queued, size=size)
                continue
            except zmq.ZMQError as exc:  # EHOSTUNREACH: it disconnected meanwhile
                self._outboxes.pop(identity, None)
                self._dropped += 1
                if self._metrics is not None:
                    self._metrics.dropped("gone")
                _log.debug("client gone; reply dropped", error=str(exc))
                continue
            box.sent += size
            if track:
                assert last.tracker is not None
                box.trackers.append((last.tracker, box.sent))
                box.untracked = 0
            else:
                box.untracked += size
            if box.dropping:
                box.dropping = False
                _log.info("client reading again", queued=box.sent - box.written)
        if now >= self._next_outbox_sweep:
            self._next_outbox_sweep = now + _PEER_IDLE
            for identity, box in list(self._outboxes.items()):
                if now - box.last > _PEER_IDLE and box.queued() == 0:
                    del self._outboxes[identity]

    def _drop(self, box: _Outbox, reason: str, **fields: int) -> None:
        """Count a reply not sent; log the first of a run of them for one client."""
        self._dropped += 1
        if self._metrics is not None:
            self._metrics.dropped(reason)
        if not box.dropping:
            box.dropping = True
            _log.warning(
                "client not reading; its replies are dropped until it reads",
                limit=self.settings.max_reply_bytes_queued,
                **fields,
            )

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
