"""The exceptions pipework raises, in one tree.

```
PipeworkError
  WorkerLost          task_id, pid, exitcode, signal ("SIGKILL"), attempt
  TaskTimeout         task_id, timeout, pid
  RemoteError         type_name, message, traceback (unpicklable remote exception)
  QueueFull           max_pending, waited
  ServiceClosed       also RuntimeError, as concurrent.futures does
  SerializationError  type_name, what ("argument" or "result"), reason
  BrokenService       also concurrent.futures.BrokenExecutor; reason, traceback
  TransportClosed, TransportBroken   a channel to a worker (transports.base)
  TaskRegistryError   a task module or @task misused (daemon.registry)
  ConfigError         the daemon's settings (daemon.config)
  JournalError        the journal cannot be used (daemon.journal)
  SecurityError       CURVE keys and allow-lists (daemon.security)
  DaemonError         the daemon cannot start (daemon.server)
  RemoteWorkerError   ``pipework worker`` cannot serve (remote_worker)
```

The first seven are defined here; the rest live beside the code that raises
them. The wire's errors (``pipework.protocol.ProtocolError`` and its codes) are
the client's tree: ``protocol`` never imports ``service``.

Every error carries its context on attributes and builds its message from
them. Each one survives ``pickle.loads(pickle.dumps(err))`` with its
attributes, because errors cross process boundaries.
"""

from __future__ import annotations

import signal
from concurrent.futures import BrokenExecutor
from typing import Any

__all__ = [
    "BrokenService",
    "PipeworkError",
    "QueueFull",
    "RemoteError",
    "SerializationError",
    "ServiceClosed",
    "TaskTimeout",
    "WorkerLost",
]


def describe_exitcode(exitcode: int | None) -> str:
    """Render a process exit code the way a person reads it: -9 is ``SIGKILL(-9)``."""
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        try:
            return f"{signal.Signals(-exitcode).name}({exitcode})"
        except ValueError:
            return f"signal {-exitcode}({exitcode})"
    return f"exit code {exitcode}"


def signal_name(exitcode: int | None) -> str | None:
    """The name of the signal that ended a process, or None if it exited."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"SIG{-exitcode}"


class PipeworkError(Exception):
    """Base of every error pipework raises."""

    _fields: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        if not self._fields:  # the base, or a subclass that keeps plain args
            return (type(self), self.args, self.__dict__ or None)
        return (type(self), tuple(getattr(self, f) for f in self._fields))


class WorkerLost(PipeworkError):
    """The worker running a task died before the task finished.

    Attributes:
        task_id: the id of the task that was running.
        pid: the worker's process id.
        exitcode: the worker's exit status (negative: killed by that signal).
        signal: the signal's name (``"SIGKILL"``), or None if it exited.
        attempt: which attempt of the task this was (1 for the first run).
    """

    _fields = ("task_id", "pid", "exitcode", "attempt")

    def __init__(self, task_id: int, pid: int | None, exitcode: int | None, attempt: int = 1):
        self.task_id = task_id
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal_name(exitcode)
        self.attempt = attempt
        if exitcode is not None and exitcode < 0:
            cause = f"was killed by {describe_exitcode(exitcode)}"
        elif exitcode is None:
            cause = "disappeared"
        else:
            cause = f"exited with {describe_exitcode(exitcode)}"
        super().__init__(
            f"worker pid {pid} {cause} while running task {task_id} (attempt {attempt}); "
            "the task may have crashed the interpreter, called os._exit, run out of memory, "
            "or been killed from outside"
        )


class TaskTimeout(PipeworkError):
    """A task ran past its timeout; its worker was killed and replaced.

    Attributes:
        task_id: the id of the task.
        timeout: the limit in seconds that it exceeded.
        pid: the worker that was running it, now killed.
    """

    _fields = ("task_id", "timeout", "pid")

    def __init__(self, task_id: int, timeout: float, pid: int | None):
        self.task_id = task_id
        self.timeout = timeout
        self.pid = pid
        super().__init__(
            f"task {task_id} ran longer than its {timeout:g} s timeout; "
            f"worker pid {pid} was killed and replaced"
        )


class RemoteError(PipeworkError):
    """Stands in for a task's exception that could not be brought back.

    Raised when the exception a task raised cannot be pickled in the worker
    or unpickled here; it keeps what could be learnt of it as text.

    Attributes:
        type_name: the qualified name of the original exception's type.
        message: ``str()`` of the original exception.
        traceback: the remote traceback, formatted.
    """

    _fields = ("type_name", "message", "traceback")

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(f"{type_name}: {message}")


class QueueFull(PipeworkError):
    """``submit`` waited ``submit_timeout`` for room below ``max_pending``.

    Attributes:
        max_pending: the bound on accepted but unfinished tasks.
        waited: how long the submit waited, in seconds.
    """

    _fields = ("max_pending", "waited")

    def __init__(self, max_pending: int, waited: float):
        self.max_pending = max_pending
        self.waited = waited
        super().__init__(
            f"{max_pending} tasks are already pending and none finished within "
            f"{waited:g} s; raise max_pending or submit_timeout, or wait for results"
        )


class ServiceClosed(PipeworkError, RuntimeError):
    """The service is shut down (or shutting down) and takes no new work."""

    _fields = ("reason",)

    def __init__(self, reason: str = "cannot schedule new tasks after shutdown"):
        self.reason = reason
        super().__init__(reason)


class SerializationError(PipeworkError):
    """A task's function, arguments or result (or an initializer) could not be pickled.

    ``submit`` raises it for the function and arguments, so nothing was
    queued; the constructor raises it for an initializer; for a result, the
    task's future gets it and no other task is affected.

    Attributes:
        type_name: the qualified name of the object's type that failed.
        what: ``"function"``, ``"argument"``, ``"initializer"`` or ``"result"``.
        reason: the pickling error's message.
    """

    _fields = ("type_name", "what", "reason")

    def __init__(self, type_name: str, what: str, reason: str):
        self.type_name = type_name
        self.what = what
        self.reason = reason
        super().__init__(f"cannot pickle {what} of type {type_name}: {reason}")


class BrokenService(PipeworkError, BrokenExecutor):
    """The service cannot run tasks at all, usually because its initializer raised.

    Every pending task and every later submit fails with it. It is a
    ``concurrent.futures.BrokenExecutor``, so code written for
    ``ProcessPoolExecutor`` catches it unchanged.

    Attributes:
        reason: what broke.
        traceback: the worker's traceback text, if there was one.
    """

    _fields = ("reason", "traceback")

    def __init__(self, reason: str, traceback: str = ""):
        self.reason = reason
        self.traceback = traceback
        super().__init__(reason + (f"\n\nworker traceback:\n{traceback}" if traceback else ""))
