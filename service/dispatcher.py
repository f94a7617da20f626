"""The dispatcher: one thread that feeds workers and watches them.

```
 submit ──▶ Ledger.pending ──▶ dispatcher ──TASK──▶ worker channel ──▶ worker
                                 ▲  │ ▲                                  │
          wake (eventfd-like) ───┘  │ └──── RESULT / ERROR / RETIRE ◀────┘
                                    │        sentinel (exit) ◀────────────┘
                                    ▼
                        Collector (futures, callbacks)
```

Everything about workers happens on this thread, so "which worker holds
which task" needs no lock: a worker's ``tasks`` deque is the truth. It
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
import os
import queue
import selectors
import signal
import threading
from typing import Any

from service.collector import Collector, rebuild_exception
from service.errors import (
    BrokenService,
    PipeworkError,
    ServiceClosed,
    TaskTimeout,
    WorkerLost,
    describe_exitcode,
)
from service.frames import Frame, Kind
from service.ledger import Ledger, Task, TaskState
from service.logs import get_logger
from service.supervisor import STOP_GRACE, Supervisor, WorkerHandle, WorkerState, monotonic
from service.transports.base import TransportBroken

__all__ = ["Dispatcher"]

_log = get_logger("pipework.dispatcher")

_MAX_SLEEP = 1.0
_RETRY_FLUSH = 0.002
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


class _Waker:
    """Wakes the selector from other threads, with at most one write per wake-up."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._signalled = False

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        if not self._signalled:
            self._signalled = True
            try:
                os.write(self._w, b"\0")
            except BlockingIOError:  # already full of wake-ups
                pass
            except OSError:  # closed: the dispatcher is gone
                pass

    def drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        self._signalled = False

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class Dispatcher:
    """Owns the dispatcher thread and every worker."""

    def __init__(
        self, supervisor: Supervisor, ledger: Ledger, collector: Collector, max_workers: int
    ) -> None:
        self._sup = supervisor
        self._ledger = ledger
        self._collector = collector
        self._max_workers = max_workers
        self._waker = _Waker()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._waker.fileno(), selectors.EVENT_READ, ("wake", None))
        self._workers: list[WorkerHandle] = []
        self._retry_flush: set[WorkerHandle] = set()
        self._next_health = 0.0
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._closing = False
        self._deadline: float | None = None
        self._start_failures = 0
        self.broken: BrokenService | None = None
        self._thread = threading.Thread(target=self._run, name="pipework-dispatcher", daemon=True)

    # -- thread-safe entry points -------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher thread (which starts the workers)."""
        self._thread.start()

    def wake(self) -> None:
        """Tell the dispatcher that there is new work."""
        self._waker.wake()

    def cancel_running(self, task: Task) -> None:
        """Kill the worker running ``task``, if it still runs it."""
        self._commands.put(("cancel", task))
        self._waker.wake()

    def restart_workers(self) -> None:
        """Replace every current worker once it is idle (a rolling restart)."""
        self._commands.put(("recycle", None))
        self._waker.wake()

    def shutdown(self, deadline: float | None) -> None:
        """Finish the queue, stop the workers, and kill what still runs at ``deadline``."""
        self._commands.put(("shutdown", deadline))
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
        try:
            self._loop()
        except BaseException as exc:
            _log.exception("dispatcher failed; failing every task")
            self._break(BrokenService(f"pipework dispatcher failed: {exc!r}"))
            for handle in list(self._workers):
                self._sup.signal(handle, signal.SIGKILL)
                self._reap(handle, monotonic())
        finally:
            self._collector.stop()
            self._sel.close()
            self._sup.transport.close()
            self._waker.close()

    def _loop(self) -> None:
        now = monotonic()
        while True:
            self._ensure_workers()
            # Edge-triggered channels may hold input their descriptor won't
            # announce again (a send can consume the edge): don't sleep then.
            pending = [h for h in self._workers if h.channel.pending()]
            events = self._sel.select(0 if pending else self._sleep(now))
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
                if not self._workers and not len(self._ledger):
                    return

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
            # sure it does even if the process lingers.
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
            task = handle.tasks.popleft()
            task.state = TaskState.DONE if kind is Kind.RESULT else TaskState.FAILED
            task.worker = None
            self._collector.put(task, kind, frame)
            handle.arm(now)
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
        if handle.state is not WorkerState.KILLING:
            try:
                while True:
                    frames = handle.channel.recv()
                    if not frames:
                        break
                    for frame in frames:
                        self._on_frame(handle, frame, now)
            except TransportBroken:
                pass
        handle.process.join(1.0)  # the sentinel fired, so this returns at once
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
        self._collector.put(task, None, WorkerLost(task.id, handle.pid, exitcode, task.attempt))

    def _forget(self, handle: WorkerHandle) -> None:
        self._workers.remove(handle)
        self._retry_flush.discard(handle)
        for fd in (handle.channel.fileno(), handle.channel.write_fileno(), handle.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(fd)
        self._sup.forget(handle)

    # -- commands, timers, dispatch -------------------------------------------------

    def _run_commands(self, now: float) -> None:
        while True:
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
                self._deadline = arg

    def _kill_task(self, task: Task, now: float) -> None:
        handle = task.worker
        if not isinstance(handle, WorkerHandle) or not handle.tasks or handle.tasks[0] is not task:
            return  # finished (or never started) meanwhile: nothing to kill
        handle.tasks.popleft()
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
                self._collector.put(task, None, TaskTimeout(task.id, task.timeout, handle.pid))
                self._sup.kill(handle, now)
                handle.deadline = None
            if handle.kill_at is not None:
                self._sup.escalate(handle, now)

    def _dispatch(self, now: float) -> None:
        if self.broken is not None:
            return
        for handle in self._workers:
            if handle.state is not WorkerState.READY or handle.tasks:
                continue
            if handle.recycle:
                self._stop(handle, now)
                continue
            task = self._next_task()
            if task is None:
                return
            task.attempt += 1
            task.state = TaskState.RUNNING
            task.worker = handle
            if task.future is not None:
                task.future.worker_pid = handle.pid
            handle.tasks.append(task)
            handle.arm(now)
            assert task.payload is not None
            handle.channel.send(Kind.TASK, task.id, task.payload, task.buffers)
            self._flush(handle)

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
        self._collector.put(task, None, exc)

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
