"""The worker's main loop: the only pipework code that runs in a worker process.

```
  dispatcher ──TASK──▶ recv ─▶ unpickle ─▶ fn(*args) ─▶ pickle ──RESULT/ERROR──▶ dispatcher
                 ▲                                                         │
                 └──────────── STOP, or RETIRE after a recycling limit ◀───┘
```

A worker runs one task at a time. It turns every outcome into a frame, so
an exception or a result that cannot be pickled fails that task only. It
ignores SIGINT and SIGHUP (Ctrl-C and a hang-up are the parent's to handle)
and dies with the dispatcher's process, even inside a C call that holds the
GIL: the kernel SIGKILLs it when its lifeline pipe (whose write end only the
dispatcher holds) hangs up, or when its parent dies; a watchdog thread is the
fallback where the kernel cannot. So no worker outlives its dispatcher.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import itertools
import os
import pickle
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from pipework.service import pickling
from pipework.service.transports.base import TransportBroken, WorkerChannel, WorkerEndpoint
from pipework.service.transports.frames import Frame, Kind, Payload

__all__ = ["ErrorInfo", "WorkerConfig", "call_chunk", "error_info", "map_chunk", "worker_main"]

_PR_SET_PDEATHSIG = 1
_WATCH_INTERVAL_MS = 250
ORPHAN_EXITCODE = 3
"""Exit status of a worker that noticed its dispatcher is gone."""

ErrorInfo = tuple[bytes | None, str, str, str, str | None]
"""``(pickled exception or None, type name, message, traceback text, result type)``.

The last is None, or the type name of a result whose pickling raised the exception."""


class WorkerConfig(NamedTuple):
    """What a worker needs to know besides its channel.

    A NamedTuple, not a dataclass: every worker imports this module at start,
    and ``dataclasses`` (with ``inspect``) is a tenth of a worker's start-up.
    """

    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks: int | None
    max_memory: int | None
    parent_pid: int
    """The dispatcher's pid, or 0 where the parent is a fork server."""
    close_fds: tuple[int, ...] = ()


def type_name(obj: object) -> str:
    """The qualified name of ``obj``'s type, as errors report it."""
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def error_info(exc: BaseException, result_type: str | None = None) -> bytes:
    """Pickle what the parent needs to rebuild ``exc``, never failing.

    ``result_type``: the type name of the result whose pickling raised ``exc``.
    """
    tb = "".join(traceback.format_exception(exc))
    try:
        exc_bytes: bytes | None = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
    except BaseException:  # an exception's own __reduce__ may raise anything
        exc_bytes = None
    try:
        message = str(exc)
    except BaseException:
        message = f"<str() of {type_name(exc)} failed>"
    info: ErrorInfo = (exc_bytes, type_name(exc), message, tb, result_type)
    return pickle.dumps(info, pickle.HIGHEST_PROTOCOL)


def call_chunk(fn: Callable[..., object] | bytes, items: Iterable[Sequence[Any]]) -> list[object]:
    """Run ``fn(*args)`` for each args tuple of a ``map`` chunk over several iterables."""
    if type(fn) is bytes:
        fn = _function(fn)
    return list(itertools.starmap(fn, items))  # type: ignore[arg-type]


def map_chunk(fn: Callable[[Any], object] | bytes, items: Iterable[Any]) -> list[object]:
    """Run ``fn(item)`` for each item of a ``map`` chunk over one iterable.

    The items travel bare, not as 1-tuples: half the bytes to pickle and unpickle.
    ``fn`` may come as its pickled bytes, unpickled once per worker.
    """
    if type(fn) is bytes:
        fn = _function(fn)
    return list(map(fn, items))  # type: ignore[arg-type]


_functions: dict[bytes, Callable[..., object]] = {}


def _function(reference: bytes) -> Callable[..., object]:
    """The function pickled in ``reference`` (by name, or by value with cloudpickle),
    unpickled once per worker (see ``executor``)."""
    fn = _functions.get(reference)
    if fn is None:
        if len(_functions) >= 256:
            _functions.clear()
        fn = _functions[reference] = pickle.loads(reference)
    return fn


