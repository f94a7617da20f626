"""Every program in examples/ runs, exits 0, prints what it claims, and leaves no process behind.

Each example runs as a user runs it (``python examples/NN_name.py`` from the
repository root), in a session of its own so that anything it leaves running
can be found and killed. The lines checked are the ones that carry each
example's lesson; counts that depend on timing are matched loosely.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT = 45.0
"""Below the per-test pytest-timeout, so a hang fails here with the output so far."""

EXPECTED: dict[str, list[str]] = {
    "01_process_join.py": [
        r"parent: child \d+ exited with code 0",
        r"the failing child exited with code 1",
    ],
    "02_pool_apply_async.py": [
        r"error_callback: ValueError: cannot handle 3",
        r"get\(\) re-raised for x=3",
        r"results: \{0: 0, 1: 1, 2: 4, 4: 16, 5: 25\}",
    ],
    "03_executor_callback.py": [
        r"task failed with ValueError: cannot handle 3",
        r"6 done, 1 failed, 0 still running",
    ],
    "04_workerservice.py": [
        r"as_completed: ValueError: cannot handle 3, raised in the worker at:",
        r'File ".*04_workerservice\.py", line \d+, in work',
        r"map: \[3, 2, 1, 0, 1, 2\]",
    ],
    "05_worker_killed.py": [
        r"=> ProcessPoolExecutor: .*\d+ BrokenProcessPool.*; a new submit raises BrokenProcessPool",
        r"=> multiprocessing\.Pool: 5 ok, 1 never-finished; a new apply_async: ok",
        r"WorkerLost: worker pid \d+ was killed by SIGKILL",
        r"=> pipework WorkerService: 5 ok, 1 WorkerLost; a new submit: ok",
    ],
    "10_queue.py": [
        r"squares: \[0, 1, 4, 9, 16, 25, 36, 49, 64, 81\]",
        r"join before get: timed out, producer still alive = True",
        r"get then join: got 1,000,000 bytes, producer exit code 0",
    ],
    "11_queue_killed_writer.py": [
        r"writer A killed mid-write \(exit code -9\)",
        r"writer B still alive after 1\.5 s: True",
        r"reader get\(timeout=1\) still blocked after 1\.5 s: True",
    ],
    "12_pipe.py": [
        r"duplex: \('add', 2, 3\) -> 5",
        r"one-way: received \[0, 1, 2, 3, 4\], then EOFError",
    ],
    "13_pipe_full.py": [
        r"writer blocked on a full pipe: child alive after 0\.5 s = True",
        r"both sides writing: parent stuck = True, child stuck = True",
        r"deadlock broken by reading first: parent sent = True, child exit code 0",
    ],
    "14_manager.py": [
        r"without the lock: \d+ of 1000",
        r"with the lock: 1000 of 1000",
        r"nested append: \[0\]",
        r"reassigned: \[0, 1\]",
    ],
    "15_shared_memory.py": [
        r"sum = 6,000,000 \(expected 6,000,000\)",
        r"closed and unlinked",
    ],
    "16_pickle5_zero_copy.py": [
        r"out-of-band: pickle \d+ bytes \+ buffers \[16000000\]",
        r"the buffer is the array's own memory: True",
        r"doubled correctly = True",
    ],
    "20_zmq_push_pull.py": [
        r"workers ready: 2",
        r"sink received 20 results",
    ],
    "21_zmq_req_rep.py": [
        r"request 'hello' -> reply 'HELLO'",
        r"sending again on the same REQ socket fails",
        r"a fresh REQ socket works: 'stop' -> 'STOP'",
    ],
    "22_zmq_router_dealer.py": [
        r"round-robin \(DEALER\): fast did 10, slow did 10",
        r"load-balanced \(ROUTER\): fast did \d+, slow did \d+",
    ],
    "23_zmq_slow_joiner.py": [
        r"PUB at once: received \d+ of 200",
        r"XPUB, waiting for the subscription: received 200 of 200",
    ],
    "24_zmq_hwm.py": [
        r"PUSH: send\(\) blocked after \d+ messages",
        r"PULL: all \d+ queued messages arrive once it reads; none lost",
        r"PUB: sent 1000 without blocking; subscriber got \d+, \d+ dropped silently",
    ],
}
"""Lines each example must print (regular expressions, searched in its stdout)."""

CHILD_TRACEBACK_OK = {"01_process_join.py"}
"""Examples that show a child's traceback on stderr on purpose."""


def _example_files() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py"))


def _session_members(sid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in process group ``sid``."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def _left_behind(sid: int, grace: float) -> list[str]:
    """Processes of the example's session still alive after ``grace`` seconds; kills them."""
    deadline = time.monotonic() + grace
    members = _session_members(sid)
    while members and time.monotonic() < deadline:
        time.sleep(0.1)
        members = _session_members(sid)
    described = []
    for proc in members:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    if members:
        os.killpg(sid, signal.SIGKILL)
    return described


def test_every_example_has_expectations() -> None:
    assert _example_files() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{name} did not finish in {RUN_TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    # Helpers (forkserver, resource tracker, pipework's workers) exit on their own soon after.
    leftovers = _left_behind(proc.pid, grace=5.0)
    report = f"stdout:\n{out}\nstderr:\n{err}"
    assert proc.returncode == 0, report
    for pattern in EXPECTED[name]:
        assert re.search(pattern, out), f"{pattern!r} not in the output of {name}\n{report}"
    if name not in CHILD_TRACEBACK_OK:
        assert "Traceback" not in err, report
    assert "leaked" not in err, report  # shared memory or semaphores not cleaned up
    assert not leftovers, f"{name} left processes running: {leftovers}"


@pytest.mark.parametrize("name", ["15_shared_memory.py", "16_pickle5_zero_copy.py"])
def test_numpy_examples_say_how_to_get_numpy(name: str, tmp_path: Path) -> None:
    # A numpy that fails to import stands in for a venv made by the first README command.
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("raise ImportError('no numpy here')\n")
    ran = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert ran.returncode == 1, ran
    assert "pipework[examples]" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_examples_extra_installs_numpy() -> None:
    import tomllib  # noqa: PLC0415

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(dep.startswith("numpy") for dep in extras["examples"])
    assert "[examples]" in (EXAMPLES / "README.md").read_text()
