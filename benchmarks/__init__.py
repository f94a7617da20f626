"""Benchmarks for pipework against its peers and the raw IPC floor; see ``pool`` and ``ipc``."""