def _run(payload: Payload, buffers: tuple[Payload, ...]) -> tuple[Kind, bytes, list[memoryview]]:
    try:
        fn, args, kwargs = pickling.loads(payload, buffers)
        if type(fn) is bytes:
            fn = _function(fn)
        value = fn(*args, **kwargs)
    except BaseException as exc:
        return Kind.ERROR, error_info(exc), []
    try:
        result, out_of_band = pickling.dumps_result(value)
    except BaseException as exc:  # PicklingError, or anything a __reduce__ raises
        # The caller gets this very exception (as concurrent.futures gives
        # it), with a SerializationError naming the result's type as its cause.
        return Kind.ERROR, error_info(exc, type_name(value)), []
    return Kind.RESULT, result, out_of_band


def _forget_foreign_imports() -> None:
    """Drop the imports other threads of the parent were in the middle of at our fork.

    Under ``fork`` a worker is forked by the dispatcher thread, possibly while
    another thread (the program's main one) is importing a module. The worker
    inherits that module half-executed, and its import lock owned by a thread
    that does not exist here: the first task that needs the module would wait
    for that lock forever (a ``multiprocessing.Manager`` proxy argument did,
    as its module was being imported when the pool forked). Forgetting both
    makes the next import of it run afresh.
    """
    import importlib._bootstrap as bootstrap  # noqa: PLC0415

    me = threading.get_ident()
    locks: dict[str, Any] = getattr(bootstrap, "_module_locks", {})
    for name, ref in list(locks.items()):
        lock = ref()
        owner = getattr(lock, "owner", None)
        if owner is not None and owner != me:
            sys.modules.pop(name, None)
            locks.pop(name, None)
    blocking: dict[int, Any] = getattr(bootstrap, "_blocking_on", {})
    for tid in list(blocking):
        if tid != me:
            blocking.pop(tid, None)


def _die_with_parent(config: WorkerConfig, lifeline: int) -> None:
    # Three lifelines, because a task may hold the GIL in one C call for
    # hours (no thread of ours runs then) and ignore every catchable signal:
    # - the lifeline pipe itself, armed with O_ASYNC so that the kernel sends
    #   us SIGKILL the moment its only writer, the dispatcher's process, is
    #   gone, whoever our parent is (a fork server, under forkserver);
    # - the parent-death signal, for a parent that is the dispatcher's process;
    # - a watchdog thread, for platforms without either.
    if sys.platform.startswith("linux"):
        # CDLL(None) is the process's own symbol table, which includes libc;
        # find_library("c") would run ldconfig in a subprocess.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        _kill_me_on_hangup(lifeline)
    _leave_fork_server()
    ppid = os.getppid()
    if ppid == 1 or (config.parent_pid and ppid != config.parent_pid):
        os._exit(ORPHAN_EXITCODE)  # the parent died before prctl took effect
    hung_up = select.poll()
    hung_up.register(lifeline, 0)
    if hung_up.poll(0):
        os._exit(ORPHAN_EXITCODE)  # the dispatcher died before O_ASYNC took effect
    watchdog = threading.Thread(
        target=_watch_parent, args=(lifeline, ppid), name="pipework-watchdog", daemon=True
    )
    watchdog.start()


def _kill_me_on_hangup(fd: int) -> None:
    """Have the kernel SIGKILL this process's group when the last writer of pipe ``fd`` closes it.

    A pipe whose last writer goes away signals the readers that asked for
    O_ASYNC, and F_SETSIG picks the signal: SIGKILL needs neither the GIL nor
    our cooperation. Nobody ever writes to the lifeline, so hang-up is the
    only event it can signal. The owner is our process group (a negative
    owner), so what our tasks started in it dies with us.
    """
    me = os.getpid()
    fcntl.fcntl(fd, fcntl.F_SETOWN, -me if os.getpgrp() == me else me)
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGKILL)  # before O_ASYNC: never a stray SIGIO
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)


