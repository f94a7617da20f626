"""The pools under test: one small adapter per contender, and the ``CONTENDERS`` table.

Every adapter does the same four things, so the rows differ only in the pool:
``open`` builds it with N workers, ``warm_up`` runs one task to completion,
``flood`` makes N ``submit``-like calls (one per task, dropping what they
return; completions reach ``Counter`` through the pool's own callback
mechanism), ``close`` shuts it down and waits for its workers.

Start methods: pipework and ``ProcessPoolExecutor`` use forkserver; the
others keep their library's default, which each adapter reports.

Each pool library is imported inside ``open``, not at the top: a contender
runs in its own process, and its start-up RSS must not include the others.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from benchmarks import tasks

__all__ = [
    "BACKPRESSURE_PENDING",
    "CONTENDERS",
    "PEERS",
    "RAW_WINDOW",
    "Contender",
    "Counter",
    "Skip",
    "Spec",
]

BACKPRESSURE_PENDING = 10_000
"""``max_pending`` of the second pipework row."""
RAW_WINDOW = 64
"""Messages in flight in the raw Pipe floor."""
PEERS = ("cf", "mp", "loky", "pebble", "mpire")
"""The non-pipework contenders; "ratio to best peer" is against the fastest of them."""


class Skip(Exception):
    """A contender cannot run this benchmark here; the message says why."""


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


class Contender(Protocol):
    """One pool under test, driven by ``_run_one``."""

    start_method: str
    label: str | None
    """Row label known only once the pool's library is imported; None: the spec's."""

    def open(self, workers: int) -> None:
        """Build the pool (or raise ``Skip``)."""

    def warm_up(self) -> None:
        """Run one task to completion."""

    def flood(self, n: int, counter: Counter) -> None:
        """Submit ``n`` tiny tasks, one call each, keeping no handle to them."""

    def close(self) -> None:
        """Shut the pool down, waiting for its workers."""


class _Executor:
    """A ``concurrent.futures.Executor`` contender: subclasses build ``_pool`` in ``open``."""

    _pool: Any

    def warm_up(self) -> None:
        self._pool.submit(tasks.inc, 0).result()

    def flood(self, n: int, counter: Counter) -> None:
        submit = self._pool.submit
        fn = tasks.inc
        callback = counter.future_done
        for i in range(n):
            submit(fn, i).add_done_callback(callback)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Pipework(_Executor):
    """pipework ``WorkerService`` on forkserver."""

    start_method = "forkserver"

    def __init__(self, max_pending: int | None = None) -> None:
        self._max_pending = max_pending
        self._pool: Any = None
        self.label: str | None = None

    def open(self, workers: int) -> None:
        from service import WorkerService
        from service.executor import DEFAULT_MAX_PENDING

        if self._max_pending is None:
            self.label = f"pipework (max_pending={DEFAULT_MAX_PENDING:_}, default)"
            self._pool = WorkerService(workers, start_method="forkserver")
        else:
            self._pool = WorkerService(
                workers, start_method="forkserver", max_pending=self._max_pending
            )


class _ConcurrentFutures(_Executor):
    """``concurrent.futures.ProcessPoolExecutor`` on forkserver."""

    start_method = "forkserver"

    def __init__(self) -> None:
        self._pool: Any = None
        self.label: str | None = None

    def open(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("forkserver")
        )


class _MultiprocessingPool:
    """``multiprocessing.Pool.apply_async`` with the platform's default start method."""

    def __init__(self) -> None:
        self.start_method = f"{multiprocessing.get_start_method()} (default)"
        self._pool: Any = None
        self.label: str | None = None

    def open(self, workers: int) -> None:
        self._pool = multiprocessing.Pool(workers)

    def warm_up(self) -> None:
        self._pool.apply_async(tasks.inc, (0,)).get()

    def flood(self, n: int, counter: Counter) -> None:
        apply_async = self._pool.apply_async
        fn = tasks.inc
        ok = counter.ok
        failed = counter.failed
        for i in range(n):
            apply_async(fn, (i,), callback=ok, error_callback=failed)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


