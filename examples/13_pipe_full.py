"""A full pipe blocks its writer; two processes that both write first deadlock.

A pipe holds little (64 KiB on Linux). send() of a larger message returns
only once the other side has read most of it.

1. The child sends 1 MiB while the parent is not reading: the child stays
   blocked in send() (join with a timeout shows it alive) until the parent reads.
2. Both sides send 1 MiB and only then read: each waits for the other to read,
   forever. The fix: one side reads first, or writes from a thread. Here the
   parent's send runs in a thread, so we can watch it stay stuck, then unblock
   both by reading.

Connection.send has no timeout; put a bound on it from outside (a thread, or
the peer's liveness) as below.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from multiprocessing.connection import Connection

MIB = 1024 * 1024


def sender(conn: Connection) -> None:
    conn.send_bytes(b"x" * MIB)
    conn.close()


def send_then_receive(conn: Connection) -> None:
    conn.send_bytes(b"c" * MIB)
    conn.recv_bytes()
    conn.close()


if __name__ == "__main__":
    parent, child = mp.Pipe()
    p = mp.Process(target=sender, args=(child,))
    p.start()
    child.close()
    p.join(timeout=0.5)
    print(f"writer blocked on a full pipe: child alive after 0.5 s = {p.is_alive()}")
    data = parent.recv_bytes()
    p.join(timeout=10)
    print(f"after the parent read {len(data):,} bytes: child exit code {p.exitcode}")
    parent.close()

    parent, child = mp.Pipe()
    p = mp.Process(target=send_then_receive, args=(child,))
    p.start()
    child.close()
    parent_send = threading.Thread(target=parent.send_bytes, args=(b"p" * MIB,))
    parent_send.start()
    parent_send.join(timeout=0.5)
    p.join(timeout=0.5)
    print(
        f"both sides writing: parent stuck = {parent_send.is_alive()}, child stuck = {p.is_alive()}"
    )
    data = parent.recv_bytes()  # reading breaks the cycle
    parent_send.join(timeout=10)
    p.join(timeout=10)
    print(
        f"deadlock broken by reading first: parent sent = {not parent_send.is_alive()}, "
        f"child exit code {p.exitcode}"
    )
    parent.close()
