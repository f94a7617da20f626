"""A damaged journal is refused at start, not served as an empty queue (issue 15, item 3).

After ``kill -9`` the journal's recent commits live only in its ``-wal`` file.
Deleting, truncating, corrupting or replacing that file used to start the
daemon with ``recovered: 0`` and no warning. Now the daemon refuses (exit 4,
files untouched) and ``--journal-recover`` salvages what is readable.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemons import DaemonFactory
from tests.support.processes import REPO, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TASKS = 300
EXIT_JOURNAL_DAMAGED = 4


def _serve(journal: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``pipework serve`` expected to refuse (so it exits by itself)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipework",
            "serve",
            "--workers",
            "1",
            "--journal",
            str(journal),
            "--endpoint",
            endpoint,
            *args,
        ],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _digest(journal: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(journal.parent.iterdir())
        if p.name.startswith(journal.name) and not p.name.endswith("-shm")
    }


def _damage(journal: Path, how: str, early_wal: Path) -> None:
    wal = Path(f"{journal}-wal")
    size = wal.stat().st_size
    if how == "delete":
        wal.unlink()
    elif how == "truncate":
        with wal.open("r+b") as f:
            f.truncate(size // 2)
    elif how == "corrupt":
        with wal.open("r+b") as f:
            f.seek(size // 2)
            f.write(b"\xff" * 64)
    else:  # replace: an older copy of the same file
        shutil.copyfile(early_wal, wal)


@pytest.mark.parametrize("how", ["delete", "truncate", "corrupt", "replace"])
def test_a_damaged_wal_after_kill9_is_refused_then_salvaged(
    daemon: DaemonFactory, tmp_path: Path, how: str
) -> None:
    journal = tmp_path / "journal.sqlite"
    early_wal = tmp_path / "early-wal"
    d = daemon(journal=journal)
    acked = []
    for i in range(TASKS):
        acked.append(d.submit("add", i, 1, delay=3600)["task_id"])
        if i == TASKS // 2:
            shutil.copyfile(f"{journal}-wal", early_wal)
    d.kill9()
    _damage(journal, how, early_wal)
    before = _digest(journal)

    refused = _serve(journal, daemon.endpoint("refused"))
    assert refused.returncode == EXIT_JOURNAL_DAMAGED, refused.stderr
    assert "cannot start" in refused.stderr
    assert "--journal-recover" in refused.stderr
    assert str(journal) in refused.stderr
    assert _digest(journal) == before  # left exactly as found

    salvaged = daemon("--journal-recover", journal=journal)
    log = salvaged.stderr_path.read_text()
    assert "journal salvaged" in log
    assert list(tmp_path.glob("journal.sqlite.damaged-*")), "the damaged files are kept"
    stats = salvaged.stats()
    assert 0 < stats["queued"] < TASKS  # what survived the damage runs; the rest is gone
    assert salvaged.run("add", 2, 3)["result"] == 5
    assert salvaged.stop() == 0
    # The new journal is sound: a plain restart takes it.
    assert daemon(journal=journal).stats()["queued"] == stats["queued"]


def test_a_clean_stop_checkpoints_the_wal(daemon: DaemonFactory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    d = daemon(journal=journal)
    acked = [d.submit("add", i, 1, delay=3600)["task_id"] for i in range(50)]
    assert d.stop() == 0
    wal = Path(f"{journal}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    wal.unlink(missing_ok=True)  # nothing lives there after a clean stop
    again = daemon(journal=journal)
    assert {again.status(t)["state"] for t in acked} == {"queued"}


def test_a_corrupt_main_file_fails_the_check(daemon: DaemonFactory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    d = daemon(journal=journal)
    for i in range(200):
        d.submit("add", i, 1, delay=3600)
    assert d.stop() == 0
    size = journal.stat().st_size
    with journal.open("r+b") as f:  # the pages after the header and the schema
        f.seek(size // 2)
        f.write(b"\x07" * 8192)
    refused = _serve(journal, daemon.endpoint("refused"))
    assert refused.returncode == EXIT_JOURNAL_DAMAGED, refused.stderr
    assert "corrupt" in refused.stderr or "check" in refused.stderr
    salvaged = daemon("--journal-recover", journal=journal)
    assert salvaged.run("add", 2, 3)["result"] == 5
