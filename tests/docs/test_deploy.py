"""deploy/: the systemd units, the example config and the Containerfile stay true.

- ``systemd-analyze verify`` accepts both units without a word. Verify needs
  each ``ExecStart`` binary to exist, and the units name the production path
  ``/opt/pipework/bin/pipework``: the test verifies a copy in which that one
  path is replaced by this venv's ``pipework`` (``--root=`` would need a whole
  root tree: the targets, ``/bin/kill``). Nothing else is changed.
- The stop timeout covers the drain deadline; the paths in the environment
  lie in the directories systemd creates.
- ``deploy/pipework.toml`` loads, and names every setting, so it cannot go stale.
- The Containerfile (no container runtime runs here) is parsed: a non-root
  user, a healthcheck and a command the real CLI accepts, the journal's
  directory on a volume.
- ``MemoryDenyWriteExecute=yes`` holds for CPython, ctypes and the workers:
  a daemon runs a task under the kernel's equivalent, ``PR_SET_MDWE``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from pipework.service.cli.parsing import build_parser
from pipework.service.daemon.config import DaemonSettings, load_settings
from pipework.service.daemon.server import _WORKERS_UP_TIMEOUT
from tests.support.daemons import DaemonFactory

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ["pipework.service", "pipework-worker.service"]
PROD_BIN = "/opt/pipework/bin/pipework"
DOCKER_STOP_GRACE = 10.0  # seconds `docker stop` / `podman stop` wait by default


def unit(name: str = "pipework.service") -> dict[str, list[str]]:
    """A unit file as key -> values, in order, for the keys of every section."""
    out: dict[str, list[str]] = {}
    for raw in (DEPLOY / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    """A systemd time span as used in the unit: 45, 45s, 2min, 1min 30s."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[suffix]
    return total


# -- systemd ------------------------------------------------------------------------


def _verify(path: Path) -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("CI must verify the units, but systemd-analyze is not installed")
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    proc = subprocess.run(
        [analyze, "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=path.parent,
    )
    return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}".strip()


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    pipework = Path(sys.executable).parent / "pipework"
    assert pipework.is_file(), f"{pipework}: install the project (pip install -e .)"
    text = (DEPLOY / name).read_text()
    assert text.count(f"ExecStart={PROD_BIN} ") == 1, "ExecStart must run /opt/pipework's CLI"
    copy = tmp_path / name
    copy.write_text(text.replace(f"ExecStart={PROD_BIN} ", f"ExecStart={pipework} "))
    assert _verify(copy) == "exit 0"

    # And the check can fail: an unknown key is reported.
    broken = tmp_path / "broken" / name
    broken.parent.mkdir()
    broken.write_text(copy.read_text().replace("[Service]", "[Service]\nWatchdogSecs=30"))
    assert "WatchdogSecs" in _verify(broken)


def test_stop_timeout_covers_the_drain() -> None:
    u = unit()
    drain = load_settings(DEPLOY / "pipework.toml").drain_timeout
    stop = seconds(u["TimeoutStopSec"][0])
    # The margin is for killing the workers, the last commit and closing sockets.
    assert stop >= drain + 5, f"TimeoutStopSec={stop} must exceed drain_timeout={drain}"
    assert seconds(u["TimeoutStartSec"][0]) > _WORKERS_UP_TIMEOUT + 10
    assert seconds(u["WatchdogSec"][0]) > 0
    assert u["Type"] == ["notify"]
    assert u["NotifyAccess"] == ["main"]
    assert u["KillMode"] == ["mixed"]
    assert u["KillSignal"] == ["SIGTERM"]
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_unit_paths_lie_in_the_directories_systemd_makes() -> None:
    u = unit()
    env = dict(v.split("=", 1) for v in u["Environment"])
    assert u["RuntimeDirectoryMode"] == ["0700"], "the daemon refuses any other mode"
    socket = PurePosixPath(env["PIPEWORK_ENDPOINT"].removeprefix("ipc://"))
    assert socket.parent == PurePosixPath("/run") / u["RuntimeDirectory"][0]
    journal = PurePosixPath(env["PIPEWORK_JOURNAL_PATH"])
    assert journal.parent == PurePosixPath("/var/lib") / u["StateDirectory"][0]
    argv = shlex.split(u["ExecStart"][0])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.config == "/etc/pipework/pipework.toml"
    for name in env:
        assert name.removeprefix("PIPEWORK_").lower() in DaemonSettings.model_fields, name


def test_worker_unit_runs_a_worker_command() -> None:
    u = unit("pipework-worker.service")
    argv = shlex.split(u["ExecStart"][0])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "worker"
    assert "ExecReload" not in u, "pipework worker has no SIGHUP handler: SIGHUP kills it"


# -- the example config -------------------------------------------------------------


