"""Transports: each pipework transport against the raw floor of its own IPC mechanism.

```
 parent ──per (measure, subject)──▶ child: python -m benchmarks.transports --one S --measure M
   │                                  ├─ watchdog thread (--limit-seconds): reports, then exits
   │                                  └─ open subject, warm up, measure, close
   │◀── one JSON line (prefixed) in the child's stdout file ─┘
   └─ markdown table per measure (pipework / its floor), machine, load, and --json
```

Subjects, each run in a fresh child process (and its own session, killed
as a group at the end or on expiry):

- ``pipework:<transport>``: ``WorkerService(workers, transport=..., start_method="forkserver")``
  for ``pipe``, ``zmq`` (``ipc://``), ``zmq+tcp`` and ``queue``; a transport
  missing from ``service.transports.NAMES`` is reported as not available.
- ``floor:<mechanism>``: the bare mechanism between the child and ONE
  forkserver process of its own, nothing else:
  ``multiprocessing.Pipe`` (floor of ``pipe``), two ``multiprocessing.Queue``
  (floor of ``queue``), ZeroMQ ROUTER/DEALER over ``ipc://`` (floor of
  ``zmq``) and over ``tcp://127.0.0.1`` (floor of ``zmq+tcp``).

Measures (each subject, each measure, in its own child):

1. ``throughput``: N tiny tasks (``tasks.inc``). pipework: one ``submit`` each,
   completions counted by a done-callback (as in ``submit_flood``); floors:
   ``(fn, args)`` pickled each way with ``RAW_WINDOW`` messages in flight
   (``contenders._RawPipe``'s loop). tasks/s = N / (first send → last completion).
2. ``latency``: one tiny task at a time, ``submit(...).result()`` (floors:
   send, then receive), after a warm-up; p50 and p99 in microseconds.
3. ``bandwidth``: a 1 MiB and a 64 MiB numpy ``uint8`` array sent to a worker
   that returns it (pipework: ``submit(echo, array).result()``; floors:
   ``send_bytes``/``recv_bytes`` echo, ``Queue.put``/``get`` of the array,
   ZeroMQ frames sent with ``copy=False``). MiB/s = 2 * payload size (the
   bytes go there AND back) / median round-trip time.

A subject that raises, or is not done within ``--limit-seconds``, is reported
as such with what it measured so far, and its child is killed: a failing
contender never hangs the run. ``--quick`` shrinks every count (smoke test).

Run: ``python -m benchmarks.transports --workers 2 --json out.json``.
"""

# ruff: noqa: PLC0415  (pool libraries, numpy and pyzmq load only in the children that use them)

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import multiprocessing
import pickle
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol, TypeVar, cast

from benchmarks import tasks
from benchmarks.common import (
    MIB,
    JSONDict,
    emit_result,
    fmt,
    git_state,
    loadavg,
    machine_info,
    machine_line,
    percentile,
    run_child,
)
from benchmarks.contenders import RAW_WINDOW, Counter, Skip, _Pipework, _RawPipe

__all__ = [
    "FLOOR_OF",
    "FULL",
    "MEASURES",
    "QUICK",
    "SUBJECTS",
    "TRANSPORTS",
    "Counts",
    "echo",
    "main",
    "render_report",
    "run_subject",
]

T = TypeVar("T")
Mode = Literal["task", "echo"]
"""What a floor's child does with a message: run it as ``(fn, args)``, or send it back."""

RESULT_PREFIX = "TRANSPORTS_RESULT "
"""Marks the child's result line, so stray output from workers is not taken for it."""
KILL_MARGIN = 5.0
"""Seconds past ``--limit-seconds`` the parent waits for the child's own watchdog, then kills."""
CONNECT_TIMEOUT_MS = 30_000
"""How long a ZeroMQ floor waits for its child to connect."""
VERSIONS_OF = ("pipework", "pyzmq", "numpy", "psutil")
"""Distributions whose versions the report names."""

MEASURES = ("throughput", "latency", "bandwidth")
TRANSPORTS = ("pipe", "zmq", "zmq+tcp", "queue")
"""pipework transports this benchmark knows a floor for, in report order."""
FLOOR_OF = {
    "pipe": "floor:pipe",
    "queue": "floor:queue",
    "zmq": "floor:zmq-ipc",
    "zmq+tcp": "floor:zmq-tcp",
}
"""Each pipework transport's raw floor: the same mechanism, bare, one child."""


