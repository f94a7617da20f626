"""Where pipework claims to be a drop-in for ``concurrent.futures``: the contract, to the letter.

Each test here is one of the places CPython's own ``test_concurrent_futures``
found pipework apart from ``ProcessPoolExecutor`` (run it with
``python -m pipework.benchmarks.cpython_cf_suite``).
"""

from __future__ import annotations

import gc
import pickle
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from pipework.service import SerializationError, WorkerService
from tests import import_gate, tasks, tasks_cf

MakePool = Callable[..., WorkerService]
START_METHODS = ["fork", "forkserver", "spawn"]


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_below_one_is_refused_in_cf_words(max_workers: int) -> None:
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        WorkerService(max_workers)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_map_lets_go_of_each_result_it_yields(make_pool: MakePool, chunksize: int | None) -> None:
    pool = make_pool(2)
    seen = 0
    for obj in pool.map(tasks_cf.make_plain, range(10), chunksize=chunksize, timeout=30):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None, "map still holds a result it has yielded"
        seen += 1
    assert seen == 10


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["PicklingError", "SystemExit", "TypeError"])
def test_error_pickling_a_result_reaches_the_caller_with_its_own_type(
    make_pool: MakePool, kind: str
) -> None:
    pool = make_pool(1)
    exc = pool.submit(tasks_cf.return_failing_to_pickle, kind).exception(timeout=30)
    expected = {"PicklingError": pickle.PicklingError, "SystemExit": SystemExit}
    assert type(exc) is expected.get(kind, TypeError), repr(exc)
    why = exc.__cause__
    assert isinstance(why, SerializationError), repr(why)
    assert why.what == "result"
    assert why.type_name == "tests.tasks_cf.FailsToPickle"
    assert "Traceback (most recent call last)" in str(why.__cause__)  # the worker's traceback
    # Only that task failed: the worker lives on.
    assert pool.submit(tasks.square, 7).result(timeout=30) == 49


_EXIT_SCRIPT = """
import sys
import time

from pipework.service import WorkerService


def sleep_and_print(seconds, message):
    time.sleep(seconds)
    print(message, flush=True)


if __name__ == "__main__":
    pool = WorkerService(2, start_method=sys.argv[1], transport=sys.argv[2])
    pool.submit(sleep_and_print, 0.5, "apple")
    # No shutdown(): the interpreter exits with the task accepted, not yet run.
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_tasks_accepted_before_interpreter_exit_run_to_completion(
    tmp_path: Path, start_method: str, transport: str
) -> None:
    script = tmp_path / "submit_and_exit.py"
    script.write_text(_EXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), start_method, transport],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "apple", (done.stdout, done.stderr)
    assert done.stderr == ""


@pytest.mark.timeout(60)
def test_fork_worker_is_not_stuck_on_an_import_another_thread_was_making(
    make_pool: MakePool,
) -> None:
    # A worker forked while the main thread is importing a module inherits
    # that import half done, with its lock held by a thread that does not
    # exist in the worker (a multiprocessing.Manager proxy argument hung so).
    sys.modules.pop("tests.slow_import", None)
    import_gate.entered.clear()
    import_gate.gate.clear()

    def import_slowly() -> None:
        import tests.slow_import  # noqa: F401, PLC0415

    importer = threading.Thread(target=import_slowly, name="slow-importer", daemon=True)
    importer.start()
    try:
        assert import_gate.entered.wait(30)
        pool = make_pool(1, start_method="fork")
        future = pool.submit(tasks_cf.import_and_read, "tests.slow_import", "VALUE")
        assert future.result(timeout=20) == 42
    finally:
        import_gate.gate.set()
        importer.join(30)


@pytest.mark.timeout(60)
def test_shutdown_cancel_futures_cancels_tasks_queued_behind_a_running_one(
    tmp_path: Path,
) -> None:
    # The pipe transport queues short tasks in a busy worker's channel; those
    # have not started, so shutdown(cancel_futures=True) must cancel them too.
    pool = WorkerService(1, transport="pipe")
    try:
        assert sum(f.result(timeout=30) for f in [pool.submit(abs, -1) for _ in range(300)]) == 300
        blocker = pool.submit(tasks.sleep_then, 1.0, "done")
        markers = [tmp_path / f"ran-{i}" for i in range(20)]
        queued = [pool.submit(tasks.touch_then, str(m), "square", 2) for m in markers]
        handle = pool._dispatcher._workers[0]
        end = time.monotonic() + 30
        while len(handle.tasks) < 2 and time.monotonic() < end:  # wait for the prefetch
            time.sleep(0.005)
        assert len(handle.tasks) >= 2, "the worker never queued a task behind the blocker"
        pool.shutdown(cancel_futures=True)
        assert blocker.result(timeout=30) == "done"
        assert all(f.cancelled() for f in queued), [f for f in queued if not f.cancelled()]
        assert not [m for m in markers if m.exists()], "a cancelled task ran"
    finally:
        pool._close(True, time.monotonic())
        pool._dispatcher.join(15)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_initargs_may_hold_a_multiprocessing_queue(make_pool: MakePool, start_method: str) -> None:
    # cf passes initargs as the worker starts, where a Queue may travel.
    import multiprocessing  # noqa: PLC0415

    queue = multiprocessing.get_context(start_method).Queue()
    pool = make_pool(1, start_method=start_method, initializer=tasks_cf.announce, initargs=(queue,))
    assert pool.submit(tasks.square, 3).result(timeout=30) == 9
    assert queue.get(timeout=30) in pool.worker_pids()
    queue.close()
    queue.join_thread()
