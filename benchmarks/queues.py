"""The daemon against task queues: ``pipework bench daemon`` (issue 9, the daemon rows).

```
 runner (this process) ── for each repeat, each contender, each cell: a fresh process tree
   ├─ pipework serve --workers 2 (journal on: its default, synchronous=FULL)
   │     └─ client: benchmarks.daemon's DEALER, in this process
   ├─ redis-server (private unix socket, persistence off; one per contender and repeat)
   │     ├─ the peer's consumer, 2 worker processes: huey, Dramatiq, Celery, RQ
   │     │   (huey (SQLite): no Redis, a database file in a private directory)
   │     └─ client: python -m pipework.benchmarks.queues_client (that peer's own API)
   └─ stdout: the table; stderr: progress; --json: every record; --write-docs
```

The rows (the issue's second table), each for every contender:

1. **enqueue**: ``N`` tiny tasks (``echo(i)``) from one client, accepted per
   second, while the workers run them. pipework's client keeps
   ``benchmarks.daemon.WINDOW`` submits in flight (its protocol pipelines)
   and a submit is accepted once its journal COMMIT is done; every peer's
   client call returns once its broker holds the task, one call at a time
   (their APIs are synchronous), none waiting for a durable write. So the
   same daemon first takes ``N`` submits with one in flight, as the peers'
   clients send them (a row of its own: one COMMIT per submit).
2. **end to end**: ``N`` x ``add(i, 1)``, every result back at the client and
   checked; tasks per second from the first submit to the last result.
   pipework streams ``task_done`` events (``notify``); each peer submits all,
   then waits for the results with its documented call.
3. **one at a time**: submit ``add``, wait for its result, ``TRIPS`` times;
   p50 and p99 in milliseconds.
4. **idle memory**: after a warm-up and a pause, the unique set size (psutil
   USS) of the whole tree (daemon or consumer, its workers, fork server) plus
   the peer's Redis; also per worker process (total / workers).

Every cell warms up with ``WARM_UP`` round trips first (the first of them
waits for the consumer to start). Each measurement is repeated (3; 1 with
``--quick``); the table gives the median, its spread (half the range, as a
percentage of the median), the best peer, pipework / best peer and the
issue's goal. Servers are stopped with SIGTERM, a bounded wait, then SIGKILL
by pid (``benchmarks.daemon``), and any process they leave behind is killed by
pid. A peer that is not installed, or whose Redis is missing, is reported with
the reason (``benchmarks/setup-peers.sh`` installs them).

Run: ``pipework bench daemon [--quick] [--json FILE] [--write-docs]``, or
``python -m pipework.benchmarks.queues`` with ``--only``, ``--n``, ``--trips`` and
``--repeats`` too.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from pipework.benchmarks.common import (
    JSONDict,
    Progress,
    fmt,
    git_state,
    loadavg,
    machine_info,
    machine_line,
    project_root,
    rewrite_blocks,
    run_child,
)
from pipework.benchmarks.daemon import (
    ECHO,
    WARM_UP_TRIPS,
    WINDOW,
    _accept,
    _CellFailed,
    _Dealer,
    _end_to_end,
    _on_daemon,
    _one_at_a_time,
    _pipeline,
    _Plan,
    _Server,
    _serving,
)
from pipework.benchmarks.queues_client import RESULT_PREFIX, idle_memory
from pipework.benchmarks.queues_peers import PEERS, REDIS_SERVER, Peer, missing

PIPEWORK = "pipework"
CELLS = ("latency", "accept", "e2e")
"""In this order on each contender. The latency cell reads the idle tree's memory after its
warm-up, on a Redis nothing has used yet but that warm-up."""
IDLE_SETTLE_S = 0.5
"""Pause between the warm-up and reading memory."""
RESULT_TIMEOUT = 20.0
"""Longest wait for one result before a peer's cell is declared failed."""
REDIS_READY_TIMEOUT = 10.0
DOCS_FILE = Path("docs") / "performance.md"
BLOCK_PREFIX = "pipework-bench-daemon"
"""Marks the daemon section's generated block: ``<!-- BEGIN pipework-bench-daemon:table -->``."""
VERSIONS_OF = ("pipework", "pyzmq", "psutil", "huey", "dramatiq", "celery", "rq", "redis")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures."""

    workers: int
    n: int
    trips: int
    repeats: int
    warm: int
    """Warm-up round trips of a peer's client (pipework's: ``benchmarks.daemon``'s)."""
    contenders: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: a value every contender has, and the issue's goal for it."""

    key: str
    cell: str
    field: str
    what: str
    unit: str
    higher_is_better: bool
    goal: str
    check: Callable[[float, float | None], bool] | None
    """``(pipework, pipework / best peer)`` → goal met; None: no goal."""
    spec: str
    pipework_field: str | None = None
    """pipework's value comes from this field of the same cell instead."""


