"""`gpunet`: the command group and its console entry point (`p2p.cli.main:main`).

Only the group lives here; each command is a file of its own (see p2p/cli/__init__.py) and is
registered below. Commands import p2p/cli/common.py and options.py, never this module, so the
imports run one way.
"""

from __future__ import annotations

import click

from p2p.cli.ask import ask_command
from p2p.cli.config import config_command
from p2p.cli.gateway import gateway_command
from p2p.cli.identity import identity_group
from p2p.cli.node import node_command
from p2p.cli.peers import peers_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpunet", message="gpunet %(version)s")
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
    peers_command,
    gateway_command,
    identity_group,
    config_command,
):
    main.add_command(command)
