"""Processes the tests start: liveness, waiting for exits, process trees, bounded runs.

Everything here acts on pids the test itself started (or their descendants); nothing
looks processes up by name.
"""

from __future__ import annotations

import contextlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
"""The repository root: the working directory of the processes the tests start."""

PIPEWORK = [sys.executable, "-m", "pipework"]
"""The command line of this checkout's ``pipework``."""


def alive(proc: int | psutil.Process) -> bool:
    """Whether ``proc`` still runs; a zombie counts as gone.

    Given a :class:`psutil.Process`, also False once its pid names another process.
    """
    try:
        if isinstance(proc, int):
            proc = psutil.Process(proc)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs: Iterable[int | psutil.Process], timeout: float) -> list[int]:
    """Wait until none of ``procs`` is alive (zombies count as gone); return the survivors' pids."""
    end = time.monotonic() + timeout
    left = list(procs)
    while True:
        left = [p for p in left if alive(p)]
        if not left or time.monotonic() >= end:
            return [p if isinstance(p, int) else p.pid for p in left]
        time.sleep(0.02)


def _helper_pids() -> set[int]:
    """multiprocessing's own long-lived helpers, shared by every pool in this process."""
    # Private attributes: multiprocessing has no public way to name these pids.
    candidates = (
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    )
    return {pid for pid in candidates if isinstance(pid, int)}


def descendants() -> list[psutil.Process]:
    """This test process's descendants, minus multiprocessing's shared helpers and zombies."""
    helpers = _helper_pids()
    out = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in helpers:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        out.append(proc)
    return out


class ProcessTree:
    """A process the test started and every descendant it has had since.

    A watcher thread records the descendants every ``interval`` seconds while the
    process runs (workers come and go: crashes, cancels, reloads), so that teardown
    can check that each one the process ever had is gone.
    """

    def __init__(self, proc: subprocess.Popen[bytes], interval: float = 0.1) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.descendants: dict[int, psutil.Process] = {}
        self._ps = psutil.Process(proc.pid)
        self._lock = threading.Lock()
        self._interval = interval
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, name=f"watch-{self.pid}", daemon=True)
        self._watcher.start()

    def track(self) -> list[int]:
        """Record the process's current descendants; return their pids."""
        try:
            children = self._ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        with self._lock:
            for child in children:
                self.descendants.setdefault(child.pid, child)
        return [c.pid for c in children]

    def _watch(self) -> None:
        while self._watching and self.proc.poll() is None:
            self.track()
            time.sleep(self._interval)

    def stop_watching(self) -> None:
        self._watching = False

    def kill(self) -> None:
        """SIGKILL the process (by pid) and reap it; its descendants stay recorded."""
        self.track()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.stop_watching()

    def running(self) -> bool:
        return self.proc.poll() is None

    def alive_descendants(self) -> list[int]:
        with self._lock:
            procs = list(self.descendants.values())
        return [p.pid for p in procs if alive(p)]

    def wait_descendants_gone(self, timeout: float) -> list[int]:
        """Wait up to ``timeout`` for every recorded descendant to exit; return survivors."""
        with self._lock:
            procs = list(self.descendants.values())
        return wait_gone(procs, timeout)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without PIPEWORK_* or systemd variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIPEWORK_")
        and k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_pipework(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``pipework *args`` from the repository root with ``clean_env(env)``; capture output."""
    return subprocess.run(
        [*PIPEWORK, *args],
        cwd=REPO,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_bounded(
    cmd: list[str], timeout: float, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on expiry SIGKILL it and every process it started (by pid), then fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Servers it starts may run in sessions of their own, but are still its descendants.
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.kill()
        stdout, stderr = proc.communicate()
        import pytest  # noqa: PLC0415 - see the module docstring of tests.support

        pytest.fail(f"{cmd[:4]} not done in {timeout:g} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