def _rows(plan: Plan) -> tuple[Row, ...]:
    return (
        Row(
            "accept",
            "accept",
            "accepted_per_s",
            f"enqueue {plan.n:,} tiny tasks from one client",
            "accepted/s",
            True,
            "≥ 1.5x best peer, each accept journalled",
            lambda _v, r: r is not None and r >= 1.5,
            ",.0f",
        ),
        Row(
            "accept_one_in_flight",
            "accept",
            "accepted_per_s",
            "the same, pipework with one submit in flight (as the peers' clients)",
            "accepted/s",
            True,
            "— (the peers' clients cannot pipeline)",
            None,
            ",.0f",
            pipework_field="one_in_flight_per_s",
        ),
        Row(
            "e2e",
            "e2e",
            "tasks_per_s",
            f"{plan.n:,} tiny tasks end to end, results back",
            "tasks/s",
            True,
            "≥ 3x best peer",
            lambda _v, r: r is not None and r >= 3.0,
            ",.0f",
        ),
        Row(
            "p50",
            "latency",
            "p50_ms",
            "one task at a time, result back: p50",
            "ms",
            False,
            "≤ 0.5 ms",
            lambda v, _r: v <= 0.5,
            ".2f",
        ),
        Row(
            "p99",
            "latency",
            "p99_ms",
            "one task at a time, result back: p99",
            "ms",
            False,
            "≤ 2 ms",
            lambda v, _r: v <= 2.0,
            ".2f",
        ),
        Row(
            "idle",
            "latency",
            "total_mib",
            "idle memory, whole tree incl. Redis (USS)",
            "MiB",
            False,
            "—",
            None,
            ".1f",
        ),
        Row(
            "idle_per_worker",
            "latency",
            "per_worker_mib",
            f"idle memory per worker process (tree / {plan.workers})",
            "MiB",
            False,
            "≤ best peer",
            lambda _v, r: r is not None and r <= 1.0,
            ".1f",
        ),
    )


# -- pipework -----------------------------------------------------------------------------------


def _accepts(plan: _Plan) -> Callable[[_Dealer], JSONDict]:
    """``N`` submits one at a time (as a peer's client sends them), then ``N`` pipelined.

    One at a time first, so that no backlog from the pipelined ones slows it.
    """

    def measure(dealer: _Dealer) -> JSONDict:
        one = _pipeline(dealer, plan.n, 1, ECHO, notify=False)
        record = _accept(plan)(dealer)
        errors: collections.Counter[str] = collections.Counter(record["errors"])
        errors.update(one["errors"])
        return {
            **record,
            "errors": dict(errors),
            "one_in_flight_per_s": one["accepted_per_s"],
            "one_in_flight": one,
        }

    return measure


def _pipework_cell(root: Path, cell: str, repeat: int, plan: Plan) -> JSONDict:
    """One cell on a fresh ``pipework serve``, through ``benchmarks.daemon``."""
    name = f"pipework-{cell}-{repeat}"
    daemon_plan = _Plan(plan.workers, plan.n, WINDOW, plan.trips, ceiling_s=0.0)
    measure = {"accept": _accepts, "e2e": _end_to_end, "latency": _one_at_a_time}[cell]

    def idle(server: _Server) -> JSONDict:
        time.sleep(IDLE_SETTLE_S)
        return idle_memory(server.proc.pid, None, plan.workers)

    # "full" is the daemon's default journal_sync; benchmarks.daemon names it explicitly.
    return _on_daemon(
        root,
        name,
        daemon_plan,
        "full",
        measure(daemon_plan),
        after_warm_up=idle if cell == "latency" else None,
    )


