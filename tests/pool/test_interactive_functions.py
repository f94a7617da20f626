"""Functions defined interactively, lambdas and closures reach the workers by value.

Real interpreters run the programs: ``python -c``, a program read from
stdin, and a script without the ``__main__`` guard, under forkserver and spawn.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipework.service import SerializationError, WorkerService
from tests import tasks

START_METHODS = ["forkserver", "spawn"]

_PROGRAM = """
import sys
from pipework.service import WorkerService

def sq(x):
    return x * x

def adder(n):
    def add(x):
        return x + n
    return add

with WorkerService(2, start_method=sys.argv[-1]) as pool:
    print(pool.submit(sq, 7).result(timeout=30))
    print(pool.submit(lambda: 42).result(timeout=30))
    print(list(pool.map(adder(10), range(3), timeout=30)))
    print(list(pool.map(lambda a, b: a * b, [1, 2], [3, 4], timeout=30)))
"""
_EXPECTED = "49\n42\n[10, 11, 12]\n[3, 8]\n"


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_python_dash_c(tmp_path: Path, start_method: str) -> None:
    done = _run(["-c", _PROGRAM, start_method], tmp_path)
    assert (done.returncode, done.stdout) == (0, _EXPECTED), done.stderr
    assert done.stderr == ""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_program_read_from_stdin(tmp_path: Path, start_method: str) -> None:
    done = _run(["-", start_method], tmp_path, stdin=_PROGRAM)
    assert (done.returncode, done.stdout) == (0, _EXPECTED), done.stderr
    assert done.stderr == ""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_script_without_main_guard_gets_one_clear_error(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pipework.service import WorkerService\n"
        "def sq(x):\n"
        "    return x * x\n"
        f"pool = WorkerService(2, start_method={start_method!r})\n"
        "print(list(pool.map(sq, range(4))))\n"
        "pool.shutdown()\n"
    )
    done = _run([str(script)], tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("Traceback") == 1, done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert "unguarded.py, line 4" in done.stderr


def test_lambdas_and_closures_run_on_every_transport(pool: WorkerService) -> None:
    offset = 5
    assert pool.submit(lambda x: x + offset, 1).result(timeout=30) == 6
    assert list(pool.map(lambda x: x * offset, range(4), timeout=30)) == [0, 5, 10, 15]
    assert pool.submit(tasks.square, 3).result(timeout=30) == 9  # by reference, as before


def test_what_cloudpickle_cannot_pickle_either_is_still_a_serialization_error(
    pool: WorkerService,
) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        pool.submit(lambda: lock.locked() or None)
    assert info.value.what == "function"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_notebook_like_cell_code_runs(tmp_path: Path, start_method: str) -> None:
    # ipykernel runs a cell in __main__'s namespace (no __main__.__file__),
    # compiled under a file name that may exist on disk: that is not a script
    # the workers would run again, so no guard is asked for.
    cell = tmp_path / "cell_1.py"
    cell.write_text(
        _PROGRAM.replace("with WorkerService", "pool = WorkerService").split("pool =")[0]
        + f"pool = WorkerService(2, start_method={start_method!r})\n"
        + "print(pool.submit(sq, 7).result(timeout=30))\n"
        + "print(list(pool.map(adder(10), range(3), timeout=30)))\n"
        + "pool.shutdown()\n"
    )
    runner = (
        "import sys\n"
        f"path = {str(cell)!r}\n"
        "exec(compile(open(path).read(), path, 'exec'), sys.modules['__main__'].__dict__)\n"
    )
    done = _run(["-c", runner], tmp_path)
    assert (done.returncode, done.stdout) == (0, "49\n[10, 11, 12]\n"), done.stderr