@dataclasses.dataclass(frozen=True)
class Counts:
    """How much each measure does."""

    tasks: int
    """Tiny tasks in the throughput run."""
    latency_warm_up: int
    """Untimed round trips before the latency run."""
    round_trips: int
    """Timed round trips in the latency run."""
    payloads: tuple[tuple[int, int], ...]
    """``(bytes, timed repetitions)`` of each echoed array."""
    payload_warm_up: int
    """Untimed echoes of each array before its timed ones."""


FULL = Counts(
    tasks=20_000,
    latency_warm_up=200,
    round_trips=2_000,
    payloads=((1 * MIB, 50), (64 * MIB, 8)),
    payload_warm_up=2,
)
QUICK = Counts(
    tasks=500,
    latency_warm_up=20,
    round_trips=100,
    payloads=((1 * MIB, 3), (64 * MIB, 1)),
    payload_warm_up=1,
)


def echo(value: T) -> T:
    """The bandwidth task: return the argument, so it crosses the channel both ways."""
    return value


def _nbytes(data: Any) -> int:
    """Size in bytes of anything with the buffer protocol."""
    with memoryview(data) as view:
        return view.nbytes


# -- subjects (in the child) -------------------------------------------------------------


class Subject(Protocol):
    """One channel under test, driven by ``_run_one``."""

    start_method: str
    label: str | None

    def open(self, workers: int) -> None:
        """Start the worker process(es) (or raise ``Skip``)."""

    def warm_up(self) -> None:
        """Make one exchange of the kind the measure uses."""

    def flood(self, n: int, counter: Counter) -> None:
        """Send ``n`` tiny tasks; ``counter`` learns of each completion."""

    def round_trip(self, i: int) -> object:
        """Run ``tasks.inc(i)`` remotely and return its result."""

    def echo(self, payload: Any) -> int:
        """Send ``payload`` and wait for it to come back; return the bytes received."""

    def close(self) -> None:
        """Stop the worker process(es) and wait for them."""


class _PipeworkOver(_Pipework):
    """pipework ``WorkerService`` on forkserver over one named transport."""

    def __init__(self, transport: str, mode: Mode) -> None:
        super().__init__()
        self._transport = transport
        self._mode = mode
        self._workers = 1

    def open(self, workers: int) -> None:
        from service import WorkerService
        from service.transports import NAMES

        if self._transport not in NAMES:
            raise Skip(f"transport {self._transport!r} is not in service.transports.NAMES")
        # Typed as the names released so far; the knob takes any of NAMES.
        options: dict[str, Any] = {"transport": self._transport, "start_method": "forkserver"}
        self._pool = WorkerService(workers, **options)
        self._workers = workers

    def warm_up(self) -> None:
        super().warm_up()
        # Every worker serves a task, so none is still starting when timing begins.
        futures = [self._pool.submit(time.sleep, 0.02) for _ in range(2 * self._workers)]
        for future in futures:
            future.result()
        if self._mode == "echo":
            self._pool.submit(echo, b"warm").result()

    def round_trip(self, i: int) -> object:
        return self._pool.submit(tasks.inc, i).result()

    def echo(self, payload: Any) -> int:
        return _nbytes(self._pool.submit(echo, payload).result())


class _Conn(Protocol):
    """The part of ``multiprocessing.Connection`` the floors use; one adapter per mechanism."""

    def send(self, obj: Any) -> None:
        """Send a picklable object."""

    def recv(self) -> Any:
        """Receive an object."""

    def send_bytes(self, buf: Any) -> None:
        """Send a bytes-like object as one message."""

    def recv_bytes(self) -> Any:
        """Receive one message as a bytes-like object."""

    def close(self) -> None:
        """Release this end."""


class _ChildEnd(Protocol):
    """What a floor's child process is handed; picklable."""

    def open(self) -> _Conn:
        """Open the child's end (in the child)."""


def _echo_loop(conn: _Conn) -> None:
    """Floor child in echo mode: send every message back until an empty one."""
    while True:
        data = conn.recv_bytes()
        if _nbytes(data) == 0:
            return
        conn.send_bytes(data)
        del data


