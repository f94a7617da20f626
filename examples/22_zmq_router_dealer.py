"""ZeroMQ load balancing: a ROUTER hands each task to the worker that asked for one.

Two workers, one fast (10 ms a task) and one slow (100 ms), share 20 tasks.

- Round-robin (the broker's socket is a DEALER): tasks are dealt in turn
  whatever each worker is doing, 10 each, and everyone waits for the slow one.
- Load-balanced (the broker's socket is a ROUTER): each worker sends "ready"
  and then one reply per task; the ROUTER sees who sent each message (its
  routing id) and sends the next task to exactly that worker, so a worker
  only ever has one task and the fast one does most of them.

The broker binds tcp://127.0.0.1 on a port the system picks.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter

import zmq

TASKS = 20
DELAYS = {"fast": 0.01, "slow": 0.1}


def worker(address: str, name: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, name.encode())
    sock.connect(address)
    sock.send(b"ready")
    try:
        while sock.poll(10_000):
            task = sock.recv()
            if task == b"stop":
                break
            time.sleep(DELAYS[name])
            sock.send(name.encode())  # the reply is also a request for the next task
    finally:
        ctx.destroy(linger=1000)


def recv(sock: zmq.Socket[bytes]) -> list[bytes]:
    if not sock.poll(10_000):
        raise SystemExit("no message within 10 s")
    return sock.recv_multipart()


def run(kind: int) -> None:
    ctx = zmq.Context()
    broker = ctx.socket(kind)
    broker.bind("tcp://127.0.0.1:*")
    address = broker.getsockopt_string(zmq.LAST_ENDPOINT)
    workers = [mp.Process(target=worker, args=(address, name)) for name in DELAYS]
    for p in workers:
        p.start()

    done: Counter[str] = Counter()
    started = time.perf_counter()
    if kind == zmq.DEALER:
        for _ in workers:
            recv(broker)  # both "ready": both connected, so the dealing is fair
        for n in range(TASKS):
            broker.send(str(n).encode())
        for _ in range(TASKS):
            done[recv(broker)[0].decode()] += 1
        for _ in workers:
            broker.send(b"stop")
    else:
        sent = 0
        while sum(done.values()) < TASKS:
            identity, reply = recv(broker)  # the ROUTER prepends the sender's routing id
            if reply != b"ready":
                done[reply.decode()] += 1
            if sent < TASKS:
                broker.send_multipart([identity, str(sent).encode()])
                sent += 1
        for name in DELAYS:
            broker.send_multipart([name.encode(), b"stop"])
    elapsed = time.perf_counter() - started
    for p in workers:
        p.join(timeout=10)
    ctx.destroy(linger=0)
    label = "round-robin (DEALER)" if kind == zmq.DEALER else "load-balanced (ROUTER)"
    print(f"{label}: fast did {done['fast']}, slow did {done['slow']}, in {elapsed:.2f} s")


if __name__ == "__main__":
    run(zmq.DEALER)
    run(zmq.ROUTER)
