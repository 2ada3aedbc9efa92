"""The click options of every setting, made from the one table in p2p/settings.py.

A command declares ``@setting_options("node")`` and gets a flag for each setting the table gives
that command, with the table's help, kind and variable name; it then calls
``command_settings("node")`` for the effective values. The flags have no click default and no
click `envvar`: precedence is p2p/settings.py's alone, and only what the user typed (click's
parameter source) counts as a flag.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from p2p.cli.common import fail
from p2p.setting_kinds import Count, Flag, Kind, Many
from p2p.settings import Setting, Settings, SettingsError, resolve, setting, settings_of

F = TypeVar("F", bound=Callable[..., Any])


class KindType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on only
    """A setting's kind as a click type: flags are read by the same code as the environment."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.name = kind.metavar.lower()

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.kind.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # already converted
        try:
            return self.kind.from_text(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _help(s: Setting) -> str:
    default = s.default_text if s.default is None or s.default == () else None
    shown = default or s.kind.to_text(s.default)
    return f"{s.help}  [default: {shown}; env {s.env}]"


def option_of(s: Setting) -> Callable[[F], F]:
    """The click option of one setting; its parameter is named by the setting's key."""
    flag = s.flag_name
    assert flag is not None, f"{s.key} has no flag"
    kind = s.kind
    if isinstance(kind, Flag):
        name = flag.removeprefix("--")
        return click.option(f"--{name}/--no-{name}", s.key, default=None, help=_help(s))
    if isinstance(kind, Count):
        return click.option(flag, f"--{s.key}", s.key, count=True, help=_help(s))
    if isinstance(kind, Many):
        return click.option(flag, s.key, multiple=True, type=KindType(kind.item), help=_help(s))
    return click.option(flag, s.key, type=KindType(kind), default=None, help=_help(s))


def setting_options(command: str) -> Callable[[F], F]:
    """Every flag *command* takes from the table, in the table's order in `--help`."""

    def decorate(f: F) -> F:
        for s in reversed(settings_of(command)):
            if s.flag_name is not None:
                f = option_of(s)(f)
        return f

    return decorate


def data_dir_option(f: F) -> F:
    """`--data-dir` alone, for the commands that need no other setting (identity, config)."""
    return option_of(setting("data_dir"))(f)


def given_flags(ctx: click.Context, command: str) -> dict[str, Any]:
    """The settings the user typed on this command line, by key."""
    return {
        s.key: ctx.params[s.key]
        for s in settings_of(command)
        if s.key in ctx.params and ctx.get_parameter_source(s.key) is ParameterSource.COMMANDLINE
    }


def command_settings(command: str) -> Settings:
    """The effective settings of the running *command* (flags > env > config.toml > default)."""
    ctx = click.get_current_context()
    try:
        return resolve(command, given_flags(ctx, command), os.environ)
    except SettingsError as exc:
        fail(str(exc))


def given_data_dir(ctx: click.Context) -> Path | None:
    """`--data-dir` from this command or a group above it: `identity --data-dir X new` works
    as well as `identity new --data-dir X`."""
    here: click.Context | None = ctx
    while here is not None:
        value = here.params.get("data_dir")
        if isinstance(value, Path):
            return value
        here = here.parent
    return None
