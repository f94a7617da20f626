"""Journal: how many tasks per second the daemon's SQLite journal can accept, by group commit.

```
 ceiling ── raw sqlite3, WAL: BEGIN IMMEDIATE; one tiny INSERT; COMMIT ── commits/s
            (synchronous FULL and NORMAL), next to the bare fdatasync floor of the disk
 batching ── Journal.add() x B, then flush() ── accepted tasks/s, flush latency, bytes written
            (B = 1, 8, 64, 512; sync full, normal, and in memory)
```

Measured in one run, in this process, on a fresh database per cell in
``--dir`` (default: the system temporary directory; the file system matters,
and is reported). Each cell runs for ``--seconds`` after a short warm-up.

- **fdatasync floor**: append 100 bytes to a file and ``os.fdatasync`` it,
  repeatedly: what the disk grants one durable write, below any database.
- **commit ceiling**: the fastest a client that commits each task alone can
  go, i.e. one ``INSERT`` of a small row per transaction, with the journal's
  own pragmas (WAL, ``synchronous``).
- **batching**: what the daemon's journal does per submit: build a
  ``TaskRecord`` (32-hex id, key, ``[1, 2]`` arguments), ``Journal.add`` it,
  and ``flush()`` after every ``B`` of them, on a journal that already holds
  ``--prefill`` tasks (a daemon's journal keeps a ``result_ttl`` of them).
  tasks/s = tasks / wall time; the flush columns time ``flush()`` alone, which
  is how long a client's reply waits for the disk after its batch closes;
  "KiB written/task" is what the process passed to ``write()`` (WAL appends
  and checkpoints) per task: SQLite writes whole 4 KiB pages, so this is the
  write amplification.
- **task ids**: ``uuid4`` ids land at random places in the ``task_id`` index,
  so a commit dirties (and writes) about one index page per task once the
  index outgrows the batch; time-ordered ids (nanoseconds then random bits,
  still 32 hex digits) append to it. Both are measured with ``sync=full``.

A larger ``B`` is what a busy daemon gets for free (it flushes once per loop
turn, for every submit that arrived in it), so the ratio of the ``B = 512``
row to the commit ceiling is what group commit buys.

Run: ``python -m pipework.benchmarks.journal [--quick] [--json PATH]``; results go to
``benchmarks/results/journal.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from pipework.benchmarks.common import (
    JSONDict,
    filesystem,
    fmt,
    git_state,
    loadavg,
    machine_info,
    machine_line,
    project_root,
)
from pipework.service.daemon.journal import Journal, JournalSync, TaskRecord

BATCHES = (1, 8, 64, 512)
# (sync mode or None for in memory, task id kind), each run for every B.
CELLS: tuple[tuple[JournalSync | None, str], ...] = (
    ("full", "uuid4"),
    ("full", "ordered"),
    ("normal", "uuid4"),
    (None, "uuid4"),
)
VERSIONS_OF = ("pipework",)
WARM_UP = 0.1  # fraction of --seconds spent before measuring


def _mode_name(mode: JournalSync | None) -> str:
    return "memory" if mode is None else mode


def _timed(
    step: Callable[[], int], seconds: float, after_warm_up: Callable[[], None] | None = None
) -> tuple[int, float]:
    """Call ``step`` (which returns how many units it did) until ``seconds`` pass.

    Returns:
        Units done and seconds taken, after a warm-up of ``WARM_UP * seconds``
        (then ``after_warm_up`` is called, to drop what it measured).
    """
    warm_end = time.perf_counter() + seconds * WARM_UP
    while time.perf_counter() < warm_end:
        step()
    if after_warm_up is not None:
        after_warm_up()
    done = 0
    started = time.perf_counter()
    end = started + seconds
    while True:
        done += step()
        now = time.perf_counter()
        if now >= end:
            return done, now - started


def fdatasync_floor(directory: Path, seconds: float) -> JSONDict:
    """Appends of 100 bytes, each followed by ``fdatasync``."""
    path = directory / "fdatasync.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = b"x" * 100

    def step() -> int:
        os.write(fd, data)
        os.fdatasync(fd)
        return 1

    try:
        n, wall = _timed(step, seconds)
    finally:
        os.close(fd)
        path.unlink()
    return {
        "commits": n,
        "seconds": wall,
        "commits_per_s": n / wall,
        "us_per_commit": wall / n * 1e6,
    }


def commit_ceiling(directory: Path, sync: JournalSync, seconds: float) -> JSONDict:
    """One tiny INSERT per transaction, on raw sqlite3 with the journal's pragmas."""
    path = directory / f"ceiling-{sync}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync.upper()}")
        conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, v TEXT NOT NULL)")

        def step() -> int:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES ('abc')")
            conn.execute("COMMIT")
            return 1

        n, wall = _timed(step, seconds)
    finally:
        conn.close()
        _remove_db(path)
    return {
        "sync": sync,
        "commits": n,
        "seconds": wall,
        "commits_per_s": n / wall,
        "us_per_commit": wall / n * 1e6,
    }


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _uuid4_id() -> str:
    return uuid.uuid4().hex


