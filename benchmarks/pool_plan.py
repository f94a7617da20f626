"""What ``pipework bench pool`` measures: the rows, their contenders, and how much each does.

A *cell* is one measurement of one contender in one row (``row/subject/variant``);
the runner measures every cell in a fresh child process, ``Counts.repeats``
times. Subjects:

- ``pipework:<transport>``: ``WorkerService`` over ``pipe``, ``queue`` or
  ``zmq`` (rows about IPC: submit, map, latency, echo);
- ``pipework``: ``WorkerService`` with its default transport (memory,
  construct, cpu);
- ``cf``, ``mp``, ``loky``, ``pebble``, ``mpire``: the peers
  (``pool_subjects.PEERS``);
- ``floor:<kind>``: the raw floor of the row (``pool_floors``).
"""

# ruff: noqa: RUF001  (the goals' multiplication sign)

from __future__ import annotations

import dataclasses
from typing import Literal

from pipework.benchmarks.common import MIB
from pipework.benchmarks.pool_subjects import PEERS

__all__ = [
    "FULL",
    "QUICK",
    "ROWS",
    "START_METHODS",
    "TRANSPORTS",
    "Cell",
    "Counts",
    "Row",
    "plan",
]

TRANSPORTS = ("pipe", "queue", "zmq")
"""pipework transports measured in the rows about IPC."""
START_METHODS = ("fork", "forkserver", "spawn")


@dataclasses.dataclass(frozen=True)
class Counts:
    """How much each row does, and how often each cell is measured."""

    tasks: int
    """Tiny tasks in the submit and map rows."""
    map_chunksize: int
    """The chunksize every library is given in the equal-chunksize map row."""
    latency_warm_up: int
    round_trips: int
    payload_bytes: int
    """The array echoed in the echo row."""
    echo_warm_up: int
    echoes: int
    """Timed echoes per cell (MiB/s from their median)."""
    pending: int
    """Submits without waiting in the memory row."""
    backpressure: int
    """``max_pending`` of pipework's backpressure cell in the memory row."""
    cpu_tasks: int
    cpu_ms: float
    """CPU time each task of the cpu row burns."""
    repeats: int
    """Times each cell is measured, each in a fresh child."""
    limit_s: float
    """Seconds one cell may take before it is reported as a timeout and killed."""


FULL = Counts(
    tasks=100_000,
    map_chunksize=1000,
    latency_warm_up=200,
    round_trips=2_000,
    payload_bytes=64 * MIB,
    echo_warm_up=1,
    echoes=3,
    pending=200_000,
    backpressure=10_000,
    cpu_tasks=400,
    cpu_ms=5.0,
    repeats=3,
    limit_s=120.0,
)
QUICK = Counts(
    tasks=1_000,
    map_chunksize=100,
    latency_warm_up=10,
    round_trips=50,
    payload_bytes=1 * MIB,
    echo_warm_up=1,
    echoes=1,
    pending=2_000,
    backpressure=200,
    cpu_tasks=20,
    cpu_ms=5.0,
    repeats=1,
    limit_s=30.0,
)

RowKey = Literal["submit", "map", "latency", "echo", "memory", "construct", "cpu"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the issue's pool table."""

    key: RowKey
    title: str
    unit: str
    higher_is_better: bool
    goal: str
    """The issue's goal for pipework, as the table shows it."""


ROWS: dict[str, Row] = {
    row.key: row
    for row in (
        Row(
            "submit",
            "tiny tasks, one submit each, end to end",
            "tasks/s",
            True,
            "≥ 2× best peer",
        ),
        Row("map", "tiny tasks through map", "tasks/s", True, "≥ 1× best peer"),
        Row(
            "latency",
            "one task at a time, round trip",
            "p50 µs",
            False,
            "p50 ≤ 2× floor, p99 ≤ 3× own p50",
        ),
        Row("echo", "echo a numpy array", "MiB/s", True, "≥ 0.8× ZeroMQ copy=False floor"),
        Row(
            "memory",
            "submits without waiting",
            "KB per pending task",
            False,
            "≤ 0.5 KB per task; flat under backpressure",
        ),
        Row(
            "construct",
            "construct → first result",
            "ms",
            False,
            "≤ 1.2× ProcessPoolExecutor, same start method",
        ),
        Row("cpu", "5 ms CPU tasks", "efficiency", True, "≥ 0.97"),
    )
}


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One measurement: a row, a subject, and a variant of it ("" if none)."""

    row: str
    subject: str
    variant: str = ""

    @property
    def id(self) -> str:
        """``row/subject/variant``: how the parent names the cell to a child."""
        return f"{self.row}/{self.subject}/{self.variant}"

    @classmethod
    def parse(cls, text: str) -> Cell:
        """The cell named by ``id``."""
        row, subject, variant = text.split("/")
        if row not in ROWS:
            raise ValueError(f"unknown row {row!r}")
        return cls(row, subject, variant)

    @property
    def group(self) -> str:
        """Cells of one group can share a child in a quick run: the same library loaded."""
        return self.subject


def plan() -> list[Cell]:
    """Every cell of every row, in table order."""
    pipeworks = [f"pipework:{t}" for t in TRANSPORTS]
    cells: list[Cell] = []
    cells += [Cell("submit", s) for s in [*pipeworks, *PEERS, "floor:pipe", "floor:zmq"]]
    cells += [Cell("map", s, v) for v in ("default", "chunksize") for s in [*pipeworks, *PEERS]]
    cells += [Cell("latency", s) for s in [*pipeworks, *PEERS, "floor:pipe", "floor:pipe+reader"]]
    cells += [Cell("echo", s) for s in [*pipeworks, *PEERS, "floor:zmq", "floor:shm", "floor:pipe"]]
    cells += [
        Cell("memory", "pipework", "hold"),
        Cell("memory", "pipework", "backpressure"),
        *[Cell("memory", s) for s in PEERS],
        Cell("memory", "floor:slots"),
    ]
    cells += [
        Cell("construct", s, m) for m in START_METHODS for s in ("pipework", "cf", "floor:process")
    ]
    cells += [Cell("cpu", s) for s in ["pipework", *PEERS, "floor:split"]]
    return cells
