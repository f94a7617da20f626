"""multiprocessing.Pipe: a duplex conversation, and a one-way pipe read until EOF.

- Pipe() is duplex: both ends send and receive (a socket pair on Unix).
- Pipe(duplex=False) returns (reader, writer): one direction only (an OS pipe).
- recv() raises EOFError only when every copy of the writing end is closed,
  including the parent's own copy: close the ends a process does not use.
- poll(timeout) bounds a wait; recv() alone would wait forever.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection


def calculator(conn: Connection) -> None:
    while (request := conn.recv()) is not None:
        op, a, b = request
        conn.send(a + b if op == "add" else a * b)
    conn.close()


def counter(writer: Connection, n: int) -> None:
    for i in range(n):
        writer.send(i)
    writer.close()


if __name__ == "__main__":
    parent, child = mp.Pipe()
    p = mp.Process(target=calculator, args=(child,))
    p.start()
    child.close()  # the child has its own copy now
    for request in [("add", 2, 3), ("mul", 4, 5)]:
        parent.send(request)
        if not parent.poll(10):
            raise SystemExit("no answer within 10 s")
        print(f"duplex: {request} -> {parent.recv()}")
    parent.send(None)
    p.join(timeout=10)
    parent.close()

    reader, writer = mp.Pipe(duplex=False)
    p = mp.Process(target=counter, args=(writer, 5))
    p.start()
    writer.close()  # without this, recv() below would block forever instead of raising EOFError
    received = []
    while True:
        if not reader.poll(10):
            raise SystemExit("nothing within 10 s")
        try:
            received.append(reader.recv())
        except EOFError:  # every writing end is closed and the pipe is drained
            break
    p.join(timeout=10)
    reader.close()
    print(f"one-way: received {received}, then EOFError")
