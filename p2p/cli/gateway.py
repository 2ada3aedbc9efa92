"""`gpunet gateway`: the OpenAI-compatible API as a light client of the network (no model here).

Separate from p2p/api/app.py so that embedding the gateway (a node's `--api`, tests) needs none
of click, signals or the CLI's setup. `warn_if_exposed` is shared with `gpunet node --api`.
"""

from __future__ import annotations

import json
import signal
import sys
from functools import partial
from typing import Any

import click
import trio

from p2p.api.app import serve_gateway
from p2p.cli.common import (
    client_bootstrap,
    is_address_in_use,
    read_network_key,
    resolve_all,
    run_trio,
    setup_logging,
)
from p2p.cli.options import command_settings, setting_options
from p2p.client.background_checks import BackgroundChecks
from p2p.client.network import AskError, open_client
from p2p.settings import GATEWAY, Settings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def warn_if_exposed(host: str, api_key: str | None) -> None:
    """exo #1833: an inference API open to the network without a key is anyone's free GPU."""
    if host not in LOOPBACK_HOSTS and not api_key:
        click.echo(
            f"gpunet: warning: the OpenAI API listens on {host} without --api-key; "
            "anyone who can reach it can spend the network's GPUs",
            err=True,
        )


def print_gateway_ready(url: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"event": "ready", "api": url + "/v1", "dashboard": url + "/"}))
        return
    click.echo(f"gpunet gateway: OpenAI API at {url}/v1")
    click.echo(f"dashboard {url}/   metrics {url}/metrics")
    click.echo("Press Ctrl-C to stop.")


async def serve(settings: Settings, psk: bytes | None, as_json: bool) -> None:
    host, port = settings["api"]
    addrs = await resolve_all(client_bootstrap(settings["bootstrap"], settings.data_dir))
    async with open_client(addrs, psk=psk) as client, trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
        url = await nursery.start(
            partial(
                serve_gateway,
                client,
                host,
                port,
                api_key=settings["api_key"],
                queue_timeout_s=settings["queue_timeout"],
                cors_origins=settings["cors"],
                probes=settings["probes"],
                checks=BackgroundChecks.of_settings(
                    client, settings["verify_fraction"], settings.data_dir
                ),
            )
        )
        print_gateway_ready(url, as_json)
        sys.stdout.flush()


def _api_hint(err: BaseException) -> str:
    return " (pass --api HOST:PORT; port 0 picks a free one)" if is_address_in_use(err) else ""


@click.command("gateway")
@setting_options(GATEWAY)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def gateway_command(as_json: bool, **_flags: Any) -> None:
    """Serve an OpenAI-compatible API into the network (a light client: no model here).

    Point any OpenAI client at http://HOST:PORT/v1. `GET /` shows the network, `/metrics` is
    for Prometheus.
    """
    settings = command_settings(GATEWAY)
    setup_logging(settings["verbose"])
    warn_if_exposed(settings["api"][0], settings["api_key"])
    psk = read_network_key(settings["network_key"])
    if not run_trio(partial(serve, settings, psk, as_json), (AskError, OSError), hint=_api_hint):
        click.echo("gpunet gateway stopped.", err=True)


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            click.echo("gpunet gateway stopped (SIGTERM).", err=True)
            scope.cancel()
            return
