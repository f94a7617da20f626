"""Memory for large payloads: segments shared between processes, and fresh receive buffers.

What moving 64 MiB between processes costs is mostly page faults on fresh
memory, not the copy: on a VM, faulting in 16,384 4 KiB pages costs several
times copying into them. Two tools follow from that:

- ``receive_buffer``: private memory backed by transparent huge pages (32
  faults for 64 MiB), which the ``pipe`` transport reads large bodies into.
- shared segments: a buffer is written once into a file in memory and only a
  small descriptor crosses the channel; the receiver maps the file. This
  saves the channel's copies, but not the faults: shmem gets no huge pages
  unless the administrator enables them, so it pays only where the channel
  itself copies several times (the ``queue`` transport). A descriptor replaces
  the out-of-band pickle buffer in the frame; ``attach`` maps it back into a
  ``memoryview`` and leaves every other buffer alone.

```
 parent ──memfd (no name)──▶ worker      worker ──/dev/shm/pipework-<pid>-<token>-<n>──▶ parent
   the channel holds the fd until           the parent opens and unlinks it as soon as the
   the task's answer arrives; the worker    frame arrives (``claim``), then maps it
   opens /proc/<pid>/fd/<n>, maps it
   copy-on-write
```

Parent to worker: ``share`` writes the buffer into a ``memfd`` (an anonymous
file: nothing can ever be left behind, whoever dies) and returns a
descriptor whose owner closes the fd when it is dropped; the sender keeps it
until the worker has answered for that task (or is gone). The worker opens the
fd through ``/proc/<pid>/fd/<n>``, checks that its device, inode and size are
those named (a reused fd number is refused), and maps it copy-on-write.

Worker to parent: a worker cannot hand a memfd over this way, because it
would have to keep it open until the parent has opened it, and it never
learns when. So ``share_named`` writes a file in ``/dev/shm`` named after the
channel; the parent opens it and unlinks it as soon as the frame arrives
(``claim``), so it lives on only as the parent's mapping. A worker killed
after creating one, or while sending its frame, leaves a name behind: the
parent's channel ``sweep``s its prefix when it forgets the worker. A
dispatcher killed by SIGKILL takes its workers with it; ``new_prefix``
unlinks the names of dead processes when the next pool starts.

Why not ``multiprocessing.shared_memory``: on Python 3.11 every
``SharedMemory`` registers with the resource tracker, even one merely
attached (unregistering costs a message per segment, and a tracker that
outlives the registration unlinks and warns), and its ``close()`` fails while
a view of it exists, which is exactly what a zero-copy result is. ``mmap`` of
a descriptor has neither problem: the mapping lives as long as a view does.

Writes use ``os.write``, not a mapping: the kernel fills the file's pages
directly, and a full ``/dev/shm`` fails with ``ENOSPC`` instead of SIGBUS.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
import struct
import sys
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

from pipework.service.transports.frames import Frame, Payload

__all__ = [
    "DIRECTORY",
    "PREFIX",
    "SHARED_MIN",
    "attach",
    "claim",
    "discard",
    "is_descriptor",
    "new_prefix",
    "receive_buffer",
    "result_prefix",
    "serve_as_worker",
    "share",
    "share_named",
    "sweep",
    "sweep_dead",
]

DIRECTORY = Path("/dev/shm")
"""Where named segments (worker to parent) live."""
PREFIX = "pipework-"
"""Every named segment's file name starts with this, then the creating pool's pid."""
SHARED_MIN = 64 * 1024
"""Smallest buffer a transport that shares (``queue``) hands over shared memory: every
out-of-band buffer (``pickling.OUT_OF_BAND_MIN``), so that each arrives writable."""

_MAGIC = b"pw-shm\x00\x01"
# magic, kind, then (pid, fd, st_dev, st_ino) for a memfd or zeros for a name, then size;
# a name's bytes follow.
_DESC = struct.Struct("<8sB7xQQQQQ")
_FD, _NAMED = 1, 2
_PR_GET_DUMPABLE = 3
_DESC_MAX = _DESC.size + 255
# Below this a receive buffer comes from malloc, which (glibc) keeps freed blocks
# of up to 32 MiB mapped and reuses them: no faults at all. Above, malloc maps
# fresh 4 KiB pages for every block. Measured echoes (pipe, 2 workers): heap
# 1.3-1.7 GB/s up to 16 MiB (huge pages: 0.5-1.3), huge pages 1.4-1.6 GB/s
# at 64 MiB (heap: 0.6-0.7).
_HUGE_MIN = 32 * 1024 * 1024

_lock = threading.Lock()
_open_fds: dict[int, object] = {}
"""memfds this process shares, each with the token of its owner (see ``_release``)."""
_result_prefix: str | None = None
_counter = 0
_swept_stale = False


class _Descriptor(bytearray):
    """A descriptor's bytes; while it lives, so does the segment it names."""

    __slots__ = ("__weakref__",)


