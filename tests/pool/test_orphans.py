"""No orphans: workers exit within 2 s of their dispatcher's death, however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.support.processes import wait_gone

ROOT = Path(__file__).resolve().parents[2]

PARENT = textwrap.dedent(
    """
    import multiprocessing.forkserver, sys, time
    from pathlib import Path
    from pipework.service import WorkerService
    from tests import tasks

    if __name__ == "__main__":
        pool = WorkerService(2, start_method=sys.argv[1], transport=sys.argv[3])
        marks = [Path(sys.argv[2]) / "a", Path(sys.argv[2]) / "b"]
        busy = [
            pool.submit(tasks.touch_then, str(marks[0]), "sleep_forever"),
            pool.submit(tasks.touch_then, str(marks[1]), "spin_in_c", 600),
        ]
        deadline = time.monotonic() + 30
        while not all(m.exists() for m in marks) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # both tasks are past touch() and running now
        pids = pool.worker_pids()
        server = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
        if server:
            pids.append(server)
        print(" ".join(map(str, pids)), flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_die_with_their_parent(
    tmp_path: Path, transport: str, start_method: str, sig: int
) -> None:
    # Per transport too: each has its own hang-up path to the watchdog (a
    # queue's pipe hangs up only if no process but the parent holds its writer).
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen(
        [sys.executable, str(script), start_method, str(tmp_path), transport],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) >= 2, line
        os.kill(proc.pid, sig)
        proc.wait(10)
        start = time.monotonic()
        survivors = wait_gone(pids, 2.0)
        assert survivors == [], (
            f"alive {time.monotonic() - start:.2f} s after the parent died: "
            + ", ".join(_describe(pid) for pid in survivors)
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{pid} {proc.status()} ppid={proc.ppid()} {proc.cmdline()[-1][:60]}"
    except psutil.Error as exc:
        return f"{pid} {exc!r}"