class _Loky(_Executor):
    """``loky.ProcessPoolExecutor`` with loky's default context."""

    start_method = "loky (default)"

    def __init__(self) -> None:
        self._pool: Any = None
        self.label: str | None = None

    def open(self, workers: int) -> None:
        import loky

        self._pool = loky.ProcessPoolExecutor(max_workers=workers)
        self.start_method = f"{self._pool._context.get_start_method()} (default)"


class _Pebble:
    """``pebble.ProcessPool.schedule`` with pebble's default context (``multiprocessing``'s)."""

    def __init__(self) -> None:
        self.start_method = f"{multiprocessing.get_start_method()} (default)"
        self._pool: Any = None
        self.label: str | None = None

    def open(self, workers: int) -> None:
        import pebble

        self._pool = pebble.ProcessPool(max_workers=workers)

    def warm_up(self) -> None:
        self._pool.schedule(tasks.inc, args=(0,)).result()

    def flood(self, n: int, counter: Counter) -> None:
        schedule = self._pool.schedule
        fn = tasks.inc
        callback = counter.future_done
        for i in range(n):
            schedule(fn, args=(i,)).add_done_callback(callback)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


class _Mpire:
    """``mpire.WorkerPool.apply_async`` with mpire's default start method."""

    def __init__(self) -> None:
        self.start_method = "?"
        self._pool: Any = None
        self.label: str | None = None

    def open(self, workers: int) -> None:
        import importlib.metadata

        from mpire.context import DEFAULT_START_METHOD
        from mpire.pool import WorkerPool

        if not hasattr(WorkerPool, "apply_async"):
            version = importlib.metadata.version("mpire")
            raise Skip(f"mpire {version} has no per-task submit (WorkerPool.apply_async)")
        self.start_method = f"{DEFAULT_START_METHOD} (default)"
        self._pool = WorkerPool(n_jobs=workers)

    def warm_up(self) -> None:
        self._pool.apply_async(tasks.inc, args=(0,)).get()

    def flood(self, n: int, counter: Counter) -> None:
        apply_async = self._pool.apply_async
        fn = tasks.inc
        ok = counter.ok
        failed = counter.failed
        for i in range(n):
            apply_async(fn, args=(i,), callback=ok, error_callback=failed)

    def close(self) -> None:
        self._pool.stop_and_join()


class _RawPipe:
    """The IPC floor: one worker, a bare forkserver ``Pipe``, ``RAW_WINDOW`` messages in flight."""

    start_method = "forkserver"

    def __init__(self) -> None:
        self._conn: Any = None
        self._proc: Any = None
        self.label: str | None = None

    def open(self, workers: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=tasks.pipe_worker, args=(child_conn,), daemon=True)
        self._proc.start()
        child_conn.close()

    def warm_up(self) -> None:
        self._conn.send((tasks.inc, (0,)))
        self._conn.recv()

    def flood(self, n: int, counter: Counter) -> None:
        # One thread only, so no counter lock: this row is the floor.
        send = self._conn.send
        recv = self._conn.recv
        fn = tasks.inc
        sent = 0
        for _ in range(min(RAW_WINDOW, n)):
            send((fn, (sent,)))
            sent += 1
        for _ in range(n):
            recv()
            counter.done += 1
            if sent < n:
                send((fn, (sent,)))
                sent += 1
        counter.t_done = time.perf_counter()
        counter.all_done.set()

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join()
        self._conn.close()


@dataclasses.dataclass(frozen=True)
class Spec:
    """A contender's row label and how to build it."""

    label: str
    factory: Callable[[], Contender]


CONTENDERS: dict[str, Spec] = {
    "pipework": Spec("pipework (default max_pending)", _Pipework),
    "pipework-bp": Spec(
        f"pipework (max_pending={BACKPRESSURE_PENDING:_})",
        lambda: _Pipework(max_pending=BACKPRESSURE_PENDING),
    ),
    "cf": Spec("ProcessPoolExecutor", _ConcurrentFutures),
    "mp": Spec("multiprocessing.Pool", _MultiprocessingPool),
    "loky": Spec("loky", _Loky),
    "pebble": Spec("pebble", _Pebble),
    "mpire": Spec("mpire", _Mpire),
    "raw": Spec(f"raw Pipe floor (1 worker, window {RAW_WINDOW})", _RawPipe),
}
