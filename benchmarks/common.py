"""Helpers shared by the benchmarks: bounded child runs, one-line reports, machine info,
progress on stderr.

```
 parent ──run_child(args, limit)──▶ child: python -m pipework.benchmarks.X --one ...
   │                                  └─ emit_result(PREFIX, record) ──▶ stdout file, os._exit
   ├─ waits limit + kill_margin, then kills the child's whole session
   └─ ChildOutcome(record parsed from the last PREFIX line, killed?, wall time, stderr)
```

Every benchmark runs each contender in a fresh child process in its own
session, so that a contender's memory is its own and a hanging peer (or its
workers, or a fork server) can always be killed as a group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import psutil

__all__ = [
    "MIB",
    "ChildOutcome",
    "JSONDict",
    "Progress",
    "cpu_model",
    "emit_result",
    "filesystem",
    "fmt",
    "git_state",
    "kill_session",
    "loadavg",
    "machine_info",
    "machine_line",
    "percentile",
    "project_root",
    "rewrite_blocks",
    "run_child",
]

MIB = 1024 * 1024

JSONDict = dict[str, Any]


def project_root() -> Path:
    """The repository root, where ``python -m pipework.benchmarks.X`` must run."""
    return Path(__file__).resolve().parent.parent


def kill_session(pid: int) -> None:
    """Kill the child's whole session (its pool's workers, forkserver...) by process group id."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class ChildOutcome:
    """What a bounded child run left behind."""

    record: JSONDict | None
    """The last result line, parsed; None if the child printed none."""
    records: list[JSONDict]
    """Every result line, parsed, in order (a child may report several measurements)."""
    killed: bool
    """True if the parent had to kill the child at ``limit + kill_margin``."""
    wall_s: float
    returncode: int | None
    stderr: str


def run_child(
    args: Sequence[str], limit: float, *, result_prefix: str, kill_margin: float
) -> ChildOutcome:
    """Run ``python <args>`` from the project root in a new session, bounded in time.

    The child is expected to print one line starting with ``result_prefix``
    followed by JSON (see ``emit_result``), and to enforce ``limit`` itself.
    If it has not exited by ``limit + kill_margin`` seconds, its whole session
    is killed. Never raises for the child's failure.
    """
    cmd = [sys.executable, *args]
    # Files, not pipes: workers that inherit stdout would keep a pipe open past the child.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=project_root(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        killed = False
        try:
            proc.wait(limit + kill_margin)
        except subprocess.TimeoutExpired:
            killed = True
            kill_session(proc.pid)
            proc.wait()
        kill_session(proc.pid)  # stragglers the child left behind (it exits with os._exit)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    records: list[JSONDict] = []
    for line in stdout.splitlines():
        if line.startswith(result_prefix):
            with contextlib.suppress(ValueError):
                records.append(json.loads(line[len(result_prefix) :]))
    record = records[-1] if records else None
    return ChildOutcome(record, records, killed, wall, proc.returncode, stderr)


def emit_result(result_prefix: str, record: JSONDict, exitcode: int) -> NoReturn:
    """Print the child's one result line and leave at once.

    ``os._exit``, not ``sys.exit``: no atexit hooks, which a peer's pool (or a
    half-dead one) may hang in.
    """
    sys.stdout.write(result_prefix + json.dumps(record) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exitcode)


def git_state(paths: Sequence[str] = ("service", "protocol")) -> JSONDict:
    """The commit measured, and the files under ``paths`` that differ from it (None: no git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=project_root(),
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout

    status = git("status", "--porcelain", "--", *paths)  # "XY path" lines: no strip()
    commit = git("rev-parse", "--short", "HEAD")
    return {
        "commit": None if commit is None else commit.strip(),
        "uncommitted": None if status is None else [line[3:] for line in status.splitlines()],
    }


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(dists: Sequence[str]) -> JSONDict:
    """Where and when the run happened, with the versions of ``dists``."""
    versions: dict[str, str | None] = {}
    for dist in dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    load = loadavg()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "memory_total_mib": round(psutil.virtual_memory().total / MIB),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_1m_at_start": load[0],
        "loadavg_at_start": load,
        "versions": versions,
    }


def cpu_model() -> str | None:
    """The CPU's model name, if the platform tells."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def filesystem(directory: Path) -> str | None:
    """The type of the file system holding ``directory`` (ext4, tmpfs, ...), if known."""
    target = directory.resolve()
    holding = [p for p in psutil.disk_partitions(all=True) if target.is_relative_to(p.mountpoint)]
    if not holding:
        return None
    return str(max(holding, key=lambda p: len(p.mountpoint)).fstype)


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt(value: float | None, spec: str) -> str:
    """``format(value, spec)``, or an em dash for a missing value."""
    return "—" if value is None else format(value, spec)


