"""``pipework demo``: a few-second tour of what ``WorkerService`` survives.

It runs one two-worker pool through four scenes and prints what each shows:

```
(a) a batch            submit + as_completed, then map(chunksize=...)
(b) a worker dies      a task SIGKILLs its own worker: WorkerLost for it alone
(c) a retry            options(retries=1): the task runs again on a fresh worker
(d) a timeout          options(timeout=0.5): TaskTimeout, the worker is replaced
```

Every scene checks its own outcome; ``run`` returns 1 if any check failed.
The task functions live at module level here because workers start with
forkserver (or spawn) and import them by name.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from pipework.service.errors import PipeworkError, TaskTimeout, WorkerLost
from pipework.service.executor import WorkerService

__all__ = ["die_on_first_attempt", "kill_own_worker", "run", "sleep_for", "square"]

T = TypeVar("T")

_WAIT = 30.0
"""Bound on every wait in the demo, in seconds; the demo never hangs."""
_WORKERS = 2
_TIMEOUT = 0.5


# -- task functions (run in the workers) -----------------------------------------


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def sleep_for(seconds: float) -> float:
    """Sleep, then return how long."""
    time.sleep(seconds)
    return seconds


def kill_own_worker() -> None:
    """SIGKILL the worker process running this task."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(_WAIT)  # SIGKILL is delivered asynchronously; never return first
    raise RuntimeError("SIGKILL did not arrive")


def die_on_first_attempt(marker: str) -> tuple[int, int]:
    """SIGKILL this worker the first time; afterwards return ``(first pid, this pid)``.

    The first attempt creates ``marker`` (atomically) and writes its pid in it,
    so a later attempt, in another process, knows it is not the first.
    """
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(marker, encoding="ascii") as f:
            return int(f.read()), os.getpid()
    try:
        os.write(fd, str(os.getpid()).encode("ascii"))
    finally:
        os.close(fd)
    kill_own_worker()
    raise RuntimeError("unreachable")


# -- the demo (runs in the caller) ------------------------------------------------


class _Report:
    """Prints the demo's lines and remembers whether every check held."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.failures = 0

    def say(self, line: str = "") -> None:
        print(line, file=self._out, flush=True)

    def check(self, ok: bool, what: str) -> None:
        if ok:
            self.say(f"    ok: {what}")
        else:
            self.failures += 1
            self.say(f"    UNEXPECTED: not {what}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WorkerLost):
        return (
            f"WorkerLost(task_id={exc.task_id}, pid={exc.pid}, signal={exc.signal}, "
            f"exitcode={exc.exitcode}, attempt={exc.attempt})"
        )
    if isinstance(exc, TaskTimeout):
        return f"TaskTimeout(task_id={exc.task_id}, timeout={exc.timeout:g}, pid={exc.pid})"
    return f"{type(exc).__name__}: {exc}"


def _outcome(future: cf.Future[T]) -> BaseException | None:
    """The future's exception, or None if it succeeded; waits at most ``_WAIT``."""
    return future.exception(timeout=_WAIT)


def _batch(pool: WorkerService, report: _Report) -> None:
    report.say("(a) a batch of tasks on 2 workers")
    futures = [pool.submit(square, i) for i in range(20)]
    done = [f.result() for f in cf.as_completed(futures, timeout=_WAIT)]
    report.say(f"    submit + as_completed: 20 tasks, results in completion order {done[:6]}...")
    report.check(sorted(done) == [i * i for i in range(20)], "all 20 results arrived")
    results = list(pool.map(square, range(100), chunksize=10, timeout=_WAIT))
    report.say("    map(square, range(100), chunksize=10): 10 tasks of 10 items, in order")
    report.check(results == [i * i for i in range(100)], "100 results, in input order")


