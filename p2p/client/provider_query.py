"""Which providers of a model fit what a client asks for: pure functions over verified records.

`gpunet peers --model X --gpu --min-vram 8G --quant Q4_K_M` filters with `filter_providers`; the
client's routing finds a record's file with `served_entry` (the one rule of p2p.model_match).
Ranking among the matches is `p2p.client.ranking`'s job, so order is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from p2p.dht.records import CapabilityRecord, ModelEntry
from p2p.model_match import model_matches

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@attrs.frozen
class ProviderMatch:
    record: CapabilityRecord
    model: ModelEntry


def served_entry(record: CapabilityRecord, model: str) -> ModelEntry | None:
    """The first model file of *record* that answers to *model* (a name or a sha256)."""
    return next((m for m in record.models if model_matches(model, m.sha256, m.name)), None)


def max_free_vram(record: CapabilityRecord) -> int:
    """Free VRAM of the node's best GPU (a model is served from one GPU), 0 without a GPU."""
    return max((g.vram_free for g in record.gpus), default=0)


def filter_providers(
    records: Iterable[CapabilityRecord],
    model: str,
    *,
    gpu: bool | None = None,
    min_vram: int | None = None,
    quantization: str | None = None,
) -> list[ProviderMatch]:
    """Records that serve *model* (name, case-insensitive, or sha256) and pass every filter given.

    - gpu: True keeps nodes with a GPU that runs at least one layer of the model; False keeps
      CPU-only serving; None keeps both.
    - min_vram: bytes of free VRAM on one GPU (implies a GPU).
    - quantization: e.g. "Q4_K_M", case-insensitive.
    """
    wanted_quant = quantization.upper() if quantization else None
    out: list[ProviderMatch] = []
    for record in records:
        entry = served_entry(record, model)
        if entry is None:
            continue
        on_gpu = bool(record.gpus) and entry.layers_offloaded > 0
        if gpu is not None and on_gpu != gpu:
            continue
        if min_vram is not None and max_free_vram(record) < min_vram:
            continue
        if wanted_quant is not None and entry.quantization.upper() != wanted_quant:
            continue
        out.append(ProviderMatch(record, entry))
    return out


def parse_size(text: str) -> int:
    """'8G', '8GiB', '512M', '1.5g', '1073741824' → bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (try 8G or 512M)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
