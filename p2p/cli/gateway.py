"""`gpunet gateway`: the command that runs the gateway as a light client, and its helpers.

Separate from p2p/api/app.py so that embedding the gateway (a node's `--api`, tests) needs none
of click, signals or the CLI's setup; `gpunet node --api` reuses the address parsing here.
"""

from __future__ import annotations

import json
import signal
import sys
from functools import partial
from pathlib import Path

import click
import trio

from p2p.client.network_client import AskError, open_client
from p2p.api.app import DEFAULT_API_HOST, DEFAULT_API_PORT, DEFAULT_QUEUE_TIMEOUT_S, serve_gateway


def parse_api_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (host 127.0.0.1)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = DEFAULT_API_HOST, text.strip()
    host = host.strip("[]") or DEFAULT_API_HOST
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT")
    return host, int(port)


def warn_if_exposed(host: str, api_key: str | None) -> None:
    """exo #1833: an inference API open to the network without a key is anyone's free GPU."""
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
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


@click.command("gateway")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Data dir whose running node to join by default (env GPUNET_DATA_DIR).",
)
@click.option(
    "--bootstrap",
    "bootstrap",
    multiple=True,
    metavar="HOST:PORT",
    help="DHT address of a node of the network (repeatable; env GPUNET_BOOTSTRAP). Default: "
    "the node started from the same data dir.",
)
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr.")
@click.option(
    "--api",
    "api",
    default=f"{DEFAULT_API_HOST}:{DEFAULT_API_PORT}",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to serve the OpenAI API, dashboard and metrics (port 0: any free port).",
)
@click.option(
    "--api-key",
    envvar="GPUNET_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on /v1 (env GPUNET_API_KEY).",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(0, 3600),
    default=DEFAULT_QUEUE_TIMEOUT_S,
    show_default=True,
    help="Seconds a request waits while every provider is busy before it gets a 503.",
)
@click.option(
    "--network-key",
    "network_key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="GPUNET_NETWORK_KEY",
    help="Key file of a private network (env GPUNET_NETWORK_KEY).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def gateway_command(
    data_dir: str | None,
    bootstrap: tuple[str, ...],
    verbose: int,
    network_key: Path | None,
    api: str,
    api_key: str | None,
    queue_timeout: float,
    as_json: bool,
) -> None:
    """Serve an OpenAI-compatible API into the network (a light client: no model here).

    Point any OpenAI client at http://HOST:PORT/v1. `GET /` shows the network, `/metrics` is
    for Prometheus.
    """
    from p2p.cli import main as cli  # here, not at the top: cli imports this module

    cli.setup_logging(verbose)
    host, port = parse_api_address(api)
    warn_if_exposed(host, api_key)
    directory = Path(data_dir) if data_dir else cli.default_data_dir()

    async def amain() -> None:
        addrs = await cli.resolve_all(cli.bootstrap_list(bootstrap, directory, for_client=True))
        psk = cli.read_network_key(network_key)
        async with open_client(addrs, psk=psk) as client, trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
            serve = partial(
                serve_gateway, client, host, port, api_key=api_key, queue_timeout_s=queue_timeout
            )
            url = await nursery.start(serve)
            print_gateway_ready(url, as_json)
            sys.stdout.flush()

    try:
        trio.run(amain)
    except BaseException as exc:
        if cli.find_error(exc, (KeyboardInterrupt,)):
            click.echo("gpunet gateway stopped.", err=True)
            return
        err = cli.find_error(exc, (AskError, OSError))
        if err is None:
            raise
        hint = " (pass --api HOST:PORT; port 0 picks a free one)" if "in use" in str(err) else ""
        cli.fail(f"{err}{hint}")


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            click.echo("gpunet gateway stopped (SIGTERM).", err=True)
            scope.cancel()
            return