def _worker_death(pool: WorkerService, report: _Report) -> None:
    report.say("(b) a task SIGKILLs its own worker, between ordinary tasks")
    before = pool.worker_pids()
    futures: list[cf.Future[float]] = [pool.submit(sleep_for, 0.05) for _ in range(4)]
    doomed = pool.submit(kill_own_worker)
    futures += [pool.submit(sleep_for, 0.05) for _ in range(4)]
    lost = _outcome(doomed)
    report.say(f"    workers before: {before}")
    report.say(f"    the killer task failed with {_describe(lost) if lost else 'no error'}")
    report.check(
        isinstance(lost, WorkerLost) and lost.signal == "SIGKILL" and lost.attempt == 1,
        "WorkerLost with signal SIGKILL on attempt 1",
    )
    others = [_outcome(f) for f in futures]
    report.check(all(e is None for e in others), "the 8 tasks around it all succeeded")
    after = list(pool.map(square, range(10), timeout=_WAIT))
    pids = pool.worker_pids()
    report.say(f"    workers after:  {pids}")
    dead = lost.pid if isinstance(lost, WorkerLost) else None
    report.check(
        after == [i * i for i in range(10)] and len(pids) == _WORKERS and dead not in pids,
        f"the pool keeps working with {_WORKERS} workers; pid {dead} was replaced",
    )


def _retry(pool: WorkerService, report: _Report) -> None:
    report.say("(c) the same kind of task with options(retries=1); it dies on attempt 1 only")
    with tempfile.TemporaryDirectory(prefix="pipework-demo-") as tmp:
        marker = os.path.join(tmp, "first-attempt")
        future = pool.options(retries=1).submit(die_on_first_attempt, marker)
        error = _outcome(future)
        if error is not None:
            report.say(f"    the task failed with {_describe(error)}")
            report.check(False, "retry success")
            return
        first, second = future.result()
    report.say(f"    attempt 1 SIGKILLed worker pid {first}; attempt 2 ran on worker pid {second}")
    report.check(first != second, "retry success on another worker")


def _timeout(pool: WorkerService, report: _Report) -> None:
    report.say(f"(d) a task sleeps 30 s under options(timeout={_TIMEOUT:g})")
    start = time.monotonic()
    slow = pool.options(timeout=_TIMEOUT).submit(sleep_for, 30.0)
    quick = [pool.submit(square, i) for i in range(10)]
    error = _outcome(slow)
    took = time.monotonic() - start
    report.say(f"    after {took:.1f} s it failed with {_describe(error) if error else 'no error'}")
    report.check(isinstance(error, TaskTimeout), "TaskTimeout; its worker was killed")
    ok = [f.result(timeout=_WAIT) for f in quick]
    report.check(ok == [i * i for i in range(10)], "the 10 tasks submitted with it succeeded")
    after = list(pool.map(square, range(10), timeout=_WAIT))
    report.check(after == [i * i for i in range(10)], "the pool goes on")


def run(out: TextIO | None = None) -> int:
    """Run the demo, printing to ``out`` (default: stdout).

    Returns:
        0 if every scene behaved as described, 1 otherwise.
    """
    report = _Report(sys.stdout if out is None else out)
    scenes: list[Callable[[WorkerService, _Report], None]] = [
        _batch,
        _worker_death,
        _retry,
        _timeout,
    ]
    start = time.monotonic()
    report.say(f"pipework demo: one WorkerService(max_workers={_WORKERS}), four scenes")
    report.say("(pipework's own log lines, on stderr, note each worker death and timeout)")
    report.say()
    with WorkerService(max_workers=_WORKERS) as pool:
        for scene in scenes:
            try:
                scene(pool, report)
            except (TimeoutError, PipeworkError) as exc:  # a scene went wrong: say so, go on
                report.failures += 1
                report.say(f"    UNEXPECTED: {_describe(exc)}")
            report.say()
    took = time.monotonic() - start
    if report.failures:
        report.say(f"demo FAILED: {report.failures} check(s) did not hold ({took:.1f} s)")
        return 1
    report.say(f"demo done: every check held ({took:.1f} s)")
    return 0
