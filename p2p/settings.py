"""Settings of gpunet's commands: one table, one order of precedence, one reader of config.toml.

Every option of `gpunet node` and `gpunet gateway`, and the ones every command shares, is one
`Setting` in `SETTINGS`: its key, kind (type and range), default, help text, the flag that sets it
and its environment variable, always ``GPUNET_<KEY>``. The effective value of each comes from the
first of these that gives one:

1. a flag on the command line (only a flag the user typed: click's parameter source says so);
2. the environment, ``GPUNET_<KEY>``; an empty variable counts as unset, so ``GPUNET_BOOTSTRAP=``
   turns a variable inherited from a shell off rather than meaning "no address";
3. ``config.toml`` in the data dir;
4. the default.

The file (TOML, read with the stdlib's `tomllib`) holds the shared settings at the top and each
command's own under a table named after it::

    bootstrap = ["203.0.113.7:8468"]     # shared: every command
    api_key = "s3cret"                   # shared by node and gateway

    [node]
    models = ["/srv/models"]             # relative paths are relative to the data dir
    slots = 8
    api = "127.0.0.1:8470"

    [gateway]
    api = "0.0.0.0:8470"
    queue_timeout = 30

Keys are the flags' names with `_` for `-` (`--max-queue` is ``max_queue``; the repeatable
`--model` is ``models``). A list in the environment is comma-separated. Two settings stay out
of the file: ``data_dir`` (the file lives in it) and ``key_passphrase`` (a passphrase stored beside
the key it protects protects nothing). `--json` says how one run prints, so it is a flag only.

A file with a key the table does not know, a value of the wrong kind, or broken TOML is refused
as a whole with one `SettingsError` whose message names the file, the key and what was expected:
a typo must not silently fall back to a default.

This module does no I/O beyond reading that one file and imports neither click nor trio, so the
whole precedence is tested with plain function calls (tests/p2p/test_settings.py).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import platformdirs

from p2p.setting_table import (
    ALL_COMMANDS,
    CLIENTS,
    COMMON,
    CONFIG_FILENAME,
    DEFAULT_API_ADDRESS,
    DEFAULT_QUEUE_TIMEOUT_S,
    ENV_PREFIX,
    GATEWAY,
    NODE,
    SETTINGS,
    Setting,
)

__all__ = [
    "ALL_COMMANDS",
    "CLIENTS",
    "COMMON",
    "CONFIG_FILENAME",
    "DEFAULT_API_ADDRESS",
    "DEFAULT_QUEUE_TIMEOUT_S",
    "ENV_PREFIX",
    "GATEWAY",
    "NODE",
    "SETTINGS",
    "Setting",
    "Settings",
    "SettingsError",
]


class SettingsError(ValueError):
    """A setting that cannot be used; the one-line message names where it came from."""


SECTIONS = (COMMON, NODE, GATEWAY)


def settings_of(command: str) -> tuple[Setting, ...]:
    """The settings *command* takes as flags, in table order."""
    return tuple(s for s in SETTINGS if command in s.commands)


def setting(key: str, section: str = COMMON) -> Setting:
    for s in SETTINGS:
        if s.key == key and s.section == section:
            return s
    raise KeyError(f"{section}.{key}" if section else key)


Source = Literal["flag", "env", "file", "default"]


@attrs.frozen
class Origin:
    """Where a value came from, and which flag, variable or file gave it."""

    source: Source
    where: str = ""

    def __str__(self) -> str:
        return f"{self.source} {self.where}" if self.where else self.source


DEFAULT = Origin("default")


@attrs.frozen
class Entry:
    setting: Setting
    value: Any
    origin: Origin


@attrs.frozen
class Settings:
    """The effective settings of one command (or of all, for `gpunet config`)."""

    data_dir: Path
    config_file: Path
    entries: tuple[Entry, ...]

    def __getitem__(self, key: str) -> Any:
        return self.entry(key).value

    def entry(self, key: str) -> Entry:
        """The entry named *key* (``slots``); among every command's, name it (``node.api``)."""
        for e in self.entries:
            if key in (e.setting.key, e.setting.name):
                return e
        raise KeyError(key)

    def origin(self, key: str) -> Origin:
        return self.entry(key).origin


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("gpunet"))


def env_value(s: Setting, environ: Mapping[str, str]) -> Any | None:
    """The value *environ* gives *s*, or None when its variable is unset or empty."""
    text = environ.get(s.env, "")
    if not text.strip():
        return None
    try:
        return s.kind.from_text(text)
    except ValueError as exc:
        raise SettingsError(f"{s.env}: {exc}") from None


def resolve_data_dir(given: Path | None, environ: Mapping[str, str]) -> tuple[Path, Origin]:
    """The data dir: flag, else GPUNET_DATA_DIR, else the user data dir (never the file)."""
    s = setting("data_dir")
    if given is not None:
        return Path(given), Origin("flag", s.flag_name or "")
    from_env = env_value(s, environ)
    if from_env is not None:
        return Path(from_env), Origin("env", s.env)
    return default_data_dir(), DEFAULT


