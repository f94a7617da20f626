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
import re
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import accumulate
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from pipework.protocol.workers import MAX_ERROR_TEXT
from pipework.service.collector import RemoteTraceback
from pipework.service.errors import (
    BrokenService,
    RemoteError,
    ServiceClosed,
    TaskTimeout,
    WorkerLost,
    describe_exitcode,
)

__all__ = [
    "MAX_ERROR_TEXT",
    "MAX_RESULT_DEPTH",
    "Outcome",
    "OutcomeState",
    "canonical_json",
    "clip_error",
    "json_depth",
    "outcome_of",
    "outcome_of_value",
    "result_limit",
]

MAX_RESULT_DEPTH = 128
"""Deepest nesting of arrays and objects a result may have. Every JSON parser
has a depth limit (pydantic-core's, which the clients use, is 200 levels
including a reply's envelope); a deeper result would be stored but no client
could read the reply carrying it, so it fails the task (``ResultTooDeep``)."""


# Room a reply needs beside a result: its envelope and the task's history.
_REPLY_RESERVE = 32 * 1024
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}

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


def result_limit(max_message_bytes: int) -> int:
    """The largest result JSON (bytes) a reply of at most ``max_message_bytes`` can carry."""
    return max_message_bytes - min(_REPLY_RESERVE, max_message_bytes // 4)


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (0 for a scalar)."""
    brackets = _BRACKETS.findall(_STRINGS.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def outcome_of_value(value: Any, max_bytes: int, worker_pid: int | None = None) -> Outcome:
    """A task's return value as a ``done`` outcome, or ``failed`` if the wire cannot carry it.

    Not JSON: ``ResultNotJSON``; its JSON longer than ``result_limit(max_bytes)``:
    ``ResultTooLarge``; nested deeper than ``MAX_RESULT_DEPTH``: ``ResultTooDeep``.
    """
    try:
        result_json = canonical_json(value)
    except RecursionError:
        # Deeper than Python's own recursion limit (about 1000 levels).
        return Outcome(
            "failed",
            error=_error(
                "ResultTooDeep",
                f"the result nests deeper than Python can encode; the limit is "
                f"{MAX_RESULT_DEPTH} levels of arrays and objects",
            ),
            worker_pid=worker_pid,
        )
    except (TypeError, ValueError) as err:
        return Outcome(
            "failed",
            error=_error("ResultNotJSON", f"the task's return value is not JSON: {err}"),
            worker_pid=worker_pid,
        )
    limit = result_limit(max_bytes)
    if len(result_json) > limit:
        return Outcome(
            "failed",
            error=_error(
                "ResultTooLarge",
                f"the result is {len(result_json)} bytes of JSON; the limit is {limit} "
                f"(max_message_bytes {max_bytes}, less room for the reply around it)",
            ),
            worker_pid=worker_pid,
        )
    # Fewer brackets than the limit (strings included) is the common case, counted in C.
    few = result_json.count("[") + result_json.count("{") <= MAX_RESULT_DEPTH
    depth = 0 if few else json_depth(result_json)
    if depth > MAX_RESULT_DEPTH:
        return Outcome(
            "failed",
            error=_error(
                "ResultTooDeep",
                f"the result nests {depth} levels of arrays and objects; the limit is "
                f"{MAX_RESULT_DEPTH}, or no client could read the reply",
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


def _json_len(text: str) -> int:
    return len(encode_basestring_ascii(text))


def _clip_text(text: str, chars: int, max_json: int, where: str, *, tail: bool) -> str:
    """``text`` cut to ``chars`` characters and ``max_json`` bytes of JSON, with a note."""
    if len(text) <= chars and _json_len(text) <= max_json:
        return text
    keep = max(0, min(len(text), chars - len(where) - 64))  # room for the note
    while True:
        note = f"[{len(text) - keep} characters clipped; the full text is in {where}]"
        part = text[len(text) - keep :] if tail else text[:keep]
        clipped = f"{note} ...\n{part}" if tail else f"{part} ... {note}"
        if keep == 0 or _json_len(clipped) <= max_json:
            return clipped
        keep = keep * max_json // _json_len(clipped) - 1  # escapes are up to 12 bytes a char


def clip_error(
    error: dict[str, str], max_message_bytes: int, where: str = "the daemon's log"
) -> tuple[dict[str, str], bool]:
    """An error with its message (head) and traceback (tail) clipped to fit any reply.

    The same rule for local and remote runs: each text keeps at most
    ``MAX_ERROR_TEXT`` (16 KiB) characters and an eighth of
    ``max_message_bytes`` of JSON; a clipped one says so and names ``where``
    the full text is. Returns the error and whether anything was clipped.
    """
    budget = max(256, max_message_bytes // 8)
    type_name = error.get("type") or "Error"
    message = error.get("message") or ""
    traceback = error.get("traceback") or ""
    out = {
        "type": _clip_text(type_name, 200, 1024, where, tail=False),
        "message": _clip_text(message, MAX_ERROR_TEXT, budget, where, tail=False),
        "traceback": _clip_text(traceback, MAX_ERROR_TEXT, budget, where, tail=True),
    }
    clipped = (out["type"], out["message"], out["traceback"]) != (type_name, message, traceback)
    return out, clipped


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