def _floor_child(end: _ChildEnd, mode: Mode) -> None:
    """Floor child process: serve ``end`` in ``mode`` until told to stop."""
    conn = end.open()
    try:
        if mode == "task":
            # (fn, args) in, fn(*args) out, until None: the submit_flood raw worker.
            tasks.pipe_worker(cast(Any, conn))
        else:
            _echo_loop(conn)
    finally:
        conn.close()


class _Floor(_RawPipe):
    """A bare mechanism and one child: ``_RawPipe``'s warm-up and flood over any ``_Conn``."""

    def __init__(self, mode: Mode) -> None:
        super().__init__()
        self._mode = mode
        self._conn: _Conn | None = None
        self._proc: BaseProcess | None = None

    def _connect(self, ctx: BaseContext) -> tuple[_Conn, _ChildEnd]:
        """Create the channel: the parent's end and what the child opens."""
        raise NotImplementedError

    def _started(self, end: _ChildEnd) -> None:
        """The child runs: drop the parent's copy of its end, wait until it is connected."""

    def open(self, workers: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self._conn, end = self._connect(ctx)
        self._proc = ctx.Process(target=_floor_child, args=(end, self._mode), daemon=True)
        self._proc.start()
        self._started(end)

    def warm_up(self) -> None:
        if self._mode == "echo":
            self.echo(b"warm")
        else:
            super().warm_up()

    def round_trip(self, i: int) -> object:
        assert self._conn is not None
        self._conn.send((tasks.inc, (i,)))
        return self._conn.recv()

    def echo(self, payload: Any) -> int:
        assert self._conn is not None
        self._conn.send_bytes(payload)
        return _nbytes(self._conn.recv_bytes())

    def close(self) -> None:
        assert self._conn is not None
        assert self._proc is not None
        if self._mode == "echo":
            self._conn.send_bytes(b"")
        else:
            self._conn.send(None)
        self._proc.join(10.0)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
        self._conn.close()


class _ConnectionEnd:
    """A ``multiprocessing.Connection`` handed to the child as is."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def open(self) -> _Conn:
        return cast(_Conn, self.conn)


class _PipeFloor(_Floor):
    """``multiprocessing.Pipe()``: ``send``/``recv`` tasks, ``send_bytes``/``recv_bytes`` echo."""

    def _connect(self, ctx: BaseContext) -> tuple[_Conn, _ChildEnd]:
        parent, child = ctx.Pipe()
        return cast(_Conn, parent), _ConnectionEnd(child)

    def _started(self, end: _ChildEnd) -> None:
        assert isinstance(end, _ConnectionEnd)
        end.conn.close()


class _QueueConn:
    """Two ``multiprocessing.Queue``: one each way. Both ends are this class, swapped."""

    def __init__(self, outbox: Any, inbox: Any) -> None:
        self._outbox = outbox
        self._inbox = inbox

    def open(self) -> _QueueConn:
        return self

    def send(self, obj: Any) -> None:
        self._outbox.put(obj)

    def recv(self) -> Any:
        return self._inbox.get()

    def send_bytes(self, buf: Any) -> None:
        self._outbox.put(buf)  # the array itself: Queue pickles whatever it is given

    def recv_bytes(self) -> Any:
        return self._inbox.get()

    def close(self) -> None:
        for q in (self._outbox, self._inbox):
            q.close()
            q.join_thread()


class _QueueFloor(_Floor):
    """Two ``multiprocessing.Queue`` (tasks, results): ``put``/``get`` of tuples or arrays."""

    def _connect(self, ctx: BaseContext) -> tuple[_Conn, _ChildEnd]:
        to_child, to_parent = ctx.Queue(), ctx.Queue()
        return _QueueConn(to_child, to_parent), _QueueConn(to_parent, to_child)


class _ZmqDealer:
    """The floor child's end: a DEALER connected to the parent's ROUTER."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._ctx: Any = None
        self._sock: Any = None

    def open(self) -> _ZmqDealer:
        import zmq

        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.ROUTING_ID, b"floor")
        self._sock.connect(self.address)
        self._sock.send(b"hello")
        return self

    def send(self, obj: Any) -> None:
        self._sock.send(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))

    def recv(self) -> Any:
        return pickle.loads(self._sock.recv())

    def send_bytes(self, buf: Any) -> None:
        self._sock.send(buf, copy=False)

    def recv_bytes(self) -> Any:
        return self._sock.recv(copy=False).buffer

    def close(self) -> None:
        self._sock.close(linger=5000)
        self._ctx.term()


