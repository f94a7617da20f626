"""multiprocessing.Pool.apply_async with callback and error_callback, done right.

The tutorial joined the pool inside its submit loop, once per task:

    for x in data:
        pool.apply_async(work, (x,), callback=on_result)
        pool.close()
        pool.join()        # the next apply_async raises ValueError: Pool not running

- close() and join() run once, after every task is submitted;
- without error_callback, a task's exception is silently dropped: keep the
  AsyncResult objects and call get(timeout), which re-raises it;
- callbacks run on the pool's single result thread: keep them short, and never
  let one raise (the thread dies and every later get() without a timeout hangs);
- `with Pool() as pool:` calls terminate() on exit, not join(): close and join
  inside the block, or unfinished tasks are killed.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time


def work(x: int) -> int:
    time.sleep(0.05)
    if x == 3:
        raise ValueError(f"cannot handle {x}")
    return x * x


def on_result(value: int) -> None:
    print(f"callback on {threading.current_thread().name}: {value}")


def on_error(exc: BaseException) -> None:
    print(f"error_callback: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    with mp.Pool(processes=2) as pool:
        pending = [
            (x, pool.apply_async(work, (x,), callback=on_result, error_callback=on_error))
            for x in range(6)
        ]
        pool.close()  # once: no more tasks

        results = {}
        for x, async_result in pending:
            try:
                results[x] = async_result.get(timeout=10)  # re-raises the task's exception
            except ValueError as exc:
                print(f"get() re-raised for x={x}: {exc!r}")
        pool.join()  # once: every worker has exited
    print(f"results: {results}")
