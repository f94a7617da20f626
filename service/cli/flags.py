"""Command-line flags made from a pydantic settings model: each setting is written once.

``add_settings_flags(parser, Model)`` gives every field ``name`` a flag
``--name`` (underscores as dashes) whose type, choices and help come from the
field: its annotation, its ``Literal`` values, its description and its default.
A ``bool`` field gets the one flag that changes it (``--no-journal`` for a
field that defaults to true, ``--status-public`` for one that defaults to
false). Fields whose values a flag cannot spell (dicts, lists) are left to the
TOML file and the environment. Flags default to "not given", so that the
model's own layering (defaults < file < environment < flags) decides.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = ["add_settings_flags", "settings_given"]

_SCALARS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _metavar(name: str, annotation: type, field: FieldInfo) -> str:
    if annotation is int:
        return "N"
    if annotation is float:
        return "S" if "second" in (field.description or "") else "X"
    if annotation is Path:
        return "DIR" if name.endswith("_dir") else "FILE"
    return name.rsplit("_", 1)[-1].upper()  # --metrics-host HOST


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _help(field: FieldInfo, shown_default: Any) -> str:
    text = field.description or ""
    if shown_default is None:
        return text
    return f"{text} (default: {shown_default})" if text else f"(default: {shown_default})"


def add_settings_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Add a flag for every field of ``model`` that a command line can spell.

    Args:
        parser: where the flags go.
        model: a pydantic model (e.g. ``DaemonSettings``); its fields' names,
            annotations, descriptions and defaults make the flags.
        aliases: extra option strings for a field (``{"journal_path": ["--journal"]}``).
    """
    aliases = aliases or {}
    for name, field in model.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        default = _default(field)
        options = [*aliases.get(name, ()), _flag(name)]
        common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if field.is_required():
            common["required"] = True
        if annotation is bool:
            flag = _flag(name) if not default else "--no-" + name.replace("_", "-")
            parser.add_argument(
                flag, action="store_const", const=not default, help=field.description, **common
            )
        elif typing.get_origin(annotation) is Literal:
            choices = [str(c) for c in typing.get_args(annotation)]
            parser.add_argument(*options, choices=choices, help=_help(field, default), **common)
        elif annotation in _SCALARS:
            parser.add_argument(
                *options,
                type=_SCALARS[annotation],
                metavar=_metavar(name, annotation, field),
                help=_help(field, default),
                **common,
            )
        # dicts and lists: TOML file and environment only


def settings_given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The settings of ``model`` that were given as flags, by field name."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
