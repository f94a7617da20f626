"""How one run of a daemon task ended, as JSON-ready data.

Local runs end as a ``concurrent.futures.Future`` of the daemon's own
``WorkerService``; remote runs end as a ``result`` message from a remote
worker (which built it from *its* pool's future with the same function). Both
become an ``Outcome``, so the daemon has one place that decides what a run
means for the task: done, failed, timed out, its worker lost, or interrupted
by a shutdown (not the task's doing; it runs again later).
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from pipework.service.collector import RemoteTraceback
from pipework.service.errors import (
    BrokenService,
    RemoteError,
    ServiceClosed,
    TaskTimeout,
    WorkerLost,
    describe_exitcode,
)

__all__ = ["Outcome", "OutcomeState", "canonical_json", "outcome_of", "outcome_of_value"]

OutcomeState = Literal["done", "failed", "timed_out", "worker_lost", "interrupted"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run's end. ``error`` is ``{"type", "message", "traceback"}`` when not done."""

    state: OutcomeState
    result_json: str | None = None
    error: dict[str, str] | None = None
    worker_pid: int | None = None
    exitcode: int | None = None
    signal: str | None = None


# Built once: json.dumps with any option builds a new encoder per call (about half its cost).
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys; NaN and Infinity refused (``ValueError``), as JSON does."""
    return _canonical(value)


def _error(type_name: str, message: str, traceback: str = "") -> dict[str, str]:
    return {"type": type_name, "message": message, "traceback": traceback}


def outcome_of_value(value: Any, max_bytes: int, worker_pid: int | None = None) -> Outcome:
    """A task's return value as a ``done`` outcome, or ``failed`` if it is not (small) JSON."""
    try:
        result_json = canonical_json(value)
    except (TypeError, ValueError) as err:
        return Outcome(
            "failed",
            error=_error("ResultNotJSON", f"the task's return value is not JSON: {err}"),
            worker_pid=worker_pid,
        )
    if len(result_json) > max_bytes:
        return Outcome(
            "failed",
            error=_error(
                "ResultTooLarge",
                f"the result is {len(result_json)} bytes of JSON; the limit is {max_bytes}",
            ),
            worker_pid=worker_pid,
        )
    return Outcome("done", result_json=result_json, worker_pid=worker_pid)


def worker_lost_message(pid: int | None, exitcode: int | None) -> str:
    """How a worker died, for a daemon task's error (no pool task number or attempt in it:
    the daemon counts attempts itself, the pool's would always say 1)."""
    if exitcode is not None and exitcode < 0:
        cause = f"was killed by {describe_exitcode(exitcode)}"
    elif exitcode is None:
        cause = "disappeared"
    else:
        cause = f"exited with {describe_exitcode(exitcode)}"
    return f"worker pid {pid} {cause} while running the task"


def outcome_of(future: Future[Any], max_bytes: int) -> Outcome:
    """The outcome of a finished ``WorkerService`` future (cancelled counts as interrupted)."""
    pid: int | None = getattr(future, "worker_pid", None)
    if future.cancelled():
        return Outcome("interrupted", worker_pid=pid)
    exc = future.exception()
    if exc is None:
        return outcome_of_value(future.result(), max_bytes, pid)
    if isinstance(exc, WorkerLost):
        return Outcome(
            "worker_lost",
            error=_error(
                "WorkerLost",
                worker_lost_message(exc.pid, exc.exitcode)
                + "; it may have crashed the interpreter, called os._exit, run out of memory, "
                "or been killed from outside",
            ),
            worker_pid=exc.pid,
            exitcode=exc.exitcode,
            signal=exc.signal,
        )
    if isinstance(exc, TaskTimeout):
        message = (
            f"ran longer than its {exc.timeout:g} s timeout; "
            f"worker pid {exc.pid} was killed and replaced"
        )
        return Outcome("timed_out", error=_error("TaskTimeout", message), worker_pid=exc.pid)
    if isinstance(exc, RemoteError):
        return Outcome(
            "failed", error=_error(exc.type_name, exc.message, exc.traceback), worker_pid=pid
        )
    if isinstance(exc, ServiceClosed | BrokenService):
        # The pool stopped under the task: not the task's doing.
        return Outcome("interrupted", error=_error(type(exc).__name__, str(exc)), worker_pid=pid)
    cause = exc.__cause__
    tb = cause.tb if isinstance(cause, RemoteTraceback) else ""
    return Outcome("failed", error=_error(type(exc).__name__, str(exc), tb), worker_pid=pid)
