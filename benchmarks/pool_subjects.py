"""The pools under test: one small adapter per library, all driven the same way.

Every adapter opens its pool with N workers and then offers the same calls,
so the benchmark's rows differ only in the pool:

- ``call(fn, *args)``: one task, wait for its result (warm-up, latency, echo);
- ``flood(fn, n, counter)``: ``fn(i)`` for each ``i < n``, one submit-like call
  each, keeping no handle; completions reach ``counter`` through the library's
  own callback mechanism (``add_done_callback`` or ``callback=``);
- ``hold(fn, items)`` / ``wait(handles)``: submit each, keep the handles, wait
  for all of them (memory row, CPU row);
- ``map(fn, n, chunksize)``: the library's ``map`` over ``range(n)``, consumed
  to the end; ``chunksize=None`` is the library's default chunking;
- ``close()``: shut down and wait for the workers.

Start methods: pipework and ``ProcessPoolExecutor`` use the one asked for
(forkserver, pipework's default, unless the row says otherwise); the others
keep their library's default, which each adapter reports.

Each library is imported inside ``open``, not at the top: a contender runs in a
process of its own, and its RSS and start-up must not include the others'. A
library that is not installed raises ``NotInstalled``.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import importlib.metadata
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

__all__ = [
    "PEERS",
    "Counter",
    "NotInstalled",
    "PoolAdapter",
    "Skip",
    "make_pool",
]

PEERS = ("cf", "mp", "loky", "pebble", "mpire")
"""The peer libraries, in table order; "best peer" is the best of them."""


class Skip(Exception):
    """A contender cannot run this measurement here; the message says why."""


class NotInstalled(Skip):
    """A peer's library is not installed."""


def _require(module: str, dist: str) -> Any:
    """Import ``module``, or raise ``NotInstalled`` naming ``dist``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NotInstalled(f"{dist} is not installed ({exc})") from exc


class Counter:
    """Counts completions from any thread; ``all_done`` is set at the n-th."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = 0
        self.errors = 0
        self.first_error: str | None = None
        self.t_done: float | None = None
        self.all_done = threading.Event()
        self._lock = threading.Lock()
        if n == 0:
            self.t_done = time.perf_counter()
            self.all_done.set()

    def ok(self, _result: object = None) -> None:
        """A task succeeded (usable as a peer's ``callback``)."""
        with self._lock:
            self.done += 1
            if self.done == self.n:
                self.t_done = time.perf_counter()
                self.all_done.set()

    def failed(self, exc: BaseException) -> None:
        """A task failed (usable as a peer's ``error_callback``)."""
        with self._lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"
        self.ok()

    def future_done(self, future: Future[Any]) -> None:
        """A done-callback for ``concurrent.futures``-style futures."""
        if future.cancelled():
            self.failed(RuntimeError("future was cancelled"))
            return
        exc = future.exception()
        if exc is None:
            self.ok()
        else:
            self.failed(exc)


class PoolAdapter(Protocol):
    """One pool under test."""

    start_method: str

    def open(self, workers: int) -> None:
        """Build the pool (or raise ``Skip``)."""

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker and return its result."""

    def flood(self, fn: Callable[[int], Any], n: int, counter: Counter) -> None:
        """Submit ``fn(i)`` for ``i < n``, one call each, keeping no handle."""

    def hold(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        """Submit ``fn(item)`` for each item; return the handles."""

    def wait(self, handles: Sequence[Any]) -> None:
        """Wait for every handle; raise the first task's error."""

    def map(self, fn: Callable[[int], Any], n: int, chunksize: int | None) -> int:
        """Consume the library's ``map`` over ``range(n)``; return how many results came."""

    def close(self) -> None:
        """Shut the pool down, waiting for its workers."""