def test_example_config_loads_and_names_every_setting() -> None:
    path = DEPLOY / "pipework.toml"
    load_settings(path)
    tomllib.loads(path.read_text())
    text = path.read_text()
    missing = [
        name
        for name in DaemonSettings.model_fields
        if not re.search(rf"^\s*#?\s*(?:{name}\s*=|\[{name}\])", text, re.MULTILINE)
    ]
    assert not missing, f"deploy/pipework.toml does not mention {missing}"


def test_example_config_commented_lines_are_valid_too(tmp_path: Path) -> None:
    # Uncommenting a line must give a valid setting (its default, or an example).
    lines = []
    for raw in (DEPLOY / "pipework.toml").read_text().splitlines():
        m = re.match(r"^#\s?(\[?[a-z_]+\]?(?:\s*=.*)?)$", raw)
        if m and (m.group(1).startswith("[") or "=" in m.group(1)):
            lines.append(m.group(1))
        elif raw and not raw.startswith("#"):
            lines.append(raw)
    uncommented = tmp_path / "all.toml"
    uncommented.write_text("\n".join(lines) + "\n")
    settings = load_settings(uncommented)
    assert settings.client_tasks, "the [client_tasks] example must parse as a table"


# -- the Containerfile --------------------------------------------------------------


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Containerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _one(name: str) -> str:
    values = [rest for word, rest in containerfile() if word == name]
    assert len(values) == 1, f"one {name} expected, found {values}"
    return values[0]


def _env() -> dict[str, str]:
    env = {}
    for word, rest in containerfile():
        if word == "ENV":
            key, _, value = rest.partition("=")
            env[key] = value
    return env


def test_container_runs_as_a_non_root_user() -> None:
    assert _one("FROM") == "python:3.11-slim"
    user = _one("USER").split(":")[0]
    assert user not in {"root", "0"}, user
    assert "--uid " + user in " ".join(rest for word, rest in containerfile() if word == "RUN")


def test_container_healthcheck_asks_the_daemon_for_stats() -> None:
    check = _one("HEALTHCHECK")
    assert " CMD " in f" {check}"
    command = shlex.split(check.split(" CMD ", 1)[1] if " CMD " in check else check)
    assert command[0] == "pipework"
    argv = command[1 : command.index(">")] if ">" in command else command[1:]
    args = build_parser().parse_args(argv)
    assert args.command == "stats"
    assert args.timeout == 3.0
    # Docker knows 0 (healthy) and 1 (unhealthy); the CLI exits 3 when no one answers.
    assert command[-3:] == ["||", "exit", "1"], command


def test_container_serves_with_settings_the_daemon_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cmd = json.loads(_one("CMD"))
    assert cmd[0] == "pipework"
    assert build_parser().parse_args(cmd[1:]).command == "serve"
    assert _one("STOPSIGNAL") == "SIGTERM"
    env = _env()
    for key in list(os.environ):
        if key.startswith("PIPEWORK_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        assert key.startswith("PIPEWORK_"), key
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.endpoint == env["PIPEWORK_ENDPOINT"]
    assert settings.drain_timeout < DOCKER_STOP_GRACE, "docker stop would SIGKILL mid-drain"
    assert str(settings.journal_path.parent) == _one("VOLUME")


def test_container_copies_every_package_pyproject_installs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {name.split(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]}
    needed |= {"pyproject.toml", pyproject["project"]["readme"]}
    # COPY SRC... DEST: every word but the last is a source.
    copied = {src for word, rest in containerfile() if word == "COPY" for src in rest.split()[:-1]}
    assert needed <= copied, f"pip install . needs {sorted(needed - copied)} in the image"


# -- MemoryDenyWriteExecute ---------------------------------------------------------

_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1
# Runs before the daemon: refuse W+X memory from here on (inherited across
# fork and execve, like systemd's filter), then exec the daemon in place.
_MDWE_EXEC = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({_PR_SET_MDWE}, {_PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_MDWE): {{os.strerror(ctypes.get_errno())}}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def _mdwe_supported() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _MDWE_EXEC, sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        reason = f"the kernel has no PR_SET_MDWE (Linux >= 6.3): {probe.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the MemoryDenyWriteExecute check, but {reason}")
        pytest.skip(reason)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    with DaemonFactory.checked(tmp_path) as factory:
        yield factory


def test_daemon_and_workers_run_without_writable_executable_memory(
    daemons: DaemonFactory,
) -> None:
    _mdwe_supported()
    d = daemons(prefix=[sys.executable, "-c", _MDWE_EXEC])
    info = d.run("add", 2, 3)
    assert info["state"] == "done", info
    assert info["result"] == 5
    assert d.stop() == 0


def test_mdwe_probe_really_refuses_writable_executable_memory() -> None:
    _mdwe_supported()
    code = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", _MDWE_EXEC, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "refused"
