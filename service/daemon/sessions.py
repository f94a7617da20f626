"""The daemon's side of remote workers: sessions, credit, heartbeats, loss.

```
 remote worker (DEALER, CURVE) ──hello/ready/result/heartbeat/bye──▶ worker ROUTER
                               ◀──welcome/task/cancel/heartbeat/stop──┘
                                        │ RemoteWorkers (daemon loop thread)
                          events: ("result", Outcome) · ("lost", task) ──▶ Daemon._settle
```

The wire is the second part of docs/protocol.md. Everything here runs on the
daemon's loop thread, which owns the worker socket. A session is one
connection attempt of one remote worker (its ``hello``); tasks are sent only
against credit the session granted, and every task a session holds is
reported lost when the session ends: by a new ``hello`` from the same socket,
a ``bye``, or ``expiry`` seconds of silence. Results for tasks a session does
not hold (late, after its loss was declared) are dropped, so a task is never
settled twice.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from pipework.protocol.errors import ErrorCode, ProtocolError
from pipework.protocol.workers import (
    RESULT_OVERHEAD,
    Bye,
    Heartbeat,
    Hello,
    Ready,
    ResultMessage,
    decode_worker_message,
)
from pipework.service.daemon.outcomes import Outcome, outcome_of_value
from pipework.service.logs import get_logger

__all__ = ["RemoteEvent", "RemoteWorkers", "Session"]

_log = get_logger("pipework.remotes")

# The head of a result message, before its result: every field up to
# "attempt" is a flat string or number. Enough to tell which run a result the
# daemon cannot read (too large, too deep) was for, so that run ends.
_RESULT_HEAD = re.compile(
    rb'\A\{[^\[\]{}]{0,400}?"task_id"\s*:\s*"([^"\\]{1,64})"\s*,\s*"attempt"\s*:\s*(\d{1,9})'
)
_IS_RESULT = re.compile(rb'"type"\s*:\s*"result"')
_BATCH = 1024


@dataclass(slots=True)
class Session:
    """One remote worker's current connection."""

    identity: bytes
    session: str
    host: str
    pid: int
    slots: int
    tasks: frozenset[str]
    heard: float
    sent: float
    credit: int = 0
    held: dict[str, int] = field(default_factory=dict)  # task_id -> attempt
    started: dict[str, float] = field(default_factory=dict)  # task_id -> wall time sent

    @property
    def where(self) -> str:
        return f"{self.host}:{self.pid}/{self.session}"


