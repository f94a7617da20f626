"""Tasks that behave as badly as real ones do (importable in a fresh worker process).

- ``hog_gil`` ignores every polite signal and then sits in one C call that
  never releases the GIL, so no Python thread, handler or watchdog can run in
  its worker: only the kernel can stop it.
- ``start_children`` starts processes of its own (a child, and a grandchild
  that calls setsid, as daemons do) and records their pids for the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLITE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def hog_gil(mark: str) -> int:
    """Ignore SIGTERM/SIGINT/SIGHUP, create ``mark``, then hold the GIL for an hour or more."""
    for sig in POLITE_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    Path(mark).touch()
    return sum(range(10**11))  # one C call: no eval-loop break, no GIL hand-off


# Python that sleeps until killed; the -c text makes it easy to spot in ps.
_SLEEPER = "import time; time.sleep(3600)  # pipework test sleeper"


def start_children(pid_file: str, detach: bool = False, linger: bool = True) -> None:
    """Start a child and a grandchild, write the worker's and their pids, then sleep.

    The pids are ``worker child middle grandchild``: the middle process
    started the grandchild and waits. With ``detach`` the grandchild leaves
    the worker's process group by setsid (a new session), as a daemon would.
    Without ``linger`` the task returns at once and leaves them running.
    """
    child = subprocess.Popen([sys.executable, "-c", _SLEEPER])
    grandchild_code = (
        "import os, subprocess, sys, time\n"
        f"kw = {{'start_new_session': {detach!r}}}\n"
        f"p = subprocess.Popen([sys.executable, '-c', {_SLEEPER!r}], **kw)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(3600)\n"
    )
    middle = subprocess.Popen(
        [sys.executable, "-c", grandchild_code], stdout=subprocess.PIPE, text=True
    )
    assert middle.stdout is not None
    grandchild = int(middle.stdout.readline())
    tmp = pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid} {middle.pid} {grandchild}\n")
    os.replace(tmp, pid_file)  # the test sees all four pids or none
    if linger:
        time.sleep(3600)


class _MakeDir:
    """Pickles to a call of ``os.mkdir(path)``: unpickling it leaves a visible trace."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def result_frame(task_id: int, marker: str) -> bytes:
    """A well-formed RESULT frame (zmq transport layout) whose payload runs ``mkdir marker``."""
    import pickle  # noqa: PLC0415
    import struct  # noqa: PLC0415

    return struct.pack("<BQ", 5, task_id) + pickle.dumps(_MakeDir(marker))


def pester(addresses: list[str], marker: str) -> None:
    """Connect to each ZeroMQ address as strangers and send garbage and forged results.

    Run as a separate process: any local process can do this to a ``tcp://``
    endpoint on loopback. Some strangers take the routing ids a worker would
    have had if ids were guessable (``w1``, ``w2``, ...).
    """
    import zmq  # noqa: PLC0415

    ctx = zmq.Context()
    socks = []
    for address in addresses:
        identities: list[bytes | None] = [None, *(b"w%d" % n for n in range(1, 9))]
        for identity in identities:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 2000)
            if identity is not None:
                sock.setsockopt(zmq.ROUTING_ID, identity)
            sock.connect(address)
            socks.append(sock)
            sock.send(b"x")  # too short for a header
            sock.send(b"\xff" * 9)  # an unknown kind
            sock.send_multipart([b"\x05", b"", b""])  # header cut short
            sock.send(struct_ready())
            for task_id in range(1, 21):
                sock.send(result_frame(task_id, marker))
    for sock in socks:
        sock.close()  # LINGER: what was queued is sent first
    ctx.term()


def struct_ready() -> bytes:
    """A well-formed READY frame (kind 3, task 0)."""
    import struct  # noqa: PLC0415

    return struct.pack("<BQ", 3, 0)