class _ZmqRouter:
    """The floor parent's end: a ROUTER bound to ``ipc://`` (in a private dir) or ``tcp://``."""

    def __init__(self, where: str) -> None:
        import zmq

        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._dir: str | None = None
        if where == "ipc":
            self._dir = tempfile.mkdtemp(prefix="pipework-floor-")
            self._sock.bind(f"ipc://{self._dir}/floor.sock")
        else:
            self._sock.bind("tcp://127.0.0.1:*")
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._peer = b""

    def wait_connected(self) -> None:
        """Take the child's hello, which also tells its routing id."""
        if not self._sock.poll(CONNECT_TIMEOUT_MS):
            raise RuntimeError(f"the floor child did not connect to {self.address}")
        self._peer, _hello = self._sock.recv_multipart()

    def send(self, obj: Any) -> None:
        self._sock.send_multipart([self._peer, pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)])

    def recv(self) -> Any:
        return pickle.loads(self._sock.recv_multipart()[1])

    def send_bytes(self, buf: Any) -> None:
        self._sock.send_multipart([self._peer, buf], copy=False)

    def recv_bytes(self) -> Any:
        return self._sock.recv_multipart(copy=False)[1].buffer

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


class _ZmqFloor(_Floor):
    """Bare ZeroMQ ROUTER (parent) / DEALER (child): pickled tuples, or ``copy=False`` frames."""

    def __init__(self, where: Literal["ipc", "tcp"], mode: Mode) -> None:
        super().__init__(mode)
        self._where = where

    def _connect(self, ctx: BaseContext) -> tuple[_Conn, _ChildEnd]:
        router = _ZmqRouter(self._where)
        return router, _ZmqDealer(router.address)

    def _started(self, end: _ChildEnd) -> None:
        assert isinstance(self._conn, _ZmqRouter)
        self._conn.wait_connected()


@dataclasses.dataclass(frozen=True)
class SubjectSpec:
    """A subject's row label and how to build it for a measure's mode."""

    label: str
    factory: Callable[[Mode], Subject]
    transport: str | None = None
    """The pipework transport it runs, or None for a floor."""


SUBJECTS: dict[str, SubjectSpec] = {
    **{
        f"pipework:{name}": SubjectSpec(
            f"pipework {name}", functools.partial(_PipeworkOver, name), name
        )
        for name in TRANSPORTS
    },
    "floor:pipe": SubjectSpec("mp.Pipe", _PipeFloor),
    "floor:queue": SubjectSpec("mp.Queue x2", _QueueFloor),
    "floor:zmq-ipc": SubjectSpec("zmq ipc://", lambda mode: _ZmqFloor("ipc", mode)),
    "floor:zmq-tcp": SubjectSpec("zmq tcp://127.0.0.1", lambda mode: _ZmqFloor("tcp", mode)),
}
"""Every subject by name: ``pipework:<transport>`` and ``floor:<mechanism>``."""


# -- measuring (in the child) ------------------------------------------------------------


class _Child:
    """State of the one (subject, measure) run in this child process, and its single report."""

    def __init__(self, subject: str, measure: str, workers: int, limit: float) -> None:
        self.subject = subject
        self.measure = measure
        self.workers = workers
        self.limit = limit
        self.phase = "import"
        self.label: str | None = None
        self.start_method = "?"
        self.results: JSONDict = {}
        self._emit_lock = threading.Lock()
        self._t0 = time.perf_counter()

    def report(self, status: str, **extra: Any) -> JSONDict:
        """The result record, as far as the run got."""
        return {
            "subject": self.subject,
            "measure": self.measure,
            "status": status,
            "phase": self.phase,
            "label": self.label,
            "start_method": self.start_method,
            "workers": self.workers if self.subject.startswith("pipework:") else 1,
            "results": self.results,
            "child_s": round(time.perf_counter() - self._t0, 3),
            "loadavg_at_end": loadavg(),
            **extra,
        }

    def emit(self, record: JSONDict, exitcode: int) -> NoReturn:
        """Print the one result line and leave at once."""
        with self._emit_lock:
            emit_result(RESULT_PREFIX, record, exitcode)

    def watchdog(self) -> None:
        """Report a timeout, with what was measured so far, if the run is not over in time."""
        time.sleep(self.limit)
        error = f"not finished within {self.limit:g} s (phase {self.phase!r})"
        self.emit(self.report("timeout", error=error), 3)


