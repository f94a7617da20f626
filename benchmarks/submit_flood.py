"""Submit flood: N tiny submits through each pool, tasks/s and the parent's RSS.

```
 parent (no pool) ──per contender──▶ child: python -m benchmarks.submit_flood --one NAME
                                       ├─ RSS sampler thread (psutil, every 50 ms)
                                       ├─ watchdog thread (--limit-seconds)
                                       └─ open pool, warm up, N x submit, wait, shutdown
 parent ◀── one JSON line (prefixed) in the child's stdout file ─┘
 parent: markdown table + machine, and --json
```

Each contender runs in a fresh child process, so the RSS measured is that
contender's alone. The caller keeps no futures: every task is one
``submit``/``apply_async``/``schedule`` call whose return value is dropped,
and completions are counted by a done-callback (or the peer's ``callback``),
so the memory that grows is the pool's own bookkeeping, not the caller's.

Contenders:

- ``pipework``: ``WorkerService`` (forkserver), default ``max_pending``,
  plus a second row with ``max_pending=10_000`` to show backpressure.
- ``cf``: ``concurrent.futures.ProcessPoolExecutor`` (forkserver).
- ``mp``: ``multiprocessing.Pool.apply_async`` (the platform's default start method).
- ``loky``: ``loky.ProcessPoolExecutor`` (loky's default, ``loky``).
- ``pebble``: ``pebble.ProcessPool.schedule`` (the platform's default start method).
- ``mpire``: ``mpire.WorkerPool.apply_async`` (mpire's default, ``fork``).
- ``raw``: always run. The IPC floor: one worker process, a bare
  ``multiprocessing.Pipe``, ``(fn, args)`` pickled each way, 64 messages in
  flight. No pool does less per task than this.

Timing: each pool first runs one warm-up task to completion (so process
start-up is not counted), then tasks/s is N over the time from the first
submit to the last completion callback. Construction and shutdown times are in
the JSON. A contender that raises, or is not done within ``--limit-seconds``,
is reported as such; its child (and everything in the child's session) is
killed, so a hanging peer never hangs the run.

Run: ``python -m benchmarks.submit_flood --n 1000000 --workers 2 --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import psutil

from benchmarks.common import (
    MIB,
    JSONDict,
    emit_result,
    fmt,
    machine_line,
    run_child,
)
from benchmarks.common import machine_info as _machine_info
from benchmarks.contenders import CONTENDERS, PEERS, Counter, Skip

RESULT_PREFIX = "SUBMIT_FLOOD_RESULT "
"""Marks the child's result line, so stray output from a peer's workers is not taken for it."""
SAMPLE_INTERVAL = 0.05
"""Seconds between RSS samples."""
KILL_MARGIN = 20.0
"""Seconds past ``--limit-seconds`` the parent waits for the child's own watchdog, then kills."""
MAX_TIMELINE_POINTS = 200
"""RSS samples kept in the JSON per contender (evenly thinned)."""
DEFAULT_PEERS = "pipework,cf,mp,loky,pebble,mpire"
VERSIONS_OF = ("pipework", "loky", "pebble", "mpire", "psutil")
"""Distributions whose versions the report names."""


# -- measuring (in the child) ------------------------------------------------------------


