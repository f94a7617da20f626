"""Two "hosts" on one machine: network namespaces joined by a veth pair.

Follows ../shared/TESTING.md: both ends live in namespaces this module
creates (never the root namespace, whose default route leaves the machine),
addresses come from 10.200.0.0/16 private to the test, no namespace may have a
default route (checked before any traffic), a partition is ``link down``, and
everything made is deleted again, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# One /24 per pair, by xdist worker, so parallel tests never share addresses.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_SUBNET = 10 + int(_WORKER.removeprefix("gw") or 0) % 200


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"pwprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"the kernel refused `ip netns add`: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """Skip with the reason where namespaces are impossible; in CI, fail instead."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the namespace tests, but {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its veth device and its address."""

    ns: str
    dev: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def link(self, up: bool) -> None:
        """Bring this host's link up or down (down = a partition)."""
        _ip("-n", self.ns, "link", "set", self.dev, "up" if up else "down")


@contextlib.contextmanager
def host_pair() -> Iterator[tuple[Host, Host]]:
    """Two namespaces joined by a veth pair: (daemon host, worker host)."""
    tag = secrets.token_hex(3)
    a = Host(f"pwd{tag}", f"pwd{tag}v", f"10.200.{_SUBNET}.1")
    b = Host(f"pww{tag}", f"pww{tag}v", f"10.200.{_SUBNET}.2")
    made: list[str] = []
    try:
        for host in (a, b):
            _ip("netns", "add", host.ns)
            made.append(host.ns)
        _ip("link", "add", a.dev, "type", "veth", "peer", "name", b.dev)
        for host in (a, b):
            _ip("link", "set", host.dev, "netns", host.ns)
            _ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", host.dev)
            _ip("-n", host.ns, "link", "set", host.dev, "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
        for host in (a, b):
            routes = _ip("-n", host.ns, "route", "show", "default").stdout.strip()
            assert not routes, f"namespace {host.ns} has a default route: {routes}"
        yield a, b
    finally:
        for ns in made:
            _ip("netns", "del", ns, check=False)  # deletes its end of the veth too
