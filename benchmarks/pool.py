"""``pipework bench pool``: WorkerService against its peers and the raw floors (issue 9).

```
 parent ──per cell × repeat──▶ child: python -m pipework.benchmarks.pool --cells row/subject/variant
   │  progress on stderr         └─ pool_measure: open, warm up, measure, close; one line per cell
   │◀── result lines in the child's stdout file (killed with its session past the limit) ─┘
   ├─ pool_report: medians and min–max per cell, ratios per row, goals met or not
   ├─ stdout: Markdown (the goal table, then every contender per row, the machine)
   ├─ --json FILE: every run, the folded cells, the summary, the Markdown
   └─ --write-docs: the marked block of docs/performance.md
```

The rows (``pool_plan.ROWS``): tiny tasks one submit each, tiny tasks through
``map`` (each library's default chunking, and one chunksize for all), one task
at a time round trip, echo of a numpy array, memory per pending task (and
flat under backpressure), construct → first result per start method, and
5 ms CPU tasks. pipework runs on each transport where the row is about IPC.
The peers are ``ProcessPoolExecutor``, ``multiprocessing.Pool``, loky, pebble
and mpire (``pool_subjects``); the floors are the bare mechanisms
(``pool_floors``). How each row is measured: ``pool_measure``.

A full run measures every cell ``FULL.repeats`` times, each time in a fresh
child process (so RSS and start-up never mix), cycling through all cells
before repeating. ``--quick`` (what CI runs) uses small counts and one run,
and lets the cells of one library share a child: it checks the runner, not
the speed. A peer that is not installed is reported "not installed"; a cell
that hangs is reported as a timeout and its child's session killed.
"""

# ruff: noqa: RUF002  (the docstring's multiplication sign and en dash)

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipework.benchmarks.common import (
    JSONDict,
    Progress,
    git_state,
    loadavg,
    machine_info,
    project_root,
    rewrite_blocks,
    run_child,
)
from pipework.benchmarks.pool_measure import RESULT_PREFIX, measure_cells
from pipework.benchmarks.pool_plan import FULL, QUICK, Cell, Counts, plan
from pipework.benchmarks.pool_report import aggregate, render, summarize

__all__ = ["BLOCK_PREFIX", "DOCS", "main", "measure", "run", "write_docs"]

BLOCK_PREFIX = "pipework-bench-pool"
"""Marks the generated block of docs/performance.md."""
DOCS = "performance.md"
KILL_MARGIN = 10.0
"""Seconds past a child's limit before the parent kills its session."""
QUICK_PARALLEL = 2
"""Children a quick run measures at once."""
VERSIONS_OF = ("pipework", "loky", "pebble", "mpire", "numpy", "pyzmq", "psutil")


def _children(cells: Sequence[Cell], counts: Counts, quick: bool) -> list[list[Cell]]:
    """The child processes to start, each with its cells, in order."""
    if not quick:
        return [[cell] for _ in range(counts.repeats) for cell in cells]
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    # The memory row holds workers busy: last in its child, so nothing waits behind it.
    return [sorted(group, key=lambda c: c.row == "memory") for group in groups.values()]


def _run_child(group: Sequence[Cell], counts: Counts, workers: int, quick: bool) -> list[JSONDict]:
    """Measure ``group`` in one fresh child; a record for every cell, whatever happens."""
    args = ["-m", "pipework.benchmarks.pool", "--cells", ",".join(c.id for c in group)]
    args += ["--workers", str(workers), "--limit-seconds", str(counts.limit_s)]
    if quick:
        args.append("--quick")
    limit = counts.limit_s * len(group)
    outcome = run_child(args, limit, result_prefix=RESULT_PREFIX, kill_margin=KILL_MARGIN)
    got = {r["cell"]: r for r in outcome.records}
    records = []
    for cell in group:
        record = got.get(cell.id)
        if record is None:
            status = "timeout" if outcome.killed else "error"
            why = (
                f"child killed after {outcome.wall_s:.0f} s"
                if outcome.killed
                else f"child exited {outcome.returncode} before this cell"
            )
            record = {
                "cell": cell.id,
                "row": cell.row,
                "subject": cell.subject,
                "variant": cell.variant,
                "status": status,
                "error": why,
                "start_method": "?",
                "value": None,
                "extra": {},
            }
        if record["status"] not in ("ok", "not installed", "skipped"):
            record["stderr_tail"] = outcome.stderr[-3000:]
        records.append(record)
    return records