def _measure_throughput(subject: Subject, counts: Counts, child: _Child) -> None:
    n = counts.tasks
    counter = Counter(n)
    child.results.update(n=n, window=None if child.subject.startswith("pipework:") else RAW_WINDOW)
    gc.collect()
    child.phase = "flood"
    t_first = time.perf_counter()
    subject.flood(n, counter)
    child.phase = "wait"
    counter.all_done.wait()
    assert counter.t_done is not None
    elapsed = counter.t_done - t_first
    child.results.update(
        completed=counter.done,
        errors=counter.errors,
        first_error=counter.first_error,
        elapsed_s=round(elapsed, 4),
        tasks_per_s=round(n / elapsed, 1) if elapsed > 0 else None,
    )
    if counter.errors:
        raise RuntimeError(f"{counter.errors} tasks failed; first: {counter.first_error}")


def _measure_latency(subject: Subject, counts: Counts, child: _Child) -> None:
    round_trip = subject.round_trip
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
    child.results.update(
        n=len(samples),
        warm_up=counts.latency_warm_up,
        p50_us=round(percentile(samples, 50), 1),
        p99_us=round(percentile(samples, 99), 1),
        mean_us=round(statistics.fmean(samples), 1),
        min_us=round(samples[0], 1),
        max_us=round(samples[-1], 1),
    )


def _measure_bandwidth(subject: Subject, counts: Counts, child: _Child) -> None:
    import numpy as np

    sizes: JSONDict = {}
    child.results["sizes"] = sizes
    for size, reps in counts.payloads:
        child.phase = f"echo {size // MIB} MiB"
        # Written through (not calloc'd zero pages), so first-touch faults are not timed.
        payload = np.full(size, 0x5A, dtype=np.uint8)
        for _ in range(counts.payload_warm_up):
            subject.echo(payload)
        gc.collect()
        times: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            got = subject.echo(payload)
            times.append(time.perf_counter() - t0)
            if got != size:
                raise RuntimeError(f"sent {size} bytes, got {got} back")
        median = statistics.median(times)
        best = min(times)
        sizes[str(size)] = {
            "bytes": size,
            "reps": reps,
            "median_s": round(median, 6),
            "best_s": round(best, 6),
            "mib_per_s": round(2 * size / MIB / median, 1),
            "best_mib_per_s": round(2 * size / MIB / best, 1),
        }
        del payload


_MEASURE: dict[str, Callable[[Subject, Counts, _Child], None]] = {
    "throughput": _measure_throughput,
    "latency": _measure_latency,
    "bandwidth": _measure_bandwidth,
}


def _run_one(name: str, measure: str, workers: int, quick: bool, limit: float) -> NoReturn:
    """Run one (subject, measure) in this process and print its result line."""
    child = _Child(name, measure, workers, limit)
    threading.Thread(target=child.watchdog, name="watchdog", daemon=True).start()
    spec = SUBJECTS[name]
    child.label = spec.label
    try:
        subject = spec.factory("echo" if measure == "bandwidth" else "task")
        child.start_method = subject.start_method
        child.phase = "open"
        subject.open(workers)
        child.phase = "warm-up"
        subject.warm_up()
        _MEASURE[measure](subject, QUICK if quick else FULL, child)
        child.phase = "close"
        subject.close()
    except Skip as skip:
        child.emit(child.report("unavailable", error=str(skip)), 0)
    except BaseException as exc:
        child.emit(
            child.report(
                "error",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            ),
            1,
        )
    child.phase = "done"
    child.emit(child.report("ok", error=None), 0)


