"""One client cell against a peer task queue, in a process of its own (``benchmarks.queues``).

```
 benchmarks.queues (runner) ──starts──▶ the peer's consumer (+ its Redis)
        │
        └──run_child──▶ python -m pipework.benchmarks.queues_client --peer P --cell C
                          warm up: WARM round trips of `add` (the first waits for the consumer)
                          accept:  N x submit(echo), no waiting  ──▶ accepted/s
                          e2e:     N x submit(add), then every result, checked ──▶ tasks/s
                          latency: first the idle tree's memory (--tree: the consumer's pid),
                                   then TRIPS x (submit(add), wait for its result) ──▶ p50, p99
                        └─ one result line (benchmarks.common.emit_result)
```

The calls are each peer's ordinary client API, as its documentation shows it
(``benchmarks.queues_<peer>.Client``); this process imports only that peer.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil

from pipework.benchmarks.common import MIB, JSONDict, emit_result, percentile
from pipework.benchmarks.queues_peers import PEERS

RESULT_PREFIX = "QUEUES-RESULT "
CELLS = ("latency", "accept", "e2e")
FIRST_RESULT_TIMEOUT = 60.0
"""Seconds the first warm-up task may take: the consumer is still starting."""


def _round_trips(client: Any, count: int, timeout: float) -> list[float]:
    """``count`` times: submit ``add(i, 1)``, wait for its result, check it; seconds each."""
    samples = []
    for i in range(count):
        started = time.perf_counter()
        value = client.result(client.submit("add", [i, 1]), timeout)
        samples.append(time.perf_counter() - started)
        if value != i + 1:
            raise AssertionError(f"add({i}, 1) returned {value!r}")
    return samples


def tree_memory(root: psutil.Process) -> JSONDict:
    """USS of ``root`` and every descendant, in MiB, process by process."""
    processes = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                uss = proc.memory_full_info().uss / MIB
                command = " ".join(proc.cmdline()[:4])[:80]
                processes.append({"pid": proc.pid, "command": command, "uss_mib": round(uss, 2)})
    return {"uss_mib": sum(p["uss_mib"] for p in processes), "processes": processes}


def idle_memory(tree: int, broker: int | None, workers: int) -> JSONDict:
    """The memory of the tree rooted at pid ``tree``, its broker's, and the per-worker share."""
    mine = tree_memory(psutil.Process(tree))
    theirs = None if broker is None else tree_memory(psutil.Process(broker))
    total = mine["uss_mib"] + (0.0 if theirs is None else theirs["uss_mib"])
    return {
        "tree_mib": mine["uss_mib"],
        "broker_mib": None if theirs is None else theirs["uss_mib"],
        "total_mib": total,
        "per_worker_mib": total / workers,
        "processes": mine["processes"] + ([] if theirs is None else theirs["processes"]),
    }


@dataclasses.dataclass(frozen=True)
class Memory:
    """Whose memory to read after the warm-up, in the latency cell."""

    tree: int
    broker: int | None
    workers: int
    settle_s: float


def measure(
    client: Any,
    cell: str,
    n: int,
    trips: int,
    warm: int,
    timeout: float,
    memory: Memory | None = None,
) -> JSONDict:
    """Warm up, then run ``cell``; what it measured."""
    started = time.perf_counter()
    first = _round_trips(client, 1, FIRST_RESULT_TIMEOUT)
    _round_trips(client, warm - 1, timeout)
    record: JSONDict = {
        "first_result_s": round(first[0], 3),
        "warm_up_s": round(time.perf_counter() - started, 3),
    }
    if memory is not None:
        time.sleep(memory.settle_s)
        record.update(idle_memory(memory.tree, memory.broker, memory.workers))
    if cell == "accept":
        started = time.perf_counter()
        for i in range(n):
            client.submit("echo", [i])
        seconds = time.perf_counter() - started
        record.update(n=n, seconds=round(seconds, 4), accepted_per_s=n / seconds)
    elif cell == "e2e":
        started = time.perf_counter()
        handles = [client.submit("add", [i, 1]) for i in range(n)]
        submitted = time.perf_counter() - started
        values = client.results(handles, timeout)
        seconds = time.perf_counter() - started
        wrong = sum(1 for i, value in enumerate(values) if value != i + 1)
        if wrong or len(values) != n:
            raise AssertionError(f"{wrong} wrong results of {len(values)} (expected {n})")
        record.update(
            n=n,
            submit_s=round(submitted, 4),
            seconds=round(seconds, 4),
            tasks_per_s=n / seconds,
        )
    elif cell == "latency":
        ordered = sorted(_round_trips(client, trips, timeout))
        record.update(
            trips=trips,
            p50_ms=percentile(ordered, 50) * 1e3,
            p99_ms=percentile(ordered, 99) * 1e3,
            mean_ms=statistics.fmean(ordered) * 1e3,
            min_ms=ordered[0] * 1e3,
            max_ms=ordered[-1] * 1e3,
        )
    return record


def main(argv: Sequence[str] | None = None) -> None:
    """Run one cell and print its result line; never returns."""
    parser = argparse.ArgumentParser(prog="python -m pipework.benchmarks.queues_client")
    parser.add_argument("--peer", required=True, choices=[p.name for p in PEERS])
    parser.add_argument("--cell", required=True, choices=CELLS)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--trips", type=int, default=300)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=20.0, help="longest wait for a result")
    parser.add_argument("--tree", type=int, help="latency: first read this process tree's memory")
    parser.add_argument("--broker", type=int, help="... and this broker's (Redis)")
    parser.add_argument("--workers", type=int, default=2, help="... per worker process")
    parser.add_argument("--settle", type=float, default=1.0, help="... after this pause")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set before the import"
    )
    args = parser.parse_args(argv)
    for setting in args.env:
        name, _, value = setting.partition("=")
        os.environ[name] = value  # the peer's module reads its settings when imported
    peer = next(p for p in PEERS if p.name == args.peer)
    try:
        client = importlib.import_module(peer.module).Client()
        memory = None
        if args.tree is not None:
            memory = Memory(args.tree, args.broker, args.workers, args.settle)
        record = measure(
            client, args.cell, args.n, args.trips, max(args.warm, 1), args.timeout, memory
        )
    except Exception as exc:  # whatever the peer raised is the cell's failure
        emit_result(RESULT_PREFIX, {"error": f"{type(exc).__name__}: {exc}"}, 1)
    emit_result(RESULT_PREFIX, record, 0)


if __name__ == "__main__":
    main(sys.argv[1:])
