"""The SQLite journal: semantics, durability across kill -9, the lock, pruning, a model check.

Real files in ``tmp_path``, real child processes killed by pid with SIGKILL.
The semantics tests run twice, on a file and in memory (``path=None``),
because the daemon's "journal off" mode must behave the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipework.service.daemon.journal import (
    STATES,
    TERMINAL,
    Journal,
    JournalError,
    JournalLocked,
    TaskRecord,
)
from pipework.service.errors import PipeworkError

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 20.0


def record(
    i: int, *, key: str | None = None, priority: int = 0, payload: str = "[1, 2]"
) -> TaskRecord:
    """A queued task ``t<i>``; ``seq`` is left for ``Journal.add`` to fill in."""
    return TaskRecord(
        task_id=f"t{i}",
        name="add",
        key=key,
        args_json=payload,
        kwargs_json="{}",
        state="queued",
        priority=priority,
        not_before=0.0,
        timeout=None,
        retries=2,
        attempts=0,
        created_at=1000.0 + i,
        started_at=None,
        finished_at=None,
        result_json=None,
        error_json=None,
        history_json="[]",
        seq=0,
    )


def lost(attempt: int) -> dict[str, object]:
    return {
        "attempt": attempt,
        "worker_pid": 4242,
        "outcome": "worker_lost",
        "exitcode": -9,
        "signal": "SIGKILL",
        "at": 2000.0 + attempt,
    }


@pytest.fixture(params=["file", "memory"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db" if request.param == "file" else None)
    yield j
    j.close()


# -- semantics ------------------------------------------------------------------------------------


def test_add_get_by_key(journal: Journal) -> None:
    first = journal.add(record(1, key="order-1"))
    second = journal.add(record(2))
    assert first.seq > 0
    assert second.seq > first.seq
    assert first == dataclasses.replace(record(1, key="order-1"), seq=first.seq)
    assert journal.get("t1") == first
    assert journal.get("t2") == second
    assert journal.by_key("order-1") == first
    assert journal.by_key("nope") is None
    assert journal.get("nope") is None


def test_add_returns_the_record_as_stored(journal: Journal) -> None:
    rec = record(7, key="k", priority=-3, payload='["x", {"y": null}]')
    added = journal.add(rec)
    stored = journal.get("t7")
    assert stored == added
    assert added.args_json == '["x", {"y": null}]'
    assert (added.priority, added.retries, added.attempts) == (-3, 2, 0)
    assert isinstance(added.not_before, float)
    assert added.history_json == "[]"


def test_add_refuses_a_non_queued_record(journal: Journal) -> None:
    rec = record(1)
    with pytest.raises(ValueError, match="queued"):
        journal.add(dataclasses.replace(rec, state="running"))
    assert journal.get("t1") is None


def test_unique_key_and_task_id(journal: Journal) -> None:
    journal.add(record(1, key="k"))
    with pytest.raises(ValueError, match="key 'k' is held by task t1"):
        journal.add(record(2, key="k"))
    with pytest.raises(ValueError, match="already in the journal"):
        journal.add(record(1, key="other"))
    # A refused insert undoes only itself: the earlier unflushed write stays.
    assert journal.flush() == 1
    assert journal.get("t2") is None
    assert journal.by_key("other") is None
    assert journal.counts()["queued"] == 1


def test_insert_returns_the_seq_or_none_for_a_held_key(journal: Journal) -> None:
    seq = journal.insert(record(1, key="k"))
    assert seq is not None
    assert journal.get("t1") == dataclasses.replace(record(1, key="k"), seq=seq)
    assert journal.insert(record(2, key="k")) is None  # the key is held: nothing written
    assert (journal.insert(record(3)) or 0) > seq
    with pytest.raises(ValueError, match="t1"):
        journal.insert(record(1, key="other"))
    with pytest.raises(ValueError, match="queued"):
        journal.insert(dataclasses.replace(record(4), state="running"))
    assert journal.flush() == 2
    assert journal.get("t2") is None
    assert journal.by_key("other") is None
    assert journal.counts()["queued"] == 2


def test_started_requeue_finish(journal: Journal) -> None:
    journal.add(record(1))
    journal.started("t1", 1, 1500.0)
    rec = journal.get("t1")
    assert rec is not None
    assert (rec.state, rec.attempts, rec.started_at) == ("running", 1, 1500.0)

    journal.requeue("t1", lost(1))
    journal.started("t1", 2, 1600.0)
    journal.requeue("t1", None)  # no entry: nothing appended
    journal.started("t1", 3, 1700.0)
    journal.finish(
        "t1", "quarantined", 1800.0, error_json='{"type": "WorkerLost"}', history_entry=lost(3)
    )
    rec = journal.get("t1")
    assert rec is not None
    assert rec.state == "quarantined"
    assert rec.attempts == 3
    assert (rec.started_at, rec.finished_at) == (1700.0, 1800.0)
    assert rec.error_json == '{"type": "WorkerLost"}'
    assert rec.result_json is None
    assert json.loads(rec.history_json) == [lost(1), lost(3)]


def test_finish_done_with_result(journal: Journal) -> None:
    journal.add(record(1))
    journal.started("t1", 1, 1.0)
    journal.finish("t1", "done", 2.0, result_json="3")
    rec = journal.get("t1")
    assert rec is not None
    assert (rec.state, rec.result_json, rec.error_json, rec.finished_at) == ("done", "3", None, 2.0)


@pytest.mark.parametrize("state", ["queued", "running", "worker_lost", ""])
def test_finish_needs_a_terminal_state(journal: Journal, state: str) -> None:
    journal.add(record(1))
    journal.flush()
    with pytest.raises(ValueError, match="terminal"):
        journal.finish("t1", state, 1.0)
    assert journal.flush() == 0


def test_unknown_task_id(journal: Journal) -> None:
    with pytest.raises(KeyError):
        journal.started("ghost", 1, 1.0)
    with pytest.raises(KeyError):
        journal.requeue("ghost", None)
    with pytest.raises(KeyError):
        journal.requeue("ghost", lost(1))
    with pytest.raises(KeyError):
        journal.finish("ghost", "done", 1.0)
    with pytest.raises(KeyError):
        journal.finish("ghost", "failed", 1.0, history_entry=lost(1))
    assert journal.flush() == 0
    assert sum(journal.counts().values()) == 0


def test_flush_counts_writes(journal: Journal) -> None:
    assert journal.flush() == 0
    journal.add(record(1))
    journal.add(record(2))
    journal.started("t1", 1, 1.0)
    assert journal.flush() == 3
    assert journal.flush() == 0
    journal.finish("t1", "done", 2.0, result_json="null")
    assert journal.flush() == 1


def test_counts_every_state(journal: Journal) -> None:
    assert journal.counts() == dict.fromkeys(STATES, 0)
    for i, state in enumerate(sorted(TERMINAL)):
        journal.add(record(i))
        journal.finish(f"t{i}", state, 1.0)
    journal.add(record(10))
    journal.add(record(11))
    journal.started("t11", 1, 1.0)
    counts = journal.counts()
    assert set(counts) == set(STATES)
    assert counts == {**dict.fromkeys(TERMINAL, 1), "queued": 1, "running": 1}


def test_recent_newest_first(journal: Journal) -> None:
    for i in range(6):
        journal.add(record(i))
    for i in (1, 3, 4):
        journal.finish(f"t{i}", "done", float(i))
    assert [r.task_id for r in journal.recent(None, 4)] == ["t5", "t4", "t3", "t2"]
    assert [r.task_id for r in journal.recent("done", 10)] == ["t4", "t3", "t1"]
    assert [r.task_id for r in journal.recent("queued", 2)] == ["t5", "t2"]
    assert journal.recent("failed", 10) == []
    assert journal.recent(None, 0) == []


def test_recover_requeues_running_in_priority_order(journal: Journal) -> None:
    journal.add(record(1, priority=0))
    journal.add(record(2, priority=5))
    journal.add(record(3, priority=0))
    journal.add(record(4, priority=5))
    journal.add(record(5, priority=9))
    journal.started("t3", 2, 1.0)
    journal.started("t4", 1, 1.0)
    journal.finish("t5", "done", 2.0)
    tasks = journal.recover()
    assert [t.task_id for t in tasks] == ["t2", "t4", "t1", "t3"]
    assert all(t.state == "queued" for t in tasks)
    by_id = {t.task_id: t for t in tasks}
    assert by_id["t3"].attempts == 2
    assert by_id["t4"].attempts == 1
    assert by_id["t3"].history_json == "[]"  # a daemon crash is not the task's fault
    assert journal.flush() == 0  # recover() flushed
    assert journal.counts()["running"] == 0


def test_prune_only_old_terminal_tasks(journal: Journal) -> None:
    journal.add(record(1, key="a"))
    journal.add(record(2, key="b"))
    journal.add(record(3, key="c"))
    journal.add(record(4, key="d"))
    journal.add(record(5, key="e"))
    journal.finish("t1", "done", 100.0, result_json="1")
    journal.finish("t2", "failed", 200.0)
    journal.started("t3", 1, 150.0)
    journal.finish("t5", "cancelled", 300.0)
    journal.flush()

    assert journal.prune(250.0) == 2
    assert journal.get("t1") is None
    assert journal.get("t2") is None
    assert {r.task_id for r in journal.recent(None, 10)} == {"t3", "t4", "t5"}
    assert journal.flush() == 1
    # Their keys are free again.
    journal.add(record(6, key="a"))
    assert journal.by_key("a") is not None
    assert journal.by_key("a").task_id == "t6"  # type: ignore[union-attr]

    assert journal.prune(250.0) == 0
    assert journal.prune(math.inf, limit=0) == 0
    assert journal.prune(math.inf) == 1  # t5; queued and running tasks are never pruned
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "queued": 2, "running": 1}


def test_prune_limit_takes_the_oldest_first(journal: Journal) -> None:
    for i in range(10):
        journal.add(record(i))
        journal.finish(f"t{i}", "done", float(100 - i))
    assert journal.prune(1000.0, limit=3) == 3
    assert {f"t{i}" for i in (7, 8, 9)}.isdisjoint(r.task_id for r in journal.recent(None, 20))
    assert journal.counts()["done"] == 7


def test_prune_with_nothing_to_prune_leaves_no_transaction(journal: Journal) -> None:
    assert journal.prune(1e12) == 0
    assert journal.flush() == 0


def test_close_is_idempotent_and_closed_journal_refuses(journal: Journal) -> None:
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.get("t1")
    with pytest.raises(JournalError, match="closed"):
        journal.add(record(1))


def test_bad_sync_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        Journal(tmp_path / "j.db", sync="fast")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# -- files, schema and errors ---------------------------------------------------------------------


def test_file_layout_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deep" / "journal.db"
    with Journal(path) as j:
        assert j.path == str(path)
        assert j.sync == "full"
        j.add(record(1))
        j.flush()
        assert (path.parent / "journal.db-wal").exists()
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        finally:
            db.close()
    for d in (tmp_path / "state", tmp_path / "state" / "deep"):
        assert d.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    assert Path(f"{path}.lock").stat().st_mode & 0o777 == 0o600


def test_in_memory_has_no_path(tmp_path: Path) -> None:
    with Journal(None) as j:
        assert j.path is None
        j.add(record(1))
        assert j.flush() == 1


def test_unflushed_writes_are_rolled_back_by_close(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as j:
        j.add(record(1))
        j.flush()
        j.add(record(2))
        j.started("t1", 1, 1.0)
    with Journal(path) as j:
        assert j.get("t2") is None
        rec = j.get("t1")
        assert rec is not None
        assert (rec.state, rec.attempts) == ("queued", 0)


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_reopen_keeps_flushed_writes(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "j.db"
    with Journal(path, sync=sync) as j:  # type: ignore[arg-type]
        added = j.add(record(1, key="k"))
        j.flush()
    with Journal(path, sync=sync) as j:  # type: ignore[arg-type]
        assert j.by_key("k") == added
        assert j.add(record(2)).seq > added.seq


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(JournalError, match="schema version 99") as info:
        Journal(path)
    assert str(path) in str(info.value)
    # The failed open released the lock.
    path.unlink()
    Journal(path).close()


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE stuff (x)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="not a pipework journal"):
        Journal(path)


def test_garbage_file_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"this is not an SQLite database, not even close" * 200)
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, PipeworkError)
    assert not isinstance(info.value, JournalLocked)


def test_an_error_that_rolls_back_the_transaction_fails_the_next_flush(tmp_path: Path) -> None:
    """Disk full rolls back every unflushed write: flush() must not then report success."""
    path = tmp_path / "j.db"
    with Journal(path) as j:
        j.add(record(0))
        j.flush()
        # Fault injection: a database that may not grow by more than 20 pages acts full.
        pages = j._db.execute("PRAGMA page_count").fetchone()[0]
        j._db.execute(f"PRAGMA max_page_count = {pages + 20}")
        payload = json.dumps(["x" * 3000])

        def fill() -> None:
            for i in range(1, 100):
                j.add(record(i, payload=payload))

        with pytest.raises(JournalError, match="full") as info:
            fill()
        assert str(path) in str(info.value)
        j.add(record(100))  # opens a new transaction: the writes before the error are gone
        with pytest.raises(JournalError, match="rolled back"):
            j.flush()
        assert j.flush() == 0
        assert j.get("t100") is None
    with Journal(path) as j:
        assert [r.task_id for r in j.recent(None, 1000)] == ["t0"]


def test_errors_pickle_with_their_attributes() -> None:
    for err in (JournalError("/x/j.db", "is corrupt"), JournalLocked("/x/j.db")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))
    assert "/x/j.db" in str(JournalLocked("/x/j.db"))


# -- other processes: kill -9, the lock -----------------------------------------------------------

CHILD = r"""
import sys, time
from pipework.service.daemon.journal import Journal, TaskRecord

