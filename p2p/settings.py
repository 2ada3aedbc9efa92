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

from p2p.setting_kinds import (
    Address,
    Count,
    Flag,
    IntOrWord,
    Kind,
    Many,
    Number,
    PathKind,
    Text,
    Whole,
)

ENV_PREFIX = "GPUNET_"
CONFIG_FILENAME = "config.toml"
COMMON = ""  # the section of shared settings: the file's top level

NODE = "node"
GATEWAY = "gateway"
CLIENTS = ("ask", "peers")
ALL_COMMANDS = (NODE, GATEWAY, *CLIENTS)

# The gateway's place when nothing says otherwise; the same as p2p/api/app.py's
# DEFAULT_API_HOST/PORT (beside the node's 8468 UDP and 8469 TCP).
DEFAULT_API_ADDRESS = ("127.0.0.1", 8470)
DEFAULT_QUEUE_TIMEOUT_S = 60.0


class SettingsError(ValueError):
    """A setting that cannot be used; the one-line message names where it came from."""


@attrs.frozen
class Setting:
    """One option: where it lives in the file, its flag, and its variable (``GPUNET_<KEY>``)."""

    key: str
    kind: Kind
    default: Any
    help: str
    section: str = COMMON  # COMMON (the file's top level) or a command's table
    commands: tuple[str, ...] = ALL_COMMANDS  # the commands that take it (as a flag)
    flag: str | None = None  # None: `--` + key with dashes; "" for none at all
    in_file: bool = True
    secret: bool = False  # shown as hidden by `gpunet config`
    default_text: str | None = None  # what the default means, when it is None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag_name(self) -> str | None:
        if self.flag == "":
            return None
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def name(self) -> str:
        """The key as the file spells it: ``slots`` under [node] is ``node.slots``."""
        return f"{self.section}.{self.key}" if self.section else self.key


_PORT = Whole(0, 65535)
_API = Address(default_host=DEFAULT_API_ADDRESS[0], allow_port_zero=True)


def _node(key: str, kind: Kind, default: Any, help: str, **more: Any) -> Setting:
    return Setting(key, kind, default, help, section=NODE, commands=(NODE,), **more)


def _gateway(key: str, kind: Kind, default: Any, help: str, **more: Any) -> Setting:
    return Setting(key, kind, default, help, section=GATEWAY, commands=(GATEWAY,), **more)


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # --- shared: the top of config.toml ---------------------------------------------------------
    Setting(
        "data_dir", PathKind(directory=True), None,
        "Where the identity key, config.toml and node state live.",
        in_file=False, default_text="the user data dir",
    ),
    Setting(
        "bootstrap", Many(Address()), (),
        "DHT address of a node already in the network (repeatable). Clients default to the node "
        "started from the same data dir.",
        default_text="none, a node starts a new network",
    ),
    Setting(
        "network_key", PathKind(), None,
        "Key file of a private network (`gpunet identity network-key new FILE`).",
        default_text="none, the public network",
    ),
    Setting("verbose", Count(0, 9), 0, "More diagnostics on stderr (repeat for more).", flag="-v"),
    Setting(
        "api_key", Text("KEY"), None, "Require 'Authorization: Bearer KEY' on the OpenAI API.",
        commands=(NODE, GATEWAY), secret=True, default_text="none, no key asked",
    ),
    Setting(
        "key_passphrase", Text("PASSPHRASE"), None,
        "Passphrase of an encrypted identity key file (for services; at a terminal it is "
        "prompted for).",
        commands=(), flag="", in_file=False, secret=True,
        default_text="none, prompted for at a terminal",
    ),
    # --- gpunet node: [node] ----------------------------------------------------------------------
    _node(
        "models", Many(PathKind()), (), "GGUF file or folder of GGUF files to serve (repeatable).",
        flag="--model", default_text="Gemma 3 270M",
    ),
    _node("host", Text("HOST"), "127.0.0.1", "Address to bind; 0.0.0.0 to accept other machines."),
    _node("dht_port", _PORT, 8468, "UDP port of the DHT (0: any free port)."),
    _node("port", _PORT, 8469, "TCP port of encrypted sessions (0: any free port)."),
    _node(
        "threads", Whole(1, 512), None,
        "CPU threads for llama.cpp, for decoding and for prompts.",
        default_text="the physical cores",
    ),
    _node(
        "ctx_size", Whole(16, 1 << 20), 2048,
        "Context of each request in tokens (prompt and answer); at most the model's trained "
        "context. Each slot keeps a KV cache this long: more context, more memory.",
    ),
    _node("slots", Whole(1, 64), 4, "Requests decoded together per model (continuous batching)."),
    _node(
        "gpu_layers", IntOrWord("auto", metavar="N|auto|0"), "auto",
        "Layers to offload to the GPU: auto fits them to free VRAM, 0 keeps the CPU.",
    ),
    _node(
        "max_queue", Whole(0, 1024), 8,
        "Requests allowed to wait per model; beyond it the node answers busy at once.",
    ),
    _node(
        "max_requests", Whole(0, 100_000), None,
        "Requests in flight on the node; beyond it the node answers busy. 0 announces the node "
        "but serves nothing.",
        default_text="slots + queue of every model",
    ),
    _node(
        "join_timeout", Number(0, 3600), 180.0,
        "Seconds the node keeps retrying its --bootstrap peers while none answers (a service "
        "started before its bootstrap peer); 0 gives up at the first try.",
    ),
    _node(
        "log_file", PathKind(), None,
        "Also append the node's log (one line per served request, warnings) to this file.",
        default_text="none, stderr only",
    ),
    _node(
        "grace", Number(0, 3600), 30.0,
        "Seconds in-flight requests get to finish on Ctrl-C/SIGTERM.",
    ),
    _node(
        "api", _API, None,
        "Also serve the OpenAI-compatible API, dashboard and metrics here (e.g. 127.0.0.1:8470).",
        default_text="none, no API",
    ),
    _node(
        "benchmark", Flag(), True,
        "Measure each model's prefill and decode speed at start (about 1.5 s a model); the "
        "record publishes it and clients prefer faster nodes. Without it the node counts as "
        "average.",
    ),
    _node(
        "prompt_cache", Flag(), True,
        "Keep each slot's last prompt and answer in the KV cache, so a request that starts the "
        "same way skips that part of the prefill.",
    ),
    _node(
        "speculate", Flag(), True,
        "Greedy requests whose text repeats itself (lists, loops, quoted prompt) guess the "
        "repeat's next tokens and check them in one step: the same greedy tokens, sooner.",
    ),
    # --- gpunet gateway: [gateway] ----------------------------------------------------------------
    _gateway(
        "api", _API, DEFAULT_API_ADDRESS,
        "Where to serve the OpenAI API, dashboard and metrics (port 0: any free port).",
    ),
    _gateway(
        "queue_timeout", Number(0, 3600), DEFAULT_QUEUE_TIMEOUT_S,
        "Seconds a request waits while every provider is busy before it gets a 503.",
    ),
)
# fmt: on

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
