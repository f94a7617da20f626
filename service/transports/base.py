"""The transport contract: how the dispatcher and one worker exchange frames.

Each worker gets its own channel, so no lock is ever shared between writers
and a worker killed in the middle of a write can only garble its own channel,
which dies with it.

The parent's end (``ParentChannel``) never blocks: the dispatcher multiplexes
every channel on one thread with a selector, so ``send`` only buffers,
``flush`` writes what the OS takes now, and ``recv`` returns the frames that
are complete now. A stopped or slow worker therefore cannot stall the others.
The worker's end (``WorkerChannel``) blocks, because a worker does one thing
at a time.

Errors separate "we closed it" (``TransportClosed``) from "the peer broke it"
(``TransportBroken``, with the OS error in ``__cause__`` where there is one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipework.service.errors import PipeworkError
from pipework.service.transports.frames import Frame, Kind

__all__ = [
    "ParentChannel",
    "Transport",
    "TransportBroken",
    "TransportClosed",
    "WorkerChannel",
    "WorkerEndpoint",
]


class TransportClosed(PipeworkError):
    """The channel was closed by this side; using it is a bug."""


class TransportBroken(PipeworkError):
    """The peer went away (end of file, broken pipe) or sent a malformed frame."""


class ParentChannel(Protocol):
    """The dispatcher's end of one worker's channel. Never blocks."""

    def fileno(self) -> int:
        """A descriptor that is readable when ``recv`` may return frames."""
        ...

    def write_fileno(self) -> int:
        """A descriptor that is writable when ``flush`` can make progress.

        -1 (or the same as ``fileno()``) if there is none: the dispatcher
        then retries ``flush`` every few milliseconds while output is queued.
        """
        ...

    def pending(self) -> bool:
        """True if input is buffered that ``fileno()`` will not announce.

        Edge-triggered descriptors (ZeroMQ's) only signal new arrivals; after
        a send, messages already queued must be found by asking.
        """
        ...

    def lost(self) -> bool:
        """True if the transport found the worker unreachable though its process lives.

        Heartbeating transports (ZeroMQ) report a silent peer here; the
        dispatcher then kills the worker, which fails or retries its task.
        """
        ...

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        """Queue a frame and its out-of-band buffers (not copied); ``flush`` writes it."""
        ...

    def flush(self) -> bool:
        """Write what the OS accepts now. Returns True when nothing is left queued.

        Raises:
            TransportBroken: the worker's end is gone.
        """
        ...

    def recv(self) -> list[Frame]:
        """Return the frames completed so far, possibly none.

        Raises:
            TransportBroken: end of file (with no complete frame left) or a
                malformed frame.
        """
        ...

    def close(self) -> None:
        """Release the channel. Idempotent."""
        ...


class WorkerChannel(Protocol):
    """A worker's end of its channel. Blocking."""

    def recv(self) -> Frame:
        """Wait for the next frame.

        Raises:
            TransportBroken: the dispatcher is gone.
        """
        ...

    def recv_nowait(self) -> Frame | None:
        """The next frame if one has wholly arrived, else None, without blocking.

        Raises:
            TransportBroken: the dispatcher is gone.
        """
        ...

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        """Write one whole frame, with its out-of-band buffers.

        Raises:
            TransportBroken: the dispatcher is gone.
        """
        ...

    def close(self) -> None:
        """Deliver what was sent, then release the channel (the worker is exiting)."""
        ...


class WorkerEndpoint(Protocol):
    """What a worker process is handed at start; picklable for spawn and forkserver."""

    def open(self) -> WorkerChannel:
        """Open the worker's end of the channel (in the worker process)."""
        ...


class Transport(Protocol):
    """A factory of channels."""

    name: str
    durable_sends: bool
    """True if a frame is safe once the worker's ``send`` returns: it reaches the
    dispatcher even if the worker is SIGKILLed right after. Only then may the
    dispatcher queue tasks behind a running one (a result lost with its worker
    would make the dispatcher blame the wrong task for the death)."""
    direct_sends: bool
    """True if a submitting thread may ``send`` and ``flush`` on a channel (under the
    dispatcher's lock) while the dispatcher thread sleeps in ``select``: the
    channel's descriptor reports input level-triggered, so a send from another
    thread cannot swallow the readiness the dispatcher waits for."""

    def pair(self) -> tuple[ParentChannel, WorkerEndpoint]:
        """Create one channel: the parent's end and what to hand the worker."""
        ...

    def started(self, endpoint: WorkerEndpoint) -> None:
        """The worker was started with ``endpoint``: drop the parent's copies of its resources."""
        ...

    def inheritable_fds(self, channel: ParentChannel) -> list[int]:
        """Descriptors of the parent's end that a forked sibling must close."""
        ...

    def close(self) -> None:
        """Release what the transport holds beyond its channels (sockets, directories)."""
        ...
