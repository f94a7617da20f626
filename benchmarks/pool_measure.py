"""The measuring child of ``pipework bench pool``: run some cells, print one line per cell.

```
 parent ──python -m pipework.benchmarks.pool --cells row/subject/variant,... ──▶ this child
   │                                  ├─ watchdog: a cell past its limit is reported, child exits
   │                                  └─ per cell: open the pool (or floor), warm up, measure, close
   │◀── one POOL_BENCH_RESULT {json} line per cell, in the child's stdout file ─┘
```

Every cell's record holds ``value`` (the row's unit, see ``pool_plan.ROWS``),
``extra`` (what else was measured), ``status`` (``ok``, ``skipped``, ``not
installed``, ``error``, ``timeout``) and, unless ok, ``error``.

How each row is measured (N and the rest: ``pool_plan.Counts``):

- submit: after a warm-up, ``fn(i)`` for ``i < N``, one submit-like call
  each, completions counted through the library's callback mechanism;
  tasks/s = N / (first submit → last completion).
- map: the library's ``map`` over ``range(N)``, consumed; tasks/s likewise.
- latency: ``call(inc, i)`` one at a time, after a warm-up; p50, p99 (µs).
- echo: a numpy ``uint8`` array sent to a worker that returns it;
  MiB/s = 2 × size / median round trip (the bytes cross twice).
- memory: the workers are held busy (``tasks.hold_worker``), then N submits
  whose handles are kept; KB per pending task = parent RSS growth / N, handles
  included. pipework's ``backpressure`` cell drops the handles (a callback
  counts completions) and checks that RSS stays flat over the second half.
- construct: the pool built, ``inc(1)`` run, result back (imports done first).
- cpu: ``spin(ms)`` (CPU time) × N submitted at once, all waited for;
  efficiency = (N × ms / workers) / wall time.
"""

# ruff: noqa: RUF002  (the multiplication sign)

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psutil

from pipework.benchmarks import pool_floors, tasks
from pipework.benchmarks.common import MIB, JSONDict, loadavg, percentile
from pipework.benchmarks.pool_plan import Cell, Counts
from pipework.benchmarks.pool_subjects import (
    Counter,
    NotInstalled,
    Pipework,
    PoolAdapter,
    Skip,
    make_pool,
)

__all__ = ["RESULT_PREFIX", "measure_cells"]

RESULT_PREFIX = "POOL_BENCH_RESULT "
"""Marks a result line, so stray output from a peer's workers is never taken for one."""
HOLD_START_S = 30.0
"""How long the memory row waits for every worker to be held busy."""

Measured = tuple[float, JSONDict]
"""A cell's value and its extra measurements."""


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


class _Child:
    """The cells of this child, the one being measured, and the watchdog over it."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.cell: Cell | None = None
        self.phase = "import"
        self.start_method = "?"
        self.deadline = time.monotonic() + limit
        self.extra: JSONDict = {}
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()

    def begin(self, cell: Cell) -> None:
        with self._lock:
            self.cell = cell
            self.phase = "open"
            self.start_method = "?"
            self.extra = {}
            self._t0 = time.perf_counter()
            self.deadline = time.monotonic() + self.limit

    def record(self, status: str, error: str | None = None, **fields: Any) -> JSONDict:
        cell = self.cell
        assert cell is not None
        return {
            "cell": cell.id,
            "row": cell.row,
            "subject": cell.subject,
            "variant": cell.variant,
            "status": status,
            "error": error,
            "phase": self.phase,
            "start_method": self.start_method,
            "value": None,
            "extra": self.extra,
            "cell_s": round(time.perf_counter() - self._t0, 3),
            "loadavg_at_end": loadavg()[0],
            **fields,
        }

    def emit(self, record: JSONDict) -> None:
        with self._lock:
            sys.stdout.write(RESULT_PREFIX + json.dumps(record) + "\n")
            sys.stdout.flush()

    def watchdog(self) -> NoReturn:
        """Report the cell running past its limit, and leave (the parent kills what is left)."""
        while True:
            time.sleep(0.2)
            if time.monotonic() > self.deadline:
                error = f"not finished within {self.limit:g} s (phase {self.phase!r})"
                self.emit(self.record("timeout", error))
                sys.stderr.flush()
                os._exit(3)


# -- pools -------------------------------------------------------------------------------


def _pool(cell: Cell, counts: Counts, child: _Child) -> PoolAdapter:
    """The adapter of the cell's subject, not yet open."""
    name, _, transport = cell.subject.partition(":")
    start_method = cell.variant if cell.row == "construct" else "forkserver"
    max_pending = None
    if cell.row == "memory" and name == "pipework":
        # Room for every submit of the "hold" cell; the backpressure cell's own bound.
        hold = cell.variant == "hold"
        max_pending = 2 * counts.pending + 1000 if hold else counts.backpressure
        child.extra["max_pending"] = max_pending
    pool = make_pool(
        name, transport=transport or None, start_method=start_method, max_pending=max_pending
    )
    child.start_method = pool.start_method
    return pool


