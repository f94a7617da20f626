"""``pipework demo`` runs on a daemon and journal of its own, never on the user's (issue 15)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import DaemonFactory
from tests.support.processes import REPO, clean_env

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def runtime() -> Iterator[Path]:
    # Short: it holds an ipc:// socket path (about 107 bytes at most).
    path = Path(tempfile.mkdtemp(prefix="pw-rt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_leaves_the_users_daemon_and_journal_alone(
    daemon: DaemonFactory, runtime: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {"XDG_RUNTIME_DIR": str(runtime), "XDG_STATE_HOME": str(state)}
    # The user's own daemon at the default endpoint, serving tasks the demo does not use.
    users = daemon(endpoint=f"ipc://{runtime}/pipework/pipework.sock", env=env)
    result = subprocess.run(
        [sys.executable, "-m", "pipework", "demo"],
        cwd=REPO,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "every check held" in result.stdout
    stats = users.stats()
    assert stats["accepted"] == 0, stats  # none of the demo's tasks reached it
    assert not (state / "pipework").exists()  # nor the default journal
    assert sorted(p.name for p in (runtime / "pipework").iterdir()) == ["pipework.sock"]
