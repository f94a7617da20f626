"""A module whose import, on the thread named ``slow-importer`` only, waits for a gate.

tests/test_cf_contract.py imports it on that thread and forks a worker while
the import is half done; anywhere else it imports at once.
"""

from __future__ import annotations

import threading

from tests import import_gate

if threading.current_thread().name == "slow-importer":
    import_gate.entered.set()
    import_gate.gate.wait(60)

VALUE = 42
