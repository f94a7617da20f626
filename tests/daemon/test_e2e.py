"""The daemon end to end: a real ``pipework serve`` driven from this (another) process.

Every request is raw JSON on a pyzmq socket (see conftest), so these tests
check docs/protocol.md itself, not the Python client. Tests that do not need
a daemon of their own share one per module (``d``); those that signal,
restart or reconfigure the daemon start their own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.support.daemons import TASK_INFO_FIELDS, TERMINAL, Daemon, DaemonFactory, next_id
from tests.support.processes import alive, run_pipework
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def d(module_daemons: DaemonFactory) -> Daemon:
    """One two-worker daemon (journal on) shared by this module's read-mostly tests."""
    return module_daemons()


def assert_task_info(info: dict[str, Any]) -> None:
    """``info`` has the TaskInfo shape of docs/protocol.md."""
    assert set(info) >= TASK_INFO_FIELDS, f"TaskInfo lacks {TASK_INFO_FIELDS - set(info)}: {info}"
    assert isinstance(info["task_id"], str)
    assert len(info["task_id"]) == 32
    int(info["task_id"], 16)
    assert isinstance(info["attempts"], int)
    assert isinstance(info["priority"], int)
    assert isinstance(info["created_at"], (int, float))
    assert isinstance(info["history"], list)


def assert_error(reply: dict[str, Any], code: str, rid: str | None) -> dict[str, Any]:
    """``reply`` is the error reply ``code`` to request ``rid``; return its ``error``."""
    assert reply.get("ok") is False, reply
    assert reply["v"] == 1
    assert reply["id"] == rid, reply
    error = reply["error"]
    assert error["code"] == code, reply
    assert isinstance(error["message"], str)
    assert error["message"], reply
    assert isinstance(error.get("detail", {}), dict)
    return dict(error)


def gate_args(tmp_path: Path, name: str, timeout: float = 60.0) -> tuple[Path, Path, list[Any]]:
    """(gate file, started-mark file, args for the ``gate`` task)."""
    gate = tmp_path / f"{name}.open"
    mark = tmp_path / f"{name}.started"
    return gate, mark, [str(gate), timeout, str(mark)]


# -- submit and result ------------------------------------------------------------


def test_submit_then_result(d: Daemon) -> None:
    rid = next_id()
    reply = d.request({"id": rid, "op": "submit", "task": "add", "args": [2, 3], "key": rid})
    assert reply["ok"] is True, reply
    assert reply["id"] == rid
    assert reply["v"] == 1
    assert reply["op"] == "submit"
    assert reply["duplicate"] is False
    assert reply["state"] in {"queued", "running", "done"}
    task_id = reply["task_id"]

    result = d.request({"op": "result", "task_id": task_id, "wait": 20}, timeout=30)
    assert result["ok"] is True, result
    assert result["op"] == "result"
    info = result["task"]
    assert_task_info(info)
    assert info["task_id"] == task_id
    assert info["task"] == "add"
    assert info["key"] == rid
    assert info["state"] == "done"
    assert info["result"] == 5
    assert info["error"] is None
    assert info["attempts"] == 1
    assert info["history"] == []
    assert info["created_at"] <= info["started_at"] <= info["finished_at"]

    status = d.ok({"op": "status", "task_id": task_id})
    assert status["op"] == "status"
    assert status["task"]["state"] == "done"
    assert status["task"]["result"] == 5


def test_kwargs_and_json_values_round_trip(d: Daemon) -> None:
    value = {"a": [1, 2.5, None, True, "é✓"], "b": {"c": []}}
    info = d.run("echo", kwargs={"value": value})
    assert info["state"] == "done"
    assert info["result"] == value


