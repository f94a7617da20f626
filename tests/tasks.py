"""Task functions the tests send to workers (importable in a fresh process)."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def pid_of_worker(_: object = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def exit_now(code: int = 7) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def ignore_sigterm_and_sleep(seconds: float) -> str:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return "finished"


def spin_in_c(seconds: float) -> None:
    """Block in C while holding the GIL, so no Python thread or handler can run."""
    hold_gil = ctypes.PyDLL(None)  # PyDLL, unlike CDLL, keeps the GIL during the call
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hold_gil.usleep(200_000)


def raise_value_error(message: str = "boom") -> None:
    raise ValueError(message)


class CustomError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def raise_custom(code: int) -> None:
    raise CustomError(code, "custom failure")


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(message: str = "cannot travel") -> None:
    raise UnpicklableError(message)


class BadInitError(Exception):
    """Pickles fine but cannot be unpickled: __init__ needs two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_bad_init() -> None:
    raise BadInitError("a", "b")


def return_unpicklable() -> Any:
    return threading.Lock()


def big_bytes(n: int) -> bytes:
    return b"x" * n


def die_in_initializer() -> None:
    raise RuntimeError("initializer exploded")


_state: dict[str, Any] = {}


def remember(key: str, value: Any) -> None:
    _state[key] = value


def recall(key: str) -> Any:
    return _state.get(key)


def allocate_and_hold(mb: int) -> int:
    _state.setdefault("hoard", []).append(bytearray(mb * 1024 * 1024))
    return os.getpid()


def touch_then(path: str, fn_name: str, *args: Any) -> Any:
    """Create ``path`` (so the test knows the task started), then run another task."""
    with open(path, "w"):
        pass
    return globals()[fn_name](*args)
