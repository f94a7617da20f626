"""Tasks, their states, and the bound on how many may be outstanding.

A task's life::

    PENDING ──sent to a worker──▶ RUNNING ──▶ DONE | FAILED | CANCELLED | TIMED_OUT | WORKER_LOST
       ▲                             │
       └──── retry / requeue ────────┘

A task is RUNNING, and its future running, from the moment the dispatcher
takes it to send to a worker, also while it waits in that worker's channel
behind the task the worker runs (the pipe transport queues a few).
``shutdown(cancel_futures=True)`` cancels such queued tasks too: the worker
skips them.

The ledger owns the pending queue and the admission bound (``max_pending``).
Caller threads add to it; the dispatcher thread takes from it; whoever moves a
future to a terminal state gives its slot back, exactly once.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipework.service.errors import QueueFull, ServiceClosed

if TYPE_CHECKING:
    from pipework.service.futures import TaskFuture

__all__ = ["Ledger", "Task", "TaskState"]


class TaskState(enum.Enum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    WORKER_LOST = "worker_lost"


class Task:
    """One submitted call and what the dispatcher knows of it."""

    __slots__ = (
        "attempt",
        "buffers",
        "future",
        "id",
        "payload",
        "retries",
        "slot",
        "started",
        "state",
        "timeout",
        "worker",
    )

    def __init__(
        self,
        task_id: int,
        payload: bytes,
        buffers: Sequence[memoryview],
        timeout: float | None,
        retries: int,
    ) -> None:
        self.id = task_id
        self.payload: bytes | None = payload
        self.buffers = buffers
        self.timeout = timeout
        self.retries = retries
        self.attempt = 0
        self.state = TaskState.PENDING
        self.future: TaskFuture[object] | None = None
        self.slot = False
        self.worker: object | None = None
        self.started = 0.0

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.state.value} attempt={self.attempt}>"


class Ledger:
    """The pending queue plus the ``max_pending`` admission bound."""

    def __init__(self, max_pending: int, wake: Callable[[], None]) -> None:
        self.max_pending = max_pending
        self._wake = wake
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._pending: collections.deque[Task] = collections.deque()
        self._unfinished = 0
        self._waiting = 0
        self._closed: str | None = None

    def admit(
        self,
        task: Task,
        timeout: float | None,
        *,
        bounded: bool = True,
        hand: Callable[[Task], bool] | None = None,
    ) -> None:
        """Queue ``task``, first waiting for room below ``max_pending`` if ``bounded``.

        ``hand``, if given, may take the task instead of the queue when no task
        waits in it (so order is kept); it must not block, and returns True if
        it took the task.

        Raises:
            QueueFull: no room within ``timeout`` seconds.
            ServiceClosed: the ledger was closed before the task got in.
        """
        with self._lock:
            if bounded and self._unfinished >= self.max_pending and self._closed is None:
                start = time.monotonic()
                deadline = None if timeout is None else start + timeout
                self._waiting += 1
                try:
                    while self._unfinished >= self.max_pending and self._closed is None:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise QueueFull(self.max_pending, time.monotonic() - start)
                        self._room.wait(left)
                finally:
                    self._waiting -= 1
            if self._closed is not None:
                raise ServiceClosed(self._closed)
            self._unfinished += 1
            task.slot = True
            if not self._pending and hand is not None and hand(task):
                return
            self._pending.append(task)
        self._wake()

    def release(self, task: Task) -> None:
        """Give back ``task``'s slot; a second call for the same task does nothing."""
        with self._lock:
            if task.slot:
                task.slot = False
                self._unfinished -= 1
                if self._waiting:
                    self._room.notify()

    def requeue(self, task: Task) -> None:
        """Put ``task`` back at the head of the queue (a retry or an unstarted task)."""
        task.state = TaskState.PENDING
        task.worker = None
        with self._lock:
            self._pending.appendleft(task)

    def take(self) -> Task | None:
        """The next task to dispatch, or None."""
        with self._lock:
            return self._pending.popleft() if self._pending else None

    def drain(self) -> list[Task]:
        """Remove and return every pending task."""
        with self._lock:
            tasks = list(self._pending)
            self._pending.clear()
            return tasks

    def close(self, reason: str) -> None:
        """Refuse new tasks from now on, and wake blocked submitters to tell them."""
        with self._lock:
            if self._closed is None:
                self._closed = reason
            self._room.notify_all()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed is not None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def unfinished(self) -> int:
        """Tasks admitted and not yet given back."""
        return self._unfinished