def test_duplicate_key_returns_the_same_task(d: Daemon) -> None:
    key = next_id("dup")
    first = d.submit("add", 1, 2, key=key)
    second = d.submit("add", 1, 2, key=key)
    assert first["duplicate"] is False
    assert second["duplicate"] is True
    assert second["task_id"] == first["task_id"]
    assert d.result(first["task_id"])["result"] == 3
    third = d.submit("add", 1, 2, key=key)  # after it finished, too
    assert third["duplicate"] is True
    assert third["task_id"] == first["task_id"]
    assert third["state"] == "done"


def test_key_reused_with_other_arguments_is_a_conflict(d: Daemon) -> None:
    key = next_id("conflict")
    first = d.submit("add", 1, 2, key=key)
    before = d.stats()["accepted"]
    for other in (
        {"task": "add", "args": [1, 3]},
        {"task": "echo", "args": [1, 2]},
        {"task": "add", "args": [1, 2], "kwargs": {"x": 1}},
    ):
        rid = next_id()
        reply = d.request({"id": rid, "op": "submit", "key": key, **other})
        assert_error(reply, "key_conflict", rid)
    assert d.stats()["accepted"] == before
    assert d.result(first["task_id"])["result"] == 3


def test_unknown_task_is_refused_and_creates_nothing(d: Daemon) -> None:
    before = d.stats()["accepted"]
    rid = next_id()
    reply = d.request({"id": rid, "op": "submit", "task": "ad", "args": [1, 2]})
    assert_error(reply, "unknown_task", rid)
    assert d.stats()["accepted"] == before


def test_status_of_an_unknown_task_is_not_found(d: Daemon) -> None:
    for op in ("status", "result", "cancel"):
        rid = next_id()
        reply = d.request({"id": rid, "op": op, "task_id": "0" * 32})
        assert_error(reply, "not_found", rid)


# -- task outcomes ------------------------------------------------------------------


def test_failed_task_carries_type_message_and_traceback(d: Daemon) -> None:
    info = d.run("fail", "boom 42", retries=3)
    assert info["state"] == "failed"
    assert info["attempts"] == 1, "a task that raised is not retried"
    assert info["result"] is None
    error = info["error"]
    assert error["type"].rsplit(".", 1)[-1] == "TaskFailure", error
    assert "boom 42" in error["message"]
    assert "TaskFailure" in error["traceback"]
    assert "raise TaskFailure(msg)" in error["traceback"], error["traceback"]


def test_task_called_with_wrong_arguments_fails(d: Daemon) -> None:
    info = d.run("add", 1)
    assert info["state"] == "failed"
    assert info["error"]["type"].rsplit(".", 1)[-1] == "TypeError"


def test_non_json_result_fails_with_result_not_json(d: Daemon) -> None:
    info = d.run("not_json")
    assert info["state"] == "failed"
    assert info["error"]["type"] == "ResultNotJSON", info["error"]


def test_oversized_result_fails_with_result_too_large(d: Daemon) -> None:
    info = d.run("big", 2 * 1024 * 1024)
    assert info["state"] == "failed"
    assert info["error"]["type"] == "ResultTooLarge", info["error"]
    assert d.run("big", 1000)["result"] == "x" * 1000  # the worker is fine


def test_crashing_task_is_quarantined_after_its_retries(d: Daemon) -> None:
    info = d.run("crash", retries=1, wait=60)
    assert info["state"] == "quarantined"
    assert info["attempts"] == 2
    assert info["error"] is not None
    history = info["history"]
    assert len(history) == 2, history
    assert [h["attempt"] for h in history] == [1, 2]
    for h in history:
        assert h["outcome"] == "worker_lost"
        assert h["signal"] == "SIGKILL"
        assert isinstance(h["worker_pid"], int)
        assert not alive(h["worker_pid"])
    assert history[0]["worker_pid"] != history[1]["worker_pid"]
    # Its workers were replaced: the daemon still runs tasks on two workers.
    assert d.run("add", 1, 1)["result"] == 2
    wait_until(lambda: len(d.workers()) == 2, 20, "two workers again after the crashes")


