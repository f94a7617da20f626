"""Helpers the test folders share; one copy of each (import the module, not a conftest).

- ``processes``: whether a process is alive, waiting for pids to exit, this test
  process's descendants, :class:`~tests.support.processes.ProcessTree` (a process the
  test started and every descendant it ever had), ``clean_env`` and ``run_bounded``.
- ``waiting``: bounded polls, ``wait_until`` (fails the test) and ``poll_until``
  (returns a bool; safe to import in a worker process: it does not import pytest).
- ``net``: ``free_port`` on loopback.
- ``daemons``: the harness around real ``pipework serve`` processes (``Daemon``,
  ``DaemonFactory``, ``Conn``); the fixtures stay in tests/daemon/conftest.py.

Nothing here imports pytest at module level except ``daemons``, so a task module
(imported by worker processes) may use ``waiting`` and ``processes``.
"""
