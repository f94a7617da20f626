"""``pipework status`` without a task id: the daemon at a glance, in a terminal.

```
pipework 0.1.0 · up 3 h 12 min · journal on
queue     12 queued · 2 in flight · 1,234 accepted · 1,220 finished since start
journal   done 1,200 · failed 10 · cancelled 2 · timed_out 3 · quarantined 5
workers   2 of 2 busy
    4301  local                 add    6f1c0e2a9b8d4c55a1e3f0b7c2d49e81  1.2 s
    4302  local                 idle
recent failures
  16:02:11  failed       fail   18eb558e85c8…  TaskFailure: boom
```

The same things the status page shows, built from the ops every client has
(``stats``, ``workers``, ``list``, ``status``; no op of its own): the
failures are the newest of ``list`` in each failure state, merged by when they
finished, and each one's error comes from ``status`` (``list`` leaves errors
out). Unlike the page, which knows the failures since the daemon started,
these come from the journal, so they survive a restart (until ``result_ttl``).
``--watch S`` redraws every S seconds until Ctrl-C; ``--json`` prints the
gathered data as one JSON document (a line per redraw with ``--watch``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import Any, TextIO

from pipework.protocol.client import Client
from pipework.protocol.errors import Unavailable
from pipework.protocol.messages import FAILURE_STATES, TaskInfo, TaskState

__all__ = ["duration", "gather", "overview", "render"]

_FAILURES = 5
_CLEAR = "\x1b[H\x1b[2J"


def gather(client: Client, failures: int = _FAILURES) -> dict[str, Any]:
    """Ask the daemon for its stats, workers and newest failures; return them as JSON data."""
    stats = client.stats()
    workers = client.workers()
    recent: list[TaskInfo] = []
    for state in sorted(FAILURE_STATES):
        recent.extend(client.list(state=state, limit=failures))
    recent.sort(key=lambda t: t.finished_at or 0.0, reverse=True)
    detailed = [client.status(t.task_id) for t in recent[:failures]]
    return {
        "stats": stats.model_dump(mode="json"),
        "workers": [w.model_dump(mode="json") for w in workers],
        "failures": [t.model_dump(mode="json") for t in detailed],
    }


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def duration(seconds: float) -> str:
    """Seconds for people: ``0.3 s``, ``4 min 05 s``, ``3 h 12 min``."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min {int(seconds % 60):02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _in_life_order(states: dict[str, int]) -> list[tuple[str, int]]:
    order = {s.value: i for i, s in enumerate(TaskState)}
    return sorted(states.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render(data: dict[str, Any], *, width: int | None = None, now: float | None = None) -> str:
    """The gathered data as lines of text; error lines are cut to ``width`` columns if given."""
    now = time.time() if now is None else now
    st = data["stats"]
    lines = [
        f"pipework {st['version']} · up {duration(st['uptime'])} · "
        f"journal {'on' if st['journal'] else 'off'}" + (" · DRAINING" if st["draining"] else ""),
        f"queue     {_n(st['queued'])} queued · {_n(st['running'])} in flight · "
        f"{_n(st['accepted'])} accepted · {_n(st['finished'])} finished since start",
        "journal   " + " · ".join(f"{k} {_n(v)}" for k, v in _in_life_order(st["states"])),
    ]
    workers = data["workers"]
    busy = sum(1 for w in workers if w["task_id"])
    lines.append(f"workers   {busy} of {len(workers)} busy")
    name_width = max((len(w["task"] or "?") for w in workers if w["task_id"]), default=0)
    for w in workers:
        where = f"{w['remote']['host']}:{w['remote']['pid']}" if w["remote"] else "local"
        if w["task_id"]:
            since = f"  {duration(now - w['since'])}" if w["since"] else ""
            doing = f"{w['task'] or '?':<{name_width}}  {w['task_id']}{since}"
        else:
            doing = "idle"
        lines.append(f"  {w['pid']:>7}  {where:<20}  {doing}")
    failures = data["failures"]
    lines.append("recent failures" + ("" if failures else ": none in the journal"))
    name_width = max((len(t["task"]) for t in failures), default=0)
    for t in failures:
        when = time.strftime("%H:%M:%S", time.localtime(t["finished_at"] or 0))
        error = t["error"] or {"type": "Error", "message": ""}
        head = f"  {when}  {t['state']:<11}  {t['task']:<{name_width}}  {t['task_id'][:12]}…  "
        text = _one_line(f"{error['type']}: {error['message']}")
        room = len(text) if width is None else max(width - len(head), 10)
        lines.append(head + (text if len(text) <= room else text[: room - 1] + "…"))
    return "\n".join(lines) + "\n"


def overview(*, as_json: bool, watch: float | None) -> Callable[[Client, TextIO], int]:
    """``pipework status`` with no task id: print the overview once, or every ``watch`` s."""

    def show(client: Client, out: TextIO) -> None:
        data = gather(client)
        if as_json:
            out.write(json.dumps(data, separators=(",", ":")) + "\n")
        else:
            tty = out.isatty()
            if watch is not None and tty:
                out.write(_CLEAR)
            # A terminal gets one line per failure; a pipe gets the whole message.
            out.write(render(data, width=shutil.get_terminal_size().columns if tty else None))
        out.flush()

    def action(client: Client, out: TextIO) -> int:
        if watch is None:
            show(client, out)
            return 0
        try:
            while True:
                try:
                    show(client, out)
                except Unavailable as exc:
                    # A watch outlives a daemon restart: say so and keep asking.
                    out.write(f"{time.strftime('%H:%M:%S')}  {exc.message}; still asking\n")
                    out.flush()
                if not out.isatty() and not as_json:
                    out.write("\n")
                time.sleep(watch)
        except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or `| head` has read enough
            return 0

    return action
