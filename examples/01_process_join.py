"""Process + join: start child processes, wait for them with a bound, read their exit codes.

A child's return value and its exception stay in the child: the parent sees
only the exit code (0, 1 after an uncaught exception, -N after signal N).
To get data back, use a Queue or a Pipe (10_queue.py, 12_pipe.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time


def greet(name: str) -> None:
    time.sleep(0.2)
    print(f"child {os.getpid()}: hello, {name}", flush=True)


def fail() -> None:
    raise ValueError("this exception is printed by the child, never raised in the parent")


if __name__ == "__main__":
    children = [mp.Process(target=greet, args=(name,)) for name in ("ada", "grace")]
    for child in children:
        child.start()  # start them all first, then wait: they run side by side
    for child in children:
        child.join(timeout=10)  # a bound: a stuck child must not hang the parent
        if child.is_alive():
            child.kill()
            child.join()
        print(f"parent: child {child.pid} exited with code {child.exitcode}")
        child.close()  # release its resources now rather than at garbage collection

    failing = mp.Process(target=fail)
    failing.start()
    failing.join(timeout=10)
    print(f"parent: the failing child exited with code {failing.exitcode}; nothing was raised here")
    failing.close()
