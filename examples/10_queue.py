"""multiprocessing.Queue: producers and consumers, and the join-before-get trap.

1. Two consumers take work from one Queue and put results on another; one
   sentinel (None) per consumer tells it to stop. Every get has a timeout.
2. A process that has put data on a Queue does not exit until that data has
   been written into the underlying pipe, so joining it before reading can
   wait forever: read first, then join.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from multiprocessing.queues import Queue


def consumer(tasks: Queue[int | None], results: Queue[tuple[int, int]]) -> None:
    while (x := tasks.get(timeout=10)) is not None:
        results.put((x, x * x))


def big_producer(out: Queue[bytes]) -> None:
    out.put(b"x" * 1_000_000)  # far more than a pipe holds (64 KiB on Linux)


if __name__ == "__main__":
    tasks: Queue[int | None] = mp.Queue()
    results: Queue[tuple[int, int]] = mp.Queue()
    consumers = [mp.Process(target=consumer, args=(tasks, results)) for _ in range(2)]
    for p in consumers:
        p.start()
    for x in range(10):
        tasks.put(x)
    for _ in range(len(consumers)):
        tasks.put(None)  # one sentinel per consumer
    squares = {}
    for _ in range(10):
        x, square = results.get(timeout=10)  # read everything before joining
        squares[x] = square
    for p in consumers:
        p.join(timeout=10)
    print(f"squares: {[squares[x] for x in range(10)]}")

    out: Queue[bytes] = mp.Queue()
    producer = mp.Process(target=big_producer, args=(out,))
    producer.start()
    producer.join(timeout=1.0)
    print(f"join before get: timed out, producer still alive = {producer.is_alive()}")
    try:
        data = out.get(timeout=10)
    except queue.Empty:
        raise SystemExit("the producer sent nothing") from None
    producer.join(timeout=10)
    print(f"get then join: got {len(data):,} bytes, producer exit code {producer.exitcode}")

    for q in (tasks, results, out):
        q.close()
        q.join_thread()
