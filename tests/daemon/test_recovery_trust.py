"""What the journal holds is data, not trust: a restart on it never crashes the daemon.

A release that removes or renames a task, a row this version cannot read, or
arguments that no longer fit the function: each task gets a clear terminal
state, the daemon starts and serves the rest (issue 15, item 1).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemons import DaemonFactory
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _queue_then_stop(daemon: DaemonFactory, journal: Path) -> dict[str, str]:
    """Queue delayed tasks on a daemon of tests.daemon.tasks, stop it; their ids by label."""
    first = daemon(journal=journal)
    ids = {
        # `record` exists only in tests.daemon.tasks: unknown to service.daemon.example_tasks.
        "unknown": first.submit("record", "/nonexistent", "k", delay=0.5)["task_id"],
        # echo() takes no argument there but needs one in service.daemon.example_tasks.
        "unbound": first.submit("echo", delay=0.5)["task_id"],
        "known": first.submit("add", 2, 3, delay=0.5)["task_id"],
    }
    assert first.stop(signal.SIGTERM) == 0  # delayed tasks stay queued, as documented
    return ids


def test_a_task_no_longer_registered_ends_failed_and_the_daemon_serves(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.sqlite"
    ids = _queue_then_stop(daemon, journal)

    # The same journal under another task module: the daemon must start and serve.
    second = daemon(journal=journal, tasks="pipework.service.daemon.example_tasks")
    info = second.wait_state(ids["unknown"], {"failed"})
    assert info["error"]["type"] == "UnknownTask"
    assert "'record'" in info["error"]["message"]
    assert info["attempts"] == 0
    # The others were not blocked by it.
    assert second.result(ids["known"])["result"] == 5
    unbound = second.result(ids["unbound"])
    assert unbound["state"] == "failed"
    assert unbound["error"]["type"] == "TypeError"
    assert second.run("add", 1, 1)["result"] == 2
    log = second.stderr_path.read_text()
    assert "cannot run" in log
    assert "UnknownTask" in log
    assert second.stop() == 0


def test_unrunnable_tasks_are_counted_in_the_metrics(daemon: DaemonFactory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    ids = _queue_then_stop(daemon, journal)
    second = daemon(
        "--metrics-port", "0", journal=journal, tasks="pipework.service.daemon.example_tasks"
    )
    second.wait_state(ids["unknown"], {"failed"})
    port = _metrics_port(second.stderr_path)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert 'pipework_tasks_unrunnable_total{reason="UnknownTask"} 1.0' in text
    assert 'pipework_tasks_total{state="failed",task="record"} 1.0' in text


def _metrics_port(stderr: Path) -> int:
    for line in stderr.read_text().splitlines():
        if "metrics serving" in line:
            return int(json.loads(line)["port"])
    raise AssertionError(f"no 'metrics serving' line in {stderr}")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("args_json", "not json"),
        ("kwargs_json", "[1, 2]"),
        ("priority", "high"),
        ("history_json", "{}"),
    ],
)
def test_a_row_this_version_cannot_read_ends_failed(
    daemon: DaemonFactory, tmp_path: Path, column: str, value: str
) -> None:
    journal = tmp_path / "journal.sqlite"
    first = daemon(journal=journal)
    bad = first.submit("add", 1, 2, delay=60)["task_id"]
    good = first.submit("add", 3, 4, delay=0.5)["task_id"]
    assert first.stop() == 0
    db = sqlite3.connect(journal)
    db.execute(f"UPDATE tasks SET {column} = ? WHERE task_id = ?", (value, bad))
    db.commit()
    db.close()

    second = daemon(journal=journal)
    assert second.result(good)["result"] == 7
    wait_until(lambda: second.stats()["queued"] == 0, 10, "nothing left queued")
    assert second.stop() == 0
    # Read back from the file: a reply may not be able to show such a row.
    db = sqlite3.connect(journal)
    state, error = db.execute(
        "SELECT state, error_json FROM tasks WHERE task_id = ?", (bad,)
    ).fetchone()
    db.close()
    assert state == "failed"
    assert json.loads(error)["type"] == "BadRecord"
    assert "cannot be run" in json.loads(error)["message"]


def test_a_name_no_remote_worker_serves_waits_without_blocking_the_rest(
    daemon: DaemonFactory,
) -> None:
    """Remote workers only: a task nobody serves (any more) is parked, the rest runs."""
    from tests.remote.test_remote_sessions import FakeWorker  # noqa: PLC0415

    endpoint = daemon.endpoint("workers")
    d = daemon("--workers-endpoint", endpoint, "--heartbeat-expiry", "30", workers=0)
    adder = FakeWorker(endpoint)
    echoer = FakeWorker(endpoint)
    try:
        # A worker after a release that dropped `echo`: it serves `add` only.
        adder.send("hello", session="a", slots=2, host="fake", pid=1, tasks=["add"])
        adder.recv("welcome")
        adder.send("ready", session="a", credit=2)
        first = d.submit("echo", "x", priority=10)["task_id"]  # the head of the queue
        second = d.submit("add", 2, 3)["task_id"]
        task = adder.recv("task")
        assert task["task_id"] == second  # not held up behind the task nobody serves
        assert d.status(first)["state"] == "queued"  # parked, visibly
        # A worker that serves it arrives: it runs.
        echoer.send("hello", session="e", slots=1, host="fake", pid=2, tasks=["echo"])
        echoer.recv("welcome")
        echoer.send("ready", session="e", credit=1)
        assert echoer.recv("task")["task_id"] == first
    finally:
        adder.close()
        echoer.close()
