"""More task functions for the behaviour suite (importable in a fresh process).

They complement ``tests/tasks.py``: tasks that raise ``BaseException``
subclasses, wait for the test to open a gate, fail on one chosen item, or
leave a trace in a file so a test can count what ran in the workers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests import tasks


def raise_base(kind: str) -> None:
    """Raise a ``BaseException`` that is not an ``Exception``."""
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt("interrupted in a task")
    raise AssertionError(f"unknown kind {kind!r}")


def wait_for_path(path: str, value: Any = None, timeout: float = 30.0) -> Any:
    """Block until ``path`` exists (the test's gate), then return ``value``."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.005)
    return value


def fail_on(x: int, bad: int, delay: float = 0.0) -> int:
    """Return ``x``; raise ``ValueError`` for ``bad`` at once, others after ``delay``."""
    if x == bad:
        raise ValueError(f"item {x} is bad")
    time.sleep(delay)
    return x


def fast_then_slow(x: int, slow: float = 30.0) -> int:
    """Return item 0 at once; every other item sleeps ``slow`` seconds first."""
    if x:
        time.sleep(slow)
    return x


def _record_start(path: str) -> None:
    with open(path, "a", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")


def count_then_die(path: str) -> None:
    """Initializer: note this worker's start in ``path``, then raise as die_in_initializer."""
    _record_start(path)
    tasks.die_in_initializer()


def count_then_exit(path: str, code: int = 7) -> None:
    """Initializer: note this worker's start in ``path``, then ``os._exit(code)``."""
    _record_start(path)
    os._exit(code)


def die_once(path: str) -> str:
    """Kill this worker the first time (no ``path`` yet); succeed on any later run."""
    if not os.path.exists(path):
        Path(path).touch()
        os._exit(9)
    return "survived"


def starts_recorded(path: str) -> int:
    """How many worker starts ``count_then_*`` recorded in ``path``."""
    try:
        with open(path, encoding="ascii") as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def return_bad_unpickle() -> Any:
    """Return a value that pickles in the worker but cannot be unpickled by the caller."""
    return tasks.BadInitError("a", "b")


def exit_in_initializer() -> None:
    """Initializer: raise ``SystemExit``, a ``BaseException`` but not an ``Exception``."""
    raise SystemExit(5)
