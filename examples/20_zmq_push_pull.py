"""ZeroMQ PUSH/PULL pipeline: a ventilator, two workers, a sink.

    parent PUSH (bind) --tasks--> worker PULL ... worker PUSH --results--> parent PULL (bind)

PUSH deals messages round-robin among the PULL peers connected at that
moment: start sending before every worker has connected and the first one
gets everything. So each worker announces itself through the sink first, and
the ventilator waits for all of them before sending any work.

The sockets live in a private temporary directory (mode 0700, `ipc://`), so
no other user on the machine can connect to them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from collections import Counter

import zmq

WORKERS = 2
TASKS = 20


def worker(tasks_address: str, results_address: str) -> None:
    ctx = zmq.Context()
    tasks = ctx.socket(zmq.PULL)
    tasks.connect(tasks_address)
    results = ctx.socket(zmq.PUSH)
    results.connect(results_address)
    results.send_json({"ready": os.getpid()})
    try:
        while tasks.poll(10_000):  # give up if the ventilator goes quiet
            n = tasks.recv_json()
            if not isinstance(n, int):  # None: no more work
                break
            results.send_json({"pid": os.getpid(), "n": n, "square": n * n})
    finally:
        ctx.destroy(linger=1000)  # bounded: never hang on unsent results


def receive(sock: zmq.Socket[bytes]) -> dict[str, int]:
    if not sock.poll(10_000):
        raise SystemExit("no message within 10 s")
    message: dict[str, int] = sock.recv_json()  # type: ignore[assignment]
    return message


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="zmq-pipeline-") as private:
        tasks_address = f"ipc://{private}/tasks"
        results_address = f"ipc://{private}/results"
        # Start the workers before this process creates its ZeroMQ context (and its
        # threads); connecting before the other side binds is fine in ZeroMQ.
        workers = [
            mp.Process(target=worker, args=(tasks_address, results_address)) for _ in range(WORKERS)
        ]
        for p in workers:
            p.start()
        ctx = zmq.Context()
        ventilator = ctx.socket(zmq.PUSH)
        ventilator.bind(tasks_address)
        sink = ctx.socket(zmq.PULL)
        sink.bind(results_address)

        ready = [receive(sink)["ready"] for _ in workers]
        print(f"workers ready: {len(ready)}")
        for n in range(TASKS):
            ventilator.send_json(n)
        results = [receive(sink) for _ in range(TASKS)]
        for _ in workers:
            ventilator.send_json(None)
        for p in workers:
            p.join(timeout=10)
        ctx.destroy(linger=0)

    squares = sorted(r["square"] for r in results)
    split = sorted(Counter(r["pid"] for r in results).values())
    print(f"sink received {len(results)} results, tasks per worker {split}: {squares[:5]}...")
