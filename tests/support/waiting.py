"""Bounded polls: the one way a test waits for a condition that has no event to wait on."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll_until(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last truth value."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return bool(predicate())
        time.sleep(interval)
    return True


def wait_until(
    condition: Callable[[], object],
    timeout: float = 30.0,
    what: str | None = None,
    interval: float = 0.01,
) -> None:
    """Poll ``condition`` until it is true; fail the test naming ``what`` after ``timeout`` s."""
    if not poll_until(condition, timeout, interval):
        # Imported here: worker processes import this module (via task modules) without pytest.
        import pytest  # noqa: PLC0415

        pytest.fail(f"{what or f'condition {condition!r}'}: not within {timeout} s")
