"""The node's capability record as a pure function of what the node knows.

Everything that varies (the time, the sequence number, the load) is an argument, so the record a
node would publish is testable with plain values; probing the host and persisting the sequence
number happen elsewhere (`runtime.py`, `record_seq.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from crypto.identity import Identity
from inference.gpu import GpuInfo, HostFacts, hardware_class
from inference.model_file import ModelInfo
from p2p.dht.records import (
    CapabilityRecord,
    CpuEntry,
    GpuEntry,
    LoadEntry,
    ModelEntry,
    RelayHint,
)
from p2p.version import SOFTWARE_VERSION

# GPU names and architectures come from drivers and GGUF metadata: cut to what a record holds.
MAX_NAME_CHARS = 200


@attrs.frozen
class ModelOffer:
    """One served model as the record tells it."""

    info: ModelInfo
    n_gpu_layers: int
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    n_ctx: int = 0  # the context a request gets on this node; 0: unknown, the trained one
    chat_format: str = ""  # p2p.dht.records.CHAT_FORMATS
    capabilities: tuple[str, ...] = ()  # p2p.dht.records.MODEL_CAPABILITIES


def load_entry(active_requests: int, total_slots: int, *, draining: bool) -> LoadEntry:
    """A draining node announces no free slot, so clients that still find it rank it last."""
    free = 0 if draining else max(0, total_slots - active_requests)
    return LoadEntry(active_requests=active_requests, free_slots=free, queue_depth=0)


def capability_record(
    identity: Identity,
    *,
    addresses: Sequence[str],
    seq: int,
    now: float,
    ttl_s: float,
    models: Sequence[ModelOffer],
    gpus: Sequence[GpuInfo],
    host: HostFacts,
    load: LoadEntry,
    network_id: bytes | None,
    reach: str = "unknown",
    relays: Sequence[RelayHint] = (),
    name: str = "",
) -> CapabilityRecord:
    """*reach* and *relays*: how others reach the node (p2p/reach/state.py decides both);
    *name*: the owner's `--name` ("" none)."""
    on_gpu = host.gpu_offload and any(m.n_gpu_layers > 0 for m in models)
    return CapabilityRecord(
        peer_id=identity.peer_id,
        public_key=identity.public_key,
        addresses=tuple(addresses),
        software_version=SOFTWARE_VERSION,
        seq=seq,
        issued_at=now,
        expires_at=now + ttl_s,
        gpus=tuple(_gpu_entry(g) for g in gpus),
        cpu=CpuEntry(
            cores=host.cores,
            ram_bytes=host.ram_bytes,
            simd=host.cpu_flags,
            gpu_offload=host.gpu_offload,
        ),
        build=host.build,
        hardware_class=hardware_class(
            gpus, offload=on_gpu, cpu_flags=host.cpu_flags, machine=host.machine
        ),
        models=tuple(_model_entry(m) for m in models),
        network_id=network_id,
        load=load,
        reach=reach,
        relays=tuple(relays),
        name=name,
    )


def _gpu_entry(g: GpuInfo) -> GpuEntry:
    return GpuEntry(
        name=g.name[:MAX_NAME_CHARS],
        vram_total=g.vram_total,
        vram_free=g.vram_free,
        compute_capability=g.compute_capability,
        driver_version=g.driver_version,
        cuda_version=g.cuda_version,
        utilization_pct=g.utilization_pct,
    )


def _model_entry(m: ModelOffer) -> ModelEntry:
    info = m.info
    return ModelEntry(
        sha256=info.sha256,
        name=info.name,
        architecture=info.architecture[:MAX_NAME_CHARS],
        parameter_count=info.parameter_count,
        quantization=info.quantization,
        # What the node runs, not what the GGUF was trained for (Gemma 3 270M's GGUF says 32768
        # while a node runs 2048 by default): a longer request is refused here as too_long.
        context_length=m.n_ctx or info.context_length,
        layers_offloaded=max(0, min(m.n_gpu_layers, info.layer_count)),
        decode_tok_s=round(m.decode_tok_s, 1),
        prefill_tok_s=round(m.prefill_tok_s, 1),
        layers_total=info.layer_count,
        chat_format=m.chat_format,
        capabilities=m.capabilities,
    )