# -- peers ------------------------------------------------------------------------------------


def _redis_call(sock: Path, command: str, timeout: float = 5.0) -> bytes:
    """Send one inline command to Redis on ``sock``; its first reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock))
        conn.sendall(command.encode() + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.strip()


@contextlib.contextmanager
def _redis(workdir: Path, record: JSONDict) -> Iterator[_Server]:
    """A private Redis on ``workdir/redis.sock`` for the ``with`` block (stopped by pid)."""
    sock = workdir / "redis.sock"
    # No TCP port, a 0700 socket; no RDB snapshot or AOF (a snapshot would fork mid-cell,
    # and none of the peers asks Redis for durability by default).
    cmd = [
        REDIS_SERVER,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    with _serving(cmd, f"unix://{sock}", workdir, record, "redis.log") as server:
        deadline = time.perf_counter() + REDIS_READY_TIMEOUT
        while True:
            if server.proc.poll() is not None:
                raise _CellFailed(f"redis-server exited: {' | '.join(server.log_tail(3))}")
            with contextlib.suppress(OSError):
                if _redis_call(sock, "PING") == b"+PONG":
                    break
            if time.perf_counter() > deadline:
                raise _CellFailed(f"redis-server not answering after {REDIS_READY_TIMEOUT:g} s")
            time.sleep(0.02)
        yield server


def _peer_cell(peer: Peer, cell: str, plan: Plan, workdir: Path, redis: _Server | None) -> JSONDict:
    """Start the peer's consumer, run the client child for ``cell``, stop it; the record."""
    record: JSONDict = {"cell": f"{peer.name}-{cell}", "status": "error", "error": None}
    url = None
    if redis is not None:
        sock = workdir / "redis.sock"
        url = f"unix://{sock}"
        if _redis_call(sock, "FLUSHALL") != b"+OK":
            record["error"] = "FLUSHALL failed"
            return record
    env = dict(peer.env)
    env["PWBENCH_DIR"] = str(workdir / cell)
    (workdir / cell).mkdir(mode=0o700)
    if url is not None:
        env["PWBENCH_REDIS_URL"] = url
    cmd = peer.consumer(sys.executable, plan.workers, url)
    record["command"] = cmd
    client = ["-m", "pipework.benchmarks.queues_client", "--peer", peer.name, "--cell", cell]
    client += ["--n", str(plan.n), "--trips", str(plan.trips), "--warm", str(plan.warm)]
    client += ["--timeout", str(RESULT_TIMEOUT)]
    client += [f"--env={name}={value}" for name, value in env.items()]
    # Generous: RQ forks a process per job (~60 tasks/s here); the child's own waits are bounded.
    limit = 90.0 + plan.n / 20 + plan.trips * 0.5
    with _serving(cmd, "", workdir / cell, record, "consumer.log", env) as server:
        if cell == "latency":
            client += ["--tree", str(server.proc.pid), "--workers", str(plan.workers)]
            client += ["--settle", str(IDLE_SETTLE_S)]
            if redis is not None:
                client += ["--broker", str(redis.proc.pid)]
        outcome = run_child(client, limit, result_prefix=RESULT_PREFIX, kill_margin=10.0)
        server.remember_descendants()
        if outcome.record is None:
            why = "killed at its time limit" if outcome.killed else f"exit {outcome.returncode}"
            tail = " | ".join(outcome.stderr.strip().splitlines()[-3:])
            record["error"] = f"client printed no result ({why}): {tail}"
        elif "error" in outcome.record:
            tail = " | ".join(server.log_tail(3))
            record["error"] = f"{outcome.record['error']} (consumer log: {tail})"
        elif server.proc.poll() is not None:
            record["error"] = f"consumer exited {server.proc.returncode} during the cell"
        else:
            record.update(outcome.record)
            record["status"] = "ok"
    return record