def resolve(
    command: str | None,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
) -> Settings:
    """The effective settings of *command* (None: of every command, keys as ``node.slots``).

    *flags* holds only what the user gave on the command line, by key, already converted by
    the flag's kind. Raises `SettingsError` for a bad variable or a bad config file.
    """
    data_dir, data_origin = resolve_data_dir(flags.get("data_dir"), environ)
    config_file = data_dir / CONFIG_FILENAME
    from_file = read_config_file(config_file)
    wanted = SETTINGS if command is None else settings_of(command)
    entries = []
    for s in wanted:
        if s.key == "data_dir":
            entries.append(Entry(s, data_dir, data_origin))
            continue
        entries.append(_effective(s, flags, environ, from_file))
    return Settings(data_dir=data_dir, config_file=config_file, entries=tuple(entries))


def _effective(
    s: Setting,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    from_file: Mapping[tuple[str, str], tuple[Any, Path]],
) -> Entry:
    if s.key in flags:
        return Entry(s, flags[s.key], Origin("flag", s.flag_name or ""))
    value = env_value(s, environ)
    if value is not None:
        return Entry(s, value, Origin("env", s.env))
    if (s.section, s.key) in from_file:
        value, path = from_file[(s.section, s.key)]
        return Entry(s, value, Origin("file", str(path)))
    return Entry(s, s.default, DEFAULT)


def read_config_file(path: Path) -> dict[tuple[str, str], tuple[Any, Path]]:
    """The settings *path* holds, by (section, key); {} when there is no file.

    Checks all of it, whatever command runs: a typo under [gateway] is reported to `gpunet
    node` as well, rather than surfacing the day the gateway starts.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(document, path)


def parse_config(
    document: Mapping[str, Any], path: Path
) -> dict[tuple[str, str], tuple[Any, Path]]:
    """Check a parsed config file against the table; relative paths are relative to *path*'s
    folder. Raises `SettingsError` at the first fault."""
    out: dict[tuple[str, str], tuple[Any, Path]] = {}
    for key, value in document.items():
        if key in SECTIONS[1:]:
            if not isinstance(value, dict):
                raise SettingsError(f"{path}: {key} must be a table, [{key}]")
            for inner, inner_value in value.items():
                s = _known(path, key, inner, inner_value)
                out[(key, inner)] = (_file_value(path, s, inner_value), path)
            continue
        s = _known(path, COMMON, key, value)
        out[(COMMON, key)] = (_file_value(path, s, value), path)
    return out


def _known(path: Path, section: str, key: str, value: Any) -> Setting:
    """The setting *key* names in *section*, or the error that says what is wrong with it."""
    where = f"[{section}] " if section else ""
    for s in SETTINGS:
        if s.key == key and s.section == section:
            if not s.in_file:
                raise SettingsError(
                    f"{path}: {where}{key} cannot be set in {CONFIG_FILENAME} "
                    f"({_not_in_file_reason(s)})"
                )
            return s
    elsewhere = [s.section for s in SETTINGS if s.key == key and s.section != section]
    if elsewhere and elsewhere[0]:
        raise SettingsError(
            f"{path}: {where}{key} is a [{elsewhere[0]}] setting: put it under [{elsewhere[0]}]"
        )
    if elsewhere:
        raise SettingsError(
            f"{path}: [{section}] {key} is a shared setting: put it at the top of the file, "
            "before any [table]"
        )
    if not section and isinstance(value, dict):
        raise SettingsError(f"{path}: unknown table [{key}]{_did_you_mean(key, SECTIONS[1:])}")
    names = [s.key for s in SETTINGS if s.section == section and s.in_file]
    raise SettingsError(f"{path}: unknown key {where}'{key}'{_did_you_mean(key, names)}")


def _not_in_file_reason(s: Setting) -> str:
    if s.key == "data_dir":
        return "the file lives in it; use --data-dir or GPUNET_DATA_DIR"
    return f"use {s.env}"


def _did_you_mean(key: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _file_value(path: Path, s: Setting, value: Any) -> Any:
    try:
        return s.kind.from_toml(value, path.parent)
    except ValueError as exc:
        where = f"[{s.section}] " if s.section else ""
        raise SettingsError(f"{path}: {where}{s.key}: {exc}") from None


def display(entry: Entry) -> str:
    """The value as `gpunet config` prints it."""
    s, value = entry.setting, entry.value
    if value is None or value == ():
        return f"({s.default_text or 'none'})"
    if s.secret:
        return "(hidden)"
    return s.kind.to_text(value)


def to_json(entry: Entry) -> Any:
    if entry.value is None:
        return None
    if entry.setting.secret:
        return "(hidden)"
    return entry.setting.kind.to_json(entry.value)
