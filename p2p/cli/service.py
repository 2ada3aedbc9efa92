"""`gpunet service install|uninstall`: run this installation's node as a systemd user service.

`install` writes ~/.config/systemd/user/gpunet-node.service ($XDG_CONFIG_HOME if set): a unit
whose ExecStart is this interpreter (`python -m p2p node`, so the venv it was installed from is
the one that runs) with the node options given here, written out in full so that what runs is
visible in `systemctl --user cat`. The options are parsed as `gpunet node` parses them before
anything is written, so a typo fails now rather than in the journal; paths are made absolute
(a service starts in the home directory) and the data dir is pinned.

Why the unit says what it says:
- Restart=on-failure, RestartSec=10 s: a node that crashed comes back, without a tight loop;
  exit status 2 (a usage error) is not retried, as no retry can fix it, and a node failing at
  once on every start is given up after 10 tries (StartLimitBurst), while one waiting for the
  network (the node retries its bootstrap peers for minutes, p2p/node/join.py) keeps trying.
  On systemd 254 and later the delay also grows to 5 minutes (RestartSteps); older ones
  (Debian 12 has 252) know no backoff, so the keys are written only where they are known.
- KillSignal=SIGTERM with KillMode=mixed: the node drains on SIGTERM (p2p/cli/node.py: stops
  announcing, finishes requests in flight within --grace); TimeoutStopSec leaves it the grace
  plus STOP_MARGIN_S before systemd kills it.
- WantedBy=default.target: `enable` starts it with the user's session manager; with
  `loginctl enable-linger` that is at boot, without a login.

Secrets (--api-key) are refused on the command line: a unit's ExecStart is shown to every local
user by `systemctl status`; they belong in config.toml in the data dir. An existing unit that
differs is replaced only with --force. `uninstall` removes the file once the unit is disabled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from p2p.cli.common import fail
from p2p.cli.node import node_command
from p2p.cli.options import given_flags
from p2p.dht.records import MAX_NODE_NAME, is_node_name
from p2p.setting_kinds import Many, PathKind
from p2p.settings import NODE, Settings, SettingsError, resolve, settings_of
from p2p.version import SOFTWARE_VERSION

DEFAULT_UNIT = "gpunet-node"
STOP_MARGIN_S = 30  # beyond the node's grace: the last record, the workers' shutdown
RESTART_S = 10
# A node that fails at once (a model file gone) is given up after START_LIMIT_BURST tries in
# START_LIMIT_S; one waiting for the network fails only after its join timeout (180 s), so it
# never reaches the limit and keeps trying.
START_LIMIT_S = 600
START_LIMIT_BURST = 10
# systemd 254 and later grow the delay between restarts from RestartSec to RestartMaxDelaySec in
# RestartSteps steps; older ones refuse neither key but ignore both with a warning, so they are
# written only for a systemd that knows them.
BACKOFF_SINCE = 254
RESTART_STEPS = 5
RESTART_MAX_S = 300
VERSION_TIMEOUT_S = 5
USAGE_EXIT = 2  # click's status for a bad command line: restarting cannot help
_UNIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
# Characters that need no quoting in a systemd command line (% and $ are specifiers there).
_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def unit_dir(environ: Mapping[str, str]) -> Path:
    """Where systemd looks for the user's own units."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def systemd_quote(arg: str) -> str:
    """One ExecStart argument in systemd's syntax (systemd.service(5), "Command lines")."""
    if any(not c.isprintable() for c in arg):
        fail(f"an option holds a control character or line break, which a unit cannot: {arg!r}")
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(
    command: Sequence[str], grace_s: float, data_dir: Path, systemd: int | None = None
) -> str:
    """The unit file for *command* (the node's argv, absolute interpreter first); *systemd*,
    the version that will run it (None: unknown), decides whether restarts back off."""
    exec_start = " ".join(systemd_quote(a) for a in command)
    backoff = (
        [f"RestartSteps={RESTART_STEPS}", f"RestartMaxDelaySec={RESTART_MAX_S}"]
        if systemd is not None and systemd >= BACKOFF_SINCE
        else []
    )
    return "\n".join(
        [
            f"# Written by `gpunet service install` ({SOFTWARE_VERSION}). After editing it, run",
            "# `systemctl --user daemon-reload`; or write it again with `gpunet service install"
            " --force ...`.",
            "[Unit]",
            "Description=gpunet volunteer node (serves models to the gpunet network)",
            f"StartLimitIntervalSec={START_LIMIT_S}",
            f"StartLimitBurst={START_LIMIT_BURST}",
            "",
            "[Service]",
            "Type=exec",
            f"ExecStart={exec_start}",
            "Environment=PYTHONUNBUFFERED=1",
            "Restart=on-failure",
            f"RestartSec={RESTART_S}",
            *backoff,
            f"RestartPreventExitStatus={USAGE_EXIT}",
            "KillSignal=SIGTERM",
            "KillMode=mixed",
            f"TimeoutStopSec={int(grace_s) + STOP_MARGIN_S}",
            "NoNewPrivileges=yes",
            f"# The node's identity key, config.toml and state: {systemd_comment(data_dir)}",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def systemd_version() -> int | None:
    """The version of this machine's systemd (`systemctl --version`), None without one."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        out = subprocess.run(
            [systemctl, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(r"systemd (\d+)", out)
    return int(found.group(1)) if found else None


def systemd_comment(path: Path) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(path))


def _path_flags() -> set[str]:
    def is_path(kind: object) -> bool:
        return isinstance(kind, PathKind) or (isinstance(kind, Many) and is_path(kind.item))

    return {s.flag_name for s in settings_of(NODE) if s.flag_name and is_path(s.kind)}


def absolute_paths(args: Sequence[str], cwd: Path) -> list[str]:
    """*args* with the values of path options (--model, --data-dir, ...) made absolute."""
    flags = _path_flags()

    def absolute(value: str) -> str:
        path = Path(value)  # no ~: the node takes paths as they come, and so does its unit
        return os.path.normpath(path if path.is_absolute() else cwd / path)

    out: list[str] = []
    takes_path = False
    for arg in args:
        if takes_path:
            out.append(absolute(arg))
            takes_path = False
            continue
        flag, eq, value = arg.partition("=")
        if flag in flags:
            out.append(f"{flag}={absolute(value)}" if eq else arg)
            takes_path = not eq
        else:
            out.append(arg)
    return out


def node_argv(
    args: Sequence[str], environ: Mapping[str, str], cwd: Path
) -> tuple[list[str], Settings]:
    """The node's full command line and its effective settings; fails on what `gpunet node`
    would refuse, and on a secret given as a flag."""
    try:
        ctx = node_command.make_context("gpunet node", list(args))
    except click.ClickException as exc:
        fail(f"node options: {exc.format_message()}")
    flags = given_flags(ctx, NODE)
    secrets = [s.flag_name for s in settings_of(NODE) if s.secret and s.key in flags]
    if secrets:
        fail(
            f"{', '.join(map(str, secrets))} would be readable by every local user in the unit "
            "(systemctl status shows ExecStart): put it in config.toml in the data dir instead "
            '(e.g. api_key = "...", chmod 600)'
        )
    try:
        settings = resolve(NODE, flags, environ)
    except SettingsError as exc:
        fail(str(exc))
    argv = absolute_paths(args, cwd)
    if "data_dir" not in flags:  # pinned: the service finds the same node whatever its env
        argv += ["--data-dir", os.path.normpath(cwd / settings.data_dir)]
    if not is_node_name(settings["name"] or ""):
        fail(f"--name: at most {MAX_NODE_NAME} printable characters, no line breaks or tabs")
    for model in settings["models"]:  # a unit that cannot start would retry in the journal
        if not (cwd / model).exists():
            fail(f"model file {cwd / model} does not exist")
    python = os.path.abspath(sys.executable)  # not resolved: a venv's python is a symlink
    return [python, "-m", "p2p", "node", *argv], settings


def next_steps(unit: str, path: Path, data_dir: Path) -> list[str]:
    return [
        f"Wrote {path}. Next:",
        f"  systemctl --user daemon-reload && systemctl --user enable --now {unit}",
        "  loginctl enable-linger $USER     # keep it running without a login, and from boot",
        f"  journalctl --user -u {unit} -f   # its log",
        f"  systemctl --user status {unit}   # running? (stop: systemctl --user stop {unit})",
        f"The node's data dir is {systemd_comment(data_dir)}; "
        "options can also go in its config.toml.",
    ]


def _check_unit_name(unit: str) -> str:
    unit = unit.removesuffix(".service")
    if not _UNIT_NAME.fullmatch(unit):
        fail(f"--unit: not a unit name: {unit!r} (letters, digits, _ . @ -)")
    return unit


@click.group("service")
def service_group() -> None:
    """Run the node as a systemd user service (starts at login or boot, restarts on failure)."""


# Unknown options are the node's: passed on, then parsed by `gpunet node`'s own parser. This
# command's own options may stand anywhere among them.
@service_group.command("install", context_settings={"ignore_unknown_options": True})
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing unit that differs.")
@click.option(
    "--unit",
    default=DEFAULT_UNIT,
    show_default=True,
    help="The unit's name (another one for a second node, with its own --data-dir).",
)
@click.argument("node_options", nargs=-1, type=click.UNPROCESSED)
def install_command(
    print_only: bool, force: bool, unit: str, node_options: tuple[str, ...]
) -> None:
    """Write a systemd user unit that runs `gpunet node NODE_OPTIONS...`.

    NODE_OPTIONS are `gpunet node`'s own (see `gpunet node --help`), e.g.

    \b
        gpunet service install --model ~/models/qwen.gguf --host 0.0.0.0 --name my-pc

    They are checked now and written into the unit's ExecStart; settings in config.toml in the
    data dir apply too. Environment variables (GPUNET_*) of this shell do not reach the service.
    """
    unit = _check_unit_name(unit)
    environ = dict(os.environ)
    argv, settings = node_argv(node_options, environ, Path.cwd())
    data_dir = Path(os.path.normpath(Path.cwd() / settings.data_dir))
    systemd = systemd_version()
    text = unit_text(argv, settings["grace"], data_dir, systemd)
    if print_only:
        click.echo(text, nl=False)
        return
    path = unit_dir(environ) / f"{unit}.service"
    if path.exists() and not force:
        if path.read_text(errors="replace") == text:
            click.echo(f"{path} is already this unit; nothing changed.")
            return
        fail(f"{path} exists and differs: --print shows the new one, --force replaces it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        partial.write_text(text)
        partial.replace(path)  # atomic: systemd never reads half a unit
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    ignored = sorted(k for k in environ if k.startswith("GPUNET_"))
    for line in next_steps(unit, path, data_dir):
        click.echo(line)
    if ignored:
        click.echo(f"Note: {', '.join(ignored)} of this shell are not passed to the service.")
    if systemd is None:
        click.echo("Note: no systemctl here: this machine may not run systemd.")


@service_group.command("uninstall")
@click.option("--unit", default=DEFAULT_UNIT, show_default=True, help="The unit's name.")
def uninstall_command(unit: str) -> None:
    """Remove the unit file (disable the unit first: the command says how)."""
    unit = _check_unit_name(unit)
    directory = unit_dir(os.environ)
    path = directory / f"{unit}.service"
    if (directory / "default.target.wants" / path.name).is_symlink():
        fail(
            f"{unit} is still enabled: run `systemctl --user disable --now {unit}` first, "
            "then this again"
        )
    if not path.exists():
        click.echo(f"{path} does not exist; nothing to remove.")
        return
    try:
        path.unlink()
    except OSError as exc:
        fail(f"cannot remove {path}: {exc.strerror or exc}")
    click.echo(f"Removed {path}. Run `systemctl --user daemon-reload`.")
