"""Tiny module-level task functions the benchmarks send to workers.

They live in an importable module (not ``__main__``) so that every start
method, including ``spawn``, ``forkserver`` and loky's, can unpickle them by
reference in a fresh worker.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


def inc(x: int) -> int:
    """The tiny task: so cheap that only the pool's own overhead is measured."""
    return x + 1


def pipe_worker(conn: Connection) -> None:
    """Raw-floor worker: ``(fn, args)`` in, ``fn(*args)`` out, until ``None`` or EOF."""
    recv = conn.recv
    send = conn.send
    while True:
        try:
            message: tuple[Callable[..., Any], tuple[Any, ...]] | None = recv()
        except EOFError:
            return
        if message is None:
            return
        fn, args = message
        send(fn(*args))
