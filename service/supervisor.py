"""Supervision: starting workers, knowing what each holds, and killing them safely.

```
 Supervisor.spawn ──▶ WorkerHandle(process, channel, tasks)
                          │  sentinel readable ──▶ dispatcher reaps it
 deadline due ──▶ dispatcher ──▶ Supervisor.kill(handle) ──SIGTERM──▶ grace ──SIGKILL──▶
```

Kills are addressed to a worker *and* a task: a timeout or a cancel only
kills if that task is still the one the worker runs (the deadline lives on
the worker and is re-armed whenever its head task changes),
and signals go through a pidfd opened at start (or, without pidfds, only to
a child not yet reaped), so they can never reach a process that reused a
worker's pid. Timeouts escalate from SIGTERM to SIGKILL after
``KILL_GRACE``, so a task that ignores SIGTERM or spins in C still stops.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from pipework.service.ledger import Task, TaskState
from pipework.service.transports.base import ParentChannel, Transport
from pipework.service.worker import WorkerConfig, worker_main

__all__ = ["KILL_GRACE", "StartMethod", "Supervisor", "WorkerHandle", "WorkerState", "monotonic"]

StartMethod = Literal["fork", "forkserver", "spawn"]

KILL_GRACE = 0.1
"""Seconds between SIGTERM and SIGKILL when a task is killed."""
SKIP_GRACE = 0.1
"""Seconds a worker has to say it skipped a cancelled task before it is killed for it."""
STOP_GRACE = 5.0
"""Seconds an idle worker gets to exit after STOP before it is killed."""

# Parent-side descriptors of every live channel in this process. A worker
# started with fork inherits them all and closes them first thing, otherwise
# it would keep its siblings' pipes open and they would never see EOF.
_parent_fds: set[int] = set()
_parent_fds_lock = threading.Lock()


def _close_parent_fd(fd: int) -> None:
    with _parent_fds_lock:
        _parent_fds.discard(fd)
    os.close(fd)


class WorkerState(enum.Enum):
    """What a worker is doing, from the dispatcher's view."""

    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    STOPPING = "stopping"
    KILLING = "killing"


class WorkerHandle:
    """One worker process, its channel, and the tasks it holds (head = running)."""

    __slots__ = (
        "channel",
        "deadline",
        "kill_at",
        "lifeline",
        "pid",
        "pidfd",
        "process",
        "recycle",
        "sent",
        "service_time",
        "state",
        "tasks",
        "writing",
    )

    def __init__(self, process: BaseProcess, channel: ParentChannel) -> None:
        self.process = process
        self.pid: int | None = process.pid
        self.pidfd: int | None = None
        self.lifeline: int | None = None
        self.channel = channel
        self.state = WorkerState.STARTING
        self.tasks: collections.deque[Task] = collections.deque()
        self.kill_at: float | None = None
        self.deadline: float | None = None
        self.writing = False
        self.recycle = False
        self.sent = 0
        """Tasks handed to this worker so far (a recycling limit caps the prefetch)."""
        self.service_time: float | None = None
        """Moving average of one task's time at the head, in seconds (None: no result yet)."""

    def finished_head(self, now: float) -> None:
        """The head task's result arrived: fold its time into ``service_time``."""
        took = now - self.tasks[0].started
        average = self.service_time
        self.service_time = took if average is None else average + (took - average) / 8

    def arm(self, now: float) -> None:
        """Start the clock of the task at the head: the one this worker runs now."""
        self.deadline = None
        if self.tasks:
            head = self.tasks[0]
            head.started = now
            if head.state is TaskState.CANCELLED:
                # Cancelled while queued: the worker skips it unless it had
                # already started it; if no SKIPPED comes by then, it runs.
                self.deadline = now + SKIP_GRACE
            elif head.timeout is not None:
                self.deadline = now + head.timeout

    def __repr__(self) -> str:
        return f"<Worker pid={self.pid} {self.state.value} tasks={len(self.tasks)}>"


