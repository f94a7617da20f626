"""A full disk under the journal: refused submits get a reply, nothing acknowledged is lost.

The journal lives on a small tmpfs the test mounts (root only) and unmounts,
also when it fails. A ballast file fills most of it; the daemon fills the
rest; deleting the ballast frees the disk. Issue 15, item 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemons import Daemon, DaemonFactory
from tests.support.processes import REPO, clean_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TMPFS_BYTES = 6 * 1024 * 1024
BALLAST_BYTES = 1024 * 1024
PAYLOAD = "x" * 20_000  # per task: the disk fills after a few hundred
MAX_SUBMITS = 2_000


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 6 MiB tmpfs holding a 1 MiB ballast file; unmounted at the end, pass or fail."""
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a tmpfs needs root"
    point = Path(tempfile.mkdtemp(prefix="pw-full-"))
    if reason is None:
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            reason = f"mount refused: {made.stderr.strip()}"
    if reason is not None:
        point.rmdir()
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the disk-full tests, but {reason}")
        pytest.skip(reason)
    try:
        (point / "ballast").write_bytes(b"\0" * BALLAST_BYTES)
        yield point
    finally:
        for _ in range(50):  # a daemon of a failed test may still hold files open
            unmount = ["umount", str(point)]
            if subprocess.run(unmount, capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(point)], check=False)
        shutil.rmtree(point, ignore_errors=True)


def _fill(d: Daemon) -> tuple[list[str], dict[str, Any]]:
    """Submit delayed tasks until one is refused; the acknowledged ids and the refusal."""
    acked: list[str] = []
    for i in range(MAX_SUBMITS):
        reply = d.request(
            {"op": "submit", "task": "echo", "args": [PAYLOAD], "key": f"k{i}", "delay": 3600}
        )
        if reply["ok"]:
            acked.append(reply["task_id"])
            continue
        return acked, reply
    pytest.fail(f"{MAX_SUBMITS} submits of {len(PAYLOAD)} bytes did not fill the disk")


def _until_accepted(d: Daemon, timeout: float) -> tuple[str, float]:
    """Submit until one is accepted; its task id and how long that took."""
    start = time.monotonic()
    while True:
        reply = d.request({"op": "submit", "task": "add", "args": [1, 2], "key": "after"})
        if reply["ok"]:
            return reply["task_id"], time.monotonic() - start
        assert reply["error"]["code"] == "journal_unavailable", reply
        if time.monotonic() - start > timeout:
            pytest.fail(f"submits still refused {timeout} s after the disk freed: {reply}")
        time.sleep(0.01)


def _metric(port: int, name: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " "):
                return line.split()[1]
    raise AssertionError(f"no metric {name}")


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as page:
        return dict(json.loads(page.read()))


def _port(d: Daemon, what: str) -> int:
    for line in d.stderr_path.read_text().splitlines():
        if what in line:
            entry = json.loads(line)
            return int(entry.get("port") or entry["url"].rsplit(":", 1)[1].strip("/"))
    raise AssertionError(f"no {what!r} line")


def test_a_full_disk_refuses_submits_with_a_reply_and_recovers(
    small_disk: Path, daemon: DaemonFactory
) -> None:
    journal = small_disk / "journal.sqlite"
    d = daemon("--metrics-port", "0", "--status-port", "0", journal=journal)
    metrics = _port(d, "metrics serving")
    running = d.submit("sleep", 2.0)["task_id"]  # runs across the full-disk spell

    acked, refused = _fill(d)
    assert acked, "the disk was full before the first submit"
    assert refused["error"]["code"] == "journal_unavailable", refused
    assert "full" in refused["error"]["detail"]["reason"], refused
    # It still serves reads, and runs what it holds.
    stats = d.stats()
    assert stats["journal_error"], stats
    assert _metric(metrics, "pipework_journal_writable") == "0.0"
    status_port = _port(d, "status page serving")
    wait_until(lambda: _status(status_port)["journal_error"], 10, "the status page shows it")
    assert d.status(acked[0])["state"] == "queued"
    assert d.result(running)["result"] == 2.0
    assert d.request({"op": "submit", "task": "add", "args": [1, 2]})["ok"] is False

    (small_disk / "ballast").unlink()  # the disk frees
    after, took = _until_accepted(d, timeout=30)
    sys.stderr.write(f"\nfirst submit accepted {took:.3f} s after the disk freed\n")
    assert d.result(after)["result"] == 3
    assert d.stats()["journal_error"] is None
    assert _metric(metrics, "pipework_journal_writable") == "1.0"
    assert d.stop() == 0

    # Nothing acknowledged was lost, and the finished task's result was kept.
    again = daemon(journal=journal)
    assert {again.status(t)["state"] for t in acked} == {"queued"}
    assert again.status(running)["state"] == "done"


def test_a_stop_and_a_restart_on_a_full_disk(small_disk: Path, daemon: DaemonFactory) -> None:
    journal = small_disk / "journal.sqlite"
    d = daemon(journal=journal)
    acked, _ = _fill(d)
    assert d.stop() == 0  # a clean exit: close() does not raise on the full disk
    assert "Traceback" not in d.stderr_path.read_text()
    assert '"exception"' not in d.stderr_path.read_text()

    # Restarted with the disk still full: it serves, refuses submits, loses nothing.
    again = daemon(journal=journal)
    refused = again.request({"op": "submit", "task": "add", "args": [1, 2]})
    assert refused["error"]["code"] == "journal_unavailable", refused
    assert again.running()
    assert {again.status(t)["state"] for t in acked} == {"queued"}
    (small_disk / "ballast").unlink()
    after, _ = _until_accepted(again, timeout=30)
    assert again.result(after)["result"] == 3


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write: mode 0500, or (root) a read-only tmpfs."""
    if os.geteuid() != 0:
        here = tmp_path / "ro"
        here.mkdir()
        (here / "journal.sqlite").touch(mode=0o600)
        here.chmod(0o500)
        try:
            yield here
        finally:
            here.chmod(0o700)
        return
    point = Path(tempfile.mkdtemp(prefix="pw-ro-"))
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        point.rmdir()
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the read-only journal tests, but: {made.stderr}")
        pytest.skip(f"mount refused: {made.stderr.strip()}")
    try:
        (point / "journal.sqlite").touch(mode=0o600)
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)
        shutil.rmtree(point, ignore_errors=True)


@pytest.mark.parametrize("where", ["sub/journal.sqlite", "journal.sqlite"])
def test_a_read_only_journal_is_a_clean_cannot_start(
    read_only_dir: Path, tmp_path: Path, where: str
) -> None:
    """A directory it cannot create, or a lock file it cannot create: a message, exit 1."""
    journal = read_only_dir / where
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipework",
            "serve",
            "--journal",
            str(journal),
            "--endpoint",
            f"ipc://{tmp_path}/d.sock",
            "--workers",
            "1",
        ],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot start" in result.stderr, result.stderr
    assert str(journal) in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert '"exception"' not in result.stderr, result.stderr
