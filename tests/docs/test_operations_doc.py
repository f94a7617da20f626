"""docs/operations.md quotes only what exists: commands, flags, settings, log events.

What counts as quoted, so that a typo fails here instead of misleading an operator:

- a line starting ``pipework`` in a fenced ``sh`` block: a whole command line,
  parsed by the real parser (``service.cli.parsing.build_parser``);
- an inline code span starting ``pipework``: its subcommand exists, and every
  ``--flag`` in it belongs to that subcommand;
- an inline code span starting ``--``: that flag belongs to some subcommand;
- a fenced ``toml`` block: loaded as a config file into ``DaemonSettings``;
- an inline span ``key = value``, or one naming a ``PIPEWORK_*`` variable, or a
  snake_case word: a ``DaemonSettings`` field (snake_case words that name wire
  or log vocabulary instead are listed in ``NOT_SETTINGS``, and each must occur
  in the source);
- an inline span in double quotes (``"drained"``): the event of a log call
  somewhere in ``service/``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipework.service.cli.parsing import build_parser
from pipework.service.daemon.config import DaemonSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
ENV = re.compile(r"^PIPEWORK_[A-Z_]+$")
CLIENT_ENV = {"PIPEWORK_SECRET_KEY", "PIPEWORK_SERVER_KEY"}
"""Variables of the client commands and ``pipework worker``, not daemon settings."""
NOT_SETTINGS = {
    "worker_lost": "protocol/workers.py",
    "not_found": "protocol/errors.py",
    "timed_out": "protocol/messages.py",
    "unsupported_version": "protocol/errors.py",
    "task_id": "protocol/messages.py",
    "worker_pid": "service/daemon/sessions.py",
    "client_key": "service/daemon/security.py",
    "journal_unavailable": "protocol/errors.py",
    "journal_error": "service/daemon/server.py",
    "quick_check": "service/daemon/journal.py",
    "integrity_check": "service/daemon/journal.py",
    "too_large": "protocol/errors.py",
    "queue_full": "protocol/errors.py",
    "bad_json": "protocol/errors.py",
}
"""snake_case words the page quotes that are not settings, with a file that uses each."""
LEVELS = {"debug", "info", "warning", "error", "exception"}


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _prose() -> str:
    """The page without its fenced blocks (inline spans live here)."""
    return FENCE.sub("", _text())


def _spans() -> list[str]:
    # A span may wrap over a line in the Markdown source; join it back.
    joined = re.sub(r"`([^`]*)`", lambda m: "`" + " ".join(m.group(1).split()) + "`", _prose())
    return [s.strip() for s in SPAN.findall(joined)]


def _block_commands() -> Iterator[str]:
    for lang, body in FENCE.findall(_text()):
        if lang not in ("sh", "console", "bash"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip().startswith("pipework"):
                yield line.strip()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _resolve(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The subparser named by the leading words after ``pipework``, and the words after it."""
    parser = build_parser()
    rest = words[1:]
    while rest and (subs := _subparsers(parser)) and rest[0] in subs:
        parser, rest = subs[rest[0]], rest[1:]
    return parser, rest


def _all_flags() -> set[str]:
    found: set[str] = set()
    stack = [build_parser()]
    while stack:
        parser = stack.pop()
        found |= _flags(parser)
        stack.extend(_subparsers(parser).values())
    return found


def _log_events() -> set[str]:
    """The event string of every ``_log.<level>(...)`` (or ``(log or _log.<level>)(...)``) call."""
    events: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            funcs = node.func.values if isinstance(node.func, ast.BoolOp) else [node.func]
            if any(isinstance(f, ast.Attribute) and f.attr in LEVELS for f in funcs):
                events.add(first.value)
    return events


def test_the_page_quotes_commands_settings_and_events() -> None:
    """Guard the extraction itself: an empty match would make every other test pass."""
    assert len(list(_block_commands())) >= 5
    spans = _spans()
    assert sum(s.startswith("pipework ") for s in spans) >= 5
    assert sum(s.startswith('"') for s in spans) >= 10
    assert any(lang == "toml" for lang, _ in FENCE.findall(_text()))


@pytest.mark.parametrize("line", list(_block_commands()))
def test_every_command_line_parses(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = shlex.split(line, comments=True)
    assert argv[0] == "pipework"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{line}` does not parse: {capsys.readouterr().err}")
    assert callable(args.handler)
    # argparse takes an unambiguous prefix (--slot for --slots): the page must not.
    parser, rest = _resolve(argv)
    for word in rest:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in _flags(parser), f"`{line}`: {word} is abbreviated"


def test_every_inline_command_names_a_subcommand_and_its_flags() -> None:
    for span in _spans():
        if not span.startswith("pipework"):
            continue
        words = shlex.split(span)
        parser, rest = _resolve(words)
        assert parser.prog != "pipework" or len(words) == 1, f"`{span}`: no such subcommand"
        for word in rest:
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                assert flag in _flags(parser), f"`{span}`: {parser.prog} has no {flag}"


def test_every_flag_quoted_alone_exists() -> None:
    known = _all_flags()
    quoted = [s.split()[0] for s in _spans() if s.startswith("--")]
    assert quoted
    missing = [flag for flag in quoted if flag not in known]
    assert not missing, f"no pipework subcommand has {missing}"


def test_every_toml_block_is_a_valid_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("PIPEWORK_"):
            monkeypatch.delenv(name)
    blocks = [body for lang, body in FENCE.findall(_text()) if lang == "toml"]
    for i, body in enumerate(blocks):
        data = tomllib.loads(body)
        unknown = set(data) - set(DaemonSettings.model_fields)
        assert not unknown, f"toml block {i}: not settings: {unknown}"
        if set(data) == {"client_tasks"}:
            continue  # a fragment; its keys are checked above
        path = tmp_path / f"block{i}.toml"
        path.write_text(body)
        load_settings(path)  # raises ConfigError on a bad value


def test_every_setting_named_inline_exists() -> None:
    fields = set(DaemonSettings.model_fields)
    wrong = []
    for span in _spans():
        if span.startswith(("-", "pipework", "{")):
            continue
        name = span.split("=", 1)[0].strip()
        if ENV.match(name):
            ok = name in CLIENT_ENV or name[len("PIPEWORK_") :].lower() in fields
        elif "=" in span:
            ok = name in fields
        else:
            ok = not SNAKE.match(span) or span in fields or span in NOT_SETTINGS
        if not ok:
            wrong.append(span)
    assert not wrong, f"not DaemonSettings fields: {wrong}"


def test_words_that_are_not_settings_are_real_and_quoted() -> None:
    spans = set(_spans())
    for word, path in NOT_SETTINGS.items():
        assert word in (ROOT / path).read_text(encoding="utf-8"), (word, path)
        assert word in spans, f"{word} is no longer quoted: drop it from NOT_SETTINGS"
    cli = (ROOT / "service" / "cli" / "parsing.py").read_text(encoding="utf-8")
    for name in CLIENT_ENV:
        assert f'os.environ.get("{name}")' in cli, name


def test_every_quoted_log_event_is_logged_somewhere() -> None:
    events = _log_events()
    assert "drained" in events  # the collector works
    quoted = [s[1:-1] for s in _spans() if len(s) > 2 and s[0] == s[-1] == '"']
    missing = [event for event in quoted if event not in events]
    assert not missing, f"no log call in service/ has these events: {missing}"
