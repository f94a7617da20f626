"""A client in another language: tests/daemon/clients/client.c, libzmq and no JSON library.

Compiles the C client and runs it against a real daemon. Skips only when the
toolchain is missing on a developer's machine; in CI (``CI`` set, where
``.ci/run`` installs gcc, libzmq3-dev and pkg-config) a missing toolchain fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemons import DaemonFactory

CLIENT_SOURCE = Path(__file__).parent / "clients" / "client.c"


def _zmq_flags() -> list[str] | None:
    """Compiler flags for libzmq, or None when its headers are not installed."""
    if shutil.which("pkg-config"):
        found = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "libzmq"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if found.returncode == 0:
            return found.stdout.split()
    if any(Path(d, "zmq.h").exists() for d in ("/usr/include", "/usr/local/include")):
        return ["-lzmq"]
    return None


@pytest.fixture(scope="module")
def c_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled C client."""
    cc = shutil.which("cc") or shutil.which("gcc")
    flags = _zmq_flags()
    if cc is None or flags is None:
        missing = "a C compiler (cc)" if cc is None else "libzmq headers (zmq.h / libzmq.pc)"
        reason = f"{missing} not installed: apt-get install gcc libzmq3-dev pkg-config"
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the C toolchain (.ci/run installs it): {reason}")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("c-client") / "client"
    built = subprocess.run(
        [cc, "-Wall", "-Wextra", str(CLIENT_SOURCE), "-o", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, f"cc failed:\n{built.stderr}"
    return out


def test_c_client_submits_and_reads_a_result(daemon: DaemonFactory, c_client: Path) -> None:
    d = daemon()
    run = subprocess.run(
        [str(c_client), d.endpoint, "from-c-1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, f"client exited {run.returncode}: {run.stderr}\n{run.stdout}"
    lines = run.stdout.splitlines()
    assert len(lines) == 2, run.stdout
    submitted, result = (json.loads(line) for line in lines)

    assert submitted["ok"] is True, submitted
    assert submitted["id"] == "c-1"
    assert submitted["op"] == "submit"
    assert submitted["duplicate"] is False
    task_id = submitted["task_id"]

    assert result["ok"] is True, result
    assert result["id"] == "c-2"
    assert result["task"]["task_id"] == task_id
    assert result["task"]["state"] == "done"
    assert result["task"]["result"] == 5
    assert result["task"]["key"] == "from-c-1"

    # The same key again, from a second run: the daemon deduplicates it.
    again = subprocess.run(
        [str(c_client), d.endpoint, "from-c-1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    dup = json.loads(again.stdout.splitlines()[0])
    assert dup["task_id"] == task_id
    assert dup["duplicate"] is True
