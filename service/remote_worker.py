"""The remote worker: ``pipework worker --connect tcp://HOST:PORT``, a local pool serving a daemon.

```
 daemon ROUTER ◀──── tcp:// + CURVE (or ipc://) ────▶ DEALER
                                                        │
            ┌──────────── main loop (one thread owns the socket) ─────────────┐
            │ hello ─▶ welcome ─▶ ready(credit = slots)                      │
            │ task ─▶ pool.submit        cancel ─▶ future.cancel (kills it)  │
            │ heartbeat out when quiet · expiry: kill all, new socket, hello │
            └──────┬──────────────────────────────────────────▲──────────────┘
                   ▼                                          │ futures (+ wake-up pipe)
              WorkerService(slots) ─▶ local worker processes ─▶ collector thread
```

The wire is the second part of ``docs/protocol.md``. The main loop is the
only thread that touches the socket: done-callbacks run on the pool's
collector thread and hand finished futures over through a queue and a
wake-up pipe. Tasks run in the pool's child processes, so a task that holds
the GIL (or crashes) never delays a heartbeat.

Choices the spec leaves open:

- **Credit.** The worker keeps ``slots - held - unused credit`` topped up:
  after each result, after a ``cancel`` (the slot is free again), after an
  unknown task name. A task the daemon sends beyond its credit is not
  refused: it waits in the local pool for a free slot (never more than
  ``slots`` run at once), and no credit is granted back for it, so the
  daemon's count converges to ``slots`` again.
- **Heard from the daemon.** Only a well-formed message for the current
  session counts as a sign of life; malformed messages and messages for
  another session are logged and dropped, and do not.
- **Stop.** ``stop`` is obeyed even before ``welcome`` (a daemon that shares
  no task with this worker answers ``hello`` with it); running tasks are
  killed, not finished, and ``bye`` is sent.
- **Results.** ``service.daemon.outcomes.outcome_of`` decides what a finished
  future means, exactly as for the daemon's own pool; an error's message
  and traceback are clipped to ``protocol.workers.MAX_ERROR_TEXT``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue
from types import FrameType
from typing import Any, cast

import zmq
import zmq.utils.monitor
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipework.protocol.codec import MAX_MESSAGE_BYTES
from pipework.protocol.curve import KeyFileError, load_keypair, load_public_key
from pipework.protocol.errors import ProtocolError
from pipework.protocol.workers import (
    RESULT_OVERHEAD,
    Bye,
    Cancel,
    Heartbeat,
    Hello,
    Ready,
    ResultError,
    ResultMessage,
    Stop,
    TaskMessage,
    Welcome,
    decode_worker_message,
    encode,
)
from pipework.service.daemon.config import LogFormat, LogLevel, describe_invalid
from pipework.service.daemon.outcomes import Outcome, clip_error, outcome_of
from pipework.service.daemon.registry import TaskRegistryError, load_tasks
from pipework.service.errors import PipeworkError
from pipework.service.executor import WorkerService
from pipework.service.logs import get_logger
from pipework.service.transports import TransportName
from pipework.service.waker import Waker

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "RemoteWorker",
    "RemoteWorkerError",
    "WorkerSettings",
    "worker_settings",
]

_log = get_logger("pipework.remote")

BACKOFF_MIN = 0.1
"""Seconds the first ``hello`` of an attempt waits for ``welcome``."""
BACKOFF_MAX = 5.0
"""The longest wait for ``welcome``; the wait doubles up to it."""
SHUTDOWN_BOUND = 10.0
"""Seconds the local pool gets to stop at exit; past it the process exits anyway
(the pool's workers die with it)."""

_BYE_LINGER_MS = 1000  # how long close() may spend getting bye out
_BATCH = 256  # messages read per pass
_MAX_SLEEP = 1.0
_MAX_SLOTS = 10_000
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class RemoteWorkerError(PipeworkError):
    """The remote worker cannot start: a bad endpoint, key file, slot count or task module."""


@dataclass(slots=True, eq=False)
class _Held:
    """A task this worker holds for the daemon: queued in or running on the pool."""

    task_id: str
    attempt: int
    task: str
    future: Future[Any]


class WorkerSettings(BaseModel):
    """Everything ``pipework worker`` can be told; its flags are made from these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: str = Field(description="the daemon's worker endpoint: tcp://HOST:PORT or ipc://PATH")
    tasks: str = Field(
        description="the daemon's task module (the current directory is searched first)"
    )
    slots: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, _MAX_SLOTS),
        ge=1,
        le=_MAX_SLOTS,
        description="local worker processes, and the credit offered",
    )
    secret_key: Path | None = Field(
        default=None, description="this worker's CURVE NAME.key_secret ($PIPEWORK_SECRET_KEY)"
    )
    server_key: Path | None = Field(
        default=None, description="the daemon's public NAME.key ($PIPEWORK_SERVER_KEY)"
    )
    exit_after: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="exit 0 after this many seconds without a session (default: retry for ever)",
    )
    transport: TransportName = Field(default="pipe", description="to the local workers")
    max_message_bytes: int = Field(
        default=MAX_MESSAGE_BYTES,
        ge=1024,
        description="largest result JSON sent, as the daemon's setting; larger: ResultTooLarge",
    )
    log_format: LogFormat = Field(default="auto", description="auto: console on a terminal")
    log_level: LogLevel = Field(default="info")

    @field_validator("connect")
    @classmethod
    def _endpoint(cls, connect: str) -> str:
        if not connect.startswith(("tcp://", "ipc://")):
            raise ValueError(
                f"cannot connect to {connect!r}: expected tcp://HOST:PORT or ipc://PATH"
            )
        return connect

    @model_validator(mode="after")
    def _curve_keys(self) -> WorkerSettings:
        if (self.secret_key is None) != (self.server_key is None):
            raise ValueError(
                "CURVE needs both --secret-key (this worker's NAME.key_secret) and "
                "--server-key (the daemon's public NAME.key)"
            )
        if self.connect.startswith("tcp://") and self.secret_key is None:
            raise ValueError(
                f"{self.connect} is tcp://: the daemon accepts only CURVE-authenticated workers "
                "there; pass --secret-key FILE.key_secret and --server-key DAEMON.key "
                "(make a pair with `pipework keys generate DIR NAME`)"
            )
        return self


def worker_settings(**values: Any) -> WorkerSettings:
    """``WorkerSettings`` from ``values``, or ``RemoteWorkerError`` saying what is wrong."""
    try:
        return WorkerSettings(**values)
    except ValidationError as exc:
        raise RemoteWorkerError(describe_invalid(exc)) from None


class RemoteWorker:
    """A process that runs a daemon's tasks in its own pool of ``slots`` workers.

    Args:
        settings: where to connect, the task module, slots, keys and limits
            (see ``WorkerSettings``; ``worker_settings(**values)`` builds one).

    Raises:
        RemoteWorkerError: an unreadable key file or a task module that cannot
            be loaded.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if settings.secret_key is not None and settings.server_key is not None:
            try:
                public, secret = load_keypair(settings.secret_key)
                self._curve = (public, secret, load_public_key(settings.server_key))
            except KeyFileError as exc:
                raise RemoteWorkerError(str(exc)) from exc
        try:
            self._tasks: Mapping[str, Callable[..., Any]] = load_tasks(settings.tasks)
        except TaskRegistryError as exc:
            raise RemoteWorkerError(str(exc)) from exc
        self._endpoint = settings.connect
        self._slots = settings.slots
        self._exit_after = settings.exit_after
        self._transport: TransportName = settings.transport
        self._max_message_bytes = settings.max_message_bytes
        self._host = (socket.gethostname() or "unknown")[:255]

        self._waker = Waker()
        self._completions: SimpleQueue[tuple[_Held, Future[Any]]] = SimpleQueue()
        self._stop_reason: str | None = None
        self._signalled = False

        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._monitor: zmq.Socket[Any] | None = None
        self._poller = zmq.Poller()
        self._pool: WorkerService | None = None
        self._session = ""
        self._welcomed = False
        self._said_bye = False
        self._handshake_warned = False
        self._heartbeat = 1.0
        self._expiry = 10.0
        self._backoff = BACKOFF_MIN
        self._hello_deadline = 0.0
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._no_session_since = 0.0
        self._credit = 0
        self._held: dict[str, _Held] = {}

    # -- control --------------------------------------------------------------------

    def stop(self) -> None:
        """Leave as if the daemon had sent ``stop``: kill running tasks, say bye, exit 0.

        Safe to call from any thread (and from a signal handler).
        """
        if self._stop_reason is None:
            self._stop_reason = "stop() called"
        self._waker.wake()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: ``stop()``; a second one exits at once (status 128 + signal).

        SIGHUP is ignored: an operator's reload (or a closed terminal) must not
        kill the tasks a remote worker runs.
        """
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signalled:
            # No logging here: the main thread may hold the logging lock. The
            # pool's workers die with this process (parent-death signal).
            with contextlib.suppress(OSError):
                os.write(2, b"pipework worker: second signal; exiting now\n")
            os._exit(128 + signum)
        self._signalled = True
        if self._stop_reason is None:
            self._stop_reason = signal.Signals(signum).name
        self._waker.wake()

    # -- the loop -------------------------------------------------------------------

    def run(self) -> int:
        """Serve the daemon until told to stop, or until ``exit_after`` without a session.

        Returns:
            0: stopped (``stop`` message, ``stop()``, SIGTERM/SIGINT) or
            ``exit_after`` passed.
        """
        self._ctx = zmq.Context()
        self._pool = WorkerService(
            self._slots,
            transport=self._transport,
            retries=0,  # the daemon retries, so each attempt is journalled there
            submit_timeout=0.0,  # the loop never blocks on the pool
            shutdown_timeout=0.0,
        )
        self._poller.register(self._waker.fileno(), zmq.POLLIN)
        self._no_session_since = time.monotonic()
        _log.info(
            "remote worker starting",
            endpoint=self._endpoint,
            slots=self._slots,
            curve=self._curve is not None,
            tasks=sorted(self._tasks),
            pid=os.getpid(),
        )
        try:
            self._open()
            return self._loop()
        finally:
            self._close()

    def _loop(self) -> int:
        while True:
            if self._stop_reason is not None:
                self._leave(self._stop_reason)
                return 0
            now = time.monotonic()
            events = dict(self._poller.poll(int(self._sleep(now) * 1000)))
            if self._waker.fileno() in events:
                self._waker.drain()
            self._take_completions()
            if self._monitor is not None and self._monitor in events:
                self._read_monitor()
            if self._sock is not None and self._sock in events:
                self._read()
            if self._stop_reason is None and self._timers(time.monotonic()):
                _log.info(
                    "no session for exit_after seconds; exiting",
                    exit_after=self._exit_after,
                    endpoint=self._endpoint,
                )
                return 0

    def _sleep(self, now: float) -> float:
        when = now + _MAX_SLEEP
        if self._welcomed:
            when = min(when, self._last_sent + self._heartbeat, self._last_heard + self._expiry)
        else:
            when = min(when, self._hello_deadline)
            if self._exit_after is not None:
                when = min(when, self._no_session_since + self._exit_after)
        return max(0.0, when - now)

    def _timers(self, now: float) -> bool:
        """Heartbeat, expiry and backoff; True when ``exit_after`` has run out."""
        if self._welcomed:
            if now - self._last_heard >= self._expiry:
                self._lose_session(now)
            elif now - self._last_sent >= self._heartbeat:
                self._send(Heartbeat(session=self._session))
            return False
        if self._exit_after is not None and now - self._no_session_since >= self._exit_after:
            return True
        if now >= self._hello_deadline:
            if self._backoff < BACKOFF_MAX <= 2 * self._backoff:
                _log.warning(
                    "no welcome from the daemon; retrying every few seconds",
                    endpoint=self._endpoint,
                    waited=round(now - self._no_session_since, 1),
                    retry_every=BACKOFF_MAX,
                )
            self._backoff = min(2 * self._backoff, BACKOFF_MAX)
            self._reopen()
        return False

    # -- connection and session -------------------------------------------------------

    def _open(self) -> None:
        """A new DEALER (and session id), connected, with a ``hello`` on its way."""
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        if self._curve is not None:
            public, secret, server = self._curve
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = server
        self._monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        sock.connect(self._endpoint)
        self._sock = sock
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._session = secrets.token_hex(8)
        self._welcomed = False
        self._credit = 0
        self._hello_deadline = time.monotonic() + self._backoff
        self._send(
            Hello(
                session=self._session,
                slots=self._slots,
                host=self._host,
                pid=os.getpid(),
                tasks=sorted(self._tasks),
            )
        )
        _log.debug("hello", session=self._session, endpoint=self._endpoint, wait=self._backoff)

    def _drop_socket(self, linger_ms: int = 0) -> None:
        if self._monitor is not None:
            self._poller.unregister(self._monitor)
            if self._sock is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._sock is not None:
            self._poller.unregister(self._sock)
            self._sock.close(linger=linger_ms)
            self._sock = None

    def _reopen(self) -> None:
        self._drop_socket()
        self._open()

    def _lose_session(self, now: float) -> None:
        _log.warning(
            "nothing heard from the daemon within expiry; killing its tasks and reconnecting",
            session=self._session,
            expiry=self._expiry,
            running=len(self._held),
        )
        self._cancel_all()
        self._welcomed = False
        self._no_session_since = now
        self._backoff = BACKOFF_MIN
        self._reopen()

    def _leave(self, reason: str) -> None:
        """Kill what runs and say ``bye`` (if a session may be open); the caller exits."""
        _log.info("leaving", reason=reason, session=self._session, running=len(self._held))
        self._cancel_all()
        if self._sock is not None and self._session:
            self._send(Bye(session=self._session))
            self._said_bye = True

    def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            self._cancel_all()
            # shutdown_timeout=0 kills what still runs; the bound covers a pool that
            # would not stop (its workers die with this process anyway).
            stopper = threading.Thread(
                target=pool.shutdown,
                kwargs={"wait": True, "cancel_futures": True},
                name="pipework-remote-shutdown",
                daemon=True,
            )
            stopper.start()
            stopper.join(SHUTDOWN_BOUND)
            if stopper.is_alive():
                _log.warning("local pool did not stop in time; exiting anyway")
        self._drop_socket(_BYE_LINGER_MS if self._said_bye else 0)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        with contextlib.suppress(KeyError):
            self._poller.unregister(self._waker.fileno())
        self._waker.close()

    # -- messages in ------------------------------------------------------------------

    def _read(self) -> None:
        sock = self._sock
        for _ in range(_BATCH):
            if sock is not self._sock or self._stop_reason is not None:
                return  # the session was dropped, or we are leaving
            assert sock is not None
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_message(frames)

    def _on_message(self, frames: list[bytes]) -> None:
        try:
            msg = decode_worker_message(frames, self._max_message_bytes + RESULT_OVERHEAD)
        except ProtocolError as exc:
            _log.warning(
                "malformed message from the daemon dropped",
                code=str(exc.code),
                error=exc.message,
                session=self._session,
            )
            return
        if msg.session != self._session:
            _log.warning(
                "message for another session dropped",
                type=msg.type,
                their_session=msg.session,
                session=self._session,
            )
            return
        self._last_heard = time.monotonic()
        if isinstance(msg, Welcome):
            self._on_welcome(msg)
        elif isinstance(msg, Stop):  # also instead of a welcome: "serves none of our tasks"
            if self._stop_reason is None:
                self._stop_reason = "stop from the daemon"
        elif not self._welcomed:
            _log.warning("message before welcome dropped", type=msg.type, session=self._session)
        elif isinstance(msg, TaskMessage):
            self._on_task(msg)
        elif isinstance(msg, Cancel):
            self._on_cancel(msg)
        elif not isinstance(msg, Heartbeat):
            _log.warning("daemon sent a worker's message; dropped", type=msg.type)

    def _on_welcome(self, msg: Welcome) -> None:
        self._heartbeat, self._expiry = msg.heartbeat, msg.expiry
        if self._welcomed:
            return  # a repeat: adopt the timings, nothing else changes
        self._welcomed = True
        self._backoff = BACKOFF_MIN
        self._handshake_warned = False
        _log.info(
            "session open",
            session=self._session,
            endpoint=self._endpoint,
            heartbeat=msg.heartbeat,
            expiry=msg.expiry,
            slots=self._slots,
        )
        self._refill()

    def _on_task(self, msg: TaskMessage) -> None:
        if self._credit > 0:
            self._credit -= 1
        else:
            _log.warning(
                "task beyond the credit given; it waits for a free slot",
                task_id=msg.task_id,
                task=msg.task,
                session=self._session,
                held=len(self._held),
            )
        fn = self._tasks.get(msg.task)
        if fn is None:
            error = {
                "type": "UnknownTask",
                "message": f"no task named {msg.task!r} is registered on this worker",
                "traceback": "",
            }
            self._send_result(msg.task_id, msg.attempt, msg.task, Outcome("failed", error=error))
            self._refill()
            return
        old = self._held.pop(msg.task_id, None)
        if old is not None:
            _log.warning(
                "task sent again while held; the earlier run is cancelled",
                task_id=msg.task_id,
                attempt=msg.attempt,
                session=self._session,
            )
            old.future.cancel()
        assert self._pool is not None
        try:
            future = self._pool.options(timeout=msg.timeout, retries=0).submit(
                fn, *msg.args, **msg.kwargs
            )
        except PipeworkError as exc:  # the pool is full or broken: let the daemon retry it
            error = {"type": type(exc).__name__, "message": str(exc), "traceback": ""}
            outcome = Outcome("worker_lost", error=error)
            self._send_result(msg.task_id, msg.attempt, msg.task, outcome)
            self._refill()
            return
        held = _Held(msg.task_id, msg.attempt, msg.task, future)
        self._held[msg.task_id] = held
        future._pw_listen(functools.partial(self._completed, held))

    def _on_cancel(self, msg: Cancel) -> None:
        held = self._held.pop(msg.task_id, None)
        if held is None:
            _log.debug("cancel for a task not held", task_id=msg.task_id, session=self._session)
            return
        running = held.future.running()
        held.future.cancel()
        _log.info(
            "task cancelled by the daemon",
            task_id=held.task_id,
            task=held.task,
            worker_pid=getattr(held.future, "worker_pid", None) if running else None,
            session=self._session,
        )
        self._refill()

    def _read_monitor(self) -> None:
        monitor = self._monitor
        for _ in range(_BATCH):
            if monitor is None:
                return
            try:
                event = cast(
                    "dict[str, Any]", zmq.utils.monitor.recv_monitor_message(monitor, zmq.NOBLOCK)
                )
            except zmq.Again:
                return
            # libzmq retries every RECONNECT_IVL: say it once per stretch without a session.
            log = _log.debug if self._handshake_warned else None
            self._handshake_warned = True
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                (log or _log.error)(
                    "the daemon refused this worker's key (is its NAME.key in the "
                    "daemon's allow-list directory?)",
                    endpoint=self._endpoint,
                    status=event["value"],
                )
            else:
                (log or _log.warning)(
                    "handshake with the daemon failed (wrong --server-key, or CURVE on "
                    "one side only?)",
                    endpoint=self._endpoint,
                    zmq_event=zmq.Event(event["event"]).name,
                )

    # -- outcomes out -----------------------------------------------------------------

    def _completed(self, held: _Held, future: Future[Any]) -> None:
        """Dispatcher or collector thread: hand the finished future to the loop."""
        self._completions.put((held, future))
        self._waker.wake()

    def _take_completions(self) -> None:
        took = False
        while True:
            try:
                held, future = self._completions.get_nowait()
            except Empty:
                break
            if self._held.get(held.task_id) is not held:
                continue  # cancelled, lost with its session, or replaced
            del self._held[held.task_id]
            took = True
            outcome = outcome_of(future, self._max_message_bytes)
            if outcome.state == "interrupted":
                # The pool stopped under it: not the task's doing, so the daemon retries it.
                outcome = Outcome("worker_lost", error=outcome.error, worker_pid=outcome.worker_pid)
            self._send_result(held.task_id, held.attempt, held.task, outcome)
        if took:
            self._refill()

    def _send_result(self, task_id: str, attempt: int, task: str, outcome: Outcome) -> None:
        state = "failed" if outcome.state == "interrupted" else outcome.state
        error = None
        if outcome.error is not None:
            repaired = {k: _repair(v or "") for k, v in outcome.error.items()}
            clipped, cut = clip_error(repaired, self._max_message_bytes, "the remote worker's log")
            if cut:  # the record keeps the clipped text: the whole of it is here
                _log.warning(
                    "task error clipped; the full text follows",
                    task_id=task_id,
                    task=task,
                    error_type=repaired.get("type"),
                    message=repaired.get("message"),
                    traceback=repaired.get("traceback"),
                )
            error = ResultError(**clipped)
        result = None if outcome.result_json is None else json.loads(outcome.result_json)
        msg = ResultMessage(
            session=self._session,
            task_id=task_id,
            attempt=attempt,
            state=state,
            result=result,
            error=error,
            exitcode=outcome.exitcode if state == "worker_lost" else None,
            signal=outcome.signal if state == "worker_lost" else None,
        )
        try:
            body = encode(msg)
        except ProtocolError as exc:  # a lone surrogate in a string: not UTF-8 JSON
            body = encode(
                msg.model_copy(
                    update={
                        "state": "failed",
                        "result": None,
                        "error": ResultError(
                            type="ResultNotJSON",
                            message=_clip(f"the result cannot be sent as JSON: {exc}", 1000),
                        ),
                    }
                )
            )
        self._send_bytes(body, "result")
        _log.info(
            "task finished",
            task_id=task_id,
            task=task,
            state=msg.state,
            attempt=attempt,
            worker_pid=outcome.worker_pid,
            session=self._session,
        )

    def _refill(self) -> None:
        """Offer the daemon every slot not held and not already offered."""
        if not self._welcomed or self._stop_reason is not None:
            return
        want = self._slots - len(self._held) - self._credit
        if want > 0:
            self._credit += want
            self._send(Ready(session=self._session, credit=want))

    def _cancel_all(self) -> None:
        held, self._held = self._held, {}
        for h in held.values():
            h.future.cancel()
        self._credit = 0

    def _send(self, msg: Hello | Ready | Heartbeat | Bye) -> None:
        self._send_bytes(encode(msg), msg.type)

    def _send_bytes(self, body: bytes, kind: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send(body, zmq.NOBLOCK)
        except zmq.Again:
            # The daemon stopped reading and our queue is full; if it is gone,
            # expiry notices and the daemon retries the tasks of the session.
            _log.warning("daemon not reading; message dropped", type=kind, session=self._session)
        self._last_sent = time.monotonic()


def _repair(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _clip(text: str, limit: int) -> str:
    text = _repair(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
