"""The tasks ``pipework serve`` runs when no ``--tasks`` module is named.

Small, safe examples for trying the daemon out (``pipework demo`` uses them).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from pipework.service.daemon.registry import task

__all__ = ["add", "crash", "echo", "fail", "fib", "sleep"]


@task
def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


@task
def echo(value: Any) -> Any:
    """Return ``value`` unchanged."""
    return value


@task
def sleep(seconds: float) -> float:
    """Sleep ``seconds`` (at most 60) and return how long it slept."""
    seconds = max(0.0, min(float(seconds), 60.0))
    start = time.monotonic()
    time.sleep(seconds)
    return round(time.monotonic() - start, 3)


@task
def fib(n: int) -> int:
    """The ``n``-th Fibonacci number, computed slowly on purpose (n at most 32)."""
    if not 0 <= n <= 32:
        raise ValueError(f"n must be between 0 and 32, not {n}")
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@task
def fail(message: str = "this task always fails") -> None:
    """Raise ``RuntimeError(message)``: shows how a task's exception reaches a client."""
    raise RuntimeError(message)


@task
def crash() -> None:
    """Kill the worker running it with SIGKILL: shows retries and quarantine."""
    os.kill(os.getpid(), signal.SIGKILL)
