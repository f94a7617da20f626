"""Daemon: what ``pipework serve`` accepts and completes over its wire, beside the floors under it.

```
 this process: one DEALER, raw JSON ──ipc://──▶ pipework serve (a fresh subprocess per cell)
   1 accept   N submits of `echo`, WINDOW in flight ──▶ N ok replies (each sent after its COMMIT)
   2 e2e      N submits of `add`, notify ──▶ N replies, then N task_done events
   3 latency  one submit(notify) at a time ──▶ its reply ──▶ its task_done event
        floor the same DEALER ping-pong, same bytes, against a bare ROUTER echo (a subprocess)
   4 ceiling  benchmarks.journal.commit_ceiling: one INSERT per COMMIT, synchronous=FULL
   5 remote   2 and 3 again, with the tasks run by one `pipework worker` instead:
              pipework serve --workers 0 ◀──tcp://127.0.0.1 + CURVE, or ipc://──▶ worker --slots W
```

Every cell starts its own daemon (``python -m pipework serve --workers W
--tasks service.daemon.example_tasks``, an ``ipc://`` socket and its journal in a
private temporary directory), waits until it answers ``stats``, warms it up
with ``WARM_UP_TRIPS`` round trips (so its workers are running), measures,
asks ``stats`` again, and stops it with SIGTERM (a bounded wait, then SIGKILL
by pid; workers it leaves behind are killed by pid too), also when the cell
fails. The client code is the same for every cell, and sends what the
Python client sends: compact JSON with a fresh uuid4 ``key`` per submit.

1. **accepted submits/s**: a pipelined client keeps ``WINDOW`` submits
   unanswered; rate = ok replies / (first send → last reply). The daemon
   replies to a submit only after the journal's COMMIT, so with the journal
   on this is the rate of *durable* accepts; the daemon commits once per loop
   pass for every submit read in it (group commit), which is why it can beat
   the SQLite ceiling (4). The daemon runs the tasks meanwhile, as it would.
2. **end to end**: the same loop, with ``notify``, on ``add``; rate = N /
   (first send → last ``task_done`` event), every event checked (``done``,
   right sum).
3. **round trip**: submit ``add`` with ``notify``, then wait for the reply and
   the event, ``--trips`` times after a warm-up; p50/p99. The floor sends the
   very same bytes to a ROUTER that echoes them (one message back, where the
   daemon sends two: the reply and the event).
4. **commit ceiling**: what a server that commits each task alone could
   accept, measured with ``benchmarks.journal.commit_ceiling`` in the same
   directory (file system) as the daemons' journals.
5. **remote workers**: the daemon runs no workers of its own (``--workers
   0``); one remote worker (``python -m pipework worker --slots W``, as
   many slots as the local cells have workers) connects to its
   ``--workers-endpoint`` over ``tcp://127.0.0.1`` with CURVE (key pairs
   made by ``service.cli.keys.generate`` in the cell's private directory, the
   worker's public key alone in the allow-list directory), or over an
   ``ipc://`` socket without CURVE: the two together separate the cost of
   the extra hop from that of ``tcp://`` with CURVE (the daemon requires
   CURVE on every ``tcp://`` endpoint, so those two are not split). Each
   link gets one daemon and one worker, which answer end to end (2) and then
   round trip (3), journal off; the table gives each as a ratio to the same
   measurement on the daemon's own workers (journal off: the journal costs
   the same wherever tasks run, and would hide the link's share). The worker
   is stopped before its daemon, the same way (SIGTERM, bounded wait,
   SIGKILL by pid).

Where the CPU went: ``psutil`` CPU time (user + system) of the daemon
process, of its descendants (workers, fork server), of the remote worker
and its pool (remote cells), and of this client, over each measured phase,
as a percentage of one core.

Run: ``python -m pipework.benchmarks.daemon [--quick] [--n N] [--workers 2] [--out PATH]``;
results go to ``benchmarks/results/daemon.json`` by default.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn

import psutil
import zmq

from pipework.benchmarks.common import (
    JSONDict,
    Progress,
    filesystem,
    fmt,
    git_state,
    loadavg,
    machine_info,
    machine_line,
    percentile,
    project_root,
)
from pipework.benchmarks.journal import commit_ceiling
from pipework.service.cli.keys import generate

JournalMode = Literal["off", "full", "normal"]
Placement = Literal["local", "tcp+curve", "ipc"]
"""Where a cell's tasks run: the daemon's own workers, or one remote worker over that link."""

WINDOW = 256
"""Submits a pipelined client keeps unanswered."""
WARM_UP_TRIPS = 20
"""Round trips on each fresh daemon (or echo server) before measuring."""
READY_TIMEOUT = 20.0
"""Seconds a server has to answer its first request."""
GAP_TIMEOUT = 20.0
"""Longest wait for the next expected message before a cell is declared stalled."""
DRAIN_TIMEOUT = 5.0
"""The daemons' ``--drain-timeout``: how long SIGTERM lets running tasks finish."""
STOP_TIMEOUT = DRAIN_TIMEOUT + 10.0
"""Seconds a server has to exit after SIGTERM before it is SIGKILLed."""
ORPHAN_GRACE = 3.0
"""Seconds a stopped daemon's workers have to exit on their own before they are SIGKILLed."""
VERSIONS_OF = ("pipework", "pyzmq", "psutil")
LOG_TAIL = 20
"""Daemon log lines kept in the JSON per cell."""


