"""Where a daemon's tasks live: the ``Store`` contract and its backends.

``base`` holds the contract (read its docstring first) and the rows it returns;
``postgres`` is the backend for several daemons on one PostgreSQL database. It
is imported only when asked for, so psycopg is needed only by those who use it.
"""

from __future__ import annotations

from pipework.service.daemon.store.base import (
    STATES,
    TERMINAL,
    Accepted,
    Event,
    Finish,
    Lease,
    Listener,
    Requeue,
    Run,
    RunRef,
    Store,
    StoreError,
    StoreUnavailable,
    Submit,
    TaskRecord,
    is_quarantined,
    lease_lost_entry,
    quarantine_error,
)

__all__ = [
    "STATES",
    "TERMINAL",
    "Accepted",
    "Event",
    "Finish",
    "Lease",
    "Listener",
    "Requeue",
    "Run",
    "RunRef",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Submit",
    "TaskRecord",
    "is_quarantined",
    "lease_lost_entry",
    "quarantine_error",
]
