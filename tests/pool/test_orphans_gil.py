"""No orphans even when every worker is stuck in C holding the GIL.

The program below starts a pool, gives every worker a task that ignores
SIGTERM/SIGINT/SIGHUP and then sits in ``sum(range(10**11))`` (one C call that
never lets another thread run), and is SIGKILLed. Within 2 s its workers, the
fork server and the resource tracker it started must all be gone. No thread
in a worker can help here, so this checks the kernel-side lifelines: under
forkserver a worker's parent is the fork server, which lives only as long as
someone holds its "alive" pipe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.support.processes import wait_gone

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent(
    """
    import multiprocessing.forkserver, multiprocessing.resource_tracker, sys, time
    from pathlib import Path
    from pipework.service import WorkerService
    from tests import tasks_hostile

    if __name__ == "__main__":
        start_method, transport, marks = sys.argv[1], sys.argv[2], Path(sys.argv[3])
        pool = WorkerService(
            2, start_method=start_method, transport=transport, shutdown_timeout=3.0
        )
        for i in range(6):
            pool.submit(tasks_hostile.hog_gil, str(marks / f"task{i}"))
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # both are inside sum() by now
        pids = pool.worker_pids()
        helpers = (
            getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
            getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
        )
        print(" ".join(map(str, pids)), "|", " ".join(str(p) for p in helpers if p), flush=True)
        time.sleep(600)
    """
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_gil_holding_workers_die_with_a_sigkilled_program(
    tmp_path: Path, transport: str, start_method: str
) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), start_method, transport, str(marks)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        workers, _, helpers = line.partition("|")
        pids = [int(p) for p in workers.split()] + [int(p) for p in helpers.split()]
        assert len(workers.split()) == 2, line
        assert len(list(marks.iterdir())) >= 2, "the tasks never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        survivors = wait_gone(pids, 2.0)
        assert survivors == [], "alive 2 s after the program was SIGKILLed: " + ", ".join(
            _describe(pid) for pid in survivors
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        # A failed run leaves hogs that would burn a core for an hour: ours, by pid.
        for pid in wait_gone(pids, 0):
            _kill(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{pid} ppid={proc.ppid()} {' '.join(proc.cmdline())[:70]!r}"
    except psutil.Error as exc:
        return f"{pid} {exc!r}"
