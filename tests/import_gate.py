"""Events that hold tests/slow_import.py's import half done (see that module)."""

from __future__ import annotations

import threading

entered = threading.Event()
gate = threading.Event()
