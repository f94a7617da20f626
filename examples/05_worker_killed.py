"""A worker is SIGKILLed mid-task: ProcessPoolExecutor, multiprocessing.Pool and pipework.

Each pool runs the same 6 tasks of 0.5 s on 2 workers. When the first task
finishes we know a worker's pid (the task returns it), and we SIGKILL that
worker 0.1 s into its next task, as the kernel's out-of-memory killer would.

- ProcessPoolExecutor marks itself broken: every future not yet done fails
  with BrokenProcessPool, including the task on the healthy worker, and every
  later submit raises.
- multiprocessing.Pool replaces the worker but forgets its task: that result
  never arrives, and only get(timeout=...) tells you so.
- pipework's WorkerService fails only the task the dead worker held, with
  WorkerLost (pid, signal); the other tasks complete and the pool carries on.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from concurrent.futures.process import BrokenProcessPool

from pipework.service import WorkerService

TASKS = 6
WORKERS = 2


def job(i: int) -> int:
    time.sleep(0.5)
    return os.getpid()


def kill_worker(pid: int) -> None:
    time.sleep(0.1)  # the worker has moved on to its next task
    os.kill(pid, signal.SIGKILL)
    print(f"  SIGKILL sent to worker {pid} while it runs a task")


def summary(name: str, outcomes: list[str], after: str) -> None:
    tally = ", ".join(f"{n} {what}" for what, n in Counter(outcomes).most_common())
    print(f"  tasks: {' '.join(outcomes)}")
    print(f"=> {name}: {tally}; {after}")


def on_executor(name: str, pool: cf.Executor) -> None:
    """The same code for both Executors: ProcessPoolExecutor and WorkerService."""
    print(f"{name}:")
    futures = [pool.submit(job, i) for i in range(TASKS)]
    done, _ = cf.wait(futures, timeout=30, return_when=cf.FIRST_COMPLETED)
    kill_worker(next(iter(done)).result())
    cf.wait(futures, timeout=30)
    outcomes = []
    shown = set()
    for future in futures:
        exc = future.exception(timeout=0)
        outcome = "ok" if exc is None else type(exc).__name__
        if exc is not None and outcome not in shown:
            shown.add(outcome)
            print(f"  {outcome}: {exc}")
        outcomes.append(outcome)
    try:
        pool.submit(job, TASKS).result(timeout=30)
        after = "a new submit: ok"
    except BrokenProcessPool as exc:
        after = f"a new submit raises {type(exc).__name__}"
    summary(name, outcomes, after)


def on_pool() -> None:
    print("multiprocessing.Pool:")
    with mp.Pool(WORKERS) as pool:
        results = [pool.apply_async(job, (i,)) for i in range(TASKS)]
        deadline = time.monotonic() + 30
        while not any(r.ready() for r in results) and time.monotonic() < deadline:
            time.sleep(0.01)
        first = next(r for r in results if r.ready())
        kill_worker(first.get(timeout=0))
        deadline = time.monotonic() + 30
        while sum(r.ready() for r in results) < TASKS - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # one more second for the last result: it is not coming
        outcomes = ["ok" if r.ready() else "never-finished" for r in results]
        pool.apply_async(job, (TASKS,)).get(timeout=30)
        summary("multiprocessing.Pool", outcomes, "a new apply_async: ok")
        # Leaving the block calls terminate(): close() + join() would wait forever
        # for the task the dead worker took with it.


if __name__ == "__main__":
    with cf.ProcessPoolExecutor(WORKERS) as executor:
        on_executor("ProcessPoolExecutor", executor)
    on_pool()
    with WorkerService(max_workers=WORKERS) as service:
        on_executor("pipework WorkerService", service)
