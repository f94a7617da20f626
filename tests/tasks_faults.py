"""Fault-injection tasks, and the test-side helpers that go with them.

The tasks run in workers (so this module must import in a fresh process).
Most of them leave a trace in a file the test names, because a test that
kills a worker must know *which* process to kill and what it did:

- ``record_pid_then`` appends the worker's pid to a file, one line per run,
  then does the fault; the test reads the pids back with ``wait_for_pids``.
- ``die_on_first_attempt`` dies only if its marker file does not exist yet.
- ``touch`` proves a task ran at all.

The helpers at the bottom are for the test process: bounded polling for
pid files, for the pool to be back to full strength after a death, and for
a worker to be blocked in the middle of writing a frame (which a worker's own
killer thread uses too).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests import tasks
from tests.support.waiting import poll_until

if TYPE_CHECKING:
    from pipework.service import WorkerService


# -- tasks (run in workers) ---------------------------------------------------------


def _append_pid(path: str) -> int:
    pid = os.getpid()
    # One small O_APPEND write: a reader sees the whole line or nothing of it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)
    return pid


def record_pid_then(path: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Append this worker's pid to ``path``, then return ``fn(*args)``."""
    _append_pid(path)
    return fn(*args)


def die_on_first_attempt(marker: str) -> int:
    """SIGKILL this worker unless ``marker`` exists (creating it first); else return the pid."""
    if not os.path.exists(marker):
        _append_pid(marker)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return os.getpid()


def touch(path: str) -> int:
    """Create ``path``: the proof that this task ran."""
    Path(path).touch()
    return os.getpid()


def wait_for_file(path: str, timeout: float = 30.0) -> int:
    """Block until ``path`` exists, then return the pid; TimeoutError after ``timeout``."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= end:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)
    return os.getpid()


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def pattern(seed: int, size: int) -> bytes:
    """``size`` bytes that differ for every seed and every 256-byte block position."""
    block = seed.to_bytes(4, "little") + bytes(range(252))
    whole, rest = divmod(size, len(block))
    if not rest:  # the usual case: one copy, not two, of a big value
        return block * whole
    return block * whole + block[:rest]


def pattern_after_file(seed: int, size: int, path: str, timeout: float = 30.0) -> bytes:
    """Wait for ``path`` to exist, then return ``pattern(seed, size)``."""
    wait_for_file(path, timeout)
    return pattern(seed, size)


def big_result_after_pid(path: str, seed: int, size: int) -> bytes:
    """Build a big result, record the pid in ``path``, and return it at once.

    The test kills the worker as soon as (or shortly after) the pid shows up,
    which lands in the pickling or the writing of the result.
    """
    data = pattern(seed, size)
    _append_pid(path)
    return data


def big_result_with_killer_thread(
    path: str, seed: int, size: int, delay: float, mid_write: bool = False
) -> bytes:
    """Return a big result while a thread of this worker SIGKILLs it.

    The thread kills after ``delay`` seconds, counted from the moment the main
    thread is seen blocked writing to a pipe if ``mid_write`` (that is, while
    it writes the result frame), else from now.
    """
    data = pattern(seed, size)
    main_tid = threading.get_native_id()

    def kill_later() -> None:
        if mid_write:
            # Reading the task pipe means the write is over: kill anyway, the
            # test queues nothing that could reach this worker meanwhile.
            poll_until(lambda: thread_waits_on(os.getpid(), main_tid) != "", 10.0, 0.0005)
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)

    _append_pid(path)  # first: with no delay, the thread may kill us at once
    threading.Thread(target=kill_later, daemon=True).start()
    return data


def digest(data: bytes) -> tuple[int, str]:
    """Length and SHA-256 of an argument, so a big argument need not travel back."""
    return len(data), hashlib.sha256(data).hexdigest()


def stop_self() -> None:
    """SIGSTOP this worker: frozen, every thread of it, until killed."""
    os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(3600)


STUCK: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
    ("sleeps", tasks.sleep_forever, ()),
    ("ignores-sigterm", tasks.ignore_sigterm_and_sleep, (60,)),
    ("spins-in-c", tasks.spin_in_c, (60,)),
    ("stopped", stop_self, ()),
]
"""Tasks that never finish by themselves, in the ways a kill must still stop:
SIGTERM ends the first; the second ignores it and the fourth cannot act on it,
so they need SIGKILL; the third holds the GIL in C."""


# -- helpers (mostly for the test process) -----------------------------------------


def read_pids(path: str | os.PathLike[str]) -> list[int]:
    """The pids recorded in ``path`` so far (complete lines only)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split("\n")[:-1] if line]


def wait_for_pids(path: str | os.PathLike[str], count: int = 1, timeout: float = 30.0) -> list[int]:
    """Wait until ``path`` holds ``count`` pids; AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        pids = read_pids(path)
        if len(pids) >= count:
            return pids
        if time.monotonic() >= end:
            raise AssertionError(
                f"{count} pid(s) not recorded in {path} within {timeout} s: {pids}"
            )
        time.sleep(0.001)


def thread_waits_on(pid: int, tid: int | None = None) -> str:
    """``"write"``/``"read"`` while that thread is blocked writing/reading a pipe,
    ``"poll"`` while it waits in poll (a ZeroMQ worker after a send), else ``""``.

    From the kernel's ``wchan`` (``pipe_write``, ``anon_pipe_write``, ...):
    a thread blocked in a pipe write is in the middle of a frame that does not
    fit in the pipe.
    """
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/wchan") as f:
            wchan = f.read()
    except OSError:
        return ""
    if "pipe_write" in wchan:
        return "write"
    if "pipe_read" in wchan:
        return "read"
    if "poll" in wchan:
        # A ZeroMQ worker's main thread polls its socket once send_multipart
        # has handed the frame to libzmq's I/O thread, which is now writing it.
        return "poll"
    return ""


def replaced(pool: WorkerService, dead_pid: int, timeout: float = 10.0) -> bool:
    """Wait until ``dead_pid`` is no longer a worker and the pool is at full strength."""

    def check() -> bool:
        pids = pool.worker_pids()
        return dead_pid not in pids and len(pids) == pool.max_workers

    return poll_until(check, timeout)
