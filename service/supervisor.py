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

What a task starts goes with its worker. Each worker leads its own process
group, and every signal meant to kill a worker also goes to its group; the
first one also walks the worker's process tree for descendants that left the
group (setsid) and signals them too. When a worker is gone, whatever is
left in its group is SIGKILLed (``bury``). Out of reach: a process that left
the group *and* the tree (a daemon whose parent exited before the kill).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


# Workers start one at a time, across every pool of this process. A process
# forked while another is between multiprocessing's os.pipe() and its closing
# of the child's ends inherits that child's "sentinel" write end: the child's
# exit is then not seen until the wrong process exits too. Two pools on
# start_method="fork" (their dispatcher threads forking at once) hung shutdown
# that way. Forks made by other code are not held back: an at-fork hook that
# made every fork of the program wait on pipework was tried, and a stalled
# start then froze every later fork of the process.
_spawn_lock = threading.RLock()


def _close_parent_fd(fd: int) -> None:
    with _parent_fds_lock:
        _parent_fds.discard(fd)
    os.close(fd)


@contextlib.contextmanager
def _no_pseudo_main_file(start_method: str) -> Iterator[None]:
    """Hide a ``__main__.__file__`` that names no file (``"<stdin>"``) while a worker starts.

    spawn and forkserver workers run the main file again to find its
    functions; a program read from stdin has ``__file__ == "<stdin>"``, and
    every worker then died trying to open it. Its functions travel by value
    instead (``service.executor``).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if start_method == "fork" or not isinstance(path, str) or os.path.exists(path):
        yield
        return
    del main.__file__  # type: ignore[union-attr]
    try:
        yield
    finally:
        main.__file__ = path  # type: ignore[union-attr]


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
        "strays",
        "tasks",
        "writing",
    )

    def __init__(self, process: BaseProcess, channel: ParentChannel) -> None:
        self.process = process
        self.pid: int | None = process.pid
        self.pidfd: int | None = None
        self.lifeline: int | None = None
        self.strays: list[Any] | None = None
        """Descendants outside the worker's group (``psutil.Process``), found at the first kill."""
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
        # when this process dies, whatever the transport, and the kernel then
        # SIGKILLs the worker (see worker._die_with_parent). Under forkserver
        # the worker's parent is the fork server, so the parent-death signal
        # alone fires only once the fork server has exited too.
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
            with _spawn_lock, _no_pseudo_main_file(self.start_method):
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
        """Send ``sig`` to the worker and to what its tasks started, to kill them.

        Never reaches a process that reused the worker's pid (but see
        ``_signal_group`` for its group, once the worker is reaped).
        """
        unreaped = _signal_worker(handle, 0)
        if unreaped and handle.strays is None:
            # Before any signal: once the worker dies, the tree below it falls apart.
            handle.strays = _strays(handle.pid)
        _signal_group(handle, sig, unreaped)  # the group holds the worker too...
        _signal_worker(handle, sig)  # ...unless it has not made its group yet

    @staticmethod
    def bury(handle: WorkerHandle) -> None:
        """SIGKILL what the tasks of a worker that exited left behind (call before joining it)."""
        _signal_group(handle, signal.SIGKILL, _signal_worker(handle, 0))

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


def _signal_worker(handle: WorkerHandle, sig: int) -> bool:
    """Send ``sig`` (0: none) to the worker; True if it was not reaped yet."""
    if handle.pidfd is not None:
        # A pidfd names the process itself: once it is reaped, this fails
        # instead of reaching whoever got its pid (with forkserver the
        # fork server reaps workers at once, so "unreaped" guarantees nothing).
        try:
            signal.pidfd_send_signal(handle.pidfd, sig)
        except ProcessLookupError:
            return False
        return True
    popen = handle.process._popen  # type: ignore[attr-defined]
    # Popen only signals while returncode is None, i.e. before waitpid
    # reaped the child (our child: its pid cannot be reused until then).
    if popen is not None and popen.returncode is None:
        try:
            os.kill(popen.pid, sig)
        except ProcessLookupError:
            return False
        return True
    return False


def _signal_group(handle: WorkerHandle, sig: int, unreaped: bool) -> None:
    """Send ``sig`` to the worker's process group and to the strays found at its first kill."""
    pgid = handle.pid
    # The group's id is the worker's pid, which cannot name another process
    # while the worker is unreaped, nor while any member of its group lives.
    # Once the worker is reaped and its group is empty, the number is free:
    # if /proc shows a process with it, that is someone else, who may lead a
    # group of their own. (Without /proc, only an unreaped worker's group.)
    # Left open: the number being handed out between that look and killpg,
    # which takes the kernel's pid counter wrapping round in microseconds.
    if pgid is not None and (unreaped or _proc_free(pgid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    if handle.strays:
        import psutil  # noqa: PLC0415  (loaded already: it found the strays)

        for stray in handle.strays:
            # psutil checks the pid still names the process it found (its start time).
            with contextlib.suppress(psutil.Error):
                stray.send_signal(sig)


def _proc_free(pid: int) -> bool:
    """True if /proc exists and shows no process ``pid``."""
    return os.path.isdir("/proc/self") and not os.path.exists(f"/proc/{pid}")


def _strays(pid: int | None) -> list[Any]:
    """The worker's descendants that are not in its process group (they called setsid)."""
    if pid is None:
        return []
    import psutil  # noqa: PLC0415  (only a kill pays for it)

    strays = []
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    for proc in descendants:
        with contextlib.suppress(OSError):
            if os.getpgid(proc.pid) != pid:
                strays.append(proc)
    return strays


def monotonic() -> float:
    """The clock every deadline uses."""
    return time.monotonic()
