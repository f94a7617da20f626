"""Run CPython's own ``test_concurrent_futures`` against ``WorkerService``.

A check of the drop-in claim, not part of the test suite: CPython's tests
for ``ProcessPoolExecutor`` (fork, forkserver, spawn) run with
``concurrent.futures.ProcessPoolExecutor`` replaced by a thin adapter over
``WorkerService`` (``mp_context`` becomes ``start_method``,
``max_tasks_per_child`` becomes ``max_tasks_per_worker``), in this process
and in the scripts those tests start. It needs Debian's
``libpython3.11-testsuite`` (``apt-get install -y libpython3.11-testsuite``)
and a 3.11 interpreter.

    python -m pipework.benchmarks.cpython_cf_suite              # every process-pool test
    python -m pipework.benchmarks.cpython_cf_suite "Spawn"      # a pytest -k selection

Each test runs in a pytest process of its own, killed (and counted as
failed) after ``HANG`` seconds. It prints each outcome, then the count over
the tests whose contract pipework claims: ``OUT_OF_CONTRACT`` lists the
others, each with why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SUITE = Path("/usr/lib/python3.11/test")
ROOT = Path(__file__).resolve().parent.parent

OUT_OF_CONTRACT = {
    # They read ProcessPoolExecutor's private attributes (_processes,
    # _executor_manager_thread, _call_queue, _pending_work_items) to check how
    # it does things, not what it promises.
    "test_processes_terminate": "reads _processes",
    "test_del_shutdown": "reads _processes, _call_queue, _executor_manager_thread",
    "test_shutdown_no_wait": "reads _processes, _call_queue, _executor_manager_thread",
    "test_idle_process_reuse_one": "reads _processes",
    "test_idle_process_reuse_multiple": "reads _processes",
    "test_saturation": "reads _processes",
    "test_max_tasks_per_child": "reads _processes",
    "test_max_tasks_per_child_defaults_to_spawn_context": "reads _mp_context",
    "test_max_workers_too_large": "a Windows limit (61 workers); pipework has none",
    # pipework fails only the task whose worker died, where CPython breaks
    # the whole pool (BrokenProcessPool for every pending future).
    "test_killed_child": "pipework fails one task (WorkerLost), cf breaks the pool",
    "test_crash_at_task_unpickle": "pipework fails one task, cf breaks the pool",
    "test_exit_at_task_unpickle": "pipework fails one task, cf breaks the pool",
    "test_crash_during_func_exec_on_worker": "pipework fails one task, cf breaks the pool",
    "test_exit_during_func_exec_on_worker": "pipework fails one task, cf breaks the pool",
    "test_crash_during_result_pickle_on_worker": "pipework fails one task, cf breaks the pool",
    "test_exit_during_result_unpickle_in_result_handler": (
        "pipework fails one task, cf breaks the pool"
    ),
    "test_error_during_result_unpickle_in_result_handler": (
        "pipework fails one task (RemoteError), cf breaks the pool"
    ),
    "test_error_at_task_pickle": "pipework raises SerializationError from submit()",
    "test_shutdown_deadlock_pickle": "reads _executor_manager_thread",
    "test_shutdown_deadlock": "pipework fails one task (WorkerLost), cf breaks the pool",
    "test_error_at_task_unpickle": "pipework fails one task, cf breaks the pool",
    "test_context_manager_shutdown": "reads _processes (it hung under fork before)",
    "test_traceback": "checks for cf's private _RemoteTraceback type",
    "test_hang_gh83386": "skipped by CPython itself for process pools",
}


def install() -> None:
    """Replace ``concurrent.futures.ProcessPoolExecutor`` with the adapter (before the
    test module is imported: its mixins capture the class)."""
    import concurrent.futures as cf  # noqa: PLC0415
    import concurrent.futures.process as cfp  # noqa: PLC0415
    from multiprocessing.context import BaseContext  # noqa: PLC0415

    from pipework.service import WorkerService  # noqa: PLC0415

    class ProcessPoolExecutor(WorkerService):
        def __init__(
            self,
            max_workers: int | None = None,
            mp_context: BaseContext | None = None,
            initializer: Any = None,
            initargs: tuple[Any, ...] = (),
            *,
            max_tasks_per_child: int | None = None,
        ) -> None:
            method = None if mp_context is None else mp_context.get_start_method()
            super().__init__(
                max_workers,
                start_method=method,  # type: ignore[arg-type]
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_worker=max_tasks_per_child,
            )

        @property
        def _broken(self) -> object:  # FailingInitializer tests poll it
            return self._dispatcher.broken

    cf.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[misc, assignment]
    cfp.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[misc, assignment]


def _prefix(links: str) -> str:
    return (
        f"import sys; sys.path[:0] = [{links!r}, {str(ROOT)!r}]; "
        "import pipework.benchmarks.cpython_cf_suite as _s; _s.install(); _s.patch_scripts()\n"
    )


def patch_scripts() -> None:
    """Make the scripts the tests run (``python -I -c ...``) use the adapter too."""
    import test.test_concurrent_futures as suite  # type: ignore[import-not-found]  # noqa: PLC0415

    links = os.environ["PIPEWORK_CF_LINKS"]
    original = suite.assert_python_ok

    def assert_python_ok(*args: str, **env: Any) -> Any:
        if len(args) >= 2 and args[0] == "-c":
            args = ("-c", _prefix(links) + args[1], *args[2:])
        return original(*args, **env)

    suite.assert_python_ok = assert_python_ok


def pytest_configure(config: Any) -> None:
    """pytest plugin entry: install the adapter before the suite is collected."""
    install()
    patch_scripts()


HANG = 90
"""Seconds after which one test counts as hung (and its process group is killed)."""


def main() -> int:
    if not (SUITE / "test_concurrent_futures.py").exists():
        print(
            f"{SUITE}/test_concurrent_futures.py missing: apt-get install libpython3.11-testsuite"
        )
        return 2
    select = sys.argv[1] if len(sys.argv) > 1 else "ProcessPool"
    with tempfile.TemporaryDirectory() as links:
        # Only Debian's `test` package has test_concurrent_futures; a directory
        # holding just a link to it puts it first on sys.path, and spawned or
        # forkserver workers inherit that path.
        os.symlink(SUITE, os.path.join(links, "test"))
        env = {**os.environ, "PIPEWORK_CF_LINKS": links}
        env["PYTHONPATH"] = os.pathsep.join([links, str(ROOT)])
        ini = os.path.join(links, "pytest.ini")
        Path(ini).write_text("[pytest]\n")
        pytest = [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            ini,
            "--rootdir",
            links,
            "-p",
            "pipework.benchmarks.cpython_cf_suite",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "-q",
        ]
        listed = subprocess.run(
            [*pytest, "--collect-only", "-k", select, "--pyargs", "test.test_concurrent_futures"],
            env=env,
            cwd=links,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        ids = [i for i in listed if "::" in i and i.rsplit("::", 1)[1] not in OUT_OF_CONTRACT]
        outcomes: dict[str, str] = {}
        for test_id in ids:
            # One process per test, in its own session: a hung test is killed
            # with everything it started and counts as a failure.
            proc = subprocess.Popen(
                [*pytest, test_id],
                env=env,
                cwd=links,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                out, _ = proc.communicate(timeout=HANG)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.communicate()
                outcomes[test_id] = "HUNG"
            else:
                tail = out.strip().splitlines()[-1] if out.strip() else ""
                outcomes[test_id] = (
                    "passed"
                    if " passed" in tail and "failed" not in tail
                    else "skipped"
                    if " skipped" in tail and "failed" not in tail
                    else "FAILED"
                )
            print(f"{outcomes[test_id]:8} {test_id}", flush=True)
        counted = {k: v for k, v in outcomes.items() if v != "skipped"}
        passed = sum(v == "passed" for v in counted.values())
        print(f"\nin pipework's contract: {passed} of {len(counted)} pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