# -- orchestrating (in the parent) -------------------------------------------------------


def run_subject(name: str, measure: str, workers: int, quick: bool, limit: float) -> JSONDict:
    """Run one subject's measure in a fresh child process and return its result record.

    Never raises for the subject's failure and never waits much past ``limit``:
    the child (with its whole session) is killed at ``limit + KILL_MARGIN``.
    """
    args = [
        "-m",
        "benchmarks.transports",
        "--one",
        name,
        "--measure",
        measure,
        "--workers",
        str(workers),
        "--limit-seconds",
        str(limit),
    ]
    if quick:
        args.append("--quick")
    outcome = run_child(args, limit, result_prefix=RESULT_PREFIX, kill_margin=KILL_MARGIN)
    record = outcome.record
    if record is None:
        status = "timeout" if outcome.killed else "error"
        why = (
            f"killed after {outcome.wall_s:.0f} s with no report"
            if outcome.killed
            else f"child exited {outcome.returncode} with no report"
        )
        record = {"subject": name, "measure": measure, "status": status, "error": why}
        record["results"] = {}
    record["label"] = record.get("label") or SUBJECTS[name].label
    record["wall_s"] = round(outcome.wall_s, 2)
    record["exitcode"] = outcome.returncode
    if record["status"] not in ("ok", "unavailable"):
        record["stderr_tail"] = outcome.stderr[-4000:]
    return record


def _unavailable(name: str, measure: str, why: str) -> JSONDict:
    """The record of a subject that was not run."""
    return {
        "subject": name,
        "measure": measure,
        "status": "unavailable",
        "error": why,
        "label": SUBJECTS[name].label,
        "results": {},
    }


class _Report:
    """Looks up records by (subject, measure) and formats their cells."""

    def __init__(self, records: Sequence[JSONDict]) -> None:
        self.by_key = {(r["subject"], r["measure"]): r for r in records}
        self.notes: list[str] = []

    def get(self, subject: str, measure: str) -> JSONDict | None:
        """The ok results of ``subject`` for ``measure``; None (and a note) otherwise."""
        record = self.by_key.get((subject, measure))
        if record is None:
            return None
        if record["status"] == "ok":
            return dict(record["results"])
        note = f"- {record['label']}, {measure}: {record['status']} — {record.get('error')}"
        if note not in self.notes:
            self.notes.append(note)
        return None

    def payload_rate(self, subject: str, size: int) -> float | None:
        """MiB/s of one payload size, also from a bandwidth run that failed at a later size."""
        record = self.by_key.get((subject, "bandwidth"))
        self.get(subject, "bandwidth")  # for its note
        if record is None:
            return None
        measured = record.get("results", {}).get("sizes", {}).get(str(size))
        return None if measured is None else float(measured["mib_per_s"])

    def cell(self, subject: str, measure: str, value: float | None, spec: str) -> str:
        """``value`` formatted, or why ``subject`` has none for ``measure``."""
        if value is not None:
            return format(value, spec)
        record = self.by_key.get((subject, measure))
        if record is None or record["status"] == "ok":
            return "—"
        if record["status"] == "unavailable":
            return "not available"
        return f"**{record['status'].upper()}**"


def _ratio(a: float | None, b: float | None) -> str:
    return fmt(a / b if a is not None and b else None, ".2f")