def default_start_method() -> StartMethod:
    """forkserver where the platform has it, else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


class Supervisor:
    """Starts workers and signals them."""

    def __init__(
        self,
        transport: Transport,
        start_method: StartMethod,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks: int | None,
        max_memory: int | None,
    ) -> None:
        self.transport = transport
        self.start_method = start_method
        self._ctx: BaseContext = multiprocessing.get_context(start_method)
        self._initializer = initializer
        self._initargs = initargs
        self._max_memory = max_memory
        self.max_tasks = max_tasks
        """The recycling limit in tasks per worker, or None."""
        self._names = itertools.count(1)

    def spawn(self) -> WorkerHandle:
        """Start one worker; it announces READY (or INIT_FAILED) on its channel."""
        channel, endpoint = self.transport.pair()
        # The lifeline's write end lives only here: it hangs up in the worker
        # when this process dies, whatever the transport. (Under forkserver
        # the worker's parent is the fork server, which every worker keeps
        # alive by holding its "alive" pipe, so the parent-death signal and a
        # ppid check alone would never fire.)
        lifeline_r, lifeline_w = os.pipe()
        lifeline = Connection(lifeline_r, writable=False)
        own_fds = [*self.transport.inheritable_fds(channel), lifeline_w]
        with _parent_fds_lock:
            _parent_fds.update(own_fds)
            close_fds = tuple(_parent_fds) if self.start_method == "fork" else ()
        config = WorkerConfig(
            initializer=self._initializer,
            initargs=self._initargs,
            max_tasks=self.max_tasks,
            max_memory=self._max_memory,
            parent_pid=os.getpid() if self.start_method != "forkserver" else 0,
            close_fds=close_fds,
        )
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(endpoint, config, lifeline),
            name=f"pipework-worker-{next(self._names)}",
            daemon=False,
        )
        try:
            process.start()
        except BaseException:
            self.transport.started(endpoint)
            self.release(channel)
            _close_parent_fd(lifeline_w)
            raise
        finally:
            lifeline.close()  # the worker has its own copy now
        self.transport.started(endpoint)
        handle = WorkerHandle(process, channel)
        handle.lifeline = lifeline_w
        try:
            handle.pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or it already died
            pass
        else:
            with _parent_fds_lock:
                _parent_fds.add(handle.pidfd)
        return handle

    def release(self, channel: ParentChannel) -> None:
        """Close a dead worker's channel."""
        with _parent_fds_lock:
            _parent_fds.difference_update(self.transport.inheritable_fds(channel))
        channel.close()

    @staticmethod
    def signal(handle: WorkerHandle, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker, and never to a process that reused its pid."""
        if handle.pidfd is not None:
            # A pidfd names the process itself: once it is gone, this fails
            # instead of reaching whoever got its pid (with forkserver the
            # fork server reaps workers at once, so "unreaped" guarantees nothing).
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(handle.pidfd, sig)
            return
        popen = handle.process._popen  # type: ignore[attr-defined]
        # Popen only signals while returncode is None, i.e. before waitpid
        # reaped the child (our child: its pid cannot be reused until then).
        if popen is not None and popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, sig)

    def forget(self, handle: WorkerHandle) -> None:
        """Release a reaped worker's channel and process handles."""
        self.release(handle.channel)
        for fd in (handle.pidfd, handle.lifeline):
            if fd is not None:
                _close_parent_fd(fd)
        handle.pidfd = handle.lifeline = None
        handle.process.close()

    def kill(self, handle: WorkerHandle, now: float, grace: float = KILL_GRACE) -> None:
        """SIGTERM the worker now and SIGKILL it after ``grace`` unless it is gone."""
        handle.state = WorkerState.KILLING
        if grace <= 0:
            self.signal(handle, signal.SIGKILL)
            handle.kill_at = None
            return
        self.signal(handle, signal.SIGTERM)
        handle.kill_at = now + grace

    def escalate(self, handle: WorkerHandle, now: float) -> float | None:
        """SIGKILL a worker whose grace ran out; return when to look again."""
        if handle.kill_at is None:
            return None
        if now >= handle.kill_at:
            self.signal(handle, signal.SIGKILL)
            handle.kill_at = None
            return None
        return handle.kill_at


def monotonic() -> float:
    """The clock every deadline uses."""
    return time.monotonic()