def _leave_fork_server() -> None:
    """Close the fork server's "alive" pipe that multiprocessing handed this worker.

    multiprocessing gives every process the fork server forks the write end
    of the server's "alive" pipe (and a fork child inherits its parent's),
    and the server exits only once every copy is closed. Kept, it would keep
    the fork server (and the resource tracker) alive as long as any worker
    lives, and a worker whose dispatcher died would never see its parent die.
    Forgetting the server also lets a task that uses forkserver itself start
    its own instead of talking to one it does not own.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    for name in ("_forkserver_alive_fd", "_forkserver_address", "_forkserver_pid"):
        setattr(server, name, None)


def _watch_parent(lifeline: int, ppid: int) -> None:
    poller = select.poll()
    poller.register(lifeline, 0)  # POLLHUP and POLLERR are always reported
    while True:
        if poller.poll(_WATCH_INTERVAL_MS) or os.getppid() != ppid:
            os._exit(ORPHAN_EXITCODE)


def _over_limits(done: int, config: WorkerConfig, rss: Callable[[], int] | None) -> bool:
    if config.max_tasks is not None and done >= config.max_tasks:
        return True
    return rss is not None and config.max_memory is not None and rss() > config.max_memory


def worker_main(endpoint: WorkerEndpoint, config: WorkerConfig, lifeline: Connection) -> None:
    """Serve tasks from ``endpoint`` until told to stop, a limit is hit, or the parent dies."""
    for fd in config.close_fds:  # fork start: siblings' channel ends, see Supervisor
        with contextlib.suppress(OSError):
            os.close(fd)
    _forget_foreign_imports()
    # A terminal's Ctrl-C and hang-up reach the whole process group; both are
    # the parent's to act on (drain, rolling restart), not a reason to die mid-task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Our own process group, whose id is our pid: what a task starts joins it,
    # and the dispatcher kills the group with us (see service.supervisor).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    channel: WorkerChannel = endpoint.open()
    _die_with_parent(config, lifeline.fileno())
    rss: Callable[[], int] | None = None
    if config.max_memory is not None:
        import psutil  # noqa: PLC0415  (only workers with a memory limit pay for it)

        me = psutil.Process()
        rss = lambda: int(me.memory_info().rss)  # noqa: E731
    try:
        _serve(channel, config, rss)
    except TransportBroken:
        os._exit(ORPHAN_EXITCODE)
    channel.close()


def _cancelled_meanwhile(
    channel: WorkerChannel, task_id: int, queued: collections.deque[Frame]
) -> bool:
    """Take in what has arrived; True if it cancels ``task_id``, which is about to start.

    The dispatcher may queue tasks behind the running one, and cancels such a
    task with a CANCEL frame. Checking right before each start is what lets
    it know for sure: a task is either skipped (and said so) or started.
    """
    cancelled = False
    while (frame := channel.recv_nowait()) is not None:
        if frame.kind is not Kind.CANCEL:
            queued.append(frame)
        elif frame.task_id == task_id:
            cancelled = True
        else:
            for i, waiting in enumerate(queued):
                if waiting.task_id == frame.task_id and waiting.kind is Kind.TASK:
                    del queued[i]
                    channel.send(Kind.SKIPPED, frame.task_id, b"")
                    break
    return cancelled


def _serve(channel: WorkerChannel, config: WorkerConfig, rss: Callable[[], int] | None) -> None:
    """Run the initializer, then tasks, until STOP or a recycling limit."""
    if config.initializer is not None:
        try:
            config.initializer(*config.initargs)
        except BaseException as exc:
            channel.send(Kind.INIT_FAILED, 0, error_info(exc))
            return
    channel.send(Kind.READY, 0, b"")
    done = 0
    queued: collections.deque[Frame] = collections.deque()
    while True:
        frame = queued.popleft() if queued else channel.recv()
        if frame.kind is Kind.STOP:
            return
        if frame.kind is not Kind.TASK:
            continue  # a CANCEL for a task that already ran here: its result said so
        if _cancelled_meanwhile(channel, frame.task_id, queued):
            channel.send(Kind.SKIPPED, frame.task_id, b"")
            continue
        task_id = frame.task_id
        kind, payload, buffers = _run(frame.payload, frame.buffers)
        del frame  # free a large argument before the next recv
        done += 1
        retire = _over_limits(done, config, rss)
        if retire:
            # Before the result, so the dispatcher never hands us another task.
            channel.send(Kind.RETIRE, 0, b"")
        channel.send(kind, task_id, payload, buffers)
        del payload, buffers
        if retire:
            return
