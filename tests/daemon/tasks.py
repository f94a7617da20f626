"""Task functions the daemon end-to-end tests run (``--tasks tests.daemon.tasks``).

The daemon imports this module in its workers, so it must stay importable from
the repository root and free of test-only imports (no pytest here).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from pipework.service import task


class TaskFailure(Exception):
    """What ``fail`` raises, so tests can tell its type from an incidental error."""


@task
def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


@task
def echo(value: Any = None) -> Any:
    """Return ``value`` unchanged."""
    return value


@task
def sleep(seconds: float) -> float:
    """Sleep ``seconds`` and return it."""
    time.sleep(seconds)
    return seconds


@task
def fail(msg: str) -> None:
    """Raise ``TaskFailure(msg)``."""
    raise TaskFailure(msg)


@task
def crash() -> None:
    """SIGKILL the worker running this task."""
    os.kill(os.getpid(), signal.SIGKILL)


@task
def pid() -> int:
    """The pid of the worker running this task."""
    return os.getpid()


@task
def record(path: str, key: str, seconds: float = 0.0) -> str:
    """Append ``"key pid\\n"`` to ``path`` after sleeping ``seconds``; return ``key``.

    One ``write`` on an ``O_APPEND`` descriptor, so lines from concurrent
    workers never interleave: the file counts how often each key's side
    effect ran.
    """
    if seconds > 0:
        time.sleep(seconds)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return key


@task
def gate(path: str, timeout: float = 60.0, mark: str | None = None) -> float:
    """Block until the file ``path`` exists (at most ``timeout`` s); return the wait.

    Lets a test hold a worker busy for exactly as long as it needs, without
    guessing durations. With ``mark``, first creates that file, so the test
    can see the task has really started in a worker. Raises ``TimeoutError``
    when the gate never opens.
    """
    if mark is not None:
        with open(mark, "a"):
            pass
    start = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"gate {path} did not open within {timeout} s")
        time.sleep(0.01)
    return round(time.monotonic() - start, 3)


@task
def hold_gil(seconds: float) -> int:
    """Spin in pure Python for ``seconds`` (a worker busy without sleeping)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@task
def not_json() -> object:
    """Return a value JSON cannot carry (a set)."""
    return {1, 2, 3}


@task
def big(n: int) -> str:
    """Return a string of ``n`` characters."""
    return "x" * n


@task
def spin_in_c(seconds: float) -> float:
    """Sleep in C *holding the GIL* for ``seconds``: no Python thread of this process runs."""
    import ctypes  # noqa: PLC0415

    hold = ctypes.PyDLL(None)  # PyDLL, unlike CDLL, keeps the GIL during the call
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hold.usleep(200_000)
    return seconds