def _ordered_id() -> str:
    # 16 hex digits of nanoseconds, then 64 random bits: 32 hex, sorted by creation time.
    return f"{time.time_ns():016x}{random.getrandbits(64):016x}"


ID_KINDS: dict[str, Callable[[], str]] = {"uuid4": _uuid4_id, "ordered": _ordered_id}


def batching(
    directory: Path,
    mode: JournalSync | None,
    batch: int,
    seconds: float,
    *,
    ids: str = "uuid4",
    prefill: int = 0,
) -> JSONDict:
    """``Journal.add`` of ``batch`` new tasks, then ``flush()``; repeated for ``seconds``.

    The journal first holds ``prefill`` tasks (added in batches of 1,000), as
    a daemon's journal holds the last ``result_ttl`` of finished tasks.
    """
    path = None if mode is None else directory / f"batch-{mode}-{batch}-{ids}.db"
    journal = Journal(path) if mode is None else Journal(path, sync=mode)
    new_id = ID_KINDS[ids]
    flush_s: list[float] = []
    counter = 0
    chars_before = 0

    def add(n: int) -> None:
        nonlocal counter
        now = time.time()
        for _ in range(n):
            counter += 1
            journal.add(
                TaskRecord(
                    task_id=new_id(),
                    name="add",
                    key=f"order-{counter}",
                    args_json="[1, 2]",
                    kwargs_json="{}",
                    state="queued",
                    priority=0,
                    not_before=0.0,
                    timeout=None,
                    retries=0,
                    attempts=0,
                    created_at=now,
                    started_at=None,
                    finished_at=None,
                    result_json=None,
                    error_json=None,
                    history_json="[]",
                    seq=0,
                )
            )

    def step() -> int:
        add(batch)
        t0 = time.perf_counter()
        journal.flush()
        flush_s.append(time.perf_counter() - t0)
        return batch

    def measure_from_here() -> None:
        nonlocal chars_before
        flush_s.clear()
        chars_before = _written_chars()

    try:
        for _ in range(0, prefill, 1000):
            add(1000)
            journal.flush()
        n, wall = _timed(step, seconds, measure_from_here)
        written = _written_chars() - chars_before
    finally:
        journal.close()
        if path is not None:
            _remove_db(path)
    flush_s.sort()
    return {
        "sync": _mode_name(mode),
        "batch": batch,
        "ids": ids,
        "prefill": prefill,
        "tasks": n,
        "seconds": wall,
        "tasks_per_s": n / wall,
        "flushes_per_s": n / batch / wall,
        "flush_ms_mean": statistics.fmean(flush_s) * 1e3,
        "flush_ms_p50": flush_s[len(flush_s) // 2] * 1e3,
        "flush_ms_p99": flush_s[min(len(flush_s) - 1, int(len(flush_s) * 0.99))] * 1e3,
        "bytes_written_per_task": None if mode is None else written / n,
    }


def _written_chars() -> int:
    """Bytes this process has passed to write() so far (WAL appends and checkpoints)."""
    return int(psutil.Process().io_counters().write_chars)


def report(result: JSONDict) -> str:
    """The Markdown tables for a run."""
    ceiling = result["ceiling"]
    lines = [
        f"## Journal commit ceiling (SQLite {result['sqlite_version']}, WAL, "
        f"{result['filesystem'] or 'unknown'} file system)",
        "",
        "| what | commits/s | µs per commit |",
        "|---|---:|---:|",
        f"| fdatasync floor (100 B append) | {fmt(ceiling['fdatasync']['commits_per_s'], ',.0f')} "
        f"| {fmt(ceiling['fdatasync']['us_per_commit'], ',.1f')} |",
    ]
    for sync in ("full", "normal"):
        row = ceiling[sync]
        lines.append(
            f"| 1 insert per COMMIT, synchronous={sync.upper()} "
            f"| {fmt(row['commits_per_s'], ',.0f')} | {fmt(row['us_per_commit'], ',.1f')} |"
        )
    lines += [
        "",
        f"## Accepted tasks/s: `Journal.add` x B, then `flush()` "
        f"(journal holding {result['prefill']:,} tasks; uuid4 task ids unless said)",
        "",
        "| B | full tasks/s | full flush p50 ms | full KiB written/task "
        "| full, time-ordered ids tasks/s | full, time-ordered ids KiB written/task "
        "| normal tasks/s | normal flush p50 ms | memory tasks/s | full ÷ commit ceiling |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = {(r["sync"], r["ids"], r["batch"]): r for r in result["batching"]}
    full_ceiling = ceiling["full"]["commits_per_s"]

    def cell(sync: str, ids: str, batch: int, field: str, spec: str, scale: float = 1.0) -> str:
        found = cells.get((sync, ids, batch))
        value = None if found is None or found[field] is None else found[field] * scale
        return fmt(value, spec)

    for batch in result["batches"]:
        lines.append(
            f"| {batch} "
            f"| {cell('full', 'uuid4', batch, 'tasks_per_s', ',.0f')} "
            f"| {cell('full', 'uuid4', batch, 'flush_ms_p50', '.3f')} "
            f"| {cell('full', 'uuid4', batch, 'bytes_written_per_task', ',.1f', 1 / 1024)} "
            f"| {cell('full', 'ordered', batch, 'tasks_per_s', ',.0f')} "
            f"| {cell('full', 'ordered', batch, 'bytes_written_per_task', ',.1f', 1 / 1024)} "
            f"| {cell('normal', 'uuid4', batch, 'tasks_per_s', ',.0f')} "
            f"| {cell('normal', 'uuid4', batch, 'flush_ms_p50', '.3f')} "
            f"| {cell('memory', 'uuid4', batch, 'tasks_per_s', ',.0f')} "
            f"| {cell('full', 'uuid4', batch, 'tasks_per_s', '.2f', 1 / full_ceiling)} |"
        )
    lines += ["", machine_line(result["machine"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m pipework.benchmarks.journal", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="0.1 s per cell (smoke test)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="time per cell (default 2, 0.1 with --quick)"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the databases go (default: a temp dir)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=project_root() / "benchmarks" / "results" / "journal.json",
        help="write the results here (default benchmarks/results/journal.json)",
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=None,
        help="tasks each journal holds before measuring (default 20,000; 1,000 with --quick)",
    )
    args = parser.parse_args(argv)
    seconds: float = args.seconds or (0.1 if args.quick else 2.0)
    prefill: int = args.prefill if args.prefill is not None else (1000 if args.quick else 20_000)
    if seconds <= 0 or prefill < 0:
        parser.error("--seconds must be positive and --prefill not negative")

    machine = machine_info(VERSIONS_OF)
    machine["git"] = git_state(("service/journal.py",))
    parent = args.dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pipework-journal-bench-", dir=parent))
    try:
        print(f"measuring in {work} ...", file=sys.stderr, flush=True)
        ceiling: JSONDict = {"fdatasync": fdatasync_floor(work, seconds)}
        for sync in ("full", "normal"):
            ceiling[sync] = commit_ceiling(work, sync, seconds)
        cells = []
        for mode, ids in CELLS:
            for batch in BATCHES:
                cell = batching(work, mode, batch, seconds, ids=ids, prefill=prefill)
                print(
                    f"  {cell['sync']:>6} {ids:>7} B={batch:<4} "
                    f"{cell['tasks_per_s']:>12,.0f} tasks/s",
                    file=sys.stderr,
                    flush=True,
                )
                cells.append(cell)
        fs = filesystem(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_1m_at_end"] = loadavg()[0]
    result: JSONDict = {
        "benchmark": "journal",
        "quick": args.quick,
        "seconds_per_cell": seconds,
        "sqlite_version": sqlite3.sqlite_version,
        "directory": str(parent),
        "filesystem": fs,
        "batches": list(BATCHES),
        "prefill": prefill,
        "ceiling": ceiling,
        "batching": cells,
        "machine": machine,
    }
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
