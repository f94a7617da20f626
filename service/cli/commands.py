"""The client-side commands of ``pipework``: submit, status, result, cancel, list, stats,
workers, tasks.

Each talks to a running daemon through ``protocol.Client`` and prints either a
few human lines or, with ``--json``, exactly one JSON document on stdout, for
scripts. One shape per command, errors included:

| command | ``--json`` prints |
|---|---|
| ``submit`` | the task (a TaskInfo: as accepted, or finished with ``--wait``) + ``"duplicate"`` |
| ``status``, ``result`` | the task (a TaskInfo) |
| ``cancel`` | the task (a TaskInfo) + ``"cancelled"`` (false if it had already finished) |
| ``list``, ``workers``, ``tasks`` | an array of TaskInfo / WorkerInfo / TaskSummary |
| ``stats`` | the Stats object |
| any, on an error | ``{"ok": false, "error": {"code", "message", "detail"}}`` |

A TaskInfo has no ``ok`` key, so ``"ok": false`` tells an error apart (the exit
code says it too). A ``--wait`` that runs out is the error ``timeout`` with the
task as it was under ``detail.task``. Exit codes are the same for every command:

| code | meaning |
|---:|---|
| 0 | done: the request succeeded (and the task, if it has ended, ended ``done``) |
| 1 | the task ended other than ``done`` (``status``, ``result``, ``submit --wait``) |
| 2 | usage error (bad arguments) |
| 3 | no daemon answered (not running, wrong endpoint) |
| 4 | the daemon answered with an error (unknown task, not found, invalid, ...) |
| 5 | ``--wait`` ran out before the task finished |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pipework.protocol.client import Client
from pipework.protocol.errors import ErrorCode, ProtocolError, Unavailable
from pipework.protocol.messages import TERMINAL_STATES, TaskInfo
from pipework.service.cli.overview import duration

__all__ = [
    "EXIT_DAEMON_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_DONE",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "EXIT_WAIT_TIMEOUT",
    "cancel",
    "list_tasks",
    "parse_arg",
    "print_error",
    "result",
    "run_command",
    "stats",
    "status",
    "submit",
    "tasks",
    "workers",
]

EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_DAEMON_ERROR = 4
EXIT_WAIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
_RESENDS = 2


def parse_arg(text: str) -> Any:
    """A command-line task argument: JSON if it parses (``3``, ``[1,2]``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=None, separators=(",", ":")) + "\n")


def _describe(task: TaskInfo, out: TextIO) -> None:
    line = f"{task.task_id}  {task.task}  {task.state}  attempts={task.attempts}"
    out.write(line + "\n")
    if task.state == "done":
        out.write(f"result: {json.dumps(task.result)}\n")
    if task.error is not None:
        out.write(f"error: {task.error.type}: {task.error.message}\n")
        if task.error.traceback:
            out.write(task.error.traceback.rstrip("\n") + "\n")
    for entry in task.history:
        out.write(
            f"  attempt {entry.attempt}: worker {entry.worker_pid} lost "
            f"({entry.signal or f'exit code {entry.exitcode}'})\n"
        )


def _show(task: TaskInfo, as_json: bool, out: TextIO, **extra: Any) -> None:
    if as_json:
        _print_json({**task.model_dump(mode="json"), **extra}, out)
    else:
        _describe(task, out)


def _task_exit(task: TaskInfo) -> int:
    """0 unless the task has ended other than ``done`` (a queued or running task is 0)."""
    return EXIT_NOT_DONE if task.state in TERMINAL_STATES and task.state != "done" else EXIT_OK


def print_error(
    code: str, message: str, detail: dict[str, Any] | None, *, as_json: bool, out: TextIO
) -> None:
    """With ``--json``, the error document on stdout (stderr has the message anyway)."""
    if as_json:
        error = {"code": code, "message": message, "detail": detail or {}}
        _print_json({"ok": False, "error": error}, out)


