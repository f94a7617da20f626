"""When and where tasks run: the ready and delayed heaps, dispatch, settling a run.

``Scheduler`` is one part of ``service.daemon.server.Daemon`` (a mixin: the
daemon's one thread owns the state all parts share; see ``Daemon``). Queued
tasks wait in a ready heap (priority, seq) or a delay heap (not_before); a
dispatch pass starts them on the local pool or on a remote worker's session,
parking tasks no worker serves. When a run ends (a pool completion, or a
remote worker's report) ``_settle`` finishes the task, queues it again after a
lost worker while its retries last, or quarantines it; ``_finish`` records the
end and answers the result waiters and ``task_done`` watchers.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from pipework.service.daemon.config import DaemonSettings
from pipework.service.daemon.journal import Journal, TaskRecord
from pipework.service.daemon.outcomes import (
    Outcome,
    canonical_json,
    clip_error,
    outcome_of,
    worker_lost_message,
)
from pipework.service.daemon.replies import Peer, event, task_reply
from pipework.service.daemon.sessions import RemoteEvent, RemoteWorkers
from pipework.service.daemon.task_output import run_task
from pipework.service.executor import TaskOptions, WorkerService
from pipework.service.logs import TASK_LABELS, get_logger, json_output
from pipework.service.waker import Waker

if TYPE_CHECKING:
    from pipework.service.daemon.requests import _Waiter
    from pipework.service.ops.metrics import Metrics
    from pipework.service.ops.status import StatusBoard

__all__ = ["Scheduler"]

_log = get_logger("pipework.daemon")

# Queued tasks whose records are kept in memory (so that starting one needs no
# journal read), at most; the rest wait in the journal alone.
_HELD = 4096
# Ready tasks a dispatch pass may step over (their workers are busy) to reach others.
_SKIP = 256


@dataclass(slots=True)
class _Running:
    """A task handed to the pool."""

    record: TaskRecord
    seq: int
    attempt: int
    started_at: float
    future: Future[Any] | None = None
    where: str = "local"


class Scheduler:
    """The daemon's queues, dispatch and settling of runs (a part of ``Daemon``)."""

    if TYPE_CHECKING:
        # What this part uses of the daemon and of its request handlers.
        settings: DaemonSettings
        _tasks: Mapping[str, Callable[..., Any]]
        _journal: Journal | None
        _pool: WorkerService | None
        _remotes: RemoteWorkers | None
        _waker: Waker
        _metrics: Metrics | None
        _status: StatusBoard | None
        _draining: bool
        _finished: int
        _waiters: dict[str, list[_Waiter]]
        _notify: dict[str, list[Peer]]
        _out: list[list[bytes]]

        def _get(self, task_id: str) -> TaskRecord: ...
        def _fit(self, request_id: str, reply: bytes) -> bytes: ...

    def __init__(self) -> None:
        super().__init__()
        self._local_running = 0
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

    # -- scheduling -----------------------------------------------------------------

    def _refill(self) -> None:
        """Settle the runs that ended and start queued tasks in their place."""
        self._take_completions()
        if not self._draining:
            self._dispatch(time.time())

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