class _CellFailed(Exception):
    """A cell could not be measured (server did not start, a message never came)."""


# -- servers (subprocesses) --------------------------------------------------------------


@dataclasses.dataclass
class _Server:
    """A subprocess serving the wire (a daemon or the echo floor) and the processes it made."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    log_path: Path
    descendants: dict[int, psutil.Process] = dataclasses.field(default_factory=dict)

    def remember_descendants(self) -> None:
        """Record its workers and fork server now, to kill any it leaves behind."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)

    def log_tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines it wrote to stdout/stderr."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return []


def _daemon_command(
    endpoint: str, workdir: Path, workers: int, journal: JournalMode, extra: Sequence[str] = ()
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pipework",
        "serve",
        "--endpoint",
        endpoint,
        "--workers",
        str(workers),
        "--tasks",
        "pipework.service.daemon.example_tasks",
        "--log-level",
        "warning",
        "--drain-timeout",
        str(DRAIN_TIMEOUT),
        *extra,
    ]
    if journal == "off":
        return [*cmd, "--no-journal"]
    return [*cmd, "--journal", str(workdir / "j.sqlite3"), "--journal-sync", journal]


@dataclasses.dataclass(frozen=True)
class _Link:
    """How a cell's remote worker reaches its daemon: the flags each side gets."""

    endpoint: str
    daemon_flags: list[str]
    worker_command: list[str]