def render_report(
    records: Sequence[JSONDict],
    machine: JSONDict,
    transports: Sequence[str],
    measures: Sequence[str],
    workers: int,
    quick: bool,
) -> str:
    """The markdown report: one table per measure, then notes, load and machine."""
    counts = QUICK if quick else FULL
    report = _Report(records)
    lines = [
        f"## pipework transports against their raw IPC floor{' (--quick)' if quick else ''}",
        "",
        f"pipework: `WorkerService({workers}, transport=..., start_method='forkserver')`. "
        "Floor: the bare mechanism between a parent and ONE forkserver child. "
        "Each (subject, measure) ran in a fresh process; a transport and its floor "
        "ran back to back.",
    ]
    if "throughput" in measures:
        lines += [
            "",
            f"### Tiny-task throughput ({counts.tasks:,} tasks)",
            "",
            "| transport | pipework tasks/s | floor | floor tasks/s | pipework / floor |",
            "|---|---:|---|---:|---:|",
        ]
        for t in transports:
            floor = FLOOR_OF[t]
            mine = report.get(f"pipework:{t}", "throughput")
            base = report.get(floor, "throughput")
            rate = mine["tasks_per_s"] if mine else None
            floor_rate = base["tasks_per_s"] if base else None
            mine_cell = report.cell(f"pipework:{t}", "throughput", rate, ",.0f")
            base_cell = report.cell(floor, "throughput", floor_rate, ",.0f")
            lines.append(
                f"| {t} | {mine_cell} | {SUBJECTS[floor].label} | {base_cell} "
                f"| {_ratio(rate, floor_rate)} |"
            )
        lines += [
            "",
            "pipework: one `submit(inc, i)` per task, completions counted by a done-callback; "
            f"floor: `(inc, (i,))` pickled each way, {RAW_WINDOW} in flight, one child. "
            "tasks/s = N / (first send → last completion), after a warm-up. "
            "Ratio > 1: pipework is faster than its floor.",
        ]
    if "latency" in measures:
        lines += [
            "",
            f"### Round-trip latency (one task at a time, {counts.round_trips:,} round trips "
            f"after {counts.latency_warm_up:,} warm-up)",
            "",
            "| transport | pipework p50 µs | pipework p99 µs | floor | floor p50 µs "
            "| floor p99 µs | p50 / floor | p99 / floor |",
            "|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for t in transports:
            floor = FLOOR_OF[t]
            mine = report.get(f"pipework:{t}", "latency")
            base = report.get(floor, "latency")
            p50 = mine["p50_us"] if mine else None
            p99 = mine["p99_us"] if mine else None
            f50 = base["p50_us"] if base else None
            f99 = base["p99_us"] if base else None
            mine_cells = " | ".join(
                report.cell(f"pipework:{t}", "latency", v, ",.1f") for v in (p50, p99)
            )
            base_cells = " | ".join(report.cell(floor, "latency", v, ",.1f") for v in (f50, f99))
            lines.append(
                f"| {t} | {mine_cells} | {SUBJECTS[floor].label} | {base_cells} "
                f"| {_ratio(p50, f50)} | {_ratio(p99, f99)} |"
            )
        lines += [
            "",
            "pipework: `submit(inc, i).result()`; floor: send `(inc, (i,))`, receive the result. "
            "Nearest-rank percentiles. Ratio > 1: pipework is slower than its floor.",
        ]
    if "bandwidth" in measures:
        lines += [
            "",
            "### Payload bandwidth (numpy uint8 array echoed: the task returns its argument)",
            "",
            "| transport | payload | pipework MiB/s | floor | floor MiB/s | pipework / floor |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for t in transports:
            floor = FLOOR_OF[t]
            for size, reps in counts.payloads:
                rate = report.payload_rate(f"pipework:{t}", size)
                floor_rate = report.payload_rate(floor, size)
                mine_cell = report.cell(f"pipework:{t}", "bandwidth", rate, ",.0f")
                base_cell = report.cell(floor, "bandwidth", floor_rate, ",.0f")
                lines.append(
                    f"| {t} | {size // MIB} MiB x{reps} | {mine_cell} | {SUBJECTS[floor].label} "
                    f"| {base_cell} | {_ratio(rate, floor_rate)} |"
                )
        lines += [
            "",
            "MiB/s = 2 * payload / median round trip (the payload crosses the channel to the "
            "worker AND back; pickling and copies on both sides included). "
            f"{counts.payload_warm_up} untimed echo(es) per size first. pipework: "
            "`submit(echo, array).result()`; floors: mp.Pipe `send_bytes(array)` / "
            "`recv_bytes()`, mp.Queue `put(array)` / `get()`, ZeroMQ one frame sent with "
            "`copy=False` and received with `copy=False`. Ratio > 1: pipework is faster "
            "than its floor.",
        ]
    if report.notes:
        lines += ["", "Not measured:", *report.notes]
    child_loads = [r["loadavg_at_end"][0] for r in records if r.get("loadavg_at_end")]
    seen = (
        f"; 1-min load seen by the children {min(child_loads):.2f} to {max(child_loads):.2f}"
        if child_loads
        else ""
    )
    start = "/".join(f"{x:.2f}" for x in machine["loadavg_at_start"])
    end = "/".join(f"{x:.2f}" for x in machine.get("loadavg_at_end", []))
    git = machine.get("git") or {}
    changed = git.get("uncommitted")
    tree = (
        f"pipework at commit {git.get('commit') or '?'}"
        + (f" plus uncommitted changes to {', '.join(changed)}" if changed else "")
        + f"; service.transports.NAMES = {tuple(machine.get('service_transports', ()))}."
    )
    lines += [
        "",
        tree,
        "",
        f"Load average (1/5/15 min): {start} at start, {end} at end{seen}; "
        f"{machine['cpu_count']} CPUs.",
        "",
        f"libzmq {machine.get('libzmq', '?')}. {machine_line(machine)}",
    ]
    return "\n".join(lines)


def _parse_names(text: str, known: Sequence[str], what: str) -> list[str]:
    names: list[str] = []
    for raw_name in text.split(","):
        name = raw_name.strip()
        if not name:
            continue
        if name not in known:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {name!r}; choose from {', '.join(known)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise argparse.ArgumentTypeError(f"no {what} given")
    return names


def _libzmq_version() -> str | None:
    try:
        import zmq
    except ImportError:
        return None
    return str(zmq.zmq_version())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transports", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes per pool")
    parser.add_argument(
        "--transports",
        type=lambda text: _parse_names(text, TRANSPORTS, "transport"),
        default=list(TRANSPORTS),
        help=f"comma-separated pipework transports (default {','.join(TRANSPORTS)}); "
        "each one's floor is always run",
    )
    parser.add_argument(
        "--measures",
        type=lambda text: _parse_names(text, MEASURES, "measure"),
        default=list(MEASURES),
        help=f"comma-separated measures (default {','.join(MEASURES)})",
    )
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--limit-seconds",
        type=float,
        default=None,
        help="per-child time limit (default 120, 20 with --quick); past it the "
        "subject is reported and killed",
    )
    parser.add_argument("--one", default=None, choices=list(SUBJECTS), help=argparse.SUPPRESS)
    parser.add_argument("--measure", default=None, choices=MEASURES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limit: float = args.limit_seconds or (20.0 if args.quick else 120.0)
    if args.workers < 1 or limit <= 0:
        parser.error("--workers and --limit-seconds must be positive")

    if args.one is not None:
        if args.measure is None:
            parser.error("--one needs --measure")
        _run_one(args.one, args.measure, args.workers, args.quick, limit)

    from service.transports import NAMES

    machine = machine_info(VERSIONS_OF)
    machine["libzmq"] = _libzmq_version()
    machine["service_transports"] = list(NAMES)
    machine["git"] = git_state()
    records: list[JSONDict] = []
    started = time.perf_counter()
    for measure in args.measures:
        for transport in args.transports:
            subject = f"pipework:{transport}"
            for name in (subject, FLOOR_OF[transport]):
                if name == subject and transport not in NAMES:
                    why = f"'{transport}' is not in service.transports.NAMES {tuple(NAMES)}"
                    record = _unavailable(name, measure, why)
                else:
                    print(f"running {name} {measure} ...", file=sys.stderr, flush=True)
                    record = run_subject(name, measure, args.workers, args.quick, limit)
                print(
                    f"  {name} {measure}: {record['status']}"
                    f"{'' if record['status'] == 'ok' else ' — ' + str(record.get('error'))}"
                    f" ({record.get('wall_s', 0)} s)",
                    file=sys.stderr,
                    flush=True,
                )
                records.append(record)
    machine["loadavg_at_end"] = loadavg()
    machine["loadavg_1m_at_end"] = machine["loadavg_at_end"][0]
    machine["run_s"] = round(time.perf_counter() - started, 1)
    report = render_report(
        records, machine, args.transports, args.measures, args.workers, args.quick
    )
    print(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "transports",
            "workers": args.workers,
            "quick": args.quick,
            "counts": dataclasses.asdict(QUICK if args.quick else FULL),
            "transports": args.transports,
            "measures": args.measures,
            "limit_seconds": limit,
            "machine": machine,
            "results": records,
            "report": report,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
