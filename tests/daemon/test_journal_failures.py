"""The journal under a full disk and after damage, in process (issue 15, items 2 and 3).

The end-to-end tests (test_disk_full.py, test_journal_damage.py) drive a real
daemon; these pin the journal's own contract: which writes a failed commit
loses (inserts, reported), which it keeps (the rest, replayed), and what the
commit count catches.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipework.service.daemon.journal import (
    SCHEMA_VERSION,
    Journal,
    JournalDamaged,
    JournalUnavailable,
    TaskRecord,
    salvage,
)
from tests.support.processes import REPO

pytestmark = pytest.mark.timeout(60)


def record(i: int, payload: str = "") -> TaskRecord:
    return TaskRecord(
        task_id=f"t{i}",
        name="echo",
        key=None,
        args_json=json.dumps([payload]),
        kwargs_json="{}",
        state="queued",
        priority=0,
        not_before=0.0,
        timeout=None,
        retries=0,
        attempts=0,
        created_at=0.0,
        started_at=None,
        finished_at=None,
        result_json=None,
        error_json=None,
        history_json="[]",
        seq=0,
    )


def test_a_full_disk_loses_the_inserts_reports_them_and_replays_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as j:
        j.add(record(0))
        j.add(record(1))
        j.flush()
        # Fault injection: a database that may not grow by more than 20 pages acts full.
        pages = j._db.execute("PRAGMA page_count").fetchone()[0]
        j._db.execute(f"PRAGMA max_page_count = {pages + 20}")
        j.started("t0", 1, 1.0)
        j.finish("t0", "done", 2.0, result_json="7")
        inserted: list[str] = []

        def fill() -> None:
            for i in range(2, 100):
                j.add(record(i, payload="x" * 3000))
                inserted.append(f"t{i}")

        with pytest.raises(JournalUnavailable, match="full"):
            fill()
        assert j.failure is not None
        # Reads still see what was done: the finish was replayed after the rollback.
        assert j.get("t0").state == "done"  # type: ignore[union-attr]
        with pytest.raises(JournalUnavailable) as info:
            j.flush()
        assert list(info.value.lost) == inserted  # each must be refused by the caller
        # Space comes back: the next flush makes the replayed writes durable.
        j._db.execute("PRAGMA max_page_count = 1000000")
        assert j.flush() > 0
        failure: str | None = j.failure  # a property: mypy would keep the narrowing above
        assert failure is None
    with Journal(path) as j:
        done = j.get("t0")
        assert done is not None
        assert (done.state, done.result_json, done.attempts) == ("done", "7", 1)
        queued = j.get("t1")
        assert queued is not None
        assert queued.state == "queued"
        assert all(j.get(t) is None for t in inserted)


def test_a_version_1_journal_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as j:
        j.add(record(0))
        j.flush()
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE meta; PRAGMA user_version = 1;")
    db.close()
    (tmp_path / "j.db.lock").write_bytes(b"")  # version 1 wrote nothing there
    with Journal(path) as j:
        assert j.get("t0") is not None
        j.add(record(1))
        j.flush()
        assert j.commits == 1
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def _write_then_die(path: Path, n: int) -> None:
    """Commit ``n`` tasks one by one in a child process that then dies without closing."""
    code = (
        "import os, sys\n"
        "from pipework.service.daemon.journal import Journal\n"
        "from tests.daemon.test_journal_failures import record\n"
        f"j = Journal({str(path)!r})\n"
        f"for i in range({n}):\n"
        "    j.add(record(i)); j.flush()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_a_deleted_wal_is_damage_and_salvage_keeps_the_files(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    _write_then_die(path, 50)
    os.unlink(f"{path}-wal")
    with pytest.raises(JournalDamaged, match=r"commits are missing|-wal file"):
        Journal(path)
    outcome = salvage(path)
    assert "damaged journal kept as" in outcome
    kept = sorted(p.name for p in tmp_path.glob("j.db.damaged-*"))
    assert kept, outcome
    with Journal(path) as j:  # sound again: its count starts over
        assert j.counts()["queued"] < 50


def test_an_intact_wal_after_a_crash_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    _write_then_die(path, 50)
    with Journal(path) as j:
        assert j.counts()["queued"] == 50
        assert j.commits >= 50


def test_the_new_errors_pickle_with_their_attributes() -> None:
    import pickle  # noqa: PLC0415

    unavailable = pickle.loads(pickle.dumps(JournalUnavailable("/x/j.db", "disk full", ("t1",))))
    assert (unavailable.path, unavailable.reason, unavailable.lost) == (
        "/x/j.db",
        "disk full",
        ("t1",),
    )
    damaged = pickle.loads(pickle.dumps(JournalDamaged("/x/j.db", "is corrupt")))
    assert isinstance(damaged, JournalDamaged)
    assert (damaged.path, damaged.reason) == ("/x/j.db", "is corrupt")