def machine_line(machine: JSONDict) -> str:
    """The ``Machine:`` line closing every report (``loadavg_1m_at_end`` set by the caller)."""
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    return (
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_count_physical']} physical"
        f"{', ' + machine['cpu_model'] if machine['cpu_model'] else ''}), "
        f"{machine['memory_total_mib']:,} MiB RAM, {machine['python']}, {machine['platform']}; "
        f"{versions}; {machine['date']}; 1-min load average {machine['loadavg_1m_at_start']} "
        f"at start, {machine.get('loadavg_1m_at_end', '?')} at end"
    )


class Progress:
    """A progress display on stderr for a run of ``total`` steps.

    On a terminal, one line is rewritten in place (``\r``) as each step starts
    and cleared at the end; otherwise (a pipe, a CI log) each finished step
    gets a line of its own, so logs stay readable.
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self._total = total
        self._stream = sys.stderr if stream is None else stream
        self._tty = self._stream.isatty()
        self._step = 0
        self._started = time.perf_counter()

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

    def start(self, label: str) -> None:
        """Step ``label`` begins."""
        self._step += 1
        if self._tty:
            width = 20
            filled = width * (self._step - 1) // max(self._total, 1)
            bar = "#" * filled + "." * (width - filled)
            elapsed = time.perf_counter() - self._started
            self._write(f"\r\x1b[K[{bar}] {self._step}/{self._total} {label} ({elapsed:.0f} s)")

    def done(self, label: str, status: str, seconds: float) -> None:
        """Step ``label`` ended with ``status`` after ``seconds``; failures always get a line."""
        line = f"[{self._step}/{self._total}] {label}: {status} ({seconds:.1f} s)"
        if not self._tty:
            self._write(line + "\n")
        elif status != "ok":
            self._write("\r\x1b[K" + line + "\n")

    def finish(self) -> None:
        """Clear the progress line and say how long the whole run took."""
        elapsed = time.perf_counter() - self._started
        prefix = "\r\x1b[K" if self._tty else ""
        self._write(f"{prefix}{self._total} steps in {elapsed:.1f} s\n")


def rewrite_blocks(text: str, blocks: Mapping[str, str], prefix: str) -> str:
    """Replace the body of each ``<!-- BEGIN {prefix}:NAME -->`` block by ``blocks[NAME]``.

    Blocks of other prefixes are left alone, so several benchmarks can write
    into one page.

    Raises:
        ValueError: a block of ``blocks`` is missing from ``text`` or appears
            twice, or ``text`` has a block of ``prefix`` that ``blocks`` does not know.
    """
    marker = re.escape(prefix)
    pattern = re.compile(
        rf"(<!-- BEGIN {marker}:(?P<name>[\w-]+) -->\n)(?P<body>.*?)"
        rf"(^<!-- END {marker}:(?P=name) -->)",
        re.DOTALL | re.MULTILINE,
    )
    found = [m.group("name") for m in pattern.finditer(text)]
    missing = [name for name in blocks if found.count(name) != 1]
    unknown = sorted(set(found) - set(blocks))
    if missing or unknown:
        raise ValueError(
            f"generated blocks: missing or repeated {missing}, unknown {unknown} "
            f"(markers: <!-- BEGIN {prefix}:NAME --> ... <!-- END {prefix}:NAME -->)"
        )
    return pattern.sub(lambda m: m.group(1) + blocks[m.group("name")] + "\n" + m.group(4), text)