def _free_tcp_port() -> int:
    """A loopback port nothing listens on now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _link(placement: Placement, workdir: Path, slots: int) -> _Link:
    """The worker endpoint, CURVE keys (tcp+curve) and worker command for a remote cell.

    For tcp+CURVE, key pairs for the daemon and the worker go to ``workdir/keys``
    (``service.cli.keys.generate``: 0700 directory, 0600 secrets), and the worker's
    public key alone to the allow-list directory ``workdir/allow``.
    """
    worker = [
        sys.executable,
        "-m",
        "pipework",
        "worker",
        "--tasks",
        "pipework.service.daemon.example_tasks",
        "--slots",
        str(slots),
        "--log-level",
        "warning",
        "--log-format",
        "json",
    ]
    if placement == "ipc":
        endpoint = f"ipc://{workdir}/w.sock"
        return _Link(endpoint, ["--workers-endpoint", endpoint], [*worker, "--connect", endpoint])
    endpoint = f"tcp://127.0.0.1:{_free_tcp_port()}"
    keys, allow = workdir / "keys", workdir / "allow"
    _, daemon_secret = generate(keys, "daemon")
    worker_public, worker_secret = generate(keys, "worker")
    allow.mkdir(mode=0o700)
    shutil.copy(worker_public, allow / worker_public.name)
    daemon_flags = [
        "--workers-endpoint",
        endpoint,
        "--curve-secret-key",
        str(daemon_secret),
        "--curve-allow-dir",
        str(allow),
    ]
    worker_flags = [
        "--connect",
        endpoint,
        "--secret-key",
        str(worker_secret),
        "--server-key",
        str(keys / "daemon.key"),
    ]
    return _Link(endpoint, daemon_flags, [*worker, *worker_flags])


def _spawn(
    cmd: Sequence[str],
    endpoint: str,
    workdir: Path,
    log_name: str,
    env: Mapping[str, str] | None = None,
) -> _Server:
    """Start ``cmd`` from the project root, in its own session, logging to ``workdir/log_name``.

    ``env`` adds to (or overrides) this process's environment.
    """
    log_path = workdir / log_name
    with log_path.open("wb") as log:
        # Its own session: a Ctrl-C at the terminal reaches only us, and we stop it in order.
        proc = subprocess.Popen(
            list(cmd),
            cwd=project_root(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )
    return _Server(proc, endpoint, log_path)


def _stop(server: _Server) -> JSONDict:
    """SIGTERM, a bounded wait, then SIGKILL by pid; then the same for its leftover descendants."""
    server.remember_descendants()
    proc = server.proc
    started = time.perf_counter()
    killed = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            killed = True
            proc.kill()
            proc.wait()
    stopped = time.perf_counter()
    deadline = stopped + ORPHAN_GRACE
    survivors = [p for p in server.descendants.values() if _alive(p)]
    while survivors and time.perf_counter() < deadline:
        time.sleep(0.01)
        survivors = [p for p in survivors if _alive(p)]
    outlived_s = time.perf_counter() - stopped
    for leftover in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()  # psutil checks the pid still names the process we recorded
    return {
        "exitcode": proc.returncode,
        "stop_s": round(stopped - started, 3),
        "sigkilled": killed,
        "descendants_outlived_s": round(outlived_s, 3),
        "leftovers_killed": len(survivors),
    }


def _alive(proc: psutil.Process) -> bool:
    """Still running: not gone, not another process under a reused pid, not a zombie.

    A zombie has exited; whoever adopted it reaps it when it will (this
    machine's init took over a second), so it is not waited for.
    """
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def _serving(
    cmd: Sequence[str],
    endpoint: str,
    workdir: Path,
    record: JSONDict,
    log_name: str = "server.log",
    env: Mapping[str, str] | None = None,
) -> Iterator[_Server]:
    """Run a server for the ``with`` block; how it stopped and what it logged go in ``record``.

    ``workdir`` must exist already (mode 0700: the daemon refuses an ipc
    directory others can enter).
    """
    server = _spawn(cmd, endpoint, workdir, log_name, env)
    try:
        yield server
    finally:
        record["stop"] = _stop(server)
        record["log"] = _log_summary(server)


def _log_summary(server: _Server) -> JSONDict:
    """Line count, (level, event) counts of its JSON log lines, and the tail."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {"lines": None}
    events: collections.Counter[str] = collections.Counter()
    for line in lines:
        try:
            entry = json.loads(line)
            events[f"{entry.get('level', '?')}: {entry.get('event', '?')}"] += 1
        except (ValueError, AttributeError):
            events["(not JSON)"] += 1
    return {"lines": len(lines), "events": dict(events.most_common(10)), "tail": lines[-LOG_TAIL:]}


def _echo_server(endpoint: str) -> NoReturn:
    """The floor: a bare ROUTER sending every message straight back (``--echo-server``)."""

    # SIGTERM's default action ends it. A Python handler was seen never to run while this
    # process sat in recv_multipart (it had to be SIGKILLed), and a poll timeout would tax
    # the floor it measures.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    while True:
        sock.send_multipart(sock.recv_multipart())


# -- the client (the same for every cell) ------------------------------------------------


class _Dealer:
    """One DEALER on a server's endpoint; sequential request ids; JSON in, JSON out."""

    def __init__(self, endpoint: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._seq = 0

    def next_id(self) -> int:
        """A request id no earlier request on this socket had."""
        self._seq += 1
        return self._seq

    def send(self, body: bytes) -> None:
        """Send one request frame."""
        self._sock.send(body)

    def recv(self, timeout: float) -> JSONDict | None:
        """The next message, or None if none came within ``timeout`` seconds."""
        if not self._sock.poll(int(timeout * 1000)):
            return None
        message: JSONDict = json.loads(self._sock.recv())
        return message

    def recv_waiting(self, timeout: float) -> list[JSONDict]:
        """Wait up to ``timeout`` for a message, then take every one already queued."""
        first = self.recv(timeout)
        if first is None:
            return []
        messages = [first]
        while True:
            try:
                messages.append(json.loads(self._sock.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return messages

    def close(self) -> None:
        """Close the socket and its context."""
        self._sock.close(linger=0)
        self._ctx.term()


@dataclasses.dataclass(frozen=True)
class _Work:
    """A task the client submits: its name, the arguments for request ``i``, the result due."""

    task: str
    args_of: Callable[[int], list[Any]]
    result_of: Callable[[int], Any]


ECHO = _Work("echo", lambda i: [i], lambda i: i)
ADD = _Work("add", lambda i: [i, 1], lambda i: i + 1)


def _submit_body(i: int, work: _Work, *, notify: bool) -> bytes:
    """A submit as the Python client sends it: compact JSON, a fresh uuid4 key."""
    request = {
        "v": 1,
        "id": str(i),
        "op": "submit",
        "task": work.task,
        "args": work.args_of(i),
        "kwargs": {},
        "key": uuid.uuid4().hex,
        "notify": notify,
    }
    return json.dumps(request, separators=(",", ":")).encode()


@dataclasses.dataclass
class _Tally:
    """What came back: answers (and error codes among them), task_done events (and bad ones)."""

    work: _Work
    answers: int = 0
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    events: int = 0
    bad_events: int = 0
    first_bad: JSONDict | None = None

    def take(self, message: JSONDict) -> bool:
        """Count one message; True if it is an event, False if it answers a request."""
        if "event" in message:
            self.events += 1
            task = message.get("task") or {}
            if task.get("state") != "done" or task.get("result") != self.work.result_of(
                int(message["id"])
            ):
                self.bad_events += 1
                self.first_bad = self.first_bad or message
            return True
        self.answers += 1
        if message.get("ok") is False:
            self.errors[str((message.get("error") or {}).get("code"))] += 1
            self.first_bad = self.first_bad or message
        return False

    @property
    def ok_answers(self) -> int:
        """Answers that were not error replies."""
        return self.answers - sum(self.errors.values())

    def as_json(self) -> JSONDict:
        """The counts, for the JSON report."""
        return {
            "answers": self.answers,
            "ok_answers": self.ok_answers,
            "errors": dict(self.errors),
            "events": self.events,
            "bad_events": self.bad_events,
            "first_bad": self.first_bad,
        }


def _wait_ready(server: _Server, dealer: _Dealer) -> float:
    """Send ``stats`` every 100 ms until something answers; the seconds it took."""
    started = time.perf_counter()
    deadline = started + READY_TIMEOUT
    probe = 0
    while time.perf_counter() < deadline:
        if server.proc.poll() is not None:
            tail = " | ".join(server.log_tail(3))
            raise _CellFailed(f"server exited {server.proc.returncode} before answering: {tail}")
        probe += 1
        last = f"ready-{probe}"
        dealer.send(json.dumps({"v": 1, "id": last, "op": "stats"}).encode())
        answer = dealer.recv(0.1)
        if answer is None:
            continue
        ready_s = time.perf_counter() - started
        # The probes sent before the server listened were queued, and every one is
        # answered, in order: take the answers up to the last probe's, or a late one
        # would be taken for a reply to what the cell sends next (it was, on a busy
        # machine, and put every round trip a message out of step).
        while answer.get("id") != last:
            answer = dealer.recv(GAP_TIMEOUT)
            if answer is None:
                raise _CellFailed(f"no answer to {last} within {GAP_TIMEOUT:g} s")
        return ready_s
    raise _CellFailed(f"no answer to stats within {READY_TIMEOUT:g} s")


def _wait_remote(server: _Server, worker: _Server, dealer: _Dealer, slots: int) -> float:
    """Ask ``workers`` every 100 ms until the daemon lists ``slots`` remote slots; seconds taken."""
    started = time.perf_counter()
    deadline = started + READY_TIMEOUT
    while time.perf_counter() < deadline:
        for proc, what in ((server, "daemon"), (worker, "remote worker")):
            if proc.proc.poll() is not None:
                tail = " | ".join(proc.log_tail(3))
                raise _CellFailed(
                    f"{what} exited {proc.proc.returncode} before the session: {tail}"
                )
        request_id = f"w{dealer.next_id()}"
        dealer.send(json.dumps({"v": 1, "id": request_id, "op": "workers"}).encode())
        reply = dealer.recv(GAP_TIMEOUT)
        if reply is None or reply.get("id") != request_id:
            raise _CellFailed(f"no answer to workers (got {reply})")
        remote = [w for w in reply.get("workers", []) if w.get("remote")]
        if len(remote) >= slots:
            return time.perf_counter() - started
        time.sleep(0.1)
    tail = " | ".join(worker.log_tail(3))
    raise _CellFailed(f"the remote worker had no session after {READY_TIMEOUT:g} s: {tail}")


def _pipeline(dealer: _Dealer, n: int, window: int, work: _Work, *, notify: bool) -> JSONDict:
    """``n`` submits with ``window`` unanswered at most; waits for every reply (and event)."""
    tally = _Tally(work)
    sent = 0
    started = time.perf_counter()
    last_answer = last_event = started
    while tally.answers < n or (notify and tally.events < n):
        while sent < n and sent - tally.answers < window:
            dealer.send(_submit_body(dealer.next_id(), work, notify=notify))
            sent += 1
        messages = dealer.recv_waiting(GAP_TIMEOUT)
        if not messages:
            raise _CellFailed(
                f"stalled: nothing for {GAP_TIMEOUT:g} s after {sent} sent, "
                f"{tally.answers} answers, {tally.events} events ({tally.as_json()})"
            )
        now = time.perf_counter()
        for message in messages:
            if tally.take(message):
                last_event = now
            else:
                last_answer = now
    reply_s = last_answer - started
    result: JSONDict = {
        "n": n,
        "window": window,
        "reply_s": round(reply_s, 4),
        "accepted_per_s": tally.ok_answers / reply_s,
        **tally.as_json(),
    }
    if notify:
        done_s = last_event - started
        result.update(done_s=round(done_s, 4), tasks_per_s=n / done_s)
    return result


def _round_trips(
    dealer: _Dealer, count: int, body_of: Callable[[int], bytes], messages: int, work: _Work
) -> tuple[list[float], _Tally]:
    """Send a request, wait for ``messages`` messages back; ``count`` times.

    Returns:
        Seconds each trip took, and the messages' tally (counted after each trip's timing).
    """
    tally = _Tally(work)
    samples = []
    for _ in range(count):
        request_id = dealer.next_id()
        body = body_of(request_id)
        started = time.perf_counter()
        dealer.send(body)
        got = []
        for _ in range(messages):
            message = dealer.recv(GAP_TIMEOUT)
            if message is None:
                raise _CellFailed(f"no answer within {GAP_TIMEOUT:g} s ({tally.as_json()})")
            got.append(message)
        samples.append(time.perf_counter() - started)
        strays = [m for m in got if m.get("id") != str(request_id)]
        if strays:
            raise _CellFailed(f"a message out of step, so the timings would be wrong: {strays[0]}")
        for message in got:
            tally.take(message)
    return samples, tally


def _latency(samples: list[float], tally: _Tally) -> JSONDict:
    ordered = sorted(samples)
    return {
        "trips": len(ordered),
        "p50_ms": percentile(ordered, 50) * 1e3,
        "p99_ms": percentile(ordered, 99) * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
        "min_ms": ordered[0] * 1e3,
        "max_ms": ordered[-1] * 1e3,
        **tally.as_json(),
    }


class _CpuMeter:
    """CPU seconds (user + system) of each part of a cell, over a phase.

    The parts: a server, its descendants, a remote worker with its
    descendants (remote cells), and this client.
    """

    def __init__(self, server: _Server, remote: _Server | None = None) -> None:
        self._server = psutil.Process(server.proc.pid)
        self._remote = None if remote is None else psutil.Process(remote.proc.pid)
        self._client = psutil.Process()
        self._started = time.perf_counter()
        self._server0 = self._cpu(self._server)
        self._client0 = self._cpu(self._client)
        self._kids0 = {p.pid: (p, self._cpu(p)) for p in self._children(self._server)}
        self._remote0 = {p.pid: self._cpu(p) for p in self._tree(self._remote)}

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            return float(times.user + times.system)
        return 0.0

    @staticmethod
    def _children(proc: psutil.Process) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return list(proc.children(recursive=True))
        return []

    def _tree(self, proc: psutil.Process | None) -> list[psutil.Process]:
        return [] if proc is None else [proc, *self._children(proc)]

    def read(self) -> JSONDict:
        """Percent of one core each used since the meter started (descendants: summed)."""
        wall = time.perf_counter() - self._started
        kids = 0.0
        now_kids = {p.pid: p for p in self._children(self._server)}
        for pid, proc in now_kids.items():
            before = self._kids0.get(pid)
            kids += self._cpu(proc) - (before[1] if before else 0.0)
        remote = [
            (p, self._cpu(p) - self._remote0.get(p.pid, 0.0)) for p in self._tree(self._remote)
        ]
        return {
            "wall_s": round(wall, 3),
            "server_pct": round((self._cpu(self._server) - self._server0) / wall * 100, 1),
            "descendants_pct": round(kids / wall * 100, 1),
            "remote_pct": (
                None if self._remote is None else round(sum(c for _, c in remote) / wall * 100, 1)
            ),
            "client_pct": round((self._cpu(self._client) - self._client0) / wall * 100, 1),
            "descendants": len(now_kids),
        }


# -- cells ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Sizes of one run."""

    workers: int
    n: int
    window: int
    trips: int
    ceiling_s: float


def _on_daemon(
    root: Path,
    name: str,
    plan: _Plan,
    journal: JournalMode,
    measure: Callable[[_Dealer], JSONDict],
    placement: Placement = "local",
    after_warm_up: Callable[[_Server], JSONDict] | None = None,
) -> JSONDict:
    """Start a fresh daemon (and its remote worker), warm up, ``measure``, stop; the record.

    With a remote ``placement`` the daemon runs no workers of its own, and one
    remote worker with ``plan.workers`` slots connects over that link; the
    worker is stopped first (its record goes under ``remote_worker``).
    ``after_warm_up`` (``benchmarks.queues`` reads the idle daemon's memory
    there) runs before ``measure``; what it returns goes in the record.
    """
    workdir = root / name
    workdir.mkdir(mode=0o700)  # the daemon refuses an ipc directory others can enter
    endpoint = f"ipc://{workdir}/d.sock"
    record: JSONDict = {
        "cell": name,
        "journal": journal,
        "placement": placement,
        "status": "error",
        "error": None,
    }
    link = None if placement == "local" else _link(placement, workdir, plan.workers)
    if link is None:
        cmd = _daemon_command(endpoint, workdir, plan.workers, journal)
    else:
        cmd = _daemon_command(endpoint, workdir, 0, journal, link.daemon_flags)
    with contextlib.ExitStack() as stack:
        # Unwound in reverse: the client closes, the remote worker stops, then the daemon.
        server = stack.enter_context(_serving(cmd, endpoint, workdir, record))
        remote = None
        if link is not None:
            record["remote_worker"] = {"command": link.worker_command}
            remote = stack.enter_context(
                _serving(
                    link.worker_command,
                    link.endpoint,
                    workdir,
                    record["remote_worker"],
                    "worker.log",
                )
            )
        dealer = _Dealer(endpoint)
        stack.callback(dealer.close)
        try:
            record["ready_s"] = round(_wait_ready(server, dealer), 3)
            if remote is not None:
                record["session_s"] = round(_wait_remote(server, remote, dealer, plan.workers), 3)
            warm_started = time.perf_counter()
            _, warm = _round_trips(
                dealer, WARM_UP_TRIPS, lambda i: _submit_body(i, ADD, notify=True), 2, ADD
            )
            record["warm_up_s"] = round(time.perf_counter() - warm_started, 3)
            if warm.errors or warm.bad_events:
                raise _CellFailed(f"warm-up failed: {warm.as_json()}")
            server.remember_descendants()
            if remote is not None:
                remote.remember_descendants()
            if after_warm_up is not None:
                record.update(after_warm_up(server))
            meter = _CpuMeter(server, remote)
            record.update(measure(dealer))
            record["cpu"] = meter.read()
            server.remember_descendants()
            if remote is not None:
                remote.remember_descendants()
            dealer.send(json.dumps({"v": 1, "id": "stats", "op": "stats"}).encode())
            stats = dealer.recv(GAP_TIMEOUT)
            record["stats"] = None if stats is None else stats.get("stats")
            clean = not record.get("errors") and not record.get("bad_events")
            record["status"] = "ok" if clean else "error"
            if not clean:
                record["error"] = f"error replies {record.get('errors')}, bad events " + str(
                    record.get("bad_events")
                )
        except _CellFailed as exc:
            record["error"] = str(exc)
    return record


def _accept(plan: _Plan) -> Callable[[_Dealer], JSONDict]:
    return lambda dealer: _pipeline(dealer, plan.n, plan.window, ECHO, notify=False)


def _end_to_end(plan: _Plan) -> Callable[[_Dealer], JSONDict]:
    return lambda dealer: _pipeline(dealer, plan.n, plan.window, ADD, notify=True)


def _one_at_a_time(plan: _Plan) -> Callable[[_Dealer], JSONDict]:
    def measure(dealer: _Dealer) -> JSONDict:
        samples, tally = _round_trips(
            dealer, plan.trips, lambda i: _submit_body(i, ADD, notify=True), 2, ADD
        )
        return _latency(samples, tally)

    return measure


def _end_to_end_and_round_trip(plan: _Plan) -> Callable[[_Dealer], JSONDict]:
    """Both on one daemon: a remote worker's start-up and session are paid once per link."""

    def measure(dealer: _Dealer) -> JSONDict:
        e2e = _end_to_end(plan)(dealer)
        trips = _one_at_a_time(plan)(dealer)
        errors: collections.Counter[str] = collections.Counter(e2e["errors"])
        errors.update(trips["errors"])
        return {
            "tasks_per_s": e2e["tasks_per_s"],
            "p50_ms": trips["p50_ms"],
            "p99_ms": trips["p99_ms"],
            "errors": dict(errors),
            "bad_events": e2e["bad_events"] + trips["bad_events"],
            "e2e": e2e,
            "round_trip": trips,
        }

    return measure


def _floor(root: Path, plan: _Plan) -> JSONDict:
    """The same ping-pong against a bare ROUTER echo server in a subprocess."""
    workdir = root / "floor"
    endpoint = f"ipc://{workdir}/e.sock"
    record: JSONDict = {"cell": "floor", "journal": None, "status": "error", "error": None}
    cmd = [sys.executable, "-m", "pipework.benchmarks.daemon", "--echo-server", endpoint]
    workdir.mkdir(mode=0o700)
    with _serving(cmd, endpoint, workdir, record) as server:
        dealer = _Dealer(endpoint)
        try:
            record["ready_s"] = round(_wait_ready(server, dealer), 3)

            def body_of(i: int) -> bytes:
                return _submit_body(i, ADD, notify=True)

            _round_trips(dealer, WARM_UP_TRIPS, body_of, 1, ADD)
            meter = _CpuMeter(server)
            samples, tally = _round_trips(dealer, plan.trips, body_of, 1, ADD)
            record["cpu"] = meter.read()
            record.update(_latency(samples, tally), bytes=len(body_of(plan.trips)))
            record["status"] = "ok"
        except _CellFailed as exc:
            record["error"] = str(exc)
        finally:
            dealer.close()
    return record


# -- the report -----------------------------------------------------------------------------


REMOTE_CELLS: tuple[tuple[str, Placement, str], ...] = (
    ("remote-tcp-curve", "tcp+curve", "remote worker, tcp://127.0.0.1 + CURVE"),
    ("remote-ipc", "ipc", "remote worker, ipc://, no CURVE"),
)
"""The remote cells: name, link, and the setting the table shows."""


def _rows(cells: dict[str, JSONDict], ceiling: JSONDict, plan: _Plan) -> list[JSONDict]:
    """The table's rows: what, setting, value, unit, and its ratio to a reference where one exists.

    The references: the SQLite commit ceiling for durable accepts, the bare
    zmq ping-pong for local round trips, and the daemon's own workers
    (journal off) for the remote cells.
    """
    rows: list[JSONDict] = []
    ceiling_rate = ceiling["commits_per_s"]

    def ok_value(cell: str, field: str) -> float | None:
        record = cells[cell]
        return record.get(field) if record["status"] == "ok" else None

    def add(
        what: str,
        setting: str,
        cell: str,
        field: str,
        unit: str,
        reference: float | None = None,
        versus: str | None = None,
    ) -> None:
        value = ok_value(cell, field)
        ratio = None if value is None or not reference else value / reference
        rows.append(
            {
                "what": what,
                "setting": setting,
                "cell": cell,
                "value": value,
                "unit": unit,
                "ratio": ratio,
                "versus": versus if ratio is not None else None,
            }
        )

    accept = f"accepted submits, {plan.window} in flight"
    add(accept, "journal off", "accept-off", "accepted_per_s", "submits/s")
    add(
        accept,
        "journal full",
        "accept-full",
        "accepted_per_s",
        "submits/s",
        ceiling_rate,
        "SQLite commit ceiling",
    )
    add(accept, "journal normal", "accept-normal", "accepted_per_s", "submits/s")
    e2e = f"end to end: {plan.n:,} `add` with notify, to last task_done"
    add(e2e, "journal full", "e2e-full", "tasks_per_s", "tasks/s")
    add(e2e, "journal off", "e2e-off", "tasks_per_s", "tasks/s")
    local = f"{plan.workers} local workers, journal off"
    for cell, _, setting in REMOTE_CELLS:
        add(
            e2e,
            f"{setting} ({plan.workers} slots), journal off",
            cell,
            "tasks_per_s",
            "tasks/s",
            ok_value("e2e-off", "tasks_per_s"),
            local,
        )
    floor_p50 = ok_value("floor", "p50_ms")
    floor_p99 = ok_value("floor", "p99_ms")
    trip = "round trip: submit(notify) → reply → task_done"
    for journal in ("full", "off"):
        cell = f"latency-{journal}"
        add(f"{trip}, p50", f"journal {journal}", cell, "p50_ms", "ms", floor_p50, "zmq floor p50")
        add(f"{trip}, p99", f"journal {journal}", cell, "p99_ms", "ms", floor_p99, "zmq floor p99")
    for pct in ("p50", "p99"):
        field = f"{pct}_ms"
        for cell, _, setting in REMOTE_CELLS:
            add(
                f"{trip}, {pct}",
                f"{setting} ({plan.workers} slots), journal off",
                cell,
                field,
                "ms",
                ok_value("latency-off", field),
                local,
            )
    size = f"{cells['floor'].get('bytes', '?')} B JSON echoed"
    add("zmq DEALER/ROUTER ping-pong (floor), p50", size, "floor", "p50_ms", "ms")
    add("zmq DEALER/ROUTER ping-pong (floor), p99", size, "floor", "p99_ms", "ms")
    rows.append(
        {
            "what": "SQLite commit ceiling: 1 INSERT per COMMIT (benchmarks.journal)",
            "setting": "WAL, synchronous=FULL",
            "cell": "ceiling",
            "value": ceiling_rate,
            "unit": "commits/s",
            "ratio": None,
            "versus": None,
        }
    )
    return rows


def _value(row: JSONDict) -> str:
    if row["value"] is None:
        return "**FAILED**"
    return fmt(row["value"], ".3f" if row["unit"] == "ms" else ",.0f")


def _exit_text(code: int | None) -> str:
    if code is None or code >= 0:
        return fmt(code, "d")
    return signal.Signals(-code).name


def render(result: JSONDict) -> str:
    """The Markdown report: the results table, where the CPU went, notes, the machine."""
    plan = result["plan"]
    lines = [
        f"## pipework serve over ipc:// ({plan['workers']} workers, N = {plan['n']:,}, "
        f"{plan['trips']} round trips; journal on {result['filesystem'] or 'unknown'}, "
        f"SQLite {result['sqlite_version']})",
        "",
        "| what | setting | value | unit | compared with |",
        "|---|---|---:|---|---|",
    ]
    for row in result["rows"]:
        vs = "—" if row["ratio"] is None else f"{row['ratio']:.2f}x {row['versus']}"
        lines.append(f"| {row['what']} | {row['setting']} | {_value(row)} | {row['unit']} | {vs} |")
    lines += [
        "",
        "Where the CPU went during each measured phase (% of one core; descendants = the "
        "daemon's workers + fork server; remote = the remote worker, its pool and fork server):",
        "",
        "| cell | wall s | server % | descendants % | remote % | client % | log lines | exit "
        "| stop s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for cell in result["cells"]:
        cpu = cell.get("cpu") or {}
        stop = cell.get("stop") or {}
        log = cell.get("log") or {}
        lines.append(
            f"| {cell['cell']} | {fmt(cpu.get('wall_s'), '.2f')} "
            f"| {fmt(cpu.get('server_pct'), '.0f')} | {fmt(cpu.get('descendants_pct'), '.0f')} "
            f"| {fmt(cpu.get('remote_pct'), '.0f')} "
            f"| {fmt(cpu.get('client_pct'), '.0f')} | {fmt(log.get('lines'), 'd')} "
            f"| {_exit_text(stop.get('exitcode'))} | {fmt(stop.get('stop_s'), '.2f')} |"
        )
        if cell["status"] != "ok":
            notes.append(f"- {cell['cell']}: {cell['error']}")
        if log.get("lines"):
            notes.append(f"- {cell['cell']} logged: {log['events']}")
        if stop.get("sigkilled") or stop.get("leftovers_killed"):
            notes.append(f"- {cell['cell']}: stop needed SIGKILL ({stop})")
        worker = cell.get("remote_worker")
        if worker is not None:
            wstop = worker.get("stop") or {}
            wlog = worker.get("log") or {}
            if wlog.get("lines"):
                notes.append(f"- {cell['cell']} remote worker logged: {wlog['events']}")
            if (
                wstop.get("exitcode") != 0
                or wstop.get("sigkilled")
                or wstop.get("leftovers_killed")
            ):
                notes.append(f"- {cell['cell']}: remote worker stop: {wstop}")
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", machine_line(result["machine"])]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def run(plan: _Plan, root: Path) -> JSONDict:
    """Every cell, in order, each on its own server under ``root``; the result."""
    daemon_cells: list[tuple[str, JournalMode, Callable[[_Plan], Callable[[_Dealer], JSONDict]]]]
    daemon_cells = [
        ("accept-off", "off", _accept),
        ("accept-full", "full", _accept),
        ("accept-normal", "normal", _accept),
        ("e2e-full", "full", _end_to_end),
        ("e2e-off", "off", _end_to_end),
        ("latency-full", "full", _one_at_a_time),
        ("latency-off", "off", _one_at_a_time),
    ]
    cells: dict[str, JSONDict] = {}
    progress = Progress(len(daemon_cells) + len(REMOTE_CELLS) + 2)
    for name, journal, measure in daemon_cells:
        progress.start(f"{name} (fresh daemon, journal {journal})")
        started = time.perf_counter()
        cells[name] = _on_daemon(root, name, plan, journal, measure(plan))
        progress.done(name, cells[name]["status"], time.perf_counter() - started)
    for name, placement, _ in REMOTE_CELLS:
        progress.start(f"{name} (fresh daemon --workers 0, one remote worker over {placement})")
        started = time.perf_counter()
        cells[name] = _on_daemon(
            root, name, plan, "off", _end_to_end_and_round_trip(plan), placement
        )
        progress.done(name, cells[name]["status"], time.perf_counter() - started)
    progress.start("floor (bare ROUTER echo server)")
    started = time.perf_counter()
    cells["floor"] = _floor(root, plan)
    progress.done("floor", cells["floor"]["status"], time.perf_counter() - started)
    progress.start(f"ceiling (SQLite, 1 INSERT per COMMIT, sync full, {plan.ceiling_s:g} s)")
    started = time.perf_counter()
    ceiling = commit_ceiling(root, "full", plan.ceiling_s)
    progress.done("ceiling", "ok", time.perf_counter() - started)
    progress.finish()
    return {
        "cells": list(cells.values()),
        "ceiling": ceiling,
        "rows": _rows(cells, ceiling, plan),
        "filesystem": filesystem(root),
    }


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    # So that SIGTERM still stops the daemons (the finally blocks run).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m pipework.benchmarks.daemon", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument(
        "--n", type=int, default=None, help="submits per throughput cell (20,000; 1,000 quick)"
    )
    parser.add_argument("--workers", type=int, default=2, help="daemon workers (2)")
    parser.add_argument(
        "--trips", type=int, default=None, help="round trips per latency cell (300; 50 quick)"
    )
    parser.add_argument("--window", type=int, default=WINDOW, help=f"submits in flight ({WINDOW})")
    parser.add_argument(
        "--out",
        type=Path,
        default=project_root() / "benchmarks" / "results" / "daemon.json",
        help="write the results here (default benchmarks/results/daemon.json)",
    )
    parser.add_argument("--echo-server", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        _echo_server(args.echo_server)
    plan = _Plan(
        workers=args.workers,
        n=args.n or (1000 if args.quick else 20_000),
        window=args.window,
        trips=args.trips or (50 if args.quick else 300),
        ceiling_s=0.3 if args.quick else 2.0,
    )
    if min(plan.workers, plan.n, plan.window, plan.trips) < 1:
        parser.error("--n, --workers, --trips and --window must be positive")

    signal.signal(signal.SIGTERM, _raise_exit)
    machine = machine_info(VERSIONS_OF)
    machine["git"] = git_state(("service", "protocol"))
    # Short: an ipc:// path must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="pw-daemon-bench-"))
    try:
        measured = run(plan, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine["loadavg_1m_at_end"] = loadavg()[0]
    result: JSONDict = {
        "benchmark": "daemon",
        "quick": args.quick,
        "plan": dataclasses.asdict(plan),
        "sqlite_version": sqlite3.sqlite_version,
        **measured,
        "machine": machine,
    }
    table = render(result)
    result["table"] = table
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    failed = [c["cell"] for c in result["cells"] if c["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
