"""The remote-worker tests start their daemons with the daemon suite's fixtures."""

from tests.daemon.conftest import (  # noqa: F401 - fixtures and hook, registered by import
    daemon,
    module_daemons,
    pytest_runtest_makereport,
)