def _contender_cells(
    name: str, root: Path, repeat: int, plan: Plan, progress: Progress
) -> list[JSONDict]:
    """Every cell of one contender in one repeat (its own Redis, if it needs one)."""
    label = f"run {repeat + 1}/{plan.repeats}: {name}"
    records: list[JSONDict] = []

    def one(cell: str, measure: Callable[[], JSONDict]) -> None:
        progress.start(f"{label} {cell}")
        started = time.perf_counter()
        record = measure()
        record.update(contender=name, kind=cell, repeat=repeat)
        records.append(record)
        progress.done(f"{label} {cell}", record["status"], time.perf_counter() - started)

    if name == PIPEWORK:
        for cell in CELLS:
            one(cell, functools.partial(_pipework_cell, root, cell, repeat, plan))
        return records
    peer = next(p for p in PEERS if p.name == name)
    workdir = root / f"{name}-{repeat}"
    workdir.mkdir(mode=0o700)
    redis_record: JSONDict = {
        "cell": f"{name}-redis",
        "contender": name,
        "kind": "redis",
        "repeat": repeat,
        "status": "ok",
        "error": None,
    }
    try:
        with contextlib.ExitStack() as stack:
            redis = stack.enter_context(_redis(workdir, redis_record)) if peer.redis else None
            for cell in CELLS:
                one(cell, functools.partial(_peer_cell, peer, cell, plan, workdir, redis))
    except (_CellFailed, OSError) as exc:
        redis_record.update(status="error", error=f"{type(exc).__name__}: {exc}")
        done = {r["kind"] for r in records}
        records += [
            {**redis_record, "cell": f"{name}-{c}", "kind": c} for c in CELLS if c not in done
        ]
    if peer.redis:
        records.append(redis_record)
    return records


# -- summary and report --------------------------------------------------------------------------


def _summary(values: list[float]) -> JSONDict | None:
    if not values:
        return None
    median = statistics.median(values)
    spread = (max(values) - min(values)) / 2 / median * 100 if median else 0.0
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "runs": values,
        "spread_pct": spread,
    }


def summarise(cells: list[JSONDict], plan: Plan, available: Sequence[str]) -> list[JSONDict]:
    """Each row: every contender's median and spread, the best peer, the ratio, the goal."""
    rows = []
    for row in _rows(plan):
        values: dict[str, JSONDict | None] = {}
        for name in available:
            field = row.pipework_field if name == PIPEWORK and row.pipework_field else row.field
            runs = [
                float(c[field])
                for c in cells
                if c.get("contender") == name
                and c.get("kind") == row.cell
                and c.get("status") == "ok"
                and c.get(field) is not None
            ]
            values[name] = _summary(runs)
        peers = {k: v for k, v in values.items() if k != PIPEWORK and v is not None}
        best = None
        if peers:
            pick = max if row.higher_is_better else min
            best = pick(peers, key=lambda k: peers[k]["median"])
        ours = values.get(PIPEWORK)
        ratio = None
        if ours is not None and best is not None and peers[best]["median"]:
            ratio = ours["median"] / peers[best]["median"]
        met = None
        if row.check is not None and ours is not None:
            met = row.check(ours["median"], ratio)
        rows.append(
            {
                "key": row.key,
                "what": row.what,
                "unit": row.unit,
                "higher_is_better": row.higher_is_better,
                "values": values,
                "best_peer": best,
                "ratio": ratio,
                "goal": row.goal,
                "met": met,
                "spec": row.spec,
            }
        )
    return rows


def _label(name: str) -> str:
    if name == PIPEWORK:
        return "pipework serve"
    return next(p.label for p in PEERS if p.name == name)


def _cell_text(value: JSONDict | None, spec: str, best: bool) -> str:
    if value is None:
        return "—"
    text = fmt(value["median"], spec)
    if len(value["runs"]) > 1:
        text += f" ±{value['spread_pct']:.0f}%"
    return f"**{text}**" if best else text


