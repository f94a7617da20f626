"""ProcessPoolExecutor.submit with add_done_callback that sees exceptions too.

A done-callback gets the future, finished. The tutorial's callback called
future.result() straight away: for a task that raised, result() raises inside
the callback, and concurrent.futures only logs it ("exception calling callback
for <Future ...>") -- the program carries on as if nothing failed. Ask the
future first: cancelled(), then exception().

Callbacks run in the executor's management thread, or at once in the thread
that calls add_done_callback if the future is already done.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time


def work(x: int) -> int:
    time.sleep(0.05)
    if x == 3:
        raise ValueError(f"cannot handle {x}")
    return x * x


def report(future: cf.Future[int]) -> None:
    where = threading.current_thread().name
    if future.cancelled():
        print(f"callback ({where}): cancelled")
    elif (exc := future.exception()) is not None:  # does not raise: the future is done
        print(f"callback ({where}): task failed with {type(exc).__name__}: {exc}")
    else:
        print(f"callback ({where}): result {future.result()}")


if __name__ == "__main__":
    with cf.ProcessPoolExecutor(max_workers=2) as executor:
        futures = [executor.submit(work, x) for x in range(6)]
        for future in futures:
            future.add_done_callback(report)
        done, not_done = cf.wait(futures, timeout=10)  # bounded, unlike a bare result()
    failed = [f for f in done if f.exception() is not None]
    print(f"{len(done)} done, {len(failed)} failed, {len(not_done)} still running")
