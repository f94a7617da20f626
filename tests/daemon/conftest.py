"""The daemon suite's fixtures and its report hook; the harness is tests/support/daemons.py.

``daemon`` gives each test a :class:`~tests.support.daemons.DaemonFactory` of its own,
``module_daemons`` one shared by a test module. Teardown is strict (see the harness).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import OPEN_FACTORIES, DaemonFactory, file_tail


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed test, append the stderr tail of every daemon it could have used."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for factory in OPEN_FACTORIES:
        for d in factory.started:
            report.sections.append((f"daemon {d.pid} stderr", file_tail(d.stderr_path, 8000)))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """A factory of daemons living for one test; see the module docstring."""
    with DaemonFactory.checked(tmp_path) as factory:
        yield factory


@pytest.fixture(scope="module")
def module_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    """A factory of daemons shared by one test module."""
    with DaemonFactory.checked(tmp_path_factory.mktemp("daemons")) as factory:
        yield factory
