"""shared_memory with a numpy array: workers write into the parent's array in place.

Only the block's name crosses to the workers; they map the same pages, so a
32 MB array is not copied or pickled. In exchange, nothing synchronises
access: here each worker writes its own half, and join() is the
synchronisation. With overlapping writes, add a Lock.

Cleanup: every process close()s its mapping (after dropping its numpy views,
or close() raises BufferError); exactly one, the creator, unlink()s the
block, or it stays in /dev/shm until reboot.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import shared_memory

try:
    import numpy as np
except ImportError:  # the first README command installs pipework without it
    raise SystemExit(
        "this example needs numpy: pip install 'pipework[examples]' (or pip install numpy)"
    ) from None

SHAPE = (4_000_000,)
DTYPE = np.float64


def fill(name: str, start: int, stop: int, value: float) -> None:
    shm = shared_memory.SharedMemory(name=name)
    try:
        array = np.ndarray(SHAPE, dtype=DTYPE, buffer=shm.buf)
        array[start:stop] = value  # straight into the shared pages
        del array  # release the view before close()
    finally:
        shm.close()


if __name__ == "__main__":
    nbytes = int(np.prod(SHAPE)) * np.dtype(DTYPE).itemsize
    shm = shared_memory.SharedMemory(create=True, size=nbytes)
    try:
        array = np.ndarray(SHAPE, dtype=DTYPE, buffer=shm.buf)
        array[:] = 0.0
        half = SHAPE[0] // 2
        workers = [
            mp.Process(target=fill, args=(shm.name, 0, half, 1.0)),
            mp.Process(target=fill, args=(shm.name, half, SHAPE[0], 2.0)),
        ]
        for p in workers:
            p.start()
        for p in workers:
            p.join(timeout=30)
        print(f"shared block {shm.name}: {nbytes:,} bytes, passed to the workers by name only")
        print(f"array written by the workers: sum = {array.sum():,.0f} (expected {3 * half:,})")
        del array
    finally:
        shm.close()
        shm.unlink()  # the creator removes it
    print("closed and unlinked")
