"""A registered task that starts processes of its own (``--tasks tests.daemon.tasks_children``).

Imported by the daemon's workers: no test-only imports here.
"""

from __future__ import annotations

from pipework.service import task
from tests import tasks_hostile


@task
def start_children(pid_file: str, detach: bool = False) -> None:
    """Start a child and a grandchild (setsid with ``detach``), record their pids, sleep."""
    tasks_hostile.start_children(pid_file, detach)