class _Executor:
    """A ``concurrent.futures.Executor``: subclasses build ``_pool`` in ``open``."""

    _pool: Any
    start_method = "?"

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, *args).result()

    def flood(self, fn: Callable[[int], Any], n: int, counter: Counter) -> None:
        submit = self._pool.submit
        callback = counter.future_done
        for i in range(n):
            submit(fn, i).add_done_callback(callback)

    def hold(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        submit = self._pool.submit
        return [submit(fn, item) for item in items]

    def wait(self, handles: Sequence[Any]) -> None:
        for future in handles:
            future.result()

    def map(self, fn: Callable[[int], Any], n: int, chunksize: int | None) -> int:
        results = (
            self._pool.map(fn, range(n))
            if chunksize is None
            else self._pool.map(fn, range(n), chunksize=chunksize)
        )
        return sum(1 for _ in results)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Pipework(_Executor):
    """pipework ``WorkerService``; ``transport=None`` keeps its default transport."""

    def __init__(
        self,
        transport: str | None = None,
        start_method: str = "forkserver",
        max_pending: int | None = None,
    ) -> None:
        self.transport = transport
        self.start_method = start_method
        self.max_pending = max_pending
        self._pool: Any = None

    def open(self, workers: int) -> None:
        from pipework.service import WorkerService

        options: dict[str, Any] = {"start_method": self.start_method}
        if self.transport is not None:
            options["transport"] = self.transport
        if self.max_pending is not None:
            options["max_pending"] = self.max_pending
        self._pool = WorkerService(workers, **options)

    @property
    def pool(self) -> Any:
        """The ``WorkerService`` itself."""
        return self._pool


class _ConcurrentFutures(_Executor):
    """``concurrent.futures.ProcessPoolExecutor`` with a given start method."""

    def __init__(self, start_method: str = "forkserver") -> None:
        self.start_method = start_method
        self._pool: Any = None

    def open(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(self.start_method)
        self._pool = ProcessPoolExecutor(workers, mp_context=context)


class _Loky(_Executor):
    """``loky.ProcessPoolExecutor`` with loky's default context."""

    def __init__(self) -> None:
        self._pool: Any = None

    def open(self, workers: int) -> None:
        loky = _require("loky", "loky")
        self._pool = loky.ProcessPoolExecutor(max_workers=workers)
        self.start_method = f"{self._pool._context.get_start_method()} (default)"


class _MultiprocessingPool:
    """``multiprocessing.Pool``: ``apply_async`` per task, ``map`` for the map row."""

    def __init__(self) -> None:
        self.start_method = f"{multiprocessing.get_start_method()} (default)"
        self._pool: Any = None

    def open(self, workers: int) -> None:
        self._pool = multiprocessing.Pool(workers)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.apply_async(fn, args).get()

    def flood(self, fn: Callable[[int], Any], n: int, counter: Counter) -> None:
        apply_async = self._pool.apply_async
        ok = counter.ok
        failed = counter.failed
        for i in range(n):
            apply_async(fn, (i,), callback=ok, error_callback=failed)

    def hold(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        apply_async = self._pool.apply_async
        return [apply_async(fn, (item,)) for item in items]

    def wait(self, handles: Sequence[Any]) -> None:
        for result in handles:
            result.get()

    def map(self, fn: Callable[[int], Any], n: int, chunksize: int | None) -> int:
        return len(self._pool.map(fn, range(n), chunksize))

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


class _Pebble:
    """``pebble.ProcessPool``: ``schedule`` per task, ``map`` for the map row."""

    def __init__(self) -> None:
        self.start_method = f"{multiprocessing.get_start_method()} (default)"
        self._pool: Any = None

    def open(self, workers: int) -> None:
        pebble = _require("pebble", "pebble")
        self._pool = pebble.ProcessPool(max_workers=workers)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.schedule(fn, args=args).result()

    def flood(self, fn: Callable[[int], Any], n: int, counter: Counter) -> None:
        schedule = self._pool.schedule
        callback = counter.future_done
        for i in range(n):
            schedule(fn, args=(i,)).add_done_callback(callback)

    def hold(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        schedule = self._pool.schedule
        return [schedule(fn, args=(item,)) for item in items]

    def wait(self, handles: Sequence[Any]) -> None:
        for future in handles:
            future.result()

    def map(self, fn: Callable[[int], Any], n: int, chunksize: int | None) -> int:
        future = (
            self._pool.map(fn, range(n))
            if chunksize is None
            else self._pool.map(fn, range(n), chunksize=chunksize)
        )
        return sum(1 for _ in future.result())

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


class _Mpire:
    """``mpire.WorkerPool``: ``apply_async`` per task, ``map`` for the map row."""

    def __init__(self) -> None:
        self.start_method = "?"
        self._pool: Any = None

    def open(self, workers: int) -> None:
        context = _require("mpire.context", "mpire")
        pool_module = _require("mpire.pool", "mpire")
        if not hasattr(pool_module.WorkerPool, "apply_async"):
            version = importlib.metadata.version("mpire")
            raise Skip(f"mpire {version} has no per-task submit (WorkerPool.apply_async)")
        self.start_method = f"{context.DEFAULT_START_METHOD} (default)"
        self._pool = pool_module.WorkerPool(n_jobs=workers)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.apply_async(fn, args=args).get()

    def flood(self, fn: Callable[[int], Any], n: int, counter: Counter) -> None:
        apply_async = self._pool.apply_async
        ok = counter.ok
        failed = counter.failed
        for i in range(n):
            apply_async(fn, args=(i,), callback=ok, error_callback=failed)

    def hold(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        apply_async = self._pool.apply_async
        return [apply_async(fn, args=(item,)) for item in items]

    def wait(self, handles: Sequence[Any]) -> None:
        for result in handles:
            result.get()

    def map(self, fn: Callable[[int], Any], n: int, chunksize: int | None) -> int:
        # A plain int item is passed as the one argument (mpire unpacks tuples and dicts only).
        results = (
            self._pool.map(fn, range(n))
            if chunksize is None
            else self._pool.map(fn, range(n), chunk_size=chunksize)
        )
        return len(results)

    def close(self) -> None:
        self._pool.stop_and_join()


def make_pool(
    name: str,
    *,
    transport: str | None = None,
    start_method: str = "forkserver",
    max_pending: int | None = None,
) -> PoolAdapter:
    """The adapter of pool ``name`` ("pipework" or one of ``PEERS``).

    ``transport`` and ``max_pending`` apply to pipework only; ``start_method``
    to pipework and ``cf`` (the others keep their library's default).
    """
    if name == "pipework":
        return Pipework(transport, start_method, max_pending)
    if name == "cf":
        return _ConcurrentFutures(start_method)
    factories: dict[str, Callable[[], PoolAdapter]] = {
        "mp": _MultiprocessingPool,
        "loky": _Loky,
        "pebble": _Pebble,
        "mpire": _Mpire,
    }
    return factories[name]()
