"""shutdown(): what finishes, what is cancelled, and that it always returns."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipework.service import ServiceClosed, WorkerService
from tests import tasks, tasks_more
from tests import tasks_faults as faults
from tests.support.processes import wait_gone
from tests.support.waiting import wait_until


def test_shutdown_wait_runs_every_accepted_task(make_pool) -> None:
    pool: WorkerService = make_pool(2)
    futures = [pool.submit(tasks.sleep_then, 0.01, i) for i in range(40)]
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == list(range(40))
    assert pool.worker_pids() == []


def test_cancel_futures_resolves_every_pending_future_at_once(make_pool, tmp_path: Path) -> None:
    pool: WorkerService = make_pool(1)
    mark, gate = tmp_path / "started", tmp_path / "gate"
    # The one worker holds this task until the gate opens (not for a while: under load,
    # a sleep ended before the 50 submits did, and the worker took one of them).
    running = pool.submit(
        faults.record_pid_then, str(mark), tasks_more.wait_for_path, str(gate), "ran"
    )
    wait_until(mark.exists)
    pending = [pool.submit(tasks.square, i) for i in range(50)]
    pool.shutdown(wait=False, cancel_futures=True)
    _, not_done = cf.wait(pending, timeout=1.0)
    assert not not_done
    assert all(f.cancelled() for f in pending)
    assert len(list(cf.as_completed(pending, timeout=1.0))) == 50
    gate.touch()
    assert running.result(timeout=30) == "ran"


def test_submit_after_shutdown_raises_service_closed(make_pool) -> None:
    pool: WorkerService = make_pool(1)
    pool.shutdown()
    with pytest.raises(ServiceClosed) as info:
        pool.submit(tasks.square, 2)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(RuntimeError):
        pool.map(tasks.square, [1, 2])
    pool.shutdown()  # a second call is harmless


def test_submit_during_shutdown_raises_service_closed(make_pool) -> None:
    pool: WorkerService = make_pool(1)
    slow = pool.submit(tasks.sleep_then, 0.5, "done")
    closer = threading.Thread(target=pool.shutdown, kwargs={"wait": True})
    closer.start()
    wait_until(lambda: pool._ledger.closed)
    with pytest.raises(ServiceClosed):
        pool.submit(tasks.square, 2)
    closer.join(30)
    assert not closer.is_alive()
    assert slow.result(timeout=0) == "done"


def test_shutdown_timeout_kills_stuck_tasks(make_pool, tmp_path: Path) -> None:
    pool: WorkerService = make_pool(2, shutdown_timeout=1.0)
    marks = [tmp_path / "a", tmp_path / "b"]
    stuck = [pool.submit(tasks.touch_then, str(m), "sleep_forever") for m in marks]
    queued = pool.submit(tasks.square, 3)
    wait_until(lambda: all(m.exists() for m in marks))
    pids = pool.worker_pids()
    start = time.monotonic()
    pool.shutdown(wait=True)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 5.0
    for future in stuck:
        with pytest.raises(ServiceClosed, match="shutdown_timeout"):
            future.result(timeout=0)
    with pytest.raises(ServiceClosed):
        queued.result(timeout=0)
    assert wait_gone(pids, 5.0) == []


def test_shutdown_from_a_callback_does_not_deadlock(make_pool) -> None:
    pool: WorkerService = make_pool(1)
    finished = threading.Event()

    def close(_: object) -> None:
        pool.shutdown(wait=True)
        finished.set()

    pool.submit(tasks.square, 2).add_done_callback(close)
    assert finished.wait(30)


def test_context_manager_shuts_down(make_pool) -> None:
    with make_pool(2) as pool:
        future = pool.submit(tasks.square, 6)
    assert future.result(timeout=0) == 36
    assert pool.worker_pids() == []


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipework.service import WorkerService
    from tests import tasks

    if __name__ == "__main__":
        out = Path(sys.argv[1])
        pool = WorkerService(1, shutdown_timeout=0.5)
        pool.submit(tasks.touch_then, str(out / "started"), "sleep_forever")
        for i in range(20):
            pool.submit(tasks.remember, "x", i)
            pool.submit(tasks.sleep_then, 0, None).add_done_callback(lambda f: None)
        pool.submit(Path.touch, out / "ran")
        deadline = time.monotonic() + 30
        while not (out / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        print(" ".join(map(str, pool.worker_pids())), flush=True)
        # Fall off the end with work pending and no shutdown().
    """
)


def test_interpreter_exit_with_pending_work_neither_hangs_nor_runs_it(tmp_path: Path) -> None:
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert pids
    assert wait_gone(pids, 5.0) == []
    assert not (tmp_path / "ran").exists(), "work discarded at exit was run"
