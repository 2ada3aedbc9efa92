"""`gpunet peers`: the nodes of the network and what they serve, optionally filtered by model."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import click

from p2p.cli.common import (
    client_bootstrap,
    fail,
    printable,
    read_network_key,
    resolve_all,
    run_client,
    setup_logging,
)
from p2p.cli.options import command_settings, setting_options
from p2p.client.network import list_nodes, open_client
from p2p.client.provider_query import filter_providers, parse_size
from p2p.dht.records import CapabilityRecord, record_to_json
from p2p.settings import Settings


def reach_text(r: CapabilityRecord) -> str:
    """How the node is reached: direct, mapped (its router forwards a port), relayed (through
    the relays named, by peer id prefix) or unknown (not checked yet, or an older node)."""
    if r.reach == "relayed" or r.relays:
        via = ",".join(h.peer_id[:8] for h in r.relays) or "none held"
        return f"relayed via {via}"
    return r.reach


def describe(r: CapabilityRecord) -> list[str]:
    """The lines `gpunet peers` prints for one node."""
    hw = (
        ", ".join(
            f"{g.name} {g.vram_free / 2**30:.1f}/{g.vram_total / 2**30:.1f} GiB free"
            for g in r.gpus
        )
        or f"CPU, {r.cpu.cores} cores"
    )
    named = f"  {r.name!r}" if r.name else ""  # a stranger's text: quoted, printable only
    lines = [
        f"{r.peer_id[:16]}{named}  {','.join(r.addresses)}  {reach_text(r)}  {hw}  "
        f"load {r.load.active_requests}"
    ]
    if r.build or r.hardware_class:
        lines.append(f"    {r.build or 'build unknown'}  on  {r.hardware_class or '?'}")
    on_cpu = r.hardware_class.startswith("cpu ") if r.hardware_class else not r.gpus
    if on_cpu and r.cpu.simd:
        lines.append(f"    simd {' '.join(r.cpu.simd)}")
    lines += [
        f"    {m.name}  {m.quantization}  {m.architecture}  ctx {m.context_length}  "
        f"sha256 {m.sha256[:16]}..."
        for m in r.models
    ]
    return lines


async def show_peers(
    settings: Settings,
    model: str | None,
    gpu: bool | None,
    vram: int | None,
    quant: str | None,
    as_json: bool,
) -> None:
    addrs = await resolve_all(client_bootstrap(settings["bootstrap"], settings.data_dir))
    async with open_client(addrs, psk=read_network_key(settings["network_key"])) as client:
        records = await list_nodes(client)
    if model:
        matches = filter_providers(records, model, gpu=gpu, min_vram=vram, quantization=quant)
        records = [m.record for m in matches]
    if as_json:
        click.echo(json.dumps([record_to_json(r) for r in records], indent=2))
        return
    if not records:
        click.echo("no nodes found", err=True)
    for r in records:
        for line in describe(r):
            click.echo(printable(line))


@click.command("peers")
@setting_options("peers")
@click.option(
    "--model",
    default=None,
    metavar="NAME_OR_SHA256",
    help="Only nodes serving this model (name or sha256); the filters below need it.",
)
@click.option("--gpu/--no-gpu", default=None, help="Only nodes serving it on a GPU / on the CPU.")
@click.option("--min-vram", default=None, metavar="SIZE", help="Free VRAM on one GPU, e.g. 8G.")
@click.option("--quant", default=None, metavar="QUANT", help="Quantization, e.g. Q4_K_M.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of node records.")
def peers_command(
    model: str | None,
    gpu: bool | None,
    min_vram: str | None,
    quant: str | None,
    as_json: bool,
    **_flags: Any,
) -> None:
    """List the nodes of the network and what they serve."""
    settings = command_settings("peers")
    setup_logging(settings["verbose"])
    if model is None and (gpu is not None or min_vram or quant):
        fail("--gpu, --min-vram and --quant filter the providers of a model: add --model")
    try:
        vram = parse_size(min_vram) if min_vram else None
    except ValueError as exc:
        fail(str(exc))
    run_client(partial(show_peers, settings, model, gpu, vram, quant, as_json))
