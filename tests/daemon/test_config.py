"""Daemon settings: defaults < TOML file < PIPEWORK_* environment < flags; bad values refused."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from pipework.service.daemon.config import ConfigError, DaemonSettings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("PIPEWORK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_embedded_defaults(tmp_path: Path) -> None:
    s = load_settings()
    assert s.endpoint == f"ipc://{tmp_path}/run/pipework/pipework.sock"
    assert s.journal is True
    assert s.journal_path == tmp_path / "state" / "pipework" / "journal.sqlite3"
    assert s.journal_sync == "full"
    assert s.workers == (os.cpu_count() or 1)
    assert s.tasks == "pipework.service.daemon.example_tasks"


def test_layering_file_then_env_then_flags(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "pipework.toml"
    config.write_text('workers = 3\nretries = 5\ntasks = "from.file"\ndrain_timeout = 7.5\n')
    monkeypatch.setenv("PIPEWORK_RETRIES", "4")
    monkeypatch.setenv("PIPEWORK_TASKS", "from.env")
    s = load_settings(config, tasks="from.flag", workers=None)
    assert s.workers == 3  # file (the flag was not given)
    assert s.retries == 4  # env beats file
    assert s.tasks == "from.flag"  # flag beats env
    assert s.drain_timeout == 7.5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"workers": -1}, "workers"),
        ({"heartbeat": 2.0, "heartbeat_expiry": 1.0}, "heartbeat_expiry"),
        ({"journal_sync": "sometimes"}, "journal_sync"),
        ({"max_message_bytes": 10}, "max_message_bytes"),
        ({"retries": -1}, "retries"),
    ],
)
def test_invalid_values_name_the_setting(flags, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**flags)


def test_unknown_key_in_file_and_unreadable_file(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text("wrokers = 3\n")
    with pytest.raises(ConfigError, match="wrokers"):
        load_settings(typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("workers = = 3\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_env_alone(monkeypatch) -> None:
    monkeypatch.setenv("PIPEWORK_JOURNAL", "false")
    monkeypatch.setenv("PIPEWORK_ENDPOINT", "tcp://127.0.0.1:5999")
    s = DaemonSettings()
    assert s.journal is False
    assert s.endpoint == "tcp://127.0.0.1:5999"


def test_every_setting_a_command_line_can_spell_has_its_flag() -> None:
    """The serve flags are made from DaemonSettings: none is missing, none is extra."""
    from pipework.service.cli.flags import settings_given  # noqa: PLC0415
    from pipework.service.cli.parsing import build_parser  # noqa: PLC0415

    parser = build_parser()
    argv = ["serve", "--no-journal", "--status-public", "--max-queued", "5"]
    argv += ["--transport", "zmq+tcp", "--heartbeat", "2", "--journal", "/x/j.db"]
    args = parser.parse_args(argv)
    given = settings_given(args, DaemonSettings)
    assert given == {
        "journal": False,
        "status_public": True,
        "max_queued": 5,
        "transport": "zmq+tcp",
        "heartbeat": 2.0,
        "journal_path": Path("/x/j.db"),
    }
    settings = load_settings(None, **given)
    assert settings.max_queued == 5
    assert settings.journal is False
    assert settings.status_public is True
    # Nothing given: no flag stands in for a default (the model's layering decides).
    assert settings_given(parser.parse_args(["serve"]), DaemonSettings) == {}
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = subcommands.choices["serve"]
    dests = {a.dest for a in serve._actions} - {"help", "config", "journal_recover"}
    spellable = {
        name
        for name, field in DaemonSettings.model_fields.items()
        if "dict" not in str(field.annotation) and "list" not in str(field.annotation)
    }
    assert dests == spellable