def _open(pool: PoolAdapter, workers: int, child: _Child, *, by_map: bool = False) -> None:
    """Open the pool and warm it up: one task, then every worker has served one.

    ``by_map``: warm up through ``map`` only (mpire 2.10's ``map`` breaks after an
    ``apply_async`` on the same pool: it passes the function two arguments).
    """
    child.phase = "open"
    pool.open(workers)
    child.start_method = pool.start_method
    child.phase = "warm-up"
    if by_map:
        pool.map(tasks.inc, 4 * workers, 1)
        return
    pool.call(tasks.inc, 0)
    pool.wait(pool.hold(time.sleep, [0.02] * (2 * workers)))


def _close(pool: PoolAdapter, child: _Child) -> None:
    child.phase = "close"
    t0 = time.perf_counter()
    pool.close()
    child.extra["close_s"] = round(time.perf_counter() - t0, 4)


def _rate(n: int, t0: float, counter: Counter) -> float:
    counter.all_done.wait()
    if counter.errors:
        raise RuntimeError(f"{counter.errors} tasks failed; first: {counter.first_error}")
    assert counter.t_done is not None
    return n / (counter.t_done - t0)


# -- rows --------------------------------------------------------------------------------


def _submit(cell: Cell, counts: Counts, workers: int, child: _Child, last: bool) -> Measured:
    n = counts.tasks
    counter = Counter(n)
    if cell.subject.startswith("floor:"):
        floor = pool_floors.TaskFloor(cell.subject.split(":")[1])
        child.start_method = floor.start_method
        floor.open()
        floor.round_trip(0)
        gc.collect()
        child.phase = "flood"
        t0 = time.perf_counter()
        floor.flood(n, counter)
        rate = _rate(n, t0, counter)
        floor.close()
        return rate, {"n": n, "window": pool_floors.WINDOW, "workers": 1}
    pool = _pool(cell, counts, child)
    _open(pool, workers, child)
    gc.collect()
    child.phase = "flood"
    t0 = time.perf_counter()
    pool.flood(tasks.inc, n, counter)
    submitted = time.perf_counter() - t0
    child.phase = "wait"
    rate = _rate(n, t0, counter)
    _close(pool, child)
    return rate, {"n": n, "submit_loop_s": round(submitted, 4)}


def _map(cell: Cell, counts: Counts, workers: int, child: _Child, last: bool) -> Measured:
    n = counts.tasks
    chunksize = None if cell.variant == "default" else counts.map_chunksize
    pool = _pool(cell, counts, child)
    _open(pool, workers, child, by_map=True)
    gc.collect()
    child.phase = "map"
    t0 = time.perf_counter()
    got = pool.map(tasks.inc, n, chunksize)
    elapsed = time.perf_counter() - t0
    if got != n:
        raise RuntimeError(f"map gave {got} results for {n} items")
    _close(pool, child)
    return n / elapsed, {"n": n, "chunksize": chunksize or "library default"}


