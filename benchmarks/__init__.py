"""Benchmarks for pipework against its peers and the raw IPC floor.

``pool`` (``pipework bench pool``), ``queues`` (``pipework bench daemon``),
``ipc`` (``pipework bench ipc``); ``daemon`` and ``journal`` measure the
daemon and its SQLite journal alone.
"""
