"""What the daemon answers: reading requests, the op handlers, result waiters, replies out.

``Requests`` is one part of ``service.daemon.server.Daemon`` (a mixin: the
daemon's one thread owns the state all parts share; see ``Daemon``). It reads
the ROUTER socket, handles each op (``submit``, ``status``, ``result``,
``cancel``, ``list``, ``stats``, ``workers``, ``tasks``), parks ``result``
calls that wait until their task finishes or their deadline passes, and sends
each pass's replies with a per-client byte budget. Replies are built by
``service.daemon.replies``; when a task ends, ``service.daemon.scheduler``
answers the waiters and pushes the ``task_done`` events registered here.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

import zmq

from pipework import __version__
from pipework.protocol.codec import decode_request, error_reply
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
from pipework.service.daemon.journal import TERMINAL, Journal, JournalUnavailable, TaskRecord
from pipework.service.daemon.outcomes import canonical_json
from pipework.service.daemon.registry import describe
from pipework.service.daemon.replies import (
    Peer,
    event,
    ok_reply,
    submit_reply,
    task_info,
    task_reply,
)
from pipework.service.daemon.security import CurveServer, needs_curve
from pipework.service.daemon.sessions import RemoteWorkers
from pipework.service.executor import WorkerService
from pipework.service.logs import get_logger

if TYPE_CHECKING:
    from pipework.service.daemon.scheduler import _Running
    from pipework.service.ops.metrics import Metrics

__all__ = ["Requests"]

_log = get_logger("pipework.daemon")

# Requests read per pass. A pass commits once and starts tasks once, so a
# smaller batch starts tasks sooner during a submit flood (benchmarks.daemon:
# at 1024 a flood starved execution); 256 still fills a group commit.
_BATCH = 256
# Within a batch, runs that ended are settled and replaced every this many
# requests: a worker then waits for a slice of a batch, not for all of it.
_REFILL_EVERY = 32
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
_Frames = list[bytes]
_REVOKED = "\0revoked"  # the user of a CURVE peer whose key left the allow-list


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


class Requests:
    """The daemon's request handlers, result waiters and reply sending (a part of ``Daemon``)."""

    if TYPE_CHECKING:
        # What this part uses of the daemon and of its scheduler.
        settings: DaemonSettings
        _tasks: Mapping[str, Callable[..., Any]]
        _journal: Journal | None
        _journal_down: str | None
        _pool: WorkerService | None
        _router: zmq.Socket[Any] | None
        _remotes: RemoteWorkers | None
        _curve: CurveServer | None
        _metrics: Metrics | None
        _draining: bool
        _started: float
        _accepted: int
        _finished: int
        _completions: SimpleQueue[tuple[str, Future[Any]]]
        _queued: set[str]
        _held: dict[str, TaskRecord]
        _running: dict[str, _Running]

        def _journal_failed(self, exc: JournalUnavailable) -> None: ...
        @staticmethod
        def _unavailable(reason: str) -> ProtocolError: ...
        def _refill(self) -> None: ...
        def _enqueue(
            self, rec: TaskRecord, now: float, seq: int, *, hold: bool = False
        ) -> None: ...
        def _take_completions(self) -> None: ...
        def _pop_running(self, task_id: str) -> _Running | None: ...
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
        ) -> None: ...

    def __init__(self) -> None:
        super().__init__()
        # Submits acknowledged since the last flush: task id -> (reply index in _out, peer).
        self._pass_acks: dict[str, list[tuple[int, Peer]]] = {}
        self._acked: str | None = None  # the task the submit being handled answers with
        self._waiters: dict[str, list[_Waiter]] = {}
        self._waiter_heap: list[_Waiter] = []
        self._waiter_seq = 0
        self._notify: dict[str, list[Peer]] = {}
        self._out: list[_Frames] = []
        self._outboxes: dict[bytes, _Outbox] = {}
        self._next_outbox_sweep = 0.0
        self._dropped = 0
        self._events_after_reply: list[_Frames] = []

    # -- requests -------------------------------------------------------------------

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

    # -- replies out ----------------------------------------------------------------

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