def share(view: memoryview) -> memoryview | None:
    """Copy ``view`` into a new memfd; return a descriptor of it, or None if that fails.

    The segment is freed when the returned view and every view of it are
    gone (and every receiver has dropped its mapping). None means "send the
    bytes instead": no memfd (not Linux), no descriptor left (EMFILE), or
    no room in memory.
    """
    if not _fds_reachable():
        return None
    try:
        fd = os.memfd_create("pipework", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None
    try:
        _write_all(fd, view)
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    desc = _Descriptor(_DESC.pack(_MAGIC, _FD, os.getpid(), fd, st.st_dev, st.st_ino, view.nbytes))
    token = object()
    with _lock:
        _open_fds[fd] = token
    weakref.finalize(desc, _release, fd, token)
    return memoryview(desc)


@functools.cache
def _fds_reachable() -> bool:
    # Another process may open /proc/<pid>/fd/<n> only while this process is
    # "dumpable" (same user, no setuid, not prctl(PR_SET_DUMPABLE, 0)).
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) > 0)


def _release(fd: int, token: object) -> None:
    # Close only if the fd is still ours: after a fork the child forgets every
    # shared fd (see _forget_after_fork), and its number may be reused there.
    with _lock:
        if _open_fds.get(fd) is not token:
            return
        del _open_fds[fd]
    os.close(fd)


def _forget_after_fork() -> None:
    # A worker started by fork must not keep the parent's pending segments
    # alive for its whole life, nor share results under its parent's prefix
    # (its own transport's endpoint sets one if it shares).
    global _lock, _result_prefix
    _lock = threading.Lock()
    _result_prefix = None
    for fd in _open_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def share_named(view: memoryview, prefix: str) -> memoryview | None:
    """Copy ``view`` into a new named segment under ``prefix``; return its descriptor.

    The receiver unlinks the name; until it does, the name is the creator's
    to clean up (``discard``, ``sweep``). None if the segment cannot be made.
    """
    global _counter
    with _lock:
        _counter += 1
        name = f"{prefix}{_counter}"
    path = DIRECTORY / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        _write_all(fd, view)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    finally:
        os.close(fd)
    encoded = name.encode()
    return memoryview(_DESC.pack(_MAGIC, _NAMED, 0, 0, 0, 0, view.nbytes) + encoded)


def _write_all(fd: int, view: memoryview) -> None:
    data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    done, size = 0, data.nbytes
    while done < size:
        done += os.write(fd, data[done:])


def is_descriptor(buf: Payload) -> bool:
    """True if ``buf`` is a descriptor made by ``share`` or ``share_named``."""
    return _DESC.size <= len(buf) <= _DESC_MAX and bytes(buf[: len(_MAGIC)]) == _MAGIC


