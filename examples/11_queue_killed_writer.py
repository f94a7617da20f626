"""A writer killed while holding a multiprocessing.Queue's lock blocks every other writer.

All writers of one Queue share one pipe and take turns with a lock. A writer
process killed in the middle of writing (here: a 16 MiB message that the pipe
cannot take at once) never releases that lock, and leaves half a message in
the pipe. Afterwards:

- another writer's put() returns (a background thread does the writing), but
  its data never arrives, and the process cannot exit: at exit it waits for
  that thread, which waits for the lock;
- a reader's get(timeout=1) does not time out: it starts reading the half
  message and waits for the rest, forever.

So one Queue shared by workers that may die is not safe. pipework gives each
worker channels of its own, so a dead worker takes only its own channel down.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from multiprocessing.queues import Queue


def big_writer(q: Queue[bytes]) -> None:
    q.put(b"x" * (16 * 1024 * 1024))
    time.sleep(60)  # stays blocked in the write until killed


def small_writer(q: Queue[bytes]) -> None:
    q.put(b"hello")
    print("  writer B: put() returned; now exiting, which flushes the queue...", flush=True)


if __name__ == "__main__":
    q: Queue[bytes] = mp.Queue()
    a = mp.Process(target=big_writer, args=(q,))
    a.start()
    time.sleep(0.5)  # A's feeder thread now holds the lock, blocked on the full pipe
    a.kill()  # SIGKILL, by pid
    a.join(timeout=5)
    print(f"writer A killed mid-write (exit code {a.exitcode})")

    b = mp.Process(target=small_writer, args=(q,))
    b.start()
    b.join(timeout=1.5)
    print(f"writer B still alive after 1.5 s: {b.is_alive()} (waits for the lock A died holding)")

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(q.get(timeout=1)), daemon=True)
    reader.start()
    reader.join(timeout=1.5)
    print(f"reader get(timeout=1) still blocked after 1.5 s: {reader.is_alive()} (half a message)")

    b.kill()
    b.join(timeout=5)
    # The reader thread stays blocked in a read; as a daemon thread it ends with the process.
    # The queue is unusable: drop it rather than close it.