mode, path = sys.argv[1], sys.argv[2]

def rec(i, payload="[1, 2]"):
    return TaskRecord(task_id=f"t{i}", name="add", key=f"k{i}", args_json=payload,
                      kwargs_json="{}", state="queued", priority=i % 4, not_before=0.0,
                      timeout=None, retries=2, attempts=0, created_at=1000.0 + i,
                      started_at=None, finished_at=None, result_json=None, error_json=None,
                      history_json="[]", seq=0)

j = Journal(path, sync="full")
if mode == "hold":
    print("open", flush=True)
    time.sleep(60)
    sys.exit(0)

flushed, unflushed = int(sys.argv[3]), int(sys.argv[4])
for i in range(flushed):
    j.add(rec(i))
    if i % 3 == 1:
        j.started(f"t{i}", 2, 1500.0)
    elif i % 3 == 2:
        j.finish(f"t{i}", "done", 1600.0, result_json=str(i))
j.flush()
print("flushed", flush=True)
big = '["' + "x" * 2000 + '"]'
for i in range(flushed, flushed + unflushed):
    j.add(rec(i, big))
j.started("t0", 7, 1700.0)
j.finish("t1", "failed", 1700.0)
print("unflushed", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -c CHILD *args``; every child still alive at teardown is SIGKILLed by pid."""
    children: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        err = (tmp_path / f"child-{len(children)}.stderr").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        err.close()
        children.append(proc)
        return proc

    yield start
    for proc in children:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(CHILD_TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def wait_output(proc: subprocess.Popen[bytes], token: bytes, tmp_path: Path) -> None:
    """Read the child's stdout until ``token`` shows; fail on exit or after CHILD_TIMEOUT."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + CHILD_TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while token not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                pytest.fail(f"child printed {seen!r}, not {token!r}, within {CHILD_TIMEOUT} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                stderr = "".join(p.read_text() for p in tmp_path.glob("child-*.stderr"))
                pytest.fail(f"child exited ({proc.wait()}) before {token!r}:\n{stderr}")
            seen += chunk


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(CHILD_TIMEOUT) == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_kill9_keeps_exactly_the_flushed_tasks(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "j.db"
    flushed, unflushed = 60, 12_000  # ~24 MB unflushed: more than the page cache holds
    child = spawn("write", str(path), str(flushed), str(unflushed))
    wait_output(child, b"flushed", tmp_path)
    wal_at_flush = os.path.getsize(f"{path}-wal")
    wait_output(child, b"unflushed", tmp_path)
    # The uncommitted transaction spilled pages into the WAL: recovery must ignore them.
    assert os.path.getsize(f"{path}-wal") > wal_at_flush
    sigkill(child)

    with Journal(path) as j:
        expected = {f"t{i}" for i in range(flushed)}
        held = {r.task_id for r in j.recent(None, 100_000)}
        assert held == expected
        assert j.counts() == {
            **dict.fromkeys(STATES, 0),
            "queued": 20,
            "running": 20,
            "done": 20,
        }
        assert j.get("t1").state == "running"  # type: ignore[union-attr]  # unflushed finish lost
        assert j.get("t0").attempts == 0  # type: ignore[union-attr]  # unflushed start lost

        tasks = j.recover()
        unfinished = [i for i in range(flushed) if i % 3 != 2]
        order = sorted(unfinished, key=lambda i: (-(i % 4), i))
        assert [t.task_id for t in tasks] == [f"t{i}" for i in order]
        for t in tasks:
            i = int(t.task_id[1:])
            assert t.state == "queued"
            assert t.attempts == (2 if i % 3 == 1 else 0)
            assert t.history_json == "[]"
        assert j.counts()["running"] == 0
        done = j.get("t2")
        assert done is not None
        assert (done.state, done.result_json) == ("done", "2")
    # recover() flushed: a second open sees the requeued tasks.
    with Journal(path) as j:
        assert j.counts()["queued"] == 40


@pytest.mark.timeout(60)
def test_lock_held_by_a_live_process_and_freed_by_its_death(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "j.db"
    holder = spawn("hold", str(path))
    wait_output(holder, b"open", tmp_path)
    with pytest.raises(JournalLocked) as info:
        Journal(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, JournalError)
    # Another process trying fails the same way.
    contender = spawn("hold", str(path))
    assert contender.wait(CHILD_TIMEOUT) != 0
    stderr = (tmp_path / "child-1.stderr").read_text()
    assert "JournalLocked" in stderr
    assert str(path) in stderr

    sigkill(holder)
    with Journal(path) as j:  # no stale lock after kill -9
        assert j.counts()["queued"] == 0


def test_lock_in_the_same_process(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path), pytest.raises(JournalLocked):
        Journal(path)
    Journal(path).close()


def test_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path)
    started_r, started_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(started_w, b"x")  # the after-fork hooks have run by now
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(started_w)
    try:
        # Wait for the child to be past fork: until then it may still hold its
        # copy of the lock (a race that showed under load with -n 4).
        assert os.read(started_r, 1) == b"x"
        os.close(started_r)
        j.close()
        with Journal(path) as again:  # the child's inherited lock descriptor was closed
            assert again.path == str(path)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# -- size -----------------------------------------------------------------------------------------


def _disk_size(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


@pytest.mark.timeout(60)
def test_file_size_stays_bounded_across_prune_cycles(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    result = json.dumps("r" * 1024)
    sizes = []
    with Journal(path) as j:
        n = 0
        for _cycle in range(20):
            ids = []
            for _ in range(2000):
                n += 1
                j.add(record(n, key=f"key-{n}"))
                ids.append(f"t{n}")
            j.flush()
            for task_id in ids:
                j.finish(task_id, "done", float(n), result_json=result)
            j.flush()
            assert j.prune(float(n) + 1) == 2000
            j.flush()
            sizes.append(_disk_size(path))
        assert sum(j.counts().values()) == 0
    assert sizes[-1] < 2 * sizes[0], sizes


def test_prune_hands_space_back_after_a_backlog(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    payload = json.dumps(["x" * 2000])
    with Journal(path, sync="off") as j:
        for i in range(5000):
            j.add(record(i, payload=payload))
            j.finish(f"t{i}", "done", 1.0)
        j.flush()
    backlog = os.path.getsize(path)  # close() checkpointed the WAL into the file
    with Journal(path, sync="off") as j:
        assert j.prune(2.0) == 5000
        j.flush()
        j.add(record(9999))  # still a working journal
        j.flush()
    assert os.path.getsize(path) < backlog / 3, (backlog, os.path.getsize(path))
    with Journal(path) as j:
        assert [t.task_id for t in j.recover()] == ["t9999"]


# -- model check ----------------------------------------------------------------------------------


class JournalMachine(RuleBasedStateMachine):
    """Random operations on a real journal file agree with a dict model, across reopen."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="pipework-journal-")
        self.path = os.path.join(self.dir, "j.db")
        self.journal = Journal(self.path, sync="off")
        # task_id -> [state, attempts, history length, key, finished_at]
        self.model: dict[str, list[object]] = {}
        self.committed: dict[str, list[object]] = {}
        self.n = 0
        self.clock = 0.0

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def pick(self, i: int) -> str:
        ids = sorted(self.model)
        return ids[i % len(ids)]

    def live_keys(self) -> set[object]:
        return {row[3] for row in self.model.values() if row[3] is not None}

    @rule(key=st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])))
    def add(self, key: str | None) -> None:
        self.n += 1
        task_id = f"t{self.n}"
        if key in self.live_keys():
            with pytest.raises(ValueError, match="is held by"):
                self.journal.add(record(self.n, key=key))
            return
        self.journal.add(record(self.n, key=key))
        self.model[task_id] = ["queued", 0, 0, key, None]

    @precondition(lambda self: self.model)
    @rule(i=st.integers(0, 100), attempt=st.integers(1, 5))
    def started(self, i: int, attempt: int) -> None:
        task_id = self.pick(i)
        self.journal.started(task_id, attempt, self.clock)
        self.model[task_id][:2] = ["running", attempt]

    @precondition(lambda self: self.model)
    @rule(i=st.integers(0, 100), entry=st.booleans())
    def requeue(self, i: int, entry: bool) -> None:
        task_id = self.pick(i)
        row = self.model[task_id]
        self.journal.requeue(task_id, lost(1) if entry else None)
        row[0] = "queued"
        row[2] = int(str(row[2])) + entry

    @precondition(lambda self: self.model)
    @rule(i=st.integers(0, 100), state=st.sampled_from(sorted(TERMINAL)), entry=st.booleans())
    def finish(self, i: int, state: str, entry: bool) -> None:
        task_id = self.pick(i)
        self.clock += 1.0
        row = self.model[task_id]
        self.journal.finish(
            task_id, state, self.clock, result_json="1", history_entry=lost(2) if entry else None
        )
        row[0] = state
        row[2] = int(str(row[2])) + entry
        row[4] = self.clock

    @rule()
    def unknown(self) -> None:
        with pytest.raises(KeyError):
            self.journal.started("ghost", 1, 0.0)

    @rule(back=st.floats(0, 5))
    def prune(self, back: float) -> None:
        cutoff = self.clock - back
        doomed = {
            t for t, row in self.model.items() if row[0] in TERMINAL and float(str(row[4])) < cutoff
        }
        assert self.journal.prune(cutoff) == len(doomed)
        for t in doomed:
            del self.model[t]

    @rule()
    def flush(self) -> None:
        self.journal.flush()
        self.committed = {t: list(row) for t, row in self.model.items()}

    @rule(flush_first=st.booleans())
    def reopen(self, flush_first: bool) -> None:
        if flush_first:
            self.flush()
        self.journal.close()  # unflushed writes are rolled back
        self.model = {t: list(row) for t, row in self.committed.items()}
        self.journal = Journal(self.path, sync="off")

    @rule()
    def recover(self) -> None:
        tasks = self.journal.recover()
        for row in self.model.values():
            if row[0] == "running":
                row[0] = "queued"
        assert {t.task_id for t in tasks} == {
            t for t, row in self.model.items() if row[0] == "queued"
        }
        self.committed = {t: list(row) for t, row in self.model.items()}

    @invariant()
    def agrees(self) -> None:
        for task_id, (state, attempts, history, key, _) in self.model.items():
            rec = self.journal.get(task_id)
            assert rec is not None, task_id
            assert (rec.state, rec.attempts, len(json.loads(rec.history_json)), rec.key) == (
                state,
                attempts,
                history,
                key,
            )
        expected = dict.fromkeys(STATES, 0)
        for row in self.model.values():
            expected[str(row[0])] += 1
        assert self.journal.counts() == expected


TestJournalModel = JournalMachine.TestCase
TestJournalModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# -- the benchmark --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_journal_benchmark_smoke(tmp_path: Path) -> None:
    """``python -m pipework.benchmarks.journal --quick`` reports every cell (never how fast)."""
    out = tmp_path / "journal.json"
    args = ["--quick", "--json", str(out), "--dir", str(tmp_path / "bench")]
    proc = subprocess.run(
        [sys.executable, "-m", "pipework.benchmarks.journal", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "synchronous=FULL" in proc.stdout
    assert "Machine:" in proc.stdout
    first_cells = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if "|" in line]
    assert {"1", "8", "64", "512"} <= set(first_cells), proc.stdout

    result = json.loads(out.read_text())
    assert set(result["ceiling"]) == {"fdatasync", "full", "normal"}
    assert all(c["commits_per_s"] > 0 for c in result["ceiling"].values())
    cells = {(c["sync"], c["ids"], c["batch"]) for c in result["batching"]}
    kinds = [("full", "uuid4"), ("full", "ordered"), ("normal", "uuid4"), ("memory", "uuid4")]
    assert cells == {(s, ids, b) for s, ids in kinds for b in (1, 8, 64, 512)}
    assert all(c["tasks_per_s"] > 0 for c in result["batching"])
    assert list((tmp_path / "bench").iterdir()) == []  # it cleaned up its databases