def attach(buf: Payload) -> Payload:
    """Map the segment ``buf`` describes, or return ``buf`` itself if it is no descriptor.

    Raises:
        OSError: the segment is gone (its owner released it, or its worker died).
        ValueError: a malformed descriptor, or one naming another file.
    """
    if not is_descriptor(buf):
        return buf
    _, kind, pid, fd, dev, ino, size = _DESC.unpack_from(buf)
    if kind == _FD:
        opened = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(opened)
            if (st.st_dev, st.st_ino) != (dev, ino) or st.st_size != size:
                raise ValueError(f"fd {fd} of process {pid} is no longer the shared segment")
            # Copy-on-write: what the task writes into its argument stays its own.
            return _map(opened, size, mmap.MAP_PRIVATE)
        finally:
            os.close(opened)
    if kind == _NAMED:
        name = bytes(buf[_DESC.size :]).decode()
        if "/" in name or not name.startswith(PREFIX):
            raise ValueError(f"not a pipework segment name: {name!r}")
        path = DIRECTORY / name
        opened = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.unlink(path)  # ours alone now: nothing can leak it any more
            if os.fstat(opened).st_size != size:
                raise ValueError(f"segment {name} has the wrong size")
            return _map(opened, size, mmap.MAP_SHARED)
        finally:
            os.close(opened)
    raise ValueError(f"unknown shared segment kind {kind}")


def _map(fd: int, size: int, flags: int) -> memoryview:
    if size == 0:
        return memoryview(b"")
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    mapped = mmap.mmap(fd, size, flags=flags, prot=prot)
    return memoryview(mapped)


def claim(frame: Frame) -> Frame:
    """Map the segments ``frame`` names, at once, so that a later ``sweep`` cannot take them.

    A descriptor that cannot be mapped stays in the frame: unpickling it
    fails that task alone, with the reason.
    """
    if not frame.buffers:
        return frame
    buffers = []
    for buf in frame.buffers:
        try:
            buffers.append(attach(buf))
        except (OSError, ValueError):
            buffers.append(buf)
    return frame._replace(buffers=tuple(buffers))


def discard(buffers: Iterable[Payload]) -> None:
    """Unlink the named segments among ``buffers`` that nobody will receive."""
    for buf in buffers:
        if is_descriptor(buf) and _DESC.unpack_from(buf)[1] == _NAMED:
            with contextlib.suppress(OSError):
                os.unlink(DIRECTORY / bytes(buf[_DESC.size :]).decode())


def new_prefix() -> str:
    """A fresh name prefix for one channel's segments, unique on this machine.

    The first call in a process also unlinks segments left by pipework
    processes that no longer exist (a dispatcher killed by SIGKILL).
    """
    global _swept_stale
    if not _swept_stale:
        _swept_stale = True
        sweep_dead()
    return f"{PREFIX}{os.getpid()}-{os.urandom(6).hex()}-"


def sweep(prefix: str) -> None:
    """Unlink every segment whose name starts with ``prefix`` (a worker that is gone)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(DIRECTORY):
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def sweep_dead() -> None:
    """Unlink this user's segments whose creating process no longer exists."""
    uid = os.getuid()
    with contextlib.suppress(OSError):
        for entry in os.scandir(DIRECTORY):
            if not entry.name.startswith(PREFIX):
                continue
            pid = entry.name[len(PREFIX) :].split("-", 1)[0]
            with contextlib.suppress(OSError, ValueError):
                if entry.stat().st_uid == uid and not _alive(int(pid)):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_as_worker(prefix: str) -> None:
    """In a worker: share large results as named segments under ``prefix``."""
    global _result_prefix
    _result_prefix = prefix


def result_prefix() -> str | None:
    """The prefix ``serve_as_worker`` set, or None (not a worker: results are not shared)."""
    return _result_prefix


def receive_buffer(size: int) -> memoryview:
    """Fresh writable memory for a large incoming body, backed by huge pages where it can be.

    A fresh 64 MiB ``bytearray`` costs 16,384 page faults as it is filled;
    with transparent huge pages, 32. Bodies under 32 MiB come from the heap,
    which reuses memory that is already mapped.
    """
    if size < _HUGE_MIN:
        return memoryview(bytearray(size))
    mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            mapped.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(mapped)