def _latency(cell: Cell, counts: Counts, workers: int, child: _Child, last: bool) -> Measured:
    close: Callable[[], None]
    if cell.subject.startswith("floor:"):
        key = cell.subject.split(":")[1]
        floor = (
            pool_floors.ReaderFloor("pipe") if key == "pipe+reader" else pool_floors.TaskFloor(key)
        )
        child.start_method = floor.start_method
        floor.open()
        round_trip: Callable[[int], Any] = floor.round_trip
        close = floor.close
    else:
        pool = _pool(cell, counts, child)
        _open(pool, workers, child)
        round_trip = functools.partial(pool.call, tasks.inc)
        close = functools.partial(_close, pool, child)
    child.phase = "warm-up"
    for i in range(counts.latency_warm_up):
        round_trip(i)
    gc.collect()
    child.phase = "round trips"
    clock = time.perf_counter_ns
    samples: list[float] = []
    wrong = 0
    for i in range(counts.round_trips):
        t0 = clock()
        value = round_trip(i)
        samples.append((clock() - t0) / 1000)
        wrong += value != i + 1
    if wrong:
        raise RuntimeError(f"{wrong} round trips returned a wrong result")
    samples.sort()
    close()
    p50 = percentile(samples, 50)
    return p50, {
        "n": len(samples),
        "p50_us": round(p50, 1),
        "p99_us": round(percentile(samples, 99), 1),
        "mean_us": round(statistics.fmean(samples), 1),
        "max_us": round(samples[-1], 1),
    }


def _echo(cell: Cell, counts: Counts, workers: int, child: _Child, last: bool) -> Measured:
    import numpy as np  # noqa: PLC0415  (only the echo row pays for numpy)

    size = counts.payload_bytes
    close: Callable[[], None]
    if cell.subject.startswith("floor:"):
        floor = pool_floors.EchoFloor(cell.subject.split(":")[1], max_bytes=size)
        child.start_method = floor.start_method
        floor.open()
        echo: Callable[[Any], int] = floor.echo
        close = floor.close
    else:
        pool = _pool(cell, counts, child)
        _open(pool, workers, child)

        def echo(payload: Any) -> int:
            with memoryview(pool.call(tasks.echo, payload)) as view:
                return view.nbytes

        close = functools.partial(_close, pool, child)
    # Written through (not calloc'd zero pages), so first-touch faults are not timed.
    payload = np.full(size, 0x5A, dtype=np.uint8)
    child.phase = "warm-up"
    for _ in range(counts.echo_warm_up):
        echo(payload)
    gc.collect()
    child.phase = "echo"
    times: list[float] = []
    for _ in range(counts.echoes):
        t0 = time.perf_counter()
        got = echo(payload)
        times.append(time.perf_counter() - t0)
        if got != size:
            raise RuntimeError(f"sent {size} bytes, got {got} back")
    close()
    median = statistics.median(times)
    return 2 * size / MIB / median, {
        "bytes": size,
        "echoes": len(times),
        "median_s": round(median, 6),
        "best_s": round(min(times), 6),
    }


