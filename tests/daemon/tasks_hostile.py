"""Tasks for ``test_hostile.py`` (``--tasks tests.daemon.tasks_hostile``): results and
errors too large or too deep for the wire, and workers that grow.

The daemon imports this module in its workers: no test-only imports here.
"""

from __future__ import annotations

import os
from typing import Any

from pipework.service import task

_hoard: list[bytes] = []


@task
def big(n: int) -> str:
    """Return a string of ``n`` characters."""
    return "x" * n


@task
def deep(n: int) -> Any:
    """Return ``n`` nested lists: ``[[[...]]]``."""
    value: Any = []
    for _ in range(n - 1):
        value = [value]
    return value


@task
def loud(n: int) -> None:
    """Raise a ``ValueError`` whose message is ``n`` characters long."""
    raise ValueError("E" * n)


@task
def pid() -> int:
    """The pid of the worker running this task."""
    return os.getpid()


@task
def grow(mb: int) -> int:
    """Keep ``mb`` MiB more in this worker for good (a leak); return its pid."""
    _hoard.append(os.urandom(mb << 20))
    return os.getpid()