def render(result: JSONDict) -> str:
    """The Markdown report: the table, how it was measured, what is missing, machine, commit."""
    plan = result["plan"]
    names = result["available"]
    tail = ["pipework / best peer", "target", "reached"]
    lines = [
        "| " + " | ".join(["workload", "unit", *map(_label, names), *tail]) + " |",
        "|---|---|" + "---:|" * len(names) + "---:|---|---|",
    ]
    for row in result["rows"]:
        cells = [
            _cell_text(row["values"].get(n), row["spec"], n == row["best_peer"]) for n in names
        ]
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        met = {True: "yes", False: "not yet", None: "—"}[row["met"]]
        lines.append(
            "| " + " | ".join([row["what"], row["unit"], *cells, ratio, row["goal"], met]) + " |"
        )
    repeats = plan["repeats"]
    lines += [
        "",
        f"Medians of {repeats} run{'s' if repeats > 1 else ''}"
        + (" ± half their range, as % of the median" if repeats > 1 else "")
        + "; the best peer in bold; pipework / best peer is better above 1 for rates, below 1 "
        "for times and memory. Each cell on a fresh process tree: "
        f"{plan['workers']} worker processes each, default settings (logging at warning); "
        f"{plan['trips']} round trips after {plan['warm']} warm-up ones ({WARM_UP_TRIPS} for "
        "pipework). pipework serve: "
        f"journal on (its default, synchronous=FULL), client pipelining {WINDOW} submits. "
        f"Peers: one synchronous client call per task; Redis "
        f"{result.get('redis_version') or '?'} on a unix socket, persistence off.",
    ]
    notes = [f"- {_label(n)}: {why}" for n, why in result["unavailable"].items()]
    for cell in result["cells"]:
        if cell.get("status") != "ok":
            notes.append(f"- {cell['cell']} (run {cell.get('repeat', 0) + 1}): {cell['error']}")
        stop = cell.get("stop") or {}
        if stop.get("sigkilled") or stop.get("leftovers_killed"):
            notes.append(
                f"- {cell['cell']} (run {cell.get('repeat', 0) + 1}): its stop needed SIGKILL "
                f"({stop})"
            )
    if notes:
        lines += ["", "Not measured, or not cleanly:", *notes]
    git = result["machine"].get("git") or {}
    dirty = git.get("uncommitted")
    lines += [
        "",
        machine_line(result["machine"]),
        "",
        f"Commit: {git.get('commit') or '?'}"
        + (f", with {len(dirty)} files changed since (listed in the JSON)" if dirty else ""),
    ]
    return "\n".join(lines)


def write_docs(table: str, path: Path) -> None:
    """Replace the body of the daemon block of ``path`` (docs/performance.md) by ``table``.

    Raises:
        ValueError: the block's markers are missing or repeated.
    """
    text = path.read_text(encoding="utf-8")
    path.write_text(rewrite_blocks(text, {"table": table}, BLOCK_PREFIX), encoding="utf-8")


def _redis_version() -> str | None:
    if shutil.which(REDIS_SERVER) is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        found = re.search(r"v=(\S+)", out)
        return found.group(1) if found else out.strip()
    return None


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    # So that SIGTERM still stops every server we started (the finally blocks run).
    raise SystemExit(128 + signum)