def measure(counts: Counts, workers: int, quick: bool) -> list[JSONDict]:
    """Every cell of the plan, ``counts.repeats`` times; progress on stderr.

    A full run starts one child at a time. A quick run (which checks the runner, not
    the speed) runs ``QUICK_PARALLEL`` children at once.
    """
    children = _children(plan(), counts, quick)
    progress = Progress(len(children))
    lock = threading.Lock()
    runs: dict[str, int] = {}
    jobs: list[tuple[list[Cell], int, str]] = []
    for group in children:
        first = group[0]
        runs[first.id] = runs.get(first.id, 0) + 1
        what = first.id if len(group) == 1 else f"{first.subject} ({len(group)} cells)"
        if not quick and counts.repeats > 1:
            what += f" run {runs[first.id]}/{counts.repeats}"
        jobs.append((group, runs[first.id], what))

    def one(job: tuple[list[Cell], int, str]) -> list[JSONDict]:
        group, run_index, what = job
        with lock:
            progress.start(what)
        got = _run_child(group, counts, workers, quick)
        for record in got:
            record["run"] = run_index
        bad = [r for r in got if r["status"] != "ok"]
        status = "ok" if not bad else ", ".join(sorted({r["status"] for r in bad}))
        with lock:
            progress.done(what, status, sum(r.get("cell_s", 0.0) for r in got))
            for record in bad:
                if record["status"] in ("error", "timeout"):
                    sys.stderr.write(f"  {record['cell']}: {record['error']}\n")
        return got

    with ThreadPoolExecutor(QUICK_PARALLEL if quick else 1) as threads:
        records = [record for got in threads.map(one, jobs) for record in got]
    progress.finish()
    return records


def _machine() -> JSONDict:
    machine = machine_info(VERSIONS_OF)
    machine["kernel"] = f"{platform.system()} {platform.release()}"
    machine["git"] = git_state()
    return machine


def _docs_path() -> Path:
    """docs/performance.md of the source tree benchmarks/ sits in, else of the current directory."""
    for root in (project_root(), Path.cwd()):
        if (root / "docs" / DOCS).exists():
            return root / "docs" / DOCS
    raise FileNotFoundError(
        f"no docs/{DOCS} next to {project_root()} or in {Path.cwd()}: "
        "run --write-docs from a pipework source checkout"
    )


def write_docs(markdown: str, path: Path) -> None:
    """Rewrite the pool block of ``path`` (docs/performance.md) with ``markdown``."""
    text = path.read_text(encoding="utf-8")
    path.write_text(rewrite_blocks(text, {"table": markdown}, BLOCK_PREFIX), encoding="utf-8")


def run(
    *,
    quick: bool = False,
    docs: bool = False,
    json_path: Path | None = None,
    workers: int = 2,
    repeats: int | None = None,
) -> int:
    """Measure every row, print the Markdown tables, maybe write the JSON and the docs.

    Args:
        quick: small counts, one run, cells of a library sharing a child (CI's smoke
            run; refused with ``docs``).
        docs: rewrite the generated block of docs/performance.md.
        json_path: also write every run, the folded cells and the summary here.
        workers: worker processes per pool.
        repeats: runs of each cell (default: 3, 1 with ``quick``).

    Returns:
        0 if every cell was measured (or its library is not installed or cannot
        run it, with the reason), 1 if a cell failed or timed out, 2 for a usage error.
    """
    if docs and quick:
        sys.stderr.write("pipework bench pool: --write-docs takes a full run, not --quick\n")
        return 2
    docs_path = None
    if docs:
        try:
            docs_path = _docs_path()  # before measuring for minutes, not after
            rewrite_blocks(docs_path.read_text(encoding="utf-8"), {"table": ""}, BLOCK_PREFIX)
        except (FileNotFoundError, ValueError) as exc:
            sys.stderr.write(f"pipework bench pool: {exc}\n")
            return 2
    counts = QUICK if quick else FULL
    if repeats is not None:
        counts = dataclasses.replace(counts, repeats=repeats)
    cells = plan()
    machine = _machine()
    records = measure(counts, workers, quick)
    machine["loadavg_1m_at_end"] = loadavg()[0]
    folded = aggregate(cells, records)
    summary = summarize(folded, counts)
    markdown = render(cells, folded, summary, machine, counts, workers, quick)
    print(f"## pipework bench pool{' --quick' if quick else ''}\n\n{markdown}", flush=True)
    if docs_path is not None:
        write_docs(markdown, docs_path)
        sys.stderr.write(f"wrote {docs_path}\n")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "pool",
            "quick": quick,
            "workers": workers,
            "counts": dataclasses.asdict(counts),
            "machine": machine,
            "plan": [cell.id for cell in cells],
            "records": records,
            "cells": folded,
            "summary": summary,
            "markdown": markdown,
        }
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
    failed = [e for e in folded.values() if e["status"] not in ("ok", "not installed", "skipped")]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipework.benchmarks.pool``: ``pipework bench pool``, plus ``--workers``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipework.benchmarks.pool", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts, one run")
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/performance.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the records here")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per pool")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each cell")
    parser.add_argument("--cells", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--workers and --repeats must be positive")
    if args.cells is not None:
        counts = QUICK if args.quick else FULL
        cells = [Cell.parse(text) for text in args.cells.split(",")]
        measure_cells(cells, counts, args.workers, args.limit_seconds or counts.limit_s)
    return run(
        quick=args.quick,
        docs=args.write_docs,
        json_path=args.json,
        workers=args.workers,
        repeats=args.repeats,
    )


if __name__ == "__main__":
    sys.exit(main())
