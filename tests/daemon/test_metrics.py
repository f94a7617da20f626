"""Prometheus metrics of a real ``pipework serve --metrics-port``, scraped during a run and after.

One daemon (two workers) goes through a scripted day: both workers held by
``gate`` tasks with ``add`` tasks queued behind them (scrape: queue depth,
in-flight, accepted); then the gate opens, and a failure, a crash that is
quarantined, a timeout, a cancel of a running task and a SIGHUP follow. The
last scrape must count each exactly: tasks by state and name, worker
restarts by cause, durations, journal commits, an empty queue.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from pipework.service.ops.metrics import Metrics
from tests.daemon.web import Sample, fetch, sample, scrape
from tests.support.daemons import DaemonFactory
from tests.support.net import free_port
from tests.support.waiting import wait_until

ADDS = 12


def _pipework_lines(port: int) -> str:
    text = fetch(port, "/metrics").body.decode()
    return "\n".join(line for line in text.splitlines() if line.startswith("pipework_"))


def _scrape_until(
    port: int, what: str, ok: Callable[[dict[Sample, float]], bool], timeout: float = 10.0
) -> dict[Sample, float]:
    """Scrape until ``ok(samples)`` holds (gauges follow the loop within a pass or a second)."""
    end = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if ok(samples):
            return samples
        if time.monotonic() > end:
            lines = "\n".join(f"{k}: {v}" for k, v in sorted(samples.items()) if "pipework" in k[0])
            pytest.fail(f"{what}: not within {timeout} s; last scrape:\n{lines}")
        time.sleep(0.05)


def test_scrape_counts_a_scripted_run(daemon: DaemonFactory, tmp_path: Path) -> None:
    port = free_port()
    d = daemon("--metrics-port", str(port), "--retries", "0")
    gate = tmp_path / "open"
    holders = []
    for n in range(2):
        mark = tmp_path / f"started-{n}"
        holders.append(d.submit("gate", str(gate), 60, str(mark))["task_id"])
        wait_until(mark.exists, 20, f"gate task {n} started")
    adds = [d.submit("add", i, 1)["task_id"] for i in range(ADDS)]

    # -- while tasks run: both workers busy, the adds queued -------------------
    during = _scrape_until(
        port,
        "queue depth = the adds, in flight = 2",
        lambda m: (
            sample(m, "pipework_queue_depth") == ADDS and sample(m, "pipework_tasks_in_flight") == 2
        ),
    )
    assert sample(during, "pipework_tasks_accepted_total", task="add") == ADDS
    assert sample(during, "pipework_tasks_accepted_total", task="gate") == 2
    assert sample(during, "pipework_tasks_accepted_total", task="echo") == 0  # there from the start
    assert sample(during, "pipework_tasks_total", state="done", task="add") is None
    assert sample(during, "pipework_remote_sessions") == 0
    print("\n-- /metrics while 2 gate tasks run and 12 adds wait --\n" + _pipework_lines(port))

    # -- then: every kind of ending --------------------------------------------
    gate.touch()
    for task_id in [*holders, *adds]:
        assert d.result(task_id)["state"] == "done"
    assert d.run("fail", "on purpose")["state"] == "failed"
    crashed = d.run("crash")  # --retries 0: one death quarantines it
    assert crashed["state"] == "quarantined", crashed
    timed = d.run("sleep", 30, timeout=0.5)
    assert timed["state"] == "timed_out", timed
    mark = tmp_path / "started-cancel"
    held = d.submit("gate", str(tmp_path / "never"), 60, str(mark))["task_id"]
    wait_until(mark.exists, 20, "the task to cancel started")
    wait_until(lambda: held in {w["task_id"] for w in d.workers()}, 20, "its worker listed")
    victim = next(w["pid"] for w in d.workers() if w["task_id"] == held)
    assert d.ok({"op": "cancel", "task_id": held})["cancelled"] is True
    # Right after the reply the killed worker may still be listed (and its
    # replacement not yet): wait for it to be gone, or SIGHUP would count it.
    wait_until(
        lambda: victim not in d.worker_pids() and len(d.workers()) == 2, 20, "both workers back"
    )
    d.send_signal(signal.SIGHUP)  # replaces both workers: two recycled

    after = _scrape_until(
        port,
        "two recycled workers and an empty daemon",
        lambda m: (
            sample(m, "pipework_worker_restarts_total", cause="recycled") == 2
            and sample(m, "pipework_queue_depth") == 0
            and sample(m, "pipework_tasks_in_flight") == 0
        ),
    )
    print("\n-- /metrics after the run --\n" + _pipework_lines(port))
    expected_tasks = {
        ("done", "add"): ADDS,
        ("done", "gate"): 2,
        ("failed", "fail"): 1,
        ("quarantined", "crash"): 1,
        ("timed_out", "sleep"): 1,
        ("cancelled", "gate"): 1,
    }
    counted = {
        (dict(labels)["state"], dict(labels)["task"]): value
        for (name, labels), value in after.items()
        if name == "pipework_tasks_total"
    }
    assert counted == expected_tasks
    restarts = {
        cause: sample(after, "pipework_worker_restarts_total", cause=cause)
        for cause in ("died", "timeout", "cancelled", "recycled")
    }
    assert restarts == {"died": 1, "timeout": 1, "cancelled": 1, "recycled": 2}
    assert sample(after, "pipework_tasks_accepted_total", task="add") == ADDS
    assert sample(after, "pipework_task_duration_seconds_count", task="add") == ADDS
    # The cancelled gate run is no observation: only runs that end on their own are.
    assert sample(after, "pipework_task_duration_seconds_count", task="gate") == 2
    gate_seconds = sample(after, "pipework_task_duration_seconds_sum", task="gate")
    assert gate_seconds is not None
    assert gate_seconds > 0
    commits = sample(after, "pipework_journal_commit_seconds_count")
    assert commits is not None
    assert commits > 0
    assert not any(name.endswith("_created") for name, _ in after), "no _created twins"


def test_metrics_bind_loopback_by_default(daemon: DaemonFactory) -> None:
    port = free_port()
    d = daemon("--metrics-port", str(port), journal=False)
    assert scrape(port)  # answers on 127.0.0.1
    listening = [
        c.laddr
        for c in psutil.Process(d.pid).net_connections("tcp")
        if c.status == "LISTEN" and c.laddr.port == port
    ]
    assert [a.ip for a in listening] == ["127.0.0.1"], listening


def test_metrics_port_taken_is_a_clear_startup_error(daemon: DaemonFactory) -> None:
    port = free_port()
    first = daemon("--metrics-port", str(port), journal=False)
    second = daemon("--metrics-port", str(port), journal=False, ready=False)
    assert second.wait(20) == 1
    second.expected_exit = {1}
    assert f"cannot serve metrics on 127.0.0.1:{port}" in second.stderr_path.read_text()
    assert first.running()


def test_metrics_units_without_a_daemon() -> None:
    m = Metrics(["add"])
    m.accepted("add")
    m.accepted("add")
    m.finished("add", "done")
    m.run_ended("add", "worker_lost", 0.5)
    m.run_ended("add", "timed_out", 1.5)
    m.run_ended("add", "interrupted", 9.0)  # counts nowhere
    m.restarted("recycled", 3)
    m.committed(0.002)
    m.gauges(4, 2, 1)
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in m.registry.collect()
        for s in family.samples
    }
    assert got["pipework_tasks_accepted_total", (("task", "add"),)] == 2
    assert got["pipework_tasks_total", (("state", "done"), ("task", "add"))] == 1
    assert got["pipework_worker_restarts_total", (("cause", "died"),)] == 1
    assert got["pipework_worker_restarts_total", (("cause", "timeout"),)] == 1
    assert got["pipework_worker_restarts_total", (("cause", "recycled"),)] == 3
    assert got["pipework_worker_restarts_total", (("cause", "cancelled"),)] == 0
    assert got["pipework_task_duration_seconds_count", (("task", "add"),)] == 2
    assert got["pipework_task_duration_seconds_sum", (("task", "add"),)] == 2.0
    assert got["pipework_journal_commit_seconds_count", ()] == 1
    assert got["pipework_queue_depth", ()] == 4
    assert got["pipework_tasks_in_flight", ()] == 2
    assert got["pipework_remote_sessions", ()] == 1
