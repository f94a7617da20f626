"""Pickle protocol 5: large buffers travel out of band, next to a small pickle.

pickle.dumps(array) copies the array's bytes into the pickle. With protocol 5
and a buffer_callback, the pickle holds only a reference and the callback
receives the array's memory as a PickleBuffer, uncopied; the sender writes
those buffers to the pipe (or socket) directly from the array, and the
receiver rebuilds the array over the received buffers with
pickle.loads(..., buffers=...), again without copying.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
from multiprocessing.connection import Connection

try:
    import numpy as np
except ImportError:  # the first README command installs pipework without it
    raise SystemExit(
        "this example needs numpy: pip install 'pipework[examples]' (or pip install numpy)"
    ) from None


def send_oob(conn: Connection, obj: object) -> None:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    conn.send((header, [b.raw().nbytes for b in buffers]))
    for buffer in buffers:
        conn.send_bytes(buffer.raw())  # written from the array's own memory


def recv_oob(conn: Connection) -> object:
    header, sizes = conn.recv()
    buffers = []
    for size in sizes:
        buffer = bytearray(size)  # writable, so the rebuilt array is writable too
        conn.recv_bytes_into(buffer)
        buffers.append(buffer)
    return pickle.loads(header, buffers=buffers)


def doubler(conn: Connection) -> None:
    array = recv_oob(conn)
    assert isinstance(array, np.ndarray)
    array *= 2  # in place, in the receive buffer
    send_oob(conn, array)
    conn.close()


if __name__ == "__main__":
    array = np.arange(2_000_000, dtype=np.float64)  # 16 MB
    in_band = pickle.dumps(array, protocol=5)
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    print(f"in-band pickle: {len(in_band):,} bytes (the data copied in)")
    print(f"out-of-band: pickle {len(header)} bytes + buffers {[b.raw().nbytes for b in buffers]}")
    print(
        f"the buffer is the array's own memory: {np.shares_memory(np.asarray(buffers[0]), array)}"
    )

    parent, child = mp.Pipe()
    p = mp.Process(target=doubler, args=(child,))
    p.start()
    child.close()
    send_oob(parent, array)
    if not parent.poll(30):
        raise SystemExit("no reply within 30 s")
    doubled = recv_oob(parent)
    p.join(timeout=10)
    parent.close()
    assert isinstance(doubled, np.ndarray)
    print(f"round trip through a child: doubled correctly = {np.array_equal(doubled, array * 2)}")