def run_command(
    endpoint: str | None,
    timeout: float,
    action: Callable[[Client, TextIO], int],
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    keys: tuple[str | None, str | None] = (None, None),
    as_json: bool = False,
) -> int:
    """Open a client, run ``action``, and turn protocol failures into exit codes and messages.

    Errors go to ``err`` as a line, and with ``as_json`` also to ``out`` as the
    error document, so a script reading stdout always gets one. Ctrl-C exits
    130 with one line, no traceback.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        # Three tries within ``timeout``: a request lost on the way (a daemon
        # restarting) is resent, and the command still gives up when it said.
        with Client(
            endpoint,
            timeout=timeout / (_RESENDS + 1),
            resends=_RESENDS,
            secret_key=keys[0],
            server_key=keys[1],
        ) as client:
            return action(client, out)
    except KeyboardInterrupt:
        err.write("pipework: interrupted\n")
        print_error("interrupted", "interrupted (Ctrl-C)", None, as_json=as_json, out=out)
        return EXIT_INTERRUPTED
    except ValueError as exc:  # unusable keys or endpoint
        err.write(f"pipework: {exc}\n")
        print_error("usage", str(exc), None, as_json=as_json, out=out)
        return EXIT_USAGE
    except Unavailable as exc:
        err.write(f"pipework: {exc.message}\n")
        print_error(str(exc.code), exc.message, exc.detail, as_json=as_json, out=out)
        return EXIT_UNAVAILABLE
    except ProtocolError as exc:
        err.write(f"pipework: {exc.code}: {exc.message}\n")
        registered = exc.detail.get("registered") if exc.detail else None
        if exc.code == ErrorCode.UNKNOWN_TASK and isinstance(registered, list):
            names = ", ".join(map(str, registered)) or "none"
            err.write(f"pipework: the daemon runs: {names} (`pipework tasks` shows signatures)\n")
        print_error(str(exc.code), exc.message, exc.detail, as_json=as_json, out=out)
        if exc.code == ErrorCode.TIMEOUT:
            return EXIT_WAIT_TIMEOUT
        return (
            EXIT_USAGE
            if exc.request_id is None and exc.code == ErrorCode.INVALID
            else (EXIT_DAEMON_ERROR)
        )


def submit(
    task: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    as_json: bool,
    wait: float | None,
    **options: Any,
) -> Callable[[Client, TextIO], int]:
    """``pipework submit``: enqueue one task; with ``wait``, also wait for its outcome."""

    def action(client: Client, out: TextIO) -> int:
        reply = client.submit(task, args, kwargs, **options)
        if wait is None:
            if as_json:  # the same document as with --wait: the task, as it is now
                _show(client.status(reply.task_id), True, out, duplicate=reply.duplicate)
            else:
                dup = " (duplicate: already submitted with this key)" if reply.duplicate else ""
                out.write(f"{reply.task_id}  {reply.state}{dup}\n")
            return EXIT_OK
        info = client.result(reply.task_id, wait=wait)
        _show(info, as_json, out, duplicate=reply.duplicate)
        return _task_exit(info)

    return action


def status(task_id: str, *, as_json: bool) -> Callable[[Client, TextIO], int]:
    """``pipework status``: a task's state, without waiting (exit 1 if it ended other than done)."""

    def action(client: Client, out: TextIO) -> int:
        info = client.status(task_id)
        _show(info, as_json, out)
        return _task_exit(info)

    return action


def result(task_id: str, *, wait: float, as_json: bool) -> Callable[[Client, TextIO], int]:
    """``pipework result``: wait up to ``wait`` seconds for a task's outcome."""

    def action(client: Client, out: TextIO) -> int:
        info = client.result(task_id, wait=wait)
        _show(info, as_json, out)
        return _task_exit(info)

    return action


def cancel(task_id: str, *, as_json: bool) -> Callable[[Client, TextIO], int]:
    """``pipework cancel``: cancel a queued or running task."""

    def action(client: Client, out: TextIO) -> int:
        reply = client.cancel(task_id)
        if as_json:
            _show(reply.task, True, out, cancelled=reply.cancelled)
        elif reply.cancelled:
            out.write(f"{task_id}  cancelled\n")
        else:
            out.write(f"{task_id}  already {reply.task.state}; nothing to cancel\n")
        return EXIT_OK

    return action


def list_tasks(state: str | None, limit: int, *, as_json: bool) -> Callable[[Client, TextIO], int]:
    """``pipework list``: the newest tasks, optionally in one state."""

    def action(client: Client, out: TextIO) -> int:
        tasks = client.list(state=state, limit=limit)
        if as_json:
            _print_json([t.model_dump(mode="json") for t in tasks], out)
        else:
            for t in tasks:
                out.write(f"{t.task_id}  {t.task}  {t.state}  attempts={t.attempts}\n")
        return EXIT_OK

    return action


def stats(*, as_json: bool) -> Callable[[Client, TextIO], int]:
    """``pipework stats``: counters of the daemon."""

    def action(client: Client, out: TextIO) -> int:
        st = client.stats().model_dump(mode="json")
        if as_json:
            _print_json(st, out)
        else:
            for key, value in st.items():
                if isinstance(value, dict):
                    shown = "  ".join(f"{k}={v}" for k, v in value.items())
                elif key == "uptime":
                    shown = duration(value)
                else:
                    shown = value
                out.write(f"{key:>10}: {shown}\n")
        return EXIT_OK

    return action


def tasks(*, as_json: bool) -> Callable[[Client, TextIO], int]:
    """``pipework tasks``: the task names the running daemon serves, with signatures."""

    def action(client: Client, out: TextIO) -> int:
        found = client.tasks()
        if as_json:
            _print_json([t.model_dump(mode="json") for t in found], out)
        else:
            for t in found:
                out.write(f"{t.name}{t.signature}" + (f"\n    {t.doc}" if t.doc else "") + "\n")
        return EXIT_OK

    return action


def workers(*, as_json: bool) -> Callable[[Client, TextIO], int]:
    """``pipework workers``: the worker processes and what each runs."""

    def action(client: Client, out: TextIO) -> int:
        ws = client.workers()
        if as_json:
            _print_json([w.model_dump(mode="json") for w in ws], out)
        else:
            for w in ws:
                doing = f"{w.task} ({w.task_id})" if w.task_id else "idle"
                where = f"{w.remote.host}:{w.remote.pid}" if w.remote else "local"
                out.write(f"{w.pid:>8}  {where:<24}  {doing}\n")
        return EXIT_OK

    return action
