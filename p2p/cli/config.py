"""`gpunet config`: every setting in effect and where it came from, like `git config
--show-origin`; `--json` for programs. A broken config.toml is reported the way every other
command reports it: one `gpunet: error:` line naming the file and the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from p2p.cli.common import fail
from p2p.cli.options import data_dir_option
from p2p.settings import Settings, SettingsError, display, resolve, to_json


def settings_in_effect(data_dir: Path | None) -> Settings:
    flags = {} if data_dir is None else {"data_dir": data_dir}
    try:
        return resolve(None, flags, os.environ)
    except SettingsError as exc:
        fail(str(exc))


def as_table(settings: Settings) -> list[str]:
    """One line a setting: origin, then ``name = value``, origins in one column."""
    rows = [(str(e.origin), f"{e.setting.name} = {display(e)}") for e in settings.entries]
    width = max(len(origin) for origin, _ in rows)
    return [f"{origin:<{width}}  {line}" for origin, line in rows]


def as_json(settings: Settings) -> dict[str, object]:
    return {
        "data_dir": str(settings.data_dir),
        "config_file": str(settings.config_file),
        "config_file_exists": settings.config_file.is_file(),
        "settings": [
            {
                "name": e.setting.name,
                "value": to_json(e),
                "origin": e.origin.source,
                "where": e.origin.where or None,
                "env": e.setting.env,
            }
            for e in settings.entries
        ],
    }


@click.command("config")
@data_dir_option
@click.option("--json", "json_output", is_flag=True, help="Print a JSON object.")
def config_command(data_dir: Path | None, json_output: bool) -> None:
    """Show the settings in effect and where each comes from.

    Precedence: flags > environment (GPUNET_<KEY>) > config.toml in the data dir > defaults.
    In config.toml, shared settings sit at the top and each command's own under [node] or
    [gateway], keyed as shown here (`node.slots` is `slots = 8` under `[node]`). Secrets show
    as (hidden).
    """
    settings = settings_in_effect(data_dir)
    if json_output:
        click.echo(json.dumps(as_json(settings), indent=2))
        return
    state = "" if settings.config_file.is_file() else " (not there: nothing read from it)"
    click.echo(f"# {settings.config_file}{state}")
    for line in as_table(settings):
        click.echo(line)
