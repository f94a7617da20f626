"""The frames that cross a worker's channel, and their kinds.

A frame is ``(kind, task_id, payload, buffers)``: a one-byte kind, the task
it is about (0 when none), opaque bytes, and any out-of-band buffers. Only
the worker and the collector ever unpickle a payload; the dispatcher routes
on the header alone, so a result that cannot be unpickled fails its own task
and nothing else.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["KIND_OF", "Frame", "Kind", "Payload"]

Payload = bytes | bytearray | memoryview
"""Frame bodies: bytes, the bytearray a large payload was read into, or a
view of a ZeroMQ frame."""


class Kind(enum.IntEnum):
    """What a frame carries."""

    TASK = 1
    """parent -> worker: pickled ``(fn, args, kwargs)`` to run."""
    STOP = 2
    """parent -> worker: finish up and exit 0."""
    READY = 3
    """worker -> parent: the initializer ran; tasks may follow."""
    INIT_FAILED = 4
    """worker -> parent: the initializer raised; payload is a pickled ``ErrorInfo``."""
    RESULT = 5
    """worker -> parent: the task returned; payload is the pickled value."""
    ERROR = 6
    """worker -> parent: the task raised; payload is a pickled ``ErrorInfo``."""
    RETIRE = 7
    """worker -> parent: I reached a recycling limit; my next frame is my last result."""
    CANCEL = 8
    """parent -> worker: don't start this task, queued behind the running one, if not started."""
    SKIPPED = 9
    """worker -> parent: I dropped that cancelled task without running it."""


KIND_OF: dict[int, Kind] = {int(k): k for k in Kind}
"""Kind by its wire value: transports decode with a dict lookup, 10x cheaper than ``Kind(n)``,
and test a header's kind for membership in it."""


class Frame(NamedTuple):
    """One message on a channel."""

    kind: Kind
    task_id: int
    payload: Payload
    buffers: tuple[Payload, ...] = ()
    """Out-of-band pickle buffers that go with ``payload`` (see ``service.pickling``),
    or descriptors of shared segments that hold them (see ``service.transports.shm``)."""
