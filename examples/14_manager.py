"""multiprocessing.Manager: shared dict, list and Lock served by a manager process.

A Manager starts a server process that owns the objects; other processes hold
proxies, and every operation on a proxy is a request and a reply to that
server. That makes it flexible and slow, and brings two traps:

1. `counts["n"] += 1` is two round trips, a get then a set: concurrent
   updates are lost unless a lock (also from the manager) covers both.
2. Changing an object nested inside a proxy (`shared["items"].append(...)`)
   changes a copy in this process; assign the whole value back instead.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

ADDS = 500


def add(counts: Any, lock: Any, start: Any) -> None:
    start.wait(timeout=10)  # both workers begin together, so their updates interleave
    for _ in range(ADDS):
        counts["racy"] += 1  # get, then set: another process may write in between
    for _ in range(ADDS):
        with lock:
            counts["locked"] += 1


if __name__ == "__main__":
    with mp.Manager() as manager:  # shuts the manager process down on exit
        counts = manager.dict(racy=0, locked=0)
        lock = manager.Lock()
        start = manager.Barrier(2)
        workers = [mp.Process(target=add, args=(counts, lock, start)) for _ in range(2)]
        for p in workers:
            p.start()
        for p in workers:
            p.join(timeout=30)
        expected = 2 * ADDS
        lost = expected - counts["racy"]
        print(f"without the lock: {counts['racy']} of {expected} ({lost} updates lost in the race)")
        print(f"with the lock: {counts['locked']} of {expected}")

        shared = manager.dict(items=[0])
        shared["items"].append(1)  # appends to a copy fetched from the manager
        print(f"nested append: {shared['items']}")
        shared["items"] = [*shared["items"], 1]  # reassign: one set request
        print(f"reassigned: {shared['items']}")

        started = time.perf_counter()
        for _ in range(1000):
            counts["locked"]
        per_op = (time.perf_counter() - started) / 1000 * 1e6
        print(f"one proxy read: {per_op:.0f} µs (a round trip to the manager process)")
