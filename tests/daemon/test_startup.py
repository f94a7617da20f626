"""The daemon refuses to start where it would be unsafe or would collide, and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import TASKS_MODULE, DaemonFactory
from tests.support.processes import run_pipework

START_TIMEOUT = 30.0


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pipework serve`` expecting it to refuse (so it exits by itself)."""
    return run_pipework("serve", *args, env=env, timeout=START_TIMEOUT)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pw-start-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_refuses_an_ipc_directory_others_can_enter(sock_dir: Path, tmp_path: Path) -> None:
    sock_dir.chmod(0o755)
    result = serve("--endpoint", f"ipc://{sock_dir}/d.sock", "--journal", str(tmp_path / "j"))
    assert result.returncode == 1, result.stderr
    assert "must be private to this user" in result.stderr
    assert "mode 0755" in result.stderr
    assert not (sock_dir / "d.sock").exists()


def test_creates_a_missing_ipc_directory_private(sock_dir: Path, daemon: DaemonFactory) -> None:
    d = daemon(endpoint=f"ipc://{sock_dir}/new/d.sock")
    assert d.stats()["draining"] is False
    assert (sock_dir / "new").stat().st_mode & 0o777 == 0o700


def test_refuses_an_endpoint_another_daemon_serves(daemon: DaemonFactory, tmp_path: Path) -> None:
    first = daemon()
    result = serve("--endpoint", first.endpoint, "--journal", str(tmp_path / "other.sqlite"))
    assert result.returncode == 1, result.stderr
    assert f"another pipework daemon is serving at {first.endpoint}" in result.stderr
    assert first.stats()["draining"] is False  # the first one is untouched and serving


def test_refuses_a_journal_another_daemon_holds(daemon: DaemonFactory) -> None:
    first = daemon()
    assert first.journal_path is not None
    result = serve("--endpoint", daemon.endpoint("second"), "--journal", str(first.journal_path))
    assert result.returncode == 1, result.stderr
    assert "lock" in result.stderr.lower()
    assert str(first.journal_path) in result.stderr
    assert first.stats()["draining"] is False


def test_replaces_the_stale_socket_of_a_killed_daemon(daemon: DaemonFactory) -> None:
    first = daemon()
    first.kill9()
    sock = Path(first.endpoint.removeprefix("ipc://"))
    assert sock.exists()  # left behind by kill -9
    assert first.journal_path is not None
    second = daemon(endpoint=first.endpoint, journal=first.journal_path)
    assert second.run("add", 2, 3)["result"] == 5


def test_unknown_task_module_and_bad_settings(sock_dir: Path, tmp_path: Path) -> None:
    ep = f"ipc://{sock_dir}/d.sock"
    result = serve("--endpoint", ep, "--tasks", "no_such_module_xyz", "--no-journal")
    assert result.returncode == 1
    assert "cannot import task module 'no_such_module_xyz'" in result.stderr
    result = serve("--endpoint", ep, "--no-journal", env={"PIPEWORK_WORKERS": "zero"})
    assert result.returncode == 2
    assert "workers" in result.stderr
    assert TASKS_MODULE  # the harness's module is what the other tests serve
    assert not os.path.exists(sock_dir / "d.sock")
