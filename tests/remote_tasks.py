"""Tasks the remote-worker tests run: the daemon suite's, plus ``announce``.

``pipework worker --tasks tests.remote_tasks`` registers every ``@task`` found
here, the imported ones included. Importable from the repository root and
free of test-only imports, since the worker's pool imports it.
"""

from __future__ import annotations

import os
import time

from pipework.service import task
from tests.daemon.tasks import add, crash, echo, fail, gate, not_json, sleep, spin_in_c

__all__ = [
    "add",
    "announce",
    "crash",
    "echo",
    "fail",
    "gate",
    "not_json",
    "sleep",
    "spin_in_c",
]


@task
def announce(path: str, seconds: float = 60.0) -> int:
    """Write this worker's pid to ``path`` (atomically), then sleep ``seconds``; return the pid."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return os.getpid()
