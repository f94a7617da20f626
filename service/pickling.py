"""Pickling of calls and results: protocol 5, large buffers out of band or shared.

A NumPy array or a ``pickle.PickleBuffer`` (wrap a ``bytearray`` in one:
pickle writes a bare ``bytearray`` in band) of at least
``OUT_OF_BAND_MIN`` bytes is not copied into the pickle stream: it travels as
a separate buffer that the transport writes straight from the object's
memory (``writev``, ZeroMQ frames with ``copy=False``) and the receiver
unpickles in place (``pickle.loads(..., buffers=...)``). Below that size a
copy costs less than the bookkeeping, so small buffers stay in band.

A transport may instead share large buffers (``service.transports.shm``): then only
a descriptor crosses the channel and the receiver maps the segment. A
worker's results are shared by ``dumps_result`` when its transport asked for
it; a call's arguments, by the transport's ``send``.

An object sent out of band is read when it is written to the worker, not
when ``submit`` returns: don't mutate an argument until its future is done
(``ProcessPoolExecutor`` behaves the same way).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from pipework.service.transports import shm
from pipework.service.transports.frames import Payload

__all__ = ["OUT_OF_BAND_MIN", "Share", "dumps", "dumps_result", "loads"]

OUT_OF_BAND_MIN = 64 * 1024
"""Smallest buffer, in bytes, sent out of band."""

Share = Callable[[memoryview], "memoryview | None"]
"""Puts a buffer in shared memory and returns its descriptor, or None to send it as is."""


class _HasLarge(Exception):
    """Raised by ``_in_band`` to leave the fast path: the object holds a large buffer."""


def _large(buffer: pickle.PickleBuffer) -> memoryview | None:
    """The buffer's memory if it is to go out of band, else None (small, or not contiguous)."""
    try:
        view = buffer.raw()
    except BufferError:  # not contiguous: only in band can hold it
        return None
    return view if view.nbytes >= OUT_OF_BAND_MIN else None


def _in_band(buffer: pickle.PickleBuffer) -> bool:
    if _large(buffer) is None:
        return True
    raise _HasLarge


def dumps(obj: object, share: Share | None = None) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; return the stream and the buffers to send beside it.

    Args:
        obj: what to pickle.
        share: how buffers of ``shm.SHARED_MIN`` bytes or more are shared;
            None (the default) sends every buffer through the channel.

    Raises:
        Whatever pickling ``obj`` raises.
    """
    # The common call holds no large buffer: one pickling with a module-level
    # callback, no closure or list built per call (half the cost of a tiny
    # call's pickling). A large buffer restarts the pickling on the slow path.
    try:
        return pickle.dumps(obj, 5, buffer_callback=_in_band), []
    except _HasLarge:
        pass
    buffers: list[memoryview] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        view = _large(buffer)
        if view is None:
            return True
        shared = share(view) if share is not None and view.nbytes >= shm.SHARED_MIN else None
        buffers.append(view if shared is None else shared)
        return False  # false means: out of band

    try:
        return pickle.dumps(obj, 5, buffer_callback=keep_large), buffers
    except BaseException:
        shm.discard(buffers)
        raise


def dumps_result(obj: object) -> tuple[bytes, list[memoryview]]:
    """``dumps`` for a worker's result: large buffers go in segments its parent claims,
    if the worker's transport asked for that (``shm.serve_as_worker``)."""
    prefix = shm.result_prefix()
    share = None if prefix is None else functools.partial(shm.share_named, prefix=prefix)
    return dumps(obj, share)


def loads(payload: Payload, buffers: Sequence[Payload] = ()) -> Any:
    """Unpickle what ``dumps`` produced, mapping any shared segments it names.

    Raises:
        OSError: a shared segment is gone (its task was resolved meanwhile).
        Whatever unpickling raises.
    """
    if buffers:
        buffers = [shm.attach(b) for b in buffers]
    return pickle.loads(payload, buffers=buffers)
