"""The daemon's settings: embedded defaults, a TOML file, ``PIPEWORK_*`` variables, flags.

Later sources win: defaults < TOML file < environment < command-line flags.
Every field is one TOML key (``workers = 4``) and one variable
(``PIPEWORK_WORKERS=4``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipework.protocol.codec import MAX_MESSAGE_BYTES
from pipework.protocol.endpoint import default_endpoint
from pipework.service.errors import PipeworkError
from pipework.service.transports import TransportName

__all__ = [
    "ConfigError",
    "DaemonSettings",
    "LogFormat",
    "LogLevel",
    "default_journal_path",
    "describe_invalid",
    "load_settings",
]

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/pipework/journal.sqlite3`` (``~/.local/state`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pipework" / "journal.sqlite3"


class ConfigError(PipeworkError):
    """The settings are invalid or the config file cannot be read; the message says which."""


class DaemonSettings(BaseSettings):
    """Everything ``pipework serve`` can be told. Each default works on its own."""

    model_config = SettingsConfigDict(env_prefix="PIPEWORK_", extra="forbid")

    endpoint: str = Field(
        default_factory=default_endpoint,
        description="where clients connect: ipc://PATH or tcp://HOST:PORT",
    )
    tasks: str = Field(
        default="pipework.service.daemon.example_tasks",
        description="module whose @task functions may run; the current directory is searched "
        "first, so ./mytasks.py is --tasks mytasks (no PYTHONPATH needed)",
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=0,
        le=1024,
        description="local worker processes (0: remote workers only)",
    )
    transport: TransportName = Field(
        default="pipe", description="how the daemon talks to its local workers"
    )
    journal: bool = Field(
        default=True, description="keep accepted tasks in SQLite (off: in memory)"
    )
    journal_path: Path = Field(default_factory=default_journal_path, description="journal file")
    journal_sync: Literal["full", "normal", "off"] = Field(
        default="full", description="full: survives power loss; normal: survives a daemon crash"
    )
    retries: int = Field(default=2, ge=0, le=100, description="default re-runs after a worker dies")
    task_timeout: float | None = Field(default=None, gt=0, description="default seconds per run")
    drain_timeout: float = Field(
        default=30.0, ge=0, description="seconds SIGTERM lets running tasks end"
    )
    result_ttl: float = Field(default=86_400.0, gt=0, description="seconds finished tasks are kept")
    max_message_bytes: int = Field(
        default=MAX_MESSAGE_BYTES, ge=1024, le=1 << 30, description="largest request body accepted"
    )
    max_queued: int = Field(default=1_000_000, ge=1, description="unfinished tasks held at most")
    max_reply_bytes_queued: int = Field(
        default=32 << 20,
        ge=1 << 16,
        description="bytes of replies queued for one client that is not reading them; "
        "further replies to it are dropped (and counted) until it reads",
    )
    max_tasks_per_worker: int | None = Field(
        default=None, ge=1, description="replace a local worker after this many tasks; None: never"
    )
    max_memory_per_worker: int | None = Field(
        default=None,
        ge=1,
        description="replace a local worker whose RSS exceeds this many bytes (checked "
        "between tasks); None: never",
    )
    handshake_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="seconds a new connection may take to finish its ZeroMQ (CURVE) handshake",
    )
    workers_endpoint: str | None = Field(
        default=None, description="where remote workers connect (tcp://HOST:PORT); None: none"
    )
    curve_secret_key: Path | None = Field(
        default=None, description="the daemon's CURVE secret key file (NAME.key_secret)"
    )
    curve_allow_dir: Path | None = Field(
        default=None, description="directory of the public keys (NAME.key) allowed in"
    )
    curve_worker_dir: Path | None = Field(
        default=None,
        description="public keys allowed to connect as remote workers (default: curve_allow_dir)",
    )
    client_tasks: dict[str, list[str]] = Field(
        default_factory=dict, description="key name -> task names that key may submit"
    )
    heartbeat: float = Field(default=1.0, gt=0, description="seconds between remote heartbeats")
    heartbeat_expiry: float = Field(
        default=10.0, gt=0, description="seconds of silence before a remote worker is lost"
    )
    log_format: LogFormat = Field(
        default="auto", description="auto: console on a terminal, else JSON"
    )
    log_level: LogLevel = Field(default="info")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus metrics on this port; None: off"
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the metrics bind to")
    status_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve the live status page here; None: off"
    )
    status_host: str = Field(default="127.0.0.1", description="address the status page binds to")
    status_public: bool = Field(
        default=False, description="allow a status_host other than loopback (see the docs first)"
    )

    @model_validator(mode="after")
    def _expiry_after_heartbeat(self) -> DaemonSettings:
        if self.heartbeat_expiry <= self.heartbeat:
            raise ValueError(
                f"heartbeat_expiry ({self.heartbeat_expiry}) must be longer than heartbeat "
                f"({self.heartbeat}), or every quiet moment would lose a remote worker"
            )
        return self

    @model_validator(mode="after")
    def _status_page_stays_local(self) -> DaemonSettings:
        if self.status_port is None or self.status_public:
            return self
        from pipework.service.ops.status import is_loopback  # noqa: PLC0415 - an HTTP server, when asked

        if not is_loopback(self.status_host):
            raise ValueError(
                f"status_host {self.status_host!r} is not a loopback address: the status "
                "page shows task names, error messages and tracebacks, which can hold "
                "whatever tasks' arguments held, to anyone who reaches it, without "
                "authentication; set status_public = true to serve it there anyway"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def describe_invalid(exc: ValidationError) -> str:
    """One line naming each invalid setting and why: ``invalid settings: workers: ...``."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors()
    )
    return f"invalid settings: {problems}"


def load_settings(
    config_file: str | os.PathLike[str] | None = None, **flags: Any
) -> DaemonSettings:
    """Build the settings from defaults, ``config_file``, the environment and ``flags``.

    Args:
        config_file: a TOML file of top-level ``key = value`` lines, or None.
        flags: values from the command line; None means "not given".

    Raises:
        ConfigError: the file is missing or not TOML, or a value is invalid.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    cls: type[DaemonSettings] = DaemonSettings
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        cls = type(
            "DaemonSettingsFromFile",
            (DaemonSettings,),
            {
                "model_config": SettingsConfigDict(
                    **{**DaemonSettings.model_config, "toml_file": path}
                )
            },
        )
    try:
        return cls(**given)
    except ValidationError as exc:
        raise ConfigError(describe_invalid(exc)) from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"cannot read config file {str(config_file)!r}: {exc}") from None
