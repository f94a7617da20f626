"""The daemon's Prometheus metrics: what it counts, and the HTTP endpoint that exposes them.

```
 daemon loop thread ── accepted() · finished() · run_ended() · restarted() · committed()
        │              gauges(queued, in_flight, sessions), a few times a second
        ▼
 Metrics: its own CollectorRegistry ──▶ prometheus_client's HTTP server (a daemon thread)
                                         GET /metrics on metrics_host:metrics_port
```

| metric | type | labels | what |
|---|---|---|---|
| ``pipework_tasks_accepted_total`` | counter | task | submits accepted (journalled) |
| ``pipework_tasks_total`` | counter | state, task | tasks that reached a terminal state |
| ``pipework_queue_depth`` | gauge | | tasks queued (ready or delayed) |
| ``pipework_tasks_in_flight`` | gauge | | tasks handed to a worker, local or remote |
| ``pipework_worker_restarts_total`` | counter | cause | workers replaced (below) |
| ``pipework_task_duration_seconds`` | histogram | task | seconds per run, start to end |
| ``pipework_journal_commit_seconds`` | histogram | | each journal flush that committed something |
| ``pipework_remote_sessions`` | gauge | | remote workers connected |
| ``pipework_journal_writable`` | gauge | | 1, or 0 while the journal cannot write (disk full) |
| ``pipework_journal_failures_total`` | counter | | journal commits or writes that failed |
| ``pipework_tasks_unrunnable_total`` | counter | reason | journalled tasks ended without a run: |
|  |  |  | ``UnknownTask`` (name not registered), ``BadRecord`` |
| ``pipework_replies_dropped_total`` | counter | reason | replies not sent (below) |
| ``pipework_peers_refused_total`` | counter | | connections refused at the CURVE handshake |

A worker restart's cause is ``died`` (a run ended ``worker_lost``: its worker
process, or a remote worker's session, was lost), ``timeout`` (its worker was
killed for the task's timeout), ``cancelled`` (killed by a cancel of its
running task) or ``recycled`` (replaced on SIGHUP: every worker, as each
finishes its task). Every run that ends on its own (done, failed, timed out,
its worker lost) is one duration observation, so a retried task gives one per
attempt; a run cancelled by a client, or ``interrupted`` by the daemon
stopping, gives none.

A reply is dropped with reason ``not_reading`` when its client has
``max_reply_bytes_queued`` of replies queued already (it does not read them),
``gone`` when the client disconnected before it was sent.

Only the daemon's loop thread calls the recording methods; the HTTP thread
only reads (prometheus_client's values take their own lock). Label values are
task names the daemon has registered and the fixed states and causes, never
task ids, so the series stay few. The label children are cached here, so a
recorded event is a dict lookup and an ``inc()``.

The registry is this object's own, not prometheus_client's global one: two
daemons in one process (tests) do not share counters, and nothing a library
registers globally leaks onto the page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final, final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

__all__ = ["DROP_REASONS", "RESTART_CAUSES", "Metrics", "MetricsServer"]

RESTART_CAUSES: Final = ("died", "timeout", "recycled", "cancelled")
DROP_REASONS: Final = ("not_reading", "gone")
_DURATION_BUCKETS: Final = (
    0.001,
    0.005,
    0.025,
    0.1,
    0.25,
    1.0,
    2.5,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
# A group commit with synchronous=FULL is one fsync: tens of microseconds on
# tmpfs, milliseconds on a disk, seconds on a struggling one.
_COMMIT_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
# How a run's outcome counts as a worker replaced (cancel is counted where it happens).
_RESTART_OF_OUTCOME: Final = {"worker_lost": "died", "timed_out": "timeout"}


@final
class Metrics:
    """The daemon's counters, gauges and histograms, in a registry of their own.

    Args:
        tasks: the registered task names; each gets its accepted counter at 0
            from the start, so a rate over it is defined before the first submit.
    """

    def __init__(self, tasks: Iterable[str] = ()) -> None:
        # Without this each counter gets a twin series, pipework_tasks_created,
        # that reads like a count of created tasks but holds a timestamp. The
        # switch is process-wide: fine in the daemon, a process of its own.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._accepted = Counter(
            "pipework_tasks_accepted", "Submits accepted (journalled).", ["task"], registry=reg
        )
        self._tasks = Counter(
            "pipework_tasks",
            "Tasks that reached a terminal state.",
            ["state", "task"],
            registry=reg,
        )
        self._queue_depth = Gauge(
            "pipework_queue_depth", "Tasks queued, ready or delayed.", registry=reg
        )
        self._in_flight = Gauge(
            "pipework_tasks_in_flight", "Tasks handed to a worker, local or remote.", registry=reg
        )
        self._restarts = Counter(
            "pipework_worker_restarts",
            "Workers replaced, by cause: died, timeout, recycled (SIGHUP), cancelled.",
            ["cause"],
            registry=reg,
        )
        self._duration = Histogram(
            "pipework_task_duration_seconds",
            "Seconds from a run's start to its end, one observation per run.",
            ["task"],
            buckets=_DURATION_BUCKETS,
            registry=reg,
        )
        self._commit = Histogram(
            "pipework_journal_commit_seconds",
            "Seconds per journal commit (flushes that committed something).",
            buckets=_COMMIT_BUCKETS,
            registry=reg,
        )
        self._sessions = Gauge(
            "pipework_remote_sessions", "Remote workers connected.", registry=reg
        )
        self._writable = Gauge(
            "pipework_journal_writable",
            "1, or 0 while the journal cannot write (disk full): submits are refused.",
            registry=reg,
        )
        self._writable.set(1)
        self._journal_failures = Counter(
            "pipework_journal_failures",
            "Journal commits or writes that failed (disk full, I/O error).",
            registry=reg,
        )
        self._unrunnable = Counter(
            "pipework_tasks_unrunnable",
            "Journalled tasks ended failed without a run: UnknownTask, BadRecord.",
            ["reason"],
            registry=reg,
        )
        self._dropped = Counter(
            "pipework_replies_dropped",
            "Replies not sent: the client did not read (not_reading) or was gone (gone).",
            ["reason"],
            registry=reg,
        )
        self._refused = Counter(
            "pipework_peers_refused",
            "Connections refused at the CURVE handshake (logged at most a few a second).",
            registry=reg,
        )
        self._dropped_of = {why: self._dropped.labels(why) for why in DROP_REASONS}
        # Children by label values: .labels() takes a lock and builds a key each call.
        self._accepted_of = {name: self._accepted.labels(name) for name in tasks}
        self._tasks_of: dict[tuple[str, str], Counter] = {}
        self._duration_of: dict[str, Histogram] = {}
        self._restarts_of = {cause: self._restarts.labels(cause) for cause in RESTART_CAUSES}

    def accepted(self, task: str) -> None:
        """One submit of ``task`` was accepted."""
        child = self._accepted_of.get(task)
        if child is None:
            child = self._accepted_of[task] = self._accepted.labels(task)
        child.inc()

    def finished(self, task: str, state: str) -> None:
        """A task of ``task`` ended in the terminal ``state``."""
        child = self._tasks_of.get((state, task))
        if child is None:
            child = self._tasks_of[state, task] = self._tasks.labels(state, task)
        child.inc()

    def run_ended(self, task: str, outcome: str, seconds: float) -> None:
        """One run of ``task`` ended with ``outcome`` (an ``Outcome.state``) after ``seconds``.

        A run that lost its worker or timed out also counts a worker restart;
        an ``interrupted`` run (the pool stopped under it) counts nothing.
        """
        if outcome == "interrupted":
            return
        child = self._duration_of.get(task)
        if child is None:
            child = self._duration_of[task] = self._duration.labels(task)
        child.observe(max(seconds, 0.0))
        cause = _RESTART_OF_OUTCOME.get(outcome)
        if cause is not None:
            self._restarts_of[cause].inc()

    def restarted(self, cause: str, workers: int = 1) -> None:
        """``workers`` workers were (or are being) replaced for ``cause`` (``RESTART_CAUSES``)."""
        self._restarts_of[cause].inc(workers)

    def dropped(self, reason: str, replies: int = 1) -> None:
        """``replies`` replies were not sent, for ``reason`` (``DROP_REASONS``)."""
        self._dropped_of[reason].inc(replies)

    def refused(self, peers: int = 1) -> None:
        """``peers`` connections failed the CURVE handshake."""
        self._refused.inc(peers)

    def committed(self, seconds: float) -> None:
        """A journal flush committed something in ``seconds``."""
        self._commit.observe(seconds)

    def journal_writable(self, writable: bool) -> None:
        """The journal can write again, or a write or commit failed (counted)."""
        self._writable.set(1 if writable else 0)
        if not writable:
            self._journal_failures.inc()

    def unrunnable(self, reason: str) -> None:
        """A journalled task was ended without a run (``UnknownTask``, ``BadRecord``)."""
        self._unrunnable.labels(reason).inc()

    def gauges(self, queued: int, in_flight: int, sessions: int) -> None:
        """Set the gauges: queue depth, tasks in flight, remote sessions."""
        self._queue_depth.set(queued)
        self._in_flight.set(in_flight)
        self._sessions.set(sessions)


@final
class MetricsServer:
    """prometheus_client's own HTTP server for one registry, on a daemon thread.

    Args:
        metrics: what to expose.
        host: the address to bind (the daemon's default, 127.0.0.1, keeps it local).
        port: the TCP port; 0 picks a free one (see ``port``).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving (waits up to the server's poll interval, 0.5 s) and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