def _hold_workers(pool: PoolAdapter, workers: int, folder: Path, limit: float) -> list[Any]:
    """Keep every worker busy (so every later submit stays pending); wait until they are."""
    holder = functools.partial(tasks.hold_worker, limit=limit)
    handles = pool.hold(holder, [str(folder)] * workers)
    deadline = time.monotonic() + HOLD_START_S
    while len(list(folder.glob("started-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.01)
    return handles


def _memory(cell: Cell, counts: Counts, workers: int, child: _Child, last: bool) -> Measured:
    n = counts.pending
    if cell.subject == "floor:slots":
        child.start_method = "—"
        gc.collect()
        before = _rss()
        slots = pool_floors.slots_handles(n)
        gc.collect()
        grown = _rss() - before
        del slots
        return grown / n / 1024, {"n": n, "growth_mib": round(grown / MIB, 2)}
    pool = _pool(cell, counts, child)
    _open(pool, workers, child)
    if cell.variant == "backpressure":
        return _backpressure(pool, n, child)
    with tempfile.TemporaryDirectory(prefix="pipework-bench-hold-") as folder:
        holders = _hold_workers(pool, workers, Path(folder), child.limit)
        held = len(list(Path(folder).glob("started-*")))
        gc.collect()
        child.phase = "submit"
        before = _rss()
        t0 = time.perf_counter()
        handles = pool.hold(tasks.inc, range(n))
        submit_s = time.perf_counter() - t0
        gc.collect()
        grown = _rss() - before
        child.phase = "release"
        (Path(folder) / "release").touch()
        if not last:  # else the child leaves with os._exit and the parent kills its session
            pool.wait(holders)
            pool.wait(handles)
            del handles
            _close(pool, child)
    return grown / n / 1024, {
        "n": n,
        "workers_held": held,
        "growth_mib": round(grown / MIB, 2),
        "submit_loop_s": round(submit_s, 4),
    }


def _backpressure(pool: PoolAdapter, n: int, child: _Child) -> Measured:
    """Submits that keep no handle, bounded by ``max_pending``: RSS must stay flat."""
    assert isinstance(pool, Pipework)
    submit = pool.pool.submit
    counter = Counter(n)
    callback = counter.future_done
    half = n // 2
    gc.collect()
    child.phase = "submit"
    before = _rss()
    middle = before
    peak = before
    for i in range(n):
        submit(tasks.inc, i).add_done_callback(callback)
        if i == half:
            middle = _rss()
        if i % 1024 == 0:
            peak = max(peak, _rss())
    end = _rss()
    peak = max(peak, end)
    child.phase = "wait"
    counter.all_done.wait()
    if counter.errors:
        raise RuntimeError(f"{counter.errors} tasks failed; first: {counter.first_error}")
    first_half = (middle - before) / MIB
    second_half = (end - middle) / MIB
    _close(pool, child)
    return (end - before) / n / 1024, {
        "n": n,
        "first_half_mib": round(first_half, 2),
        "second_half_mib": round(second_half, 2),
        "peak_growth_mib": round((peak - before) / MIB, 2),
        "flat": second_half <= max(1.0, first_half / 10),
    }


def _construct(cell: Cell, counts: Counts, workers: int, child: _Child, last: bool) -> Measured:
    method = cell.variant
    if cell.subject == "floor:process":
        child.start_method = method
        return 1000 * pool_floors.process_and_pipe(method), {"workers": 1}
    # Imports first: a program has them loaded before it builds its pool.
    if cell.subject == "pipework":
        from pipework.service import WorkerService  # noqa: F401, PLC0415
    else:
        import concurrent.futures.process  # noqa: F401, PLC0415
    pool = _pool(cell, counts, child)
    child.phase = "construct"
    t0 = time.perf_counter()
    pool.open(workers)
    pool.call(tasks.inc, 1)
    elapsed = time.perf_counter() - t0
    _close(pool, child)
    return 1000 * elapsed, {"workers": workers}


def _cpu(cell: Cell, counts: Counts, workers: int, child: _Child, last: bool) -> Measured:
    n, ms = counts.cpu_tasks, counts.cpu_ms
    ideal = n * ms / 1000 / workers
    if cell.subject == "floor:split":
        child.start_method = "forkserver"
        elapsed = pool_floors.static_split(workers, n, ms)
    else:
        pool = _pool(cell, counts, child)
        _open(pool, workers, child)
        gc.collect()
        child.phase = "run"
        t0 = time.perf_counter()
        pool.wait(pool.hold(tasks.spin, [ms] * n))
        elapsed = time.perf_counter() - t0
        _close(pool, child)
    return ideal / elapsed, {"n": n, "ms": ms, "ideal_s": round(ideal, 4), "wall_s": elapsed}


_ROWS: dict[str, Callable[[Cell, Counts, int, _Child, bool], Measured]] = {
    "submit": _submit,
    "map": _map,
    "latency": _latency,
    "echo": _echo,
    "memory": _memory,
    "construct": _construct,
    "cpu": _cpu,
}


def measure_cells(cells: Sequence[Cell], counts: Counts, workers: int, limit: float) -> NoReturn:
    """Measure ``cells`` in order in this process, one result line each; then leave.

    ``os._exit``, not ``sys.exit``: no atexit hooks, which a peer's pool (or a
    pool whose workers are still held) may hang in.
    """
    child = _Child(limit)
    threading.Thread(target=child.watchdog, name="watchdog", daemon=True).start()
    for index, cell in enumerate(cells):
        child.begin(cell)
        last = index == len(cells) - 1
        try:
            value, extra = _ROWS[cell.row](cell, counts, workers, child, last)
        except NotInstalled as exc:
            child.emit(child.record("not installed", str(exc)))
        except Skip as exc:
            child.emit(child.record("skipped", str(exc)))
        except BaseException as exc:
            with contextlib.suppress(Exception):
                traceback.print_exc()
            child.emit(
                child.record(
                    "error", f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
                )
            )
        else:
            child.extra.update(extra)
            child.phase = "done"
            child.emit(child.record("ok", value=value))
    sys.stderr.flush()
    os._exit(0)
