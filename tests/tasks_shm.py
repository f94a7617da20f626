"""Tasks for tests/test_zero_copy.py: large NumPy arrays and bytearrays, and workers
that die at chosen instants of a shared-memory transfer."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from typing import Any

import numpy as np


def array(seed: int, size: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """``size`` bytes of a pattern that differs for every seed and every position."""
    return ((np.arange(size, dtype=np.uint64) * 7 + seed) % 251).astype(np.uint8)


def make_array(seed: int, size: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A large result built in the worker."""
    return array(seed, size)


def make_bytearray(seed: int, size: int) -> bytearray:
    """A large ``bytearray`` result (out of band, like an array)."""
    return bytearray(array(seed, size).tobytes())


def checksum(value: Any) -> tuple[int, str, bool]:
    """Length, SHA-256 and writability of an argument, so it need not travel back."""
    view = memoryview(value).cast("B")
    return view.nbytes, hashlib.sha256(view).hexdigest(), not view.readonly


def bump(value: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Add one to the argument in place and return it."""
    value += 1
    return value


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


class DieWhenPickled:
    """Kills the worker as it is pickled: a result after a large array dies
    after the array's segment was created and before its frame was sent."""

    def __reduce__(self) -> tuple[Any, ...]:
        _die()
        raise AssertionError("unreachable")


class DieWhenLoaded:
    """Kills the worker as it is unpickled: an argument after a large array
    dies after the array's segment was mapped, before the task runs."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_die, ())


def big_then_die(seed: int, size: int) -> tuple[Any, DieWhenPickled]:
    """A result whose pickling shares a large array, then kills the worker."""
    return array(seed, size), DieWhenPickled()


def big_then_unpicklable(seed: int, size: int) -> tuple[Any, Any]:
    """A result whose pickling shares a large array, then fails."""
    return array(seed, size), threading.Lock()


def big_result_killed_after(seed: int, size: int, delay: float) -> Any:
    """A large result, with a thread that SIGKILLs the worker ``delay`` s from now:
    the kill lands while the result is built, shared, or sent."""
    threading.Thread(target=_die_after, args=(delay,), daemon=True).start()
    return array(seed, size)


def _die_after(delay: float) -> None:
    time.sleep(delay)
    _die()


def run_for(seconds: float, value: Any) -> int:
    """Hold a (large) argument for ``seconds``; return its length."""
    time.sleep(seconds)
    return len(value)
