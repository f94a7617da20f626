"""``Waker``: the self-pipe that wakes a loop sleeping in select/poll from another thread.

The dispatcher, the daemon's loop and the remote worker's loop each sleep on a
set of descriptors; completions (from other threads) and signal handlers wake
them by writing one byte to this pipe. Wake-ups coalesce: between two drains at
most one byte is written, so a burst of completions costs one ``write(2)``.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["Waker"]


class Waker:
    """A non-blocking pipe: ``wake()`` from anywhere, ``drain()`` from the loop that polls it.

    The loop must ``drain()`` when ``fileno()`` polls readable, and look for
    work only after draining: a ``wake()`` that lands between the drain's read
    and its reset is skipped, and only that order makes the loop see its work.
    Safe to call ``wake()`` from a signal handler.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._signalled = False

    def fileno(self) -> int:
        """The read end, to register with a selector or a ``zmq.Poller``."""
        return self._r

    def wake(self) -> None:
        """Make ``fileno()`` readable, unless a wake-up is already pending."""
        if not self._signalled:
            self._signalled = True
            # Full (impossible with one byte, but harmless) or closed: nobody to wake.
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._w, b"\0")

    def drain(self) -> None:
        """Empty the pipe and re-arm ``wake()``."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._r, 4096)  # at most one byte is ever queued: one read empties it
        # Only after the read: a wake() between the two is skipped, but its work
        # is seen by this pass; cleared first, the read could swallow the byte of
        # a wake() that left _signalled set, and every later wake() would be lost.
        self._signalled = False

    def close(self) -> None:
        """Close both ends; later ``wake()`` calls do nothing. Idempotent."""
        fds, self._r, self._w = (self._r, self._w), -1, -1
        self._signalled = True  # no further writes
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