def measure(plan: Plan, unavailable: dict[str, str]) -> JSONDict:
    """Run every cell of every available contender, ``plan.repeats`` times; the result."""
    available = [n for n in plan.contenders if n not in unavailable]
    machine = machine_info(VERSIONS_OF)
    machine["git"] = git_state(("service", "protocol", "benchmarks"))
    cells: list[JSONDict] = []
    progress = Progress(plan.repeats * len(available) * len(CELLS))
    # Short: an ipc:// path must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="pw-queues-"))
    try:
        for repeat in range(plan.repeats):
            for name in available:
                cells += _contender_cells(name, root, repeat, plan, progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    progress.finish()
    machine["loadavg_1m_at_end"] = loadavg()[0]
    result: JSONDict = {
        "benchmark": "daemon-vs-queues",
        "plan": dataclasses.asdict(plan),
        "available": available,
        "unavailable": unavailable,
        "redis_version": _redis_version(),
        "cells": cells,
        "machine": machine,
    }
    result["rows"] = summarise(cells, plan, available)
    return result


def run(
    *,
    quick: bool = False,
    docs: bool = False,
    json_path: Path | None = None,
    only: Sequence[str] | None = None,
    n: int | None = None,
    trips: int | None = None,
    repeats: int | None = None,
    workers: int = 2,
    warm: int = WARM_UP_TRIPS,
) -> int:
    """Measure pipework serve and the peers, print the table, maybe write JSON and the docs.

    Args:
        quick: a smoke run: N = 1,000, 50 round trips, one run.
        docs: rewrite the daemon block of docs/performance.md (refused with ``quick``/``only``).
        json_path: also write every record, the rows and the machine here.
        only: contenders to run (``pipework`` and the names in ``PEERS``; default all).
        n: tasks in the enqueue and end-to-end rows (10,000; 1,000 quick).
        trips: round trips in the one-at-a-time row (300; 50 quick).
        repeats: runs of everything (3; 1 quick).
        workers: worker processes of every contender (2).
        warm: warm-up round trips of each peer's client (20, as pipework's).

    Returns:
        0 if every available contender's cells were measured, 1 if one failed, 2 for a
        usage error. A contender that is not installed is reported, not a failure.
    """
    names = [PIPEWORK, *(p.name for p in PEERS)]
    chosen = names if only is None else list(only)
    unknown = [c for c in chosen if c not in names]
    if unknown:
        sys.stderr.write(f"pipework bench daemon: unknown contender(s) {unknown}; know {names}\n")
        return 2
    if docs and (quick or only is not None or n or trips or repeats):
        sys.stderr.write("pipework bench daemon: --write-docs takes a full run of everything\n")
        return 2
    docs_path = project_root() / DOCS_FILE
    if docs:
        try:  # before measuring for minutes, not after
            rewrite_blocks(docs_path.read_text(encoding="utf-8"), {"table": ""}, BLOCK_PREFIX)
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"pipework bench daemon: {exc} (run from a source checkout)\n")
            return 2
    plan = Plan(
        workers=workers,
        n=n or (1000 if quick else 10_000),
        trips=trips or (50 if quick else 300),
        repeats=repeats or (1 if quick else 3),
        warm=warm,
        contenders=tuple(c for c in names if c in chosen),
    )
    if min(plan.workers, plan.n, plan.trips, plan.repeats, plan.warm) < 1:
        sys.stderr.write("pipework bench daemon: counts must be positive\n")
        return 2
    unavailable = {}
    for peer in PEERS:
        if peer.name in plan.contenders and (why := missing(peer)) is not None:
            unavailable[peer.name] = why
            sys.stderr.write(f"pipework bench daemon: {peer.name} skipped: {why}\n")
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        result = measure(plan, unavailable)
    finally:
        signal.signal(signal.SIGTERM, previous)
    table = render(result)
    result["table"] = table
    print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_path}", file=sys.stderr)
    if docs:
        write_docs(table, docs_path)
        print(f"wrote {docs_path}", file=sys.stderr)
    failed = [c["cell"] for c in result["cells"] if c.get("status") != "ok"]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m pipework.benchmarks.queues", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="N = 1,000, 50 trips, one run")
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/performance.md")
    parser.add_argument("--json", type=Path, default=None, help="also write every record here")
    parser.add_argument(
        "--only",
        type=lambda s: [part for part in s.split(",") if part],
        default=None,
        help="comma-separated contenders: pipework," + ",".join(p.name for p in PEERS),
    )
    parser.add_argument("--n", type=int, default=None, help="tasks per throughput row (10,000)")
    parser.add_argument("--trips", type=int, default=None, help="one-at-a-time round trips (300)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of everything (3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes each (2)")
    parser.add_argument(
        "--warm", type=int, default=WARM_UP_TRIPS, help="a peer client's warm-up round trips"
    )
    args = parser.parse_args(argv)
    return run(
        quick=args.quick,
        docs=args.write_docs,
        json_path=args.json,
        only=args.only,
        n=args.n,
        trips=args.trips,
        repeats=args.repeats,
        workers=args.workers,
        warm=args.warm,
    )


if __name__ == "__main__":
    sys.exit(main())
