"""The same job on pipework's WorkerService, a drop-in concurrent.futures.Executor.

submit, add_done_callback, as_completed and map work as with
ProcessPoolExecutor. A task's exception arrives with its own type, and the
worker's traceback text as its __cause__.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

from pipework.service import WorkerService


def work(x: int) -> int:
    time.sleep(0.05)
    if x == 3:
        raise ValueError(f"cannot handle {x}")
    return x * x


def report(future: cf.Future[int]) -> None:  # runs on the service's collector thread
    exc = future.exception()
    print(f"callback: {'failed: ' + repr(exc) if exc else future.result()}")


if __name__ == "__main__":
    with WorkerService(max_workers=2) as pool:
        futures = [pool.submit(work, x) for x in range(6)]
        for future in futures:
            future.add_done_callback(report)
        for finished in cf.as_completed(futures, timeout=30):
            if (exc := finished.exception()) is not None:
                print(f"as_completed: {type(exc).__name__}: {exc}, raised in the worker at:")
                print(exc.__cause__)
        print(f"map: {list(pool.map(abs, range(-3, 3), timeout=30))}")
