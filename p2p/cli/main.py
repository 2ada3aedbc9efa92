"""`gpunet`: the command group and its console entry point (`p2p.cli.main:main`).

Only the group lives here; each command is a file of its own (see p2p/cli/__init__.py) and is
registered below. Commands import p2p/cli/common.py and options.py, never this module, so the
imports run one way.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from p2p.cli.ask import ask_command
from p2p.cli.config import config_command
from p2p.cli.gateway import gateway_command
from p2p.cli.identity import identity_group
from p2p.cli.node import node_command
from p2p.cli.peers import peers_command
from p2p.cli.pull import pull_command
from p2p.cli.service import service_group
from p2p.cli.status import pause_command, resume_command, status_command
from p2p.cli.verify import verify_command
from p2p.version import version_lines


class GpunetGroup(click.Group):
    """The group, quiet when stdout's reader goes away (`gpunet peers | head -1`).

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError, possibly only
    when stdout is flushed at exit; click handles the first case, the flush here the second.
    stdout is then pointed at /dev/null so the interpreter's own last flush is silent too."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return super().main(*args, **kwargs)
            finally:
                sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for line in version_lines():
        click.echo(line)
    ctx.exit()


@click.group(cls=GpunetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show gpunet's version and the llama.cpp build it runs (for bug reports), and exit.",
)
def main() -> None:
    """gpunet: a volunteer GPU network for inference on quantized open models.

    Volunteers run `gpunet node`; anyone runs `gpunet ask` or `gpunet peers` against the
    network. Nodes find each other through a Kademlia DHT, publish signed records of their
    hardware and models, and serve tokens over encrypted, mutually authenticated sessions.

    Settings: flags > environment (GPUNET_<OPTION>) > config.toml in the data dir > defaults;
    `gpunet config` shows the settings in effect and where each comes from.
    """


for command in (
    node_command,
    ask_command,
    pull_command,
    peers_command,
    gateway_command,
    identity_group,
    config_command,
    verify_command,
    status_command,
    pause_command,
    resume_command,
    service_group,
):
    main.add_command(command)
