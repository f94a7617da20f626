"""Pickling of calls and results: protocol 5, large buffers out of band.

A NumPy array, a ``bytearray`` or a ``pickle.PickleBuffer`` of at least
``OUT_OF_BAND_MIN`` bytes is not copied into the pickle stream: it travels as
a separate buffer that the transport writes straight from the object's
memory (``writev``, ZeroMQ frames with ``copy=False``) and the receiver
unpickles in place (``pickle.loads(..., buffers=...)``). Below that size a
copy costs less than the bookkeeping, so small buffers stay in band.

An object sent out of band is read when it is written to the worker, not
when ``submit`` returns: don't mutate an argument until its future is done
(``ProcessPoolExecutor`` behaves the same way).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from service.frames import Payload

__all__ = ["OUT_OF_BAND_MIN", "dumps", "loads"]

OUT_OF_BAND_MIN = 64 * 1024
"""Smallest buffer, in bytes, sent out of band."""


def dumps(obj: object) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; return the stream and the buffers to send beside it.

    Raises:
        Whatever pickling ``obj`` raises.
    """
    buffers: list[memoryview] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: only in band can hold it
            return True
        if view.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(view)
        return False  # false means: out of band

    return pickle.dumps(obj, 5, buffer_callback=keep_large), buffers


def loads(payload: Payload, buffers: Sequence[Payload] = ()) -> Any:
    """Unpickle what ``dumps`` produced."""
    return pickle.loads(payload, buffers=buffers)