def test_task_over_its_timeout_is_timed_out(d: Daemon, tmp_path: Path) -> None:
    _, mark, args = gate_args(tmp_path, "never")
    info = d.run("gate", *args, timeout=0.5, retries=2, wait=60)
    assert info["state"] == "timed_out"
    assert info["attempts"] == 1, "a timed-out task is not retried"
    assert info["error"] is not None
    assert mark.exists()
    assert d.run("add", 2, 2)["result"] == 4


# -- scheduling ---------------------------------------------------------------------


def test_higher_priority_runs_first_equal_priority_in_submit_order(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    d = daemon(workers=1)
    gate, mark, args = gate_args(tmp_path, "blocker")
    blocker = d.submit("gate", *args)["task_id"]
    wait_until(mark.exists, 20, "the blocker started")
    order = tmp_path / "order"
    ids = {}
    for name, priority in (("low", -5), ("mid1", 0), ("high", 5), ("mid2", 0), ("top", 1000)):
        reply = d.submit("record", str(order), name, priority=priority)
        assert reply["state"] == "queued"
        ids[name] = reply["task_id"]
    assert d.status(ids["low"])["priority"] == -5
    gate.touch()
    for task_id in (blocker, *ids.values()):
        assert d.result(task_id)["state"] == "done"
    ran = [line.split()[0] for line in order.read_text().splitlines()]
    assert ran == ["top", "high", "mid1", "mid2", "low"], (
        "tasks queued behind a busy worker ran out of priority order"
    )


def test_task_waiting_for_a_free_worker_reads_queued(daemon: DaemonFactory, tmp_path: Path) -> None:
    # docs/protocol.md: queued = "waiting for its delay, its turn by priority, or a free
    # worker"; running = started in a worker.
    d = daemon(workers=1)
    gate, mark, args = gate_args(tmp_path, "blocker")
    blocker = d.submit("gate", *args)["task_id"]
    wait_until(mark.exists, 20, "the blocker started")
    waiting = d.submit("echo", "waiting")["task_id"]
    info = d.status(waiting)
    assert info["state"] == "queued", f"the only worker is busy, yet: {info}"
    assert info["started_at"] is None
    assert info["attempts"] == 0
    assert [w["task_id"] for w in d.workers()] == [blocker]
    gate.touch()
    assert d.result(waiting)["state"] == "done"


def test_delayed_task_does_not_start_before_its_delay(d: Daemon) -> None:
    reply = d.submit("echo", "later", delay=1.5)
    assert reply["state"] == "queued"
    early = d.status(reply["task_id"])
    assert early["state"] == "queued"
    assert early["started_at"] is None
    info = d.result(reply["task_id"], wait=30)
    assert info["state"] == "done"
    assert info["result"] == "later"
    # A lower bound only: the delay is a promise not to start early.
    assert info["started_at"] >= info["created_at"] + 1.5 - 0.05, info


# -- cancel ---------------------------------------------------------------------------


def test_cancel_a_queued_task(d: Daemon) -> None:
    task_id = d.submit("echo", "never", delay=3600)["task_id"]
    reply = d.ok({"op": "cancel", "task_id": task_id})
    assert reply["op"] == "cancel"
    assert reply["cancelled"] is True
    assert reply["task"]["state"] == "cancelled"
    assert d.result(task_id)["state"] == "cancelled"
    again = d.ok({"op": "cancel", "task_id": task_id})
    assert again["cancelled"] is False
    assert again["task"]["state"] == "cancelled"


def test_cancel_a_running_task_replaces_its_worker(d: Daemon, tmp_path: Path) -> None:
    _, mark, args = gate_args(tmp_path, "cancelme")
    task_id = d.submit("gate", *args)["task_id"]
    wait_until(mark.exists, 20, "the task started")
    d.wait_state(task_id, {"running"})
    holders = [w["pid"] for w in d.workers() if w["task_id"] == task_id]
    assert len(holders) == 1, d.workers()
    old_pid = holders[0]

    reply = d.ok({"op": "cancel", "task_id": task_id})
    assert reply["cancelled"] is True
    info = d.result(task_id)
    assert info["state"] == "cancelled"
    assert info["error"] is not None

    wait_until(lambda: not alive(old_pid), 20, f"worker {old_pid} killed")
    wait_until(
        lambda: (pids := d.worker_pids()) and len(pids) == 2 and old_pid not in pids,
        20,
        "worker replaced",
    )
    assert d.run("add", 3, 4)["result"] == 7
    assert d.ok({"op": "cancel", "task_id": task_id})["cancelled"] is False


def test_cancel_a_finished_task_is_harmless(d: Daemon) -> None:
    task_id = d.submit("add", 1, 1)["task_id"]
    assert d.result(task_id)["state"] == "done"
    reply = d.ok({"op": "cancel", "task_id": task_id})
    assert reply["cancelled"] is False
    assert reply["task"]["state"] == "done"
    assert reply["task"]["result"] == 2


# -- result waits and pushed events ------------------------------------------------


def test_result_wait_times_out_with_the_current_task(d: Daemon) -> None:
    task_id = d.submit("echo", "x", delay=3600)["task_id"]
    rid = next_id()
    reply = d.request({"id": rid, "op": "result", "task_id": task_id, "wait": 0.5})
    error = assert_error(reply, "timeout", rid)
    assert error["detail"]["task"]["task_id"] == task_id
    assert error["detail"]["task"]["state"] == "queued"
    d.ok({"op": "cancel", "task_id": task_id})


def test_result_waits_are_served_concurrently(d: Daemon, tmp_path: Path) -> None:
    # Two clients wait on one task while a third asks for stats: no wait blocks the loop.
    gate, mark, args = gate_args(tmp_path, "shared")
    task_id = d.submit("gate", *args)["task_id"]
    waiters = [d.connect() for _ in range(2)]
    try:
        rids = [w.send({"op": "result", "task_id": task_id, "wait": 30}) for w in waiters]
        assert d.stats()["running"] >= 0  # answered while two results wait
        gate.touch()
        for w, rid in zip(waiters, rids, strict=True):
            reply = w.recv(timeout=40)
            assert reply["id"] == rid
            assert reply["task"]["state"] == "done"
    finally:
        for w in waiters:
            w.close()
    assert mark.exists()


def test_notify_pushes_task_done_to_the_submitting_dealer(d: Daemon) -> None:
    with d.connect() as conn:
        rid = conn.send({"op": "submit", "task": "echo", "args": ["pushed"], "notify": True})
        reply = conn.recv()
        assert reply["ok"] is True, reply
        assert reply["id"] == rid
        event = conn.recv_event(timeout=30)
    assert event["v"] == 1
    assert event["event"] == "task_done"
    assert "ok" not in event
    assert event["id"] == rid
    assert_task_info(event["task"])
    assert event["task"]["task_id"] == reply["task_id"]
    assert event["task"]["state"] == "done"
    assert event["task"]["result"] == "pushed"


def test_no_event_without_notify(d: Daemon) -> None:
    with d.connect() as conn:
        reply = conn.request({"op": "submit", "task": "echo", "args": [1]})
        conn.request({"op": "result", "task_id": reply["task_id"], "wait": 20}, timeout=30)
        assert not conn.sock.poll(200)
        assert conn.events == []


def test_req_socket_client(d: Daemon) -> None:
    with d.connect(zmq.REQ) as conn:
        reply = conn.request({"op": "submit", "task": "add", "args": [20, 22]})
        assert reply["ok"] is True, reply
        result = conn.request({"op": "result", "task_id": reply["task_id"], "wait": 20}, timeout=30)
        assert result["task"]["result"] == 42
        # An error reply keeps the REQ alternation too.
        bad = conn.request({"op": "nope"})
        assert bad["error"]["code"] == "unknown_op"


def test_req_delimiter_is_echoed_on_the_wire(d: Daemon) -> None:
    with d.connect() as conn:
        rid = next_id()
        conn.send_frames([b"", json.dumps({"v": 1, "id": rid, "op": "stats"}).encode()])
        frames = conn.recv_frames()
    assert len(frames) == 2, frames
    assert frames[0] == b""
    assert json.loads(frames[1])["id"] == rid


# -- list, stats, workers -------------------------------------------------------------


def test_stats_shape(d: Daemon) -> None:
    wait_until(lambda: d.stats()["workers"] == 2, 20, "two workers up")
    before = d.stats()
    d.run("add", 0, 0)
    stats = d.stats()
    for field, kind in (
        ("version", str),
        ("uptime", (int, float)),
        ("draining", bool),
        ("journal", bool),
        ("workers", int),
        ("queued", int),
        ("running", int),
        ("states", dict),
        ("accepted", int),
        ("finished", int),
    ):
        assert isinstance(stats[field], kind), (field, stats)
    assert set(stats["states"]) >= {"done", "failed", "cancelled", "timed_out", "quarantined"}
    assert stats["journal"] is True
    assert stats["draining"] is False
    assert stats["workers"] == 2
    assert stats["accepted"] == before["accepted"] + 1
    assert stats["finished"] == before["finished"] + 1
    assert stats["states"]["done"] == before["states"]["done"] + 1
    assert stats["uptime"] >= before["uptime"]


def test_workers_shape(d: Daemon, tmp_path: Path) -> None:
    gate, mark, args = gate_args(tmp_path, "busy")
    task_id = d.submit("gate", *args)["task_id"]
    wait_until(mark.exists, 20, "the task started")
    d.wait_state(task_id, {"running"})
    workers = d.workers()
    assert len(workers) == 2
    children = set(d.track())
    for w in workers:
        assert set(w) >= {"pid", "task_id", "task", "since"}
        assert w["pid"] in children, f"worker {w['pid']} is not the daemon's descendant"
    busy = [w for w in workers if w["task_id"] == task_id]
    assert len(busy) == 1
    assert busy[0]["task"] == "gate"
    assert isinstance(busy[0]["since"], (int, float))
    gate.touch()
    assert d.result(task_id)["state"] == "done"


def test_list_shape_order_and_filters(d: Daemon) -> None:
    ids = [d.submit("echo", i)["task_id"] for i in range(3)]
    for task_id in ids:
        d.result(task_id)
    reply = d.ok({"op": "list", "limit": 2})
    assert reply["op"] == "list"
    tasks = reply["tasks"]
    assert [t["task_id"] for t in tasks] == [ids[2], ids[1]], "newest first"
    for t in tasks:
        assert_task_info(t)
        assert t["result"] is None
        assert t["error"] is None
        assert t["history"] == []
    done = d.ok({"op": "list", "state": "done", "limit": 1000})["tasks"]
    assert {t["state"] for t in done} == {"done"}
    assert set(ids) <= {t["task_id"] for t in done}
    failed_id = d.submit("fail", "listed")["task_id"]
    d.result(failed_id)
    failed = d.ok({"op": "list", "state": "failed", "limit": 1000})["tasks"]
    assert failed_id in {t["task_id"] for t in failed}
    assert {t["state"] for t in failed} == {"failed"}


def test_logs_are_json_lines_on_a_non_terminal_stderr(d: Daemon) -> None:
    d.run("add", 1, 2)
    lines = [line for line in d.stderr_path.read_text().splitlines() if line.strip()]
    assert lines, "the daemon logged nothing"
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert "event" in record, line
        assert "level" in record, line


# -- signals ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigterm_drains_and_the_journal_keeps_unfinished_tasks(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "drain.sqlite"
    drain = 2.0
    d = daemon(journal=journal, drain_timeout=drain)
    gate = tmp_path / "open"
    long_ids, marks = [], []
    for i in range(2):
        mark = tmp_path / f"long{i}.started"
        marks.append(mark)
        long_ids.append(d.submit("gate", str(gate), 120, str(mark))["task_id"])
    wait_until(lambda: all(m.exists() for m in marks), 20, "both long tasks started")
    # Both workers are busy: these wait (in the daemon, or handed ahead to the pool).
    behind = d.submit("echo", "behind")["task_id"]
    quick = d.submit("add", 1, 1, priority=-1)["task_id"]
    worker_pids = d.worker_pids()

    start = time.monotonic()
    d.send_signal(signal.SIGTERM)
    # While it drains it still answers, and refuses new tasks.
    wait_until(lambda: d.stats()["draining"] is True, 5, "stats says draining")
    with d.connect() as conn:
        rid = next_id()
        refused = conn.request({"id": rid, "op": "submit", "task": "add", "args": [1, 2]})
        assert_error(refused, "draining", rid)
    code = d.wait(drain + 20)
    elapsed = time.monotonic() - start
    assert code == 0, f"SIGTERM exit code {code}\n{d.stderr_tail()}"
    d.expected_exit = {0}
    assert elapsed < drain + 15, f"drain took {elapsed:.1f} s with a {drain} s deadline"
    assert d.wait_descendants_gone(3.0) == []
    for pid in worker_pids:
        assert not alive(pid)

    # Restart on the same journal: the killed and the queued tasks are still there, unfinished.
    d2 = daemon(journal=journal, drain_timeout=drain)
    for task_id in (*long_ids, behind, quick):
        info = d2.status(task_id)
        assert info["state"] not in TERMINAL, f"{task_id} after the drain: {info}"
    gate.touch()
    for task_id in long_ids:
        assert d2.result(task_id, wait=60)["state"] == "done"
    assert d2.result(behind)["result"] == "behind"
    assert d2.result(quick)["result"] == 2


def test_sigint_on_an_idle_daemon_exits_0(daemon: DaemonFactory) -> None:
    d = daemon()
    assert d.run("add", 1, 1)["result"] == 2
    assert d.stop(signal.SIGINT) == 0


@pytest.mark.timeout(60)
def test_second_signal_stops_at_once(daemon: DaemonFactory, tmp_path: Path) -> None:
    d = daemon(drain_timeout=60)
    _, mark, args = gate_args(tmp_path, "stuck", timeout=120)
    d.submit("gate", *args)
    wait_until(mark.exists, 20, "the task started")
    d.send_signal(signal.SIGTERM)
    wait_until(lambda: d.stats()["draining"], 10, "the daemon draining")
    d.send_signal(signal.SIGINT)
    code = d.wait(20)  # far less than the 60 s drain
    assert code is not None, "a second signal did not stop the daemon"
    d.expected_exit = {code}
    assert d.wait_descendants_gone(3.0) == []


@pytest.mark.timeout(90)
def test_sighup_replaces_every_worker_and_loses_no_task(daemon: DaemonFactory) -> None:
    d = daemon()
    wait_until(lambda: len(d.worker_pids()) == 2, 20, "two workers up")
    old = d.worker_pids()
    submitted: list[str] = []
    now: set[int] = set()
    hup_sent = False
    replaced = False
    end = time.monotonic() + 45
    with d.connect() as conn:
        rounds_after = 0
        while rounds_after < 3:
            assert time.monotonic() < end, f"workers not all replaced: old {old}, now {d.workers()}"
            rids = [conn.send({"op": "submit", "task": "sleep", "args": [0.05]}) for _ in range(4)]
            for _ in rids:
                reply = conn.recv()
                assert reply["ok"] is True, reply
                assert reply["id"] in rids
                submitted.append(reply["task_id"])
            if not hup_sent:
                d.send_signal(signal.SIGHUP)
                hup_sent = True
            elif not replaced:
                now = d.worker_pids()
                replaced = len(now) == 2 and not (now & old)
            else:
                rounds_after += 1
            time.sleep(0.05)
    for task_id in submitted:
        info = d.result(task_id, wait=30)
        assert info["state"] == "done", info
        assert info["history"] == [], f"a task lost its worker in a rolling restart: {info}"
    wait_until(lambda: not any(alive(p) for p in old), 10, f"old workers {old} exited")
    assert d.running()
    print(f"SIGHUP: {len(submitted)} tasks done across the restart; workers {old} -> {now}")


# -- the CLI against the daemon ----------------------------------------------------


def _cli(endpoint: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_pipework(*args, env={"PIPEWORK_ENDPOINT": endpoint}, timeout=timeout)


@pytest.fixture(scope="module")
def cli_commands() -> None:
    probe = _cli("ipc:///nonexistent/pw.sock", "submit", "--help", timeout=30)
    if probe.returncode != 0:
        pytest.skip("`pipework submit` is not in the CLI yet")


def _task_of(stdout: str) -> dict[str, Any]:
    out = json.loads(stdout)
    assert isinstance(out, dict), out
    info = out if "task_id" in out else out.get("task")
    assert isinstance(info, dict), out
    return info


@pytest.mark.usefixtures("cli_commands")
def test_cli_submit_result_status_cancel(d: Daemon, tmp_path: Path) -> None:
    ep = d.endpoint
    key = next_id("cli")
    sub = _cli(ep, "submit", "add", "2", "3", "--key", key, "--wait", "20", "--json")
    assert sub.returncode == 0, sub
    info = _task_of(sub.stdout)
    assert info["state"] == "done"
    assert info["result"] == 5
    task_id = info["task_id"]

    res = _cli(ep, "result", task_id, "--wait", "10", "--json")
    assert res.returncode == 0, res
    assert _task_of(res.stdout)["result"] == 5
    status = _cli(ep, "status", task_id)
    assert status.returncode == 0, status
    assert "done" in status.stdout

    again = _cli(ep, "submit", "add", "2", "3", "--key", key, "--json", "--endpoint", ep)
    assert again.returncode == 0, again
    assert task_id in again.stdout

    echoed = _cli(ep, "submit", "echo", "plain words", "--wait", "20", "--json")
    assert echoed.returncode == 0, echoed
    assert _task_of(echoed.stdout)["result"] == "plain words"

    failed = _cli(ep, "submit", "fail", "cli boom", "--wait", "20", "--json")
    assert failed.returncode == 1, failed
    assert _task_of(failed.stdout)["state"] == "failed"

    unknown = _cli(ep, "submit", "no_such_task")
    assert unknown.returncode == 4, unknown
    assert "unknown_task" in unknown.stdout + unknown.stderr

    _, _, args = gate_args(tmp_path, "cli")
    held = _cli(ep, "submit", "gate", *map(str, args), "--json")
    assert held.returncode == 0, held
    held_id = _task_of(held.stdout)["task_id"]
    waited = _cli(ep, "result", held_id, "--wait", "0.3", "--json")
    assert waited.returncode == 5, waited
    cancel = _cli(ep, "cancel", held_id)
    assert cancel.returncode == 0, cancel
    assert d.result(held_id)["state"] == "cancelled"

    for command in ("stats", "workers"):
        ran = _cli(ep, command)
        assert ran.returncode == 0, ran
        assert ran.stdout.strip()

    usage = _cli(ep, "submit")
    assert usage.returncode == 2, usage


@pytest.mark.usefixtures("cli_commands")
def test_cli_without_a_daemon_exits_3(daemon: DaemonFactory) -> None:
    ran = _cli(daemon.endpoint("nobody"), "stats", "--timeout", "1")
    assert ran.returncode == 3, ran
    assert ran.stderr.strip(), "exit 3 without saying why"