class _RssSampler:
    """Samples this process's RSS every ``SAMPLE_INTERVAL`` on a daemon thread."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._t0 = time.perf_counter()
        self.start_rss = self.current()
        self.peak_rss = self.start_rss
        self.samples: list[tuple[float, int]] = [(0.0, self.start_rss)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def current(self) -> int:
        """RSS now, in bytes."""
        return int(self._proc.memory_info().rss)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, taking one last sample."""
        self._stop.set()
        self._thread.join(1.0)
        self._sample()

    def _sample(self) -> None:
        rss = self.current()
        self.peak_rss = max(self.peak_rss, rss)
        self.samples.append((time.perf_counter() - self._t0, rss))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def timeline(self) -> list[tuple[float, float]]:
        """``(seconds, RSS MiB)`` pairs, thinned to at most ``MAX_TIMELINE_POINTS``."""
        samples = list(self.samples)
        step = max(1, -(-len(samples) // MAX_TIMELINE_POINTS))
        kept = samples[::step]
        if kept[-1] is not samples[-1]:
            kept.append(samples[-1])
        return [(round(t, 3), round(rss / MIB, 1)) for t, rss in kept]


class _Child:
    """State of the one contender run in this (child) process, and its single report."""

    def __init__(self, name: str, n: int, workers: int, limit: float) -> None:
        self.name = name
        self.n = n
        self.workers = workers
        self.limit = limit
        self.phase = "import"
        self.start_method = "?"
        self.label: str | None = None
        self.counter = Counter(n)
        self.sampler = _RssSampler()
        self.times: dict[str, float] = {}
        self.rss: dict[str, float] = {}
        self._emit_lock = threading.Lock()
        self._t0 = time.perf_counter()

    def mark(self, what: str) -> None:
        """Record the time (since start) and RSS (MiB) at a step."""
        self.times[what] = round(time.perf_counter() - self._t0, 4)
        self.rss[what] = round(self.sampler.current() / MIB, 1)

    def report(self, status: str, **extra: Any) -> JSONDict:
        """The result record, as far as the run got."""
        self.sampler.stop()
        counter = self.counter
        return {
            "name": self.name,
            "status": status,
            "phase": self.phase,
            "start_method": self.start_method,
            "label": self.label,
            "n": self.n,
            "workers": self.workers,
            "completed": counter.done,
            "errors": counter.errors,
            "first_error": counter.first_error,
            "rss_start_mib": round(self.sampler.start_rss / MIB, 1),
            "rss_peak_mib": round(self.sampler.peak_rss / MIB, 1),
            "rss_growth_mib": round((self.sampler.peak_rss - self.sampler.start_rss) / MIB, 1),
            "rss_at_mib": self.rss,
            "times_s": self.times,
            "rss_timeline": self.sampler.timeline(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            **extra,
        }

    def emit(self, record: JSONDict, exitcode: int) -> NoReturn:
        """Print the one result line and leave at once (no atexit: a peer's hooks may hang)."""
        with self._emit_lock:
            emit_result(RESULT_PREFIX, record, exitcode)

    def watchdog(self) -> None:
        """Report a timeout, with progress so far, if the run is not over within the limit."""
        time.sleep(self.limit)
        self.emit(
            self.report(
                "timeout",
                error=f"not finished within {self.limit:g} s (phase {self.phase!r})",
            ),
            3,
        )


def _run_one(name: str, n: int, workers: int, limit: float) -> NoReturn:
    """Run one contender in this process and print its result line."""
    child = _Child(name, n, workers, limit)
    child.sampler.start()
    threading.Thread(target=child.watchdog, name="watchdog", daemon=True).start()
    try:
        contender = CONTENDERS[name].factory()
        child.start_method = contender.start_method
        child.phase = "open"
        child.mark("open")
        contender.open(workers)
        child.start_method = contender.start_method
        child.label = contender.label
        child.phase = "warm-up"
        child.mark("warm_up")
        contender.warm_up()
        child.phase = "submit"
        child.mark("submit")
        t_first = time.perf_counter()
        contender.flood(n, child.counter)
        t_submitted = time.perf_counter()
        child.phase = "wait"
        child.mark("submitted")
        child.counter.all_done.wait()
        child.mark("done")
        child.phase = "shutdown"
        contender.close()
        child.mark("closed")
    except Skip as skip:
        child.emit(child.report("skipped", error=str(skip)), 0)
    except BaseException as exc:
        child.emit(
            child.report(
                "error",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            ),
            1,
        )
    t_done = child.counter.t_done
    assert t_done is not None
    elapsed = t_done - t_first
    counter = child.counter
    status = "ok" if counter.errors == 0 else "error"
    child.emit(
        child.report(
            status,
            error=None if status == "ok" else f"{counter.errors} tasks failed",
            elapsed_s=round(elapsed, 4),
            submit_loop_s=round(t_submitted - t_first, 4),
            tasks_per_s=round(n / elapsed, 1) if elapsed > 0 else None,
        ),
        0,
    )


# -- orchestrating (in the parent) -------------------------------------------------------


def run_contender(name: str, n: int, workers: int, limit: float) -> JSONDict:
    """Run one contender in a fresh child process and return its result record.

    Never raises for a contender's failure and never waits much past ``limit``:
    the child is killed (with its whole session) if its own watchdog has not
    reported by ``limit + KILL_MARGIN`` seconds.
    """
    args = [
        "-m",
        "benchmarks.submit_flood",
        "--one",
        name,
        "--n",
        str(n),
        "--workers",
        str(workers),
        "--limit-seconds",
        str(limit),
    ]
    outcome = run_child(args, limit, result_prefix=RESULT_PREFIX, kill_margin=KILL_MARGIN)
    record = outcome.record
    if record is None:
        status = "timeout" if outcome.killed else "error"
        why = (
            f"killed after {outcome.wall_s:.0f} s with no report"
            if outcome.killed
            else f"child exited {outcome.returncode} with no report"
        )
        record = {"name": name, "status": status, "error": why, "n": n, "workers": workers}
    record["label"] = record.get("label") or CONTENDERS[name].label
    record["wall_s"] = round(outcome.wall_s, 2)
    record["exitcode"] = outcome.returncode
    if record["status"] != "ok":
        record["stderr_tail"] = outcome.stderr[-4000:]
    return record


def machine_info() -> JSONDict:
    """Where and when the run happened."""
    return _machine_info(VERSIONS_OF)


def render_table(results: Sequence[JSONDict], machine: JSONDict, n: int, workers: int) -> str:
    """The markdown report: one row per contender, then notes and the machine."""
    ok = [r for r in results if r["status"] == "ok"]
    peer_rates = [r["tasks_per_s"] for r in ok if r["name"] in PEERS]
    best_peer = max(peer_rates, default=None)
    raw_rates = [r["tasks_per_s"] for r in ok if r["name"] == "raw"]
    raw = raw_rates[0] if raw_rates else None
    lines = [
        f"Submit flood: {n:,} tiny submits, {workers} workers, futures not kept by the caller.",
        "",
        "| contender | start method | tasks/s | ratio to best peer | ratio to raw floor "
        "| peak RSS MiB | RSS growth MiB | start RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for r in results:
        start = fmt(r.get("rss_start_mib"), ".1f")
        peak = fmt(r.get("rss_peak_mib"), ".1f")
        growth = fmt(r.get("rss_growth_mib"), ".1f")
        method = r.get("start_method", "?")
        if r["status"] == "ok":
            rate = r["tasks_per_s"]
            rate_cell = f"{rate:,.0f}"
            to_peer = fmt(rate / best_peer if best_peer else None, ".2f")
            to_raw = fmt(rate / raw if raw else None, ".2f")
        else:
            done = r.get("completed")
            progress = f", {done:,}/{n:,} done" if done is not None else ""
            rate_cell = f"**{r['status'].upper()}**{progress}"
            to_peer = to_raw = "—"
            notes.append(f"- {r['label']}: {r['status']} — {r.get('error')}")
        lines.append(
            f"| {r['label']} | {method} | {rate_cell} | {to_peer} | {to_raw} "
            f"| {peak} | {growth} | {start} |"
        )
    lines += [
        "",
        "tasks/s: N / (first submit → last completion callback), after one warm-up task. "
        "RSS: the parent process (psutil, every 50 ms); growth = peak - start.",
    ]
    if notes:
        lines += ["", "Not measured:", *notes]
    lines += ["", machine_line(machine)]
    return "\n".join(lines)


def _parse_peers(text: str) -> list[str]:
    names: list[str] = []
    for raw_name in text.split(","):
        name = raw_name.strip()
        if not name:
            continue
        if name not in CONTENDERS:
            raise argparse.ArgumentTypeError(
                f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}"
            )
        expanded = ["pipework", "pipework-bp"] if name == "pipework" else [name]
        names += [e for e in expanded if e not in names]
    if "raw" not in names:
        names.append("raw")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.submit_flood", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="tiny submits per contender")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per pool")
    parser.add_argument(
        "--peers",
        type=_parse_peers,
        default=_parse_peers(DEFAULT_PEERS),
        help=f"comma-separated contenders (default {DEFAULT_PEERS}); "
        "'pipework' adds both pipework rows; the raw Pipe floor is always run",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--limit-seconds",
        type=float,
        default=300.0,
        help="per-contender time limit; past it the contender is reported and killed",
    )
    parser.add_argument("--one", default=None, choices=list(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.limit_seconds <= 0:
        parser.error("--n, --workers and --limit-seconds must be positive")

    if args.one is not None:
        _run_one(args.one, args.n, args.workers, args.limit_seconds)

    machine = machine_info()
    results: list[JSONDict] = []
    for name in args.peers:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        record = run_contender(name, args.n, args.workers, args.limit_seconds)
        summary = (
            f"{record['tasks_per_s']:,.0f} tasks/s, peak RSS {record['rss_peak_mib']} MiB"
            if record["status"] == "ok"
            else f"{record['status']}: {record.get('error')}"
        )
        print(f"  {name}: {summary} ({record['wall_s']} s)", file=sys.stderr, flush=True)
        results.append(record)
    machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    table = render_table(results, machine, args.n, args.workers)
    print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "submit_flood",
            "n": args.n,
            "workers": args.workers,
            "limit_seconds": args.limit_seconds,
            "machine": machine,
            "results": results,
            "table": table,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