@dataclass(frozen=True, slots=True)
class RemoteEvent:
    """A run that ended on a remote worker: a reported outcome, or its session lost."""

    task_id: str
    attempt: int
    outcome: Outcome
    where: str


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class RemoteWorkers:
    """Every remote session of one daemon, behind its worker ROUTER socket.

    Args:
        sock: the bound worker ROUTER.
        registered: the task names the daemon serves.
        heartbeat: seconds of quiet after which a heartbeat is sent.
        expiry: seconds of silence after which a session is lost.
        max_bytes: the largest message or result accepted.
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        registered: Iterable[str],
        heartbeat: float,
        expiry: float,
        max_bytes: int,
    ) -> None:
        self.sock = sock
        self._registered = frozenset(registered)
        self._heartbeat = heartbeat
        self._expiry = expiry
        self._max_bytes = max_bytes
        # By session id, not by ROUTER identity: libzmq gives a reconnected
        # TCP connection a new identity, and a session must survive that.
        self._sessions: dict[str, Session] = {}
        self._by_identity: dict[bytes, str] = {}
        self._out: list[list[bytes]] = []

    # -- what the daemon asks -------------------------------------------------------

    def credit(self) -> int:
        """Tasks the remote workers can take right now, all sessions together."""
        return sum(s.credit for s in self._sessions.values())

    def pick(self, task_name: str) -> Session | None:
        """The session with the most credit that serves ``task_name``, if any has credit."""
        best: Session | None = None
        for s in self._sessions.values():
            if s.credit > 0 and task_name in s.tasks and (best is None or s.credit > best.credit):
                best = s
        return best

    def serves(self, task_name: str) -> bool:
        """Whether any open session serves ``task_name`` (with credit or not)."""
        return any(task_name in s.tasks for s in self._sessions.values())

    def send_task(
        self,
        session: Session,
        task_id: str,
        attempt: int,
        name: str,
        args_json: str,
        kwargs_json: str,
        timeout: float | None,
    ) -> None:
        """Hand a task to ``session`` (one credit). Arguments are JSON text already."""
        session.credit -= 1
        session.held[task_id] = attempt
        session.started[task_id] = time.time()
        # The journal holds the arguments as canonical JSON text: splice it in
        # rather than parse and re-serialise per task.
        head = _dumps(
            {
                "v": 1,
                "type": "task",
                "session": session.session,
                "task_id": task_id,
                "attempt": attempt,
                "task": name,
                "timeout": timeout,
            }
        )
        body = head[:-1] + b',"args":' + args_json.encode() + b',"kwargs":'
        body += kwargs_json.encode() + b"}"
        self._send(session, body)

    def cancel(self, task_id: str) -> bool:
        """Tell the session running ``task_id`` to kill it; False if no session holds it."""
        for s in self._sessions.values():
            if s.held.pop(task_id, None) is not None:
                s.started.pop(task_id, None)
                self._send(s, self._msg(s, "cancel", task_id=task_id))
                return True
        return False

    def describe(self) -> list[dict[str, Any]]:
        """One entry per remote slot: what runs there (WorkerInfo, plus where it is)."""
        out: list[dict[str, Any]] = []
        for s in self._sessions.values():
            remote = {"host": s.host, "pid": s.pid, "session": s.session}
            for task_id in s.held:
                out.append(
                    {
                        "pid": s.pid,
                        "task_id": task_id,
                        "task": None,
                        "since": s.started.get(task_id),
                        "remote": remote,
                    }
                )
            for _ in range(max(0, s.slots - len(s.held))):
                out.append(
                    {"pid": s.pid, "task_id": None, "task": None, "since": None, "remote": remote}
                )
        return out

    def sessions(self) -> list[Session]:
        """The open sessions (a snapshot)."""
        return list(self._sessions.values())

    def next_deadline(self) -> float:
        """The monotonic time of the next heartbeat or expiry check."""
        if not self._sessions:
            return time.monotonic() + 1.0
        return min(
            min(s.sent + self._heartbeat, s.heard + self._expiry) for s in self._sessions.values()
        )

    # -- the loop's calls -----------------------------------------------------------

    def read(self) -> list[RemoteEvent]:
        """Handle every waiting message (up to a batch); return the runs that ended."""
        events: list[RemoteEvent] = []
        for _ in range(_BATCH):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_message(frames, events)
        return events

    def tick(self) -> list[RemoteEvent]:
        """Send due heartbeats, end silent sessions; return the runs those sessions held."""
        now = time.monotonic()
        events: list[RemoteEvent] = []
        for s in list(self._sessions.values()):
            if now - s.heard >= self._expiry:
                _log.warning(
                    "remote worker silent; session lost",
                    session=s.session,
                    host=s.host,
                    worker_pid=s.pid,
                    silent=round(now - s.heard, 3),
                    tasks=len(s.held),
                )
                self._end(s, events, "silent")
            elif now - s.sent >= self._heartbeat:
                self._send(s, self._msg(s, "heartbeat"))
        return events

    def flush(self) -> None:
        """Send what this pass queued (after the journal commit, like client replies)."""
        out, self._out = self._out, []
        for frames in out:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                _log.warning("remote worker not reading; message dropped")
            except zmq.ZMQError as exc:  # EHOSTUNREACH: it went away meanwhile
                _log.info("remote worker gone; message dropped", error=str(exc))

    # -- messages -------------------------------------------------------------------

    def _on_message(self, frames: list[bytes], events: list[RemoteEvent]) -> None:
        identity, body = frames[0], frames[1:]
        try:
            # A result may be as large as the daemon accepts, plus its envelope.
            msg = decode_worker_message(body, self._max_bytes + RESULT_OVERHEAD)
        except ProtocolError as exc:
            _log.warning("bad message from a remote worker; dropped", error=str(exc))
            if len(body) == 1:
                self._unreadable_result(identity, bytes(body[0][:512]), exc, events)
            return
        now = time.monotonic()
        if isinstance(msg, Hello):
            previous = self._sessions.get(self._by_identity.get(identity, ""))
            if previous is not None:
                self._end(previous, events, "said hello again")
            self._hello(identity, msg, now, events)
            return
        session = self._sessions.get(msg.session)
        if session is None:
            _log.info(
                "message for a session that is not open; dropped",
                type=msg.type,
                session=msg.session,
            )
            return
        session.heard = now
        if identity != session.identity:  # the same session over a new connection
            self._by_identity.pop(session.identity, None)
            session.identity = identity
            self._by_identity[identity] = session.session
        if isinstance(msg, Ready):
            session.credit = min(session.credit + msg.credit, session.slots - len(session.held))
        elif isinstance(msg, ResultMessage):
            self._result(session, msg, events)
        elif isinstance(msg, Bye):
            _log.info("remote worker said bye", session=session.session, host=session.host)
            self._end(session, events, "said bye")
        elif not isinstance(msg, Heartbeat):
            _log.warning("unexpected message from a remote worker", type=msg.type)

    def _unreadable_result(
        self, identity: bytes, head: bytes, error: ProtocolError, events: list[RemoteEvent]
    ) -> None:
        """A result that cannot be decoded fails its run, rather than leave it running."""
        session = self._sessions.get(self._by_identity.get(identity, ""))
        match = _RESULT_HEAD.match(head)
        if session is None or match is None or not _IS_RESULT.search(head[: match.end()]):
            return
        task_id, attempt = match.group(1).decode(), int(match.group(2))
        if session.held.get(task_id) != attempt:
            return
        del session.held[task_id]
        session.started.pop(task_id, None)
        if error.code == ErrorCode.TOO_LARGE:
            kind = "ResultTooLarge"
        elif "nested too deeply" in error.message:
            kind = "ResultTooDeep"
        else:
            kind = "ResultUnreadable"
        message = f"the remote worker {session.where} sent a result the daemon cannot read: "
        outcome = Outcome(
            "failed",
            error={"type": kind, "message": message + error.message, "traceback": ""},
        )
        events.append(RemoteEvent(task_id, attempt, outcome, session.where))

    def _hello(self, identity: bytes, msg: Hello, now: float, events: list[RemoteEvent]) -> None:
        tasks = frozenset(msg.tasks) & self._registered
        session = Session(
            identity=identity,
            session=msg.session,
            host=msg.host,
            pid=msg.pid,
            slots=msg.slots,
            tasks=tasks,
            heard=now,
            sent=now,
        )
        if not tasks:
            _log.warning(
                "remote worker serves none of our tasks; told to stop",
                host=msg.host,
                worker_pid=msg.pid,
                offered=sorted(msg.tasks)[:20],
            )
            self._send(session, self._msg(session, "stop"))
            return
        if msg.session in self._sessions:  # a worker reusing a live session id: replace it
            self._end(self._sessions[msg.session], events, "reused its session id")
        self._sessions[msg.session] = session
        self._by_identity[identity] = msg.session
        self._send(
            session,
            self._msg(session, "welcome", heartbeat=self._heartbeat, expiry=self._expiry),
        )
        _log.info(
            "remote worker joined",
            session=msg.session,
            host=msg.host,
            worker_pid=msg.pid,
            slots=msg.slots,
            tasks=len(tasks),
        )

    def _result(self, session: Session, msg: ResultMessage, events: list[RemoteEvent]) -> None:
        attempt = session.held.get(msg.task_id)
        if attempt is None or attempt != msg.attempt:
            _log.warning(
                "result for a task this session does not hold; dropped",
                task_id=msg.task_id,
                attempt=msg.attempt,
                session=session.session,
            )
            return
        del session.held[msg.task_id]
        session.started.pop(msg.task_id, None)
        error = None if msg.error is None else msg.error.model_dump()
        if msg.state == "done":
            outcome = outcome_of_value(msg.result, self._max_bytes)
        elif msg.state == "worker_lost":
            outcome = Outcome(
                "worker_lost",
                error=error or {"type": "WorkerLost", "message": "", "traceback": ""},
                exitcode=msg.exitcode,
                signal=msg.signal,
            )
        else:
            outcome = Outcome(
                msg.state,
                error=error or {"type": "Error", "message": "", "traceback": ""},
            )
        events.append(RemoteEvent(msg.task_id, msg.attempt, outcome, session.where))

    def _end(self, session: Session, events: list[RemoteEvent], why: str) -> None:
        self._sessions.pop(session.session, None)
        if self._by_identity.get(session.identity) == session.session:
            del self._by_identity[session.identity]
        for task_id, attempt in session.held.items():
            message = f"remote worker {session.where} {why} while running the task"
            events.append(
                RemoteEvent(
                    task_id,
                    attempt,
                    Outcome(
                        "worker_lost",
                        error={"type": "WorkerLost", "message": message, "traceback": ""},
                    ),
                    session.where,
                )
            )
        session.held.clear()

    def _msg(self, session: Session, kind: str, **fields: Any) -> bytes:
        return _dumps({"v": 1, "type": kind, "session": session.session, **fields})

    def _send(self, session: Session, body: bytes) -> None:
        session.sent = time.monotonic()
        self._out.append([session.identity, body])
