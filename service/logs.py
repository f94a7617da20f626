"""Logging for pipework: structlog events, routed where the application wants them.

If the application configured structlog, events go through its processors
(the daemon does this: JSON lines, or a console renderer on a terminal).
Otherwise they go to the standard ``logging`` logger of the same name as
``event key=value ...``, so a library user's stdout is never written to and
the usual logging configuration applies.

An owner of a pool that has ids of its own (the daemon) puts the pool's task
number -> its id in ``TASK_LABELS``; configured events then log that id as
``task_id`` instead of the pool's internal number.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

__all__ = ["TASK_LABELS", "Logger", "configure", "get_logger", "json_output"]

_configured_level = logging.NOTSET  # set by configure(); structlog then filters at this level
_json_output = False  # set by configure()

TASK_LABELS: Final[dict[int, str]] = {}
"""A pool's task number -> the id its owner knows the task by (the daemon's task id)."""


def _relabel(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: a pool task number in ``task_id`` becomes its owner's id."""
    number = event.get("task_id")
    if type(number) is int:
        label = TASK_LABELS.get(number)
        if label is not None:
            event["task_id"] = label
    return event


def json_output() -> bool:
    """Whether ``configure`` chose JSON lines (False before it is called, or for a console)."""
    return _json_output


class Logger:
    """A structlog-style logger: ``log.warning("worker died", worker_pid=12)``."""

    __slots__ = ("_name", "_std")

    def __init__(self, name: str) -> None:
        self._name = name
        self._std = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            if level < _configured_level:
                return  # before building anything: a per-task debug line must cost ~nothing
            bound = structlog.get_logger(self._name).bind(logger=self._name)
            method = logging.getLevelName(level).lower()
            if exc_info:
                fields["exc_info"] = True
            getattr(bound, method)(event, **fields)
        elif self._std.isEnabledFor(level):
            text = " ".join([event, *(f"{k}={v!r}" for k, v in fields.items())])
            self._std.log(level, "%s", text, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        """Log at DEBUG."""
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log at INFO."""
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log at WARNING."""
        self._emit(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log at ERROR."""
        self._emit(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log at ERROR with the exception being handled."""
        self._emit(logging.ERROR, event, True, fields)


def get_logger(name: str) -> Logger:
    """The logger called ``name`` (``pipework.<part>`` by convention)."""
    return Logger(name)


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Route pipework's events through structlog, as the daemon wants them.

    Args:
        log_format: ``"json"`` (one JSON object per line), ``"console"``
            (coloured, for people), or ``"auto"``: console when stderr is a
            terminal, JSON otherwise (journald, containers, files).
        level: the lowest level written: debug, info, warning or error.
    """
    import sys  # noqa: PLC0415 - only the daemon configures logging

    global _configured_level, _json_output
    _configured_level = logging.getLevelNamesMapping()[level.upper()]

    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    _json_output = not console
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _relabel,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks
            if not console
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_configured_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
