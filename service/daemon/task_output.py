"""A daemon task's prints, as log events that carry its task id.

Workers share the daemon's stderr, so a task's ``print`` used to land raw in
the middle of the daemon's JSON log lines, unparseable and with no hint of
which task wrote it. The daemon therefore runs each local task through
``run_task``, which swaps ``sys.stdout`` and ``sys.stderr`` for writers that
turn every complete line into one event on the real stderr::

    {"event": "task output", "stream": "stdout", "line": "resizing a.png",
     "task_id": "6f1c…", "task": "resize", "worker_pid": 4301, "level": "info",
     "logger": "pipework.task", "timestamp": "2026-…Z"}

or, when the daemon logs for a terminal, ``[6f1c0e2a9b8d] resizing a.png``.
Only Python-level text writes are caught: ``sys.stdout.buffer``, a C
extension or a child process writing to file descriptor 1 or 2 directly
still write raw bytes.

Imported by worker processes: keep it to the standard library.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

__all__ = ["run_task"]


class _LineEvents:
    """A text stream that emits each complete line it is given as one event."""

    def __init__(
        self, stream: str, task_id: str, task: str, as_json: bool, out: TextIO, original: TextIO
    ) -> None:
        self._original = original  # what fileno() and buffer reach: raw, unwrapped
        self._stream = stream
        self._task_id = task_id
        self._task = task
        self._as_json = as_json
        self._out = out
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line)
        return len(text)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""
        self._out.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def buffer(self) -> Any:
        return self._original.buffer

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"

    def _emit(self, line: str) -> None:
        if self._as_json:
            event = {
                "event": "task output",
                "stream": self._stream,
                "line": line,
                "task_id": self._task_id,
                "task": self._task,
                "worker_pid": os.getpid(),
                "level": "info" if self._stream == "stdout" else "warning",
                "logger": "pipework.task",
                "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
            }
            self._out.write(json.dumps(event, default=str) + "\n")
        else:
            self._out.write(f"[{self._task_id[:12]}] {line}\n")


def run_task(
    task_id: str,
    task: str,
    as_json: bool,
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> Any:
    """Call ``fn(*args, **kwargs)`` with its stdout and stderr lines as events of ``task_id``.

    Args:
        task_id: the daemon's id of the task, put on every line.
        task: the task's registered name.
        as_json: JSON events (the daemon logs JSON), else ``[task id] line``.
        fn, args, kwargs: the call.

    Returns:
        What ``fn`` returns; what it raises propagates unchanged.
    """
    real = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    saved = sys.stdout, sys.stderr
    out = _LineEvents("stdout", task_id, task, as_json, real, saved[0])
    err = _LineEvents("stderr", task_id, task, as_json, real, saved[1])
    sys.stdout, sys.stderr = out, err
    try:
        return fn(*args, **kwargs)
    finally:
        sys.stdout, sys.stderr = saved
        out.close()
        err.close()
