"""The dispatcher: one thread that feeds workers and watches them.

```
 submit ──▶ Ledger.pending ──▶ dispatcher ──TASK──▶ worker channel ──▶ worker
                                 ▲  │ ▲                                  │
          wake (eventfd-like) ───┘  │ └──── RESULT / ERROR / RETIRE ◀────┘
                                    │        sentinel (exit) ◀────────────┘
                                    ▼
                        Collector (futures, callbacks)
```

Everything about workers happens under the dispatcher's lock, which its
thread holds except while it sleeps in ``select``, so "which worker holds
which task" has one writer at a time: a worker's ``tasks`` deque is the
truth. While the thread sleeps, a submitting thread may take the lock and
hand its task straight to an idle worker (``hand_direct``): one thread
hop less on a one-task round trip, the dispatcher learns of it from the
worker's answer. It
multiplexes every channel, every process sentinel and a wake-up pipe on one
selector, and never blocks on a single worker. Each pass it:

1. reads complete frames and routes them (results go to the collector);
2. reaps workers that exited: the task a dead worker ran fails with
   ``WorkerLost`` (or is retried), tasks it had not started go back to the
   queue, and a replacement starts;
3. applies cancels and deadlines (``TaskTimeout``: kill, replace);
4. hands pending tasks to idle workers;
5. while shutting down, stops idle workers, and kills the rest at the deadline.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import signal
import threading
import time
from typing import Any

from pipework.service.collector import Collector, rebuild_exception
from pipework.service.errors import (
    BrokenService,
    PipeworkError,
    ServiceClosed,
    TaskTimeout,
    WorkerLost,
    describe_exitcode,
)
from pipework.service.ledger import Ledger, Task, TaskState
from pipework.service.logs import get_logger
from pipework.service.supervisor import STOP_GRACE, Supervisor, WorkerHandle, WorkerState, monotonic
from pipework.service.transports.base import TransportBroken
from pipework.service.transports.frames import Frame, Kind
from pipework.service.waker import Waker

__all__ = ["Dispatcher"]

_log = get_logger("pipework.dispatcher")

_MAX_SLEEP = 1.0
_PREFETCH_MAX = 64
"""Most tasks a worker holds at once (one running, the rest queued in its channel)."""
_PREFETCH_WINDOW = 0.005
"""Seconds of work a busy worker keeps queued when the backlog allows: more than
the dispatcher takes to react to a result, so the worker never waits for it."""
_PREFETCH_ONE = 0.02
"""A worker whose tasks take less than this keeps at least one task queued: the
dispatcher's reaction to a result (0.1-0.3 ms on a busy 2-core machine) would
otherwise idle it between tasks, 2-6% of a 5 ms task."""
_RETRY_FLUSH = 0.002
_LAST_WORDS = 1.0
"""Seconds to wait for the last frames of a worker that exited 0 holding a task."""
_HEALTH_INTERVAL = 0.5
_START_FAILURES_TO_BREAK = 3
_ACTIVE = (WorkerState.STARTING, WorkerState.READY)
_OUTSIDE_KILLS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _self_inflicted(exitcode: int | None) -> bool:
    """Whether a worker's death was its own doing (a crash or an exit), not a kill from outside.

    Only those count towards breaking the service: a worker killed while it
    starts (by an operator, the OOM killer) is simply replaced.
    """
    return exitcode is None or exitcode >= 0 or -exitcode not in _OUTSIDE_KILLS


class Dispatcher:
    """Owns the dispatcher thread and every worker."""

    def __init__(
        self, supervisor: Supervisor, ledger: Ledger, collector: Collector, max_workers: int
    ) -> None:
        self._sup = supervisor
        self._ledger = ledger
        self._collector = collector
        self._max_workers = max_workers
        self._waker = Waker()
        self._lock = threading.Lock()
        """Held by the dispatcher thread except while it sleeps in select (see the module doc)."""
        self._direct = supervisor.transport.direct_sends
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._waker.fileno(), selectors.EVENT_READ, ("wake", None))
        self._workers: list[WorkerHandle] = []
        self._outcomes: list[tuple[Task, Kind | None, Any]] = []
        self._retry_flush: set[WorkerHandle] = set()
        self._next_health = 0.0
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._closing = False
        self._deadline: float | None = None
        self._start_failures = 0
        self.broken: BrokenService | None = None
        self._thread = threading.Thread(target=self._run, name="pipework-dispatcher", daemon=True)

    # -- thread-safe entry points -------------------------------------------------

    def start(self, prespawn: bool = False) -> None:
        """Start the dispatcher thread (which starts the workers).

        ``prespawn``: start the first workers on the calling thread first, as
        ``ProcessPoolExecutor`` does under fork. A process forked from the
        dispatcher thread inherits whatever descriptors another thread holds
        open at that instant: the pipe ``subprocess`` waits on for its
        child's exec (its caller then hung until the worker exited), or
        another child's sentinel. Forked here, the caller is not in the
        middle of anything else.
        """
        if prespawn:
            with self._lock:
                self._ensure_workers()
        self._thread.start()

    def wake(self) -> None:
        """Tell the dispatcher that there is new work."""
        self._waker.wake()

    def hand_direct(self, task: Task) -> bool:
        """From a submitting thread: send ``task`` to an idle worker now; False if not done.

        Only while the dispatcher thread sleeps (its lock is free) and a ready
        worker holds nothing; otherwise the task takes the usual way, through
        the ledger. The caller holds the ledger's lock and has checked that no
        task waits there, so tasks still start in submission order.
        """
        if not self._direct or not self._lock.acquire(blocking=False):
            return False
        try:
            if self.broken is not None or self._closing or not self._commands.empty():
                return False  # a command posted before this submit (a restart) goes first
            for handle in self._workers:
                if (
                    handle.state is WorkerState.READY
                    and not handle.tasks
                    and not handle.recycle
                    and not handle.writing
                ):
                    break
            else:
                return False
            future = task.future
            if future is not None and not future._pw_start():
                return False
            self._send_task(handle, task, monotonic())
            handle.sent += 1
            self._flush(handle)
            if task.timeout is not None:
                self._waker.wake()  # its sleep was computed without this deadline
            return True
        finally:
            self._lock.release()

    def cancel_running(self, task: Task) -> None:
        """Kill the worker running ``task``, if it still runs it."""
        self._commands.put(("cancel", task))
        self._waker.wake()

    def restart_workers(self) -> None:
        """Replace every current worker once it is idle (a rolling restart)."""
        self._commands.put(("recycle", None))
        self._waker.wake()

    def shutdown(self, deadline: float | None, cancel_queued: bool = False) -> None:
        """Finish the queue, stop the workers, and kill what still runs at ``deadline``.

        ``cancel_queued``: also cancel the tasks workers hold queued behind
        the one they run (``shutdown(cancel_futures=True)``).
        """
        self._commands.put(("shutdown", (deadline, cancel_queued)))
        self._waker.wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def pids(self) -> list[int]:
        """Process ids of the current workers (a snapshot)."""
        return [pid for pid in (w.pid for w in list(self._workers)) if pid is not None]

    def running(self) -> dict[int, int]:
        """Worker pid -> id of the task it runs, for busy workers (a snapshot)."""
        out: dict[int, int] = {}
        for handle in list(self._workers):
            try:
                head = handle.tasks[0]
            except IndexError:  # idle, or it finished while we looked
                continue
            if handle.pid is not None and handle.state is not WorkerState.KILLING:
                out[handle.pid] = head.id
        return out

    # -- the loop -----------------------------------------------------------------

    def _run(self) -> None:
        self._lock.acquire()
        try:
            self._loop()
        except BaseException as exc:
            _log.exception("dispatcher failed; failing every task")
            self._break(BrokenService(f"pipework dispatcher failed: {exc!r}"))
            for handle in list(self._workers):
                self._sup.signal(handle, signal.SIGKILL)
                self._reap(handle, monotonic())
        finally:
            self._deliver()
            self._collector.stop()
            self._sel.close()
            self._sup.transport.close()
            self._waker.close()
            self._lock.release()

    def _loop(self) -> None:
        now = monotonic()
        while True:
            self._ensure_workers()
            # Edge-triggered channels may hold input their descriptor won't
            # announce again (a send can consume the edge): don't sleep then.
            pending = [h for h in self._workers if h.channel.pending()]
            timeout = 0 if pending else self._sleep(now)
            self._lock.release()
            try:
                events = self._sel.select(timeout)
            finally:
                self._lock.acquire()
            now = monotonic()
            for key, _ in events:
                role, handle = key.data
                if role == "wake":
                    self._waker.drain()
                elif handle not in self._workers:
                    continue  # reaped earlier in this pass
                elif role == "read":
                    self._on_readable(handle, now)
                elif role == "write":
                    self._flush(handle)
                else:
                    self._reap(handle, now)
            for handle in pending:
                if handle in self._workers:
                    self._on_readable(handle, now)
            self._run_commands(now)
            if now >= self._next_health:
                self._check_health(now)
            self._check_timers(now)
            self._dispatch(now)
            for handle in list(self._retry_flush):
                self._flush(handle)
            if self._closing:
                self._wind_down(now)
            self._deliver()
            if self._closing and not self._workers and not len(self._ledger):
                return

    def _deliver(self) -> None:
        """Hand this pass's outcomes to the collector in one go."""
        if self._outcomes:
            self._collector.put_many(self._outcomes)
            self._outcomes = []

    def _sleep(self, now: float) -> float:
        when = [now + _MAX_SLEEP]
        for handle in self._workers:
            if handle.deadline is not None:
                when.append(handle.deadline)
            if handle.kill_at is not None:
                when.append(handle.kill_at)
        if self._closing and self._deadline is not None:
            when.append(self._deadline)
        if self._retry_flush:
            when.append(now + _RETRY_FLUSH)
        return max(0.0, min(when) - now)

    # -- workers ------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        if self.broken is not None or (self._closing and not len(self._ledger)):
            return
        active = sum(1 for w in self._workers if w.state in _ACTIVE)
        for _ in range(self._max_workers - active):
            try:
                handle = self._sup.spawn()
            except Exception as exc:
                self._break(BrokenService(f"cannot start a worker process: {exc!r}"))
                return
            self._workers.append(handle)
            self._sel.register(handle.channel.fileno(), selectors.EVENT_READ, ("read", handle))
            self._sel.register(handle.process.sentinel, selectors.EVENT_READ, ("exit", handle))
            _log.debug("worker started", worker_pid=handle.pid)

    def _on_readable(self, handle: WorkerHandle, now: float) -> None:
        try:
            frames = handle.channel.recv()
        except TransportBroken:
            # It closed its end: it is exiting. The sentinel will say so; make
            # sure it does even if the process lingers. (One pass may get here
            # twice, from its descriptor and from pending().)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(handle.channel.fileno())
            if handle.kill_at is None:
                handle.kill_at = now + STOP_GRACE
            return
        for frame in frames:
            self._on_frame(handle, frame, now)

    def _on_frame(self, handle: WorkerHandle, frame: Frame, now: float) -> None:
        kind = frame.kind
        if kind is Kind.RESULT or kind is Kind.ERROR:
            if not handle.tasks or handle.tasks[0].id != frame.task_id:
                if handle.state is not WorkerState.KILLING:
                    _log.error(
                        "worker answered a task it does not hold; killing it",
                        worker_pid=handle.pid,
                        task_id=frame.task_id,
                    )
                    self._sup.kill(handle, now, grace=0)
                return
            handle.finished_head(now)
            task = handle.tasks.popleft()
            task.state = TaskState.DONE if kind is Kind.RESULT else TaskState.FAILED
            task.worker = None
            if kind is not Kind.RESULT or not self._collector.resolve_plain(task, frame):
                self._outcomes.append((task, kind, frame))
            handle.arm(now)
        elif kind is Kind.SKIPPED:
            for i, task in enumerate(handle.tasks):
                if task.id == frame.task_id and task.state is TaskState.CANCELLED:
                    del handle.tasks[i]
                    task.worker = None
                    if i == 0:
                        handle.arm(now)
                    break
        elif kind is Kind.READY:
            if handle.state is WorkerState.STARTING:
                handle.state = WorkerState.READY
            self._start_failures = 0
        elif kind is Kind.RETIRE:
            if handle.state is not WorkerState.KILLING:
                handle.state = WorkerState.RETIRING
            _log.debug("worker retiring", worker_pid=handle.pid)
        elif kind is Kind.INIT_FAILED:
            cause = rebuild_exception(frame.payload)
            err = BrokenService(
                f"the initializer raised {type(cause).__name__}: {cause}",
                getattr(cause.__cause__, "tb", ""),
            )
            err.__cause__ = cause
            _log.error("initializer failed", worker_pid=handle.pid, error=str(cause))
            self._break(err)

    def _flush(self, handle: WorkerHandle) -> None:
        try:
            done = handle.channel.flush()
        except TransportBroken:
            done = True  # the worker is gone; its sentinel will follow
        if done == (not handle.writing):
            return
        handle.writing = not done
        wfd = handle.channel.write_fileno()
        if wfd < 0 or wfd == handle.channel.fileno():
            # No separate descriptor announces room to write (ZeroMQ, queues):
            # retry on every pass, with the selector's sleep kept short.
            if done:
                self._retry_flush.discard(handle)
            else:
                self._retry_flush.add(handle)
        elif done:
            self._sel.unregister(wfd)
        else:
            self._sel.register(wfd, selectors.EVENT_WRITE, ("write", handle))

    def _reap(self, handle: WorkerHandle, now: float) -> None:
        """The worker's process has exited: settle what it held and forget it."""
        self._sup.bury(handle)  # before join: an unreaped worker pins its group's id
        handle.process.join(1.0)  # the sentinel fired, so this returns at once
        self._drain(handle, handle.process.exitcode, now)
        exitcode = handle.process.exitcode
        self._forget(handle)
        held = list(handle.tasks)
        handle.tasks.clear()
        clean = exitcode == 0 and handle.state in (WorkerState.RETIRING, WorkerState.STOPPING)
        crashed = not clean and handle.state is not WorkerState.KILLING
        if held and crashed:
            head, held = held[0], held[1:]
            self._lose(head, handle, exitcode)
            crashed = False  # _lose logged it
        for task in reversed(held):  # never started: back to the front, in order
            if task.state is TaskState.CANCELLED:
                continue  # its future was cancelled while it waited in the channel
            task.attempt -= 1
            self._ledger.requeue(task)
        if (
            handle.state is WorkerState.STARTING
            and self.broken is None
            and _self_inflicted(exitcode)
        ):
            self._start_failures += 1
            if self._start_failures >= _START_FAILURES_TO_BREAK:
                self._break(
                    BrokenService(
                        f"{self._start_failures} workers in a row exited while starting "
                        f"(last: {describe_exitcode(exitcode)}); check the initializer "
                        "and that the task module imports in a fresh process"
                    )
                )
        elif crashed:
            _log.warning(
                "worker exited", worker_pid=handle.pid, exitcode=describe_exitcode(exitcode)
            )

    def _drain(self, handle: WorkerHandle, exitcode: int | None, now: float) -> None:
        """Settle every frame a dead worker wrote, even one we killed.

        With tasks queued behind the head, results of tasks it finished may
        be there (a killed head's own late result no longer matches, and is
        dropped). A worker that exited 0 flushed what it sent before exiting,
        but where sends are not durable on return (ZeroMQ's I/O threads) the
        last frames can still be on their way to this end: wait for them,
        boundedly, while the worker holds a task it has not answered.
        """
        wait_until: float | None = None
        while True:
            try:
                frames = handle.channel.recv()
            except TransportBroken:
                return
            for frame in frames:
                self._on_frame(handle, frame, now)
            if frames:
                continue
            if exitcode != 0 or not handle.tasks or self._sup.transport.durable_sends:
                return
            if wait_until is None:
                wait_until = monotonic() + _LAST_WORDS
            elif monotonic() >= wait_until:
                return
            time.sleep(0.001)

    def _lose(self, task: Task, handle: WorkerHandle, exitcode: int | None) -> None:
        _log.warning(
            "worker died running a task",
            task_id=task.id,
            worker_pid=handle.pid,
            exitcode=describe_exitcode(exitcode),
            attempt=task.attempt,
            retries_left=task.retries,
        )
        if task.retries > 0 and self.broken is None and not self._past_deadline():
            task.retries -= 1
            self._ledger.requeue(task)
            return
        task.state = TaskState.WORKER_LOST
        task.worker = None
        self._outcomes.append((task, None, WorkerLost(task.id, handle.pid, exitcode, task.attempt)))

    def _forget(self, handle: WorkerHandle) -> None:
        self._workers.remove(handle)
        self._retry_flush.discard(handle)
        for fd in (handle.channel.fileno(), handle.channel.write_fileno(), handle.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(fd)
        self._sup.forget(handle)

    # -- commands, timers, dispatch -------------------------------------------------

    def _run_commands(self, now: float) -> None:
        while not self._commands.empty():
            try:
                command, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "cancel":
                self._kill_task(arg, now)
            elif command == "recycle":
                for handle in self._workers:
                    handle.recycle = handle.state in _ACTIVE
            elif command == "shutdown":
                self._closing = True
                self._deadline, cancel_queued = arg
                if cancel_queued:
                    self._cancel_queued()

    def _cancel_queued(self) -> None:
        """Cancel every task a worker holds behind its running one.

        Each future's cancel() posts a "cancel" command, run later in this
        same pass: a CANCEL frame the worker answers with SKIPPED.
        """
        for handle in self._workers:
            for task in list(handle.tasks)[1:]:
                future = task.future
                if future is not None and task.state is not TaskState.CANCELLED:
                    future.cancel()

    def _kill_task(self, task: Task, now: float) -> None:
        handle = task.worker
        if not isinstance(handle, WorkerHandle) or task not in handle.tasks:
            return  # finished (or never started) meanwhile: nothing to kill
        if handle.tasks[0] is not task:
            # Queued behind the running task: the worker has it but has not
            # started it, and checks for a CANCEL right before each start. It
            # answers SKIPPED; if it started the task after all, the task
            # reaches the head unanswered and its worker is killed then.
            task.state = TaskState.CANCELLED
            handle.channel.send(Kind.CANCEL, task.id, b"")
            self._flush(handle)
            return
        self._drop_cancelled_head(handle, now)

    def _drop_cancelled_head(self, handle: WorkerHandle, now: float) -> None:
        task = handle.tasks.popleft()
        task.state = TaskState.CANCELLED
        task.worker = None
        _log.info("killing worker to cancel its task", task_id=task.id, worker_pid=handle.pid)
        self._sup.kill(handle, now)
        handle.deadline = None

    def _check_health(self, now: float) -> None:
        self._next_health = now + _HEALTH_INTERVAL
        for handle in self._workers:
            if handle.state in _ACTIVE and handle.channel.lost():
                # Alive but silent past the transport's heartbeat timeout: it
                # cannot be trusted with its task. Kill it; reaping it then
                # fails or retries the task as for any other death.
                _log.warning("worker unreachable; killing it", worker_pid=handle.pid)
                self._sup.signal(handle, signal.SIGKILL)

    def _check_timers(self, now: float) -> None:
        for handle in self._workers:
            if handle.deadline is not None and now >= handle.deadline and handle.tasks:
                if handle.tasks[0].state is TaskState.CANCELLED:
                    self._drop_cancelled_head(handle, now)  # not skipped in time: it runs
                    continue
                task = handle.tasks.popleft()
                task.state = TaskState.TIMED_OUT
                task.worker = None
                assert task.timeout is not None
                _log.warning(
                    "task timed out; killing its worker",
                    task_id=task.id,
                    worker_pid=handle.pid,
                    timeout=task.timeout,
                )
                self._outcomes.append((task, None, TaskTimeout(task.id, task.timeout, handle.pid)))
                self._sup.kill(handle, now)
                handle.deadline = None
            if handle.kill_at is not None:
                self._sup.escalate(handle, now)

    def _dispatch(self, now: float) -> None:
        """Idle workers get a task each first; then, if tasks are left, busy ones queue more."""
        if self.broken is not None:
            return
        for handle in self._workers:
            if handle.state is WorkerState.READY and not handle.tasks:
                if handle.recycle:
                    self._stop(handle, now)
                elif not self._hand(handle, 1, now):
                    return
        backlog = len(self._ledger)
        if not backlog or any(h.state is WorkerState.STARTING for h in self._workers):
            return  # a worker about to start takes the next task sooner than a busy one
        busy = [h for h in self._workers if h.state is WorkerState.READY and not h.recycle]
        share = -(-backlog // len(busy)) if busy else 0  # spread the backlog evenly
        for handle in busy:
            room = min(self._depth(handle), share) - len(handle.tasks)
            if room > 0 and not self._hand(handle, room, now):
                return

    def _depth(self, handle: WorkerHandle) -> int:
        """How many tasks ``handle`` should hold: the running one, and a queue if tasks are short.

        A worker whose recent tasks took less than ``_PREFETCH_WINDOW`` keeps
        about that much work queued behind the running task (at most
        ``_PREFETCH_MAX``), so tiny tasks travel many to a write and many to a
        read and the worker never waits for the dispatcher; one whose tasks
        take less than ``_PREFETCH_ONE`` keeps one queued. A new worker, or
        one whose tasks are long, holds one task at a time: a task queued
        behind a long one would wait for it while another worker may be idle.
        """
        service_time = handle.service_time
        if not self._sup.transport.durable_sends or service_time is None:
            return 1
        queued = int(_PREFETCH_WINDOW / max(service_time, 1e-6))
        if service_time < _PREFETCH_ONE:
            queued = max(queued, 1)
        depth = min(1 + queued, _PREFETCH_MAX)
        if self._sup.max_tasks is not None:
            depth = min(depth, self._sup.max_tasks - handle.sent)
        return depth

    def _hand(self, handle: WorkerHandle, n: int, now: float) -> bool:
        """Send up to ``n`` pending tasks to ``handle`` in one write; False if none were left."""
        sent = 0
        while sent < n:
            task = self._next_task()
            if task is None:
                break
            self._send_task(handle, task, now)
            sent += 1
        if sent:
            handle.sent += sent
            self._flush(handle)
        return sent == n

    @staticmethod
    def _send_task(handle: WorkerHandle, task: Task, now: float) -> None:
        task.attempt += 1
        task.state = TaskState.RUNNING
        task.worker = handle
        if task.future is not None:
            task.future.worker_pid = handle.pid
        handle.tasks.append(task)
        if len(handle.tasks) == 1:
            handle.arm(now)
        assert task.payload is not None
        handle.channel.send(Kind.TASK, task.id, task.payload, task.buffers)

    def _next_task(self) -> Task | None:
        while True:
            task = self._ledger.take()
            if task is None:
                return None
            future = task.future
            if future is not None and future._pw_start():
                return task
            task.payload = None  # cancelled while pending; cancel() gave its slot back

    # -- shutdown and failure -------------------------------------------------------

    def _past_deadline(self) -> bool:
        return self._closing and self._deadline is not None and monotonic() >= self._deadline

    def _wind_down(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline:
            for task in self._ledger.drain():
                self._fail(task, ServiceClosed("the service shut down before the task ran"))
            for handle in self._workers:
                if handle.tasks:
                    for task in handle.tasks:
                        self._fail(
                            task,
                            ServiceClosed(
                                "the service shut down and its shutdown_timeout passed; "
                                f"worker pid {handle.pid} was killed"
                            ),
                        )
                    handle.tasks.clear()
                if handle.state is not WorkerState.KILLING:
                    self._sup.kill(handle, now, grace=0)
            return
        if len(self._ledger):
            return
        for handle in self._workers:
            if not handle.tasks and handle.state in _ACTIVE:
                self._stop(handle, now)

    def _stop(self, handle: WorkerHandle, now: float) -> None:
        """Ask an idle worker to exit; ``_ensure_workers`` replaces it unless closing."""
        handle.channel.send(Kind.STOP, 0, b"")
        self._flush(handle)
        handle.state = WorkerState.STOPPING
        handle.kill_at = now + STOP_GRACE

    def _fail(self, task: Task, exc: PipeworkError) -> None:
        task.state = TaskState.FAILED
        task.worker = None
        self._outcomes.append((task, None, exc))

    def _break(self, err: BrokenService) -> None:
        """The service cannot work: fail everything, stop every worker, refuse new work."""
        if self.broken is not None:
            return
        self.broken = err
        self._closing = True
        self._deadline = monotonic()
        self._ledger.close(str(err))
        for task in self._ledger.drain():
            self._fail(task, self._copy(err))
        for handle in self._workers:
            for task in handle.tasks:
                self._fail(task, self._copy(err))
            handle.tasks.clear()

    @staticmethod
    def _copy(err: BrokenService) -> BrokenService:
        copy = BrokenService(err.reason, err.traceback)
        copy.__cause__ = err.__cause__
        return copy
