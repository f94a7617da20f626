"""Tiny module-level task functions the benchmarks send to workers.

They live in an importable module (not ``__main__``) so that every start
method, including ``spawn``, ``forkserver`` and loky's, can unpickle them by
reference in a fresh worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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


def echo(value: T) -> T:
    """The payload task: return the argument, so it crosses the channel both ways."""
    return value


def spin(ms: float) -> float:
    """Burn ``ms`` milliseconds of this thread's CPU time; return the CPU time spent."""
    start = time.thread_time()
    deadline = start + ms / 1000
    now = start
    while now < deadline:
        now = time.thread_time()
    return now - start


def hold_worker(directory: str, limit: float) -> int:
    """Keep this worker busy until ``directory``/release exists (at most ``limit`` seconds).

    Writes ``directory``/started-<pid> first, so the caller knows every worker is held.
    """
    folder = Path(directory)
    (folder / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + limit
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def split_worker(conn: Connection, count: int, ms: float) -> None:
    """Static-split floor: say ready, wait for a go, run ``spin(ms)`` ``count`` times, say done."""
    conn.send("ready")
    conn.recv()
    for _ in range(count):
        spin(ms)
    conn.send(count)
    conn.close()
