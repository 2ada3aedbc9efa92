"""What the network offers, from the signed records in the DHT: for the dashboard and /v1/models.

Separate from the HTTP code in p2p/api/app.py: the tables are pure functions of the records, and
`NetworkView` only adds a short cache in front of the DHT lookup.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from p2p.client.network import Client, list_nodes
from p2p.dht.records import CapabilityRecord, record_to_json

# The dashboard and /v1/models would otherwise run a DHT lookup per page view; records change
# every few minutes, so a short cache costs no freshness that matters.
NETWORK_CACHE_S = 2.0


# --- the network view (dashboard, /v1/models) -----------------------------------------------


class NetworkView:
    """The directory of signed node records, looked up at most every NETWORK_CACHE_S seconds."""

    def __init__(self, client: Client, ttl_s: float = NETWORK_CACHE_S) -> None:
        self._client = client
        self._ttl = ttl_s
        self._lock = trio.Lock()
        self._at = -math.inf
        self._nodes: list[CapabilityRecord] = []

    async def nodes(self) -> list[CapabilityRecord]:
        async with self._lock:  # concurrent viewers share one lookup
            if trio.current_time() - self._at >= self._ttl:
                self._nodes = await list_nodes(self._client)
                self._at = trio.current_time()
            return self._nodes


def model_table(nodes: list[CapabilityRecord]) -> list[dict[str, Any]]:
    """One entry per model build (sha256) on offer, most providers first.

    id is the model's name, which requests may use; when two different builds share a name the
    name would be ambiguous, so each of those is listed under its sha256 instead.
    """
    by_sha: dict[str, dict[str, Any]] = {}
    for r in nodes:
        for m in r.models:
            entry = by_sha.setdefault(
                m.sha256,
                {
                    "sha256": m.sha256,
                    "name": m.name,
                    "architecture": m.architecture,
                    "quantization": m.quantization,
                    "parameter_count": m.parameter_count,
                    "context_length": m.context_length,
                    "providers": 0,
                    "free_slots": 0,
                    "decode_tok_s_best": 0.0,
                    "oldest_issued_at": r.issued_at,
                    "chat_format": m.chat_format,
                    "capabilities": m.capabilities,
                },
            )
            entry["providers"] += 1
            # what every provider runs (nodes choose --ctx-size): a request within it fits
            # whichever provider the client picks
            entry["context_length"] = min(entry["context_length"], m.context_length)
            entry["free_slots"] += r.load.free_slots
            entry["decode_tok_s_best"] = max(entry["decode_tok_s_best"], m.decode_tok_s)
            entry["oldest_issued_at"] = min(entry["oldest_issued_at"], r.issued_at)
            # what every provider offers: a request routed to any of them gets it
            entry["capabilities"] = tuple(c for c in entry["capabilities"] if c in m.capabilities)
            if entry["chat_format"] != m.chat_format:  # providers disagree: none is certain
                entry["chat_format"] = ""
    names: dict[str, int] = {}
    for e in by_sha.values():
        names[e["name"].lower()] = names.get(e["name"].lower(), 0) + 1
    for e in by_sha.values():
        e["id"] = e["name"] if names[e["name"].lower()] == 1 else e["sha256"]
    return sorted(by_sha.values(), key=lambda e: (-e["providers"], e["id"]))


def model_object(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["id"],
        "object": "model",
        "created": int(entry["oldest_issued_at"]),
        "owned_by": "gpunet",
        "name": entry["name"],
        "sha256": entry["sha256"],
        "providers": entry["providers"],
        "architecture": entry["architecture"],
        "quantization": entry["quantization"],
        "parameter_count": entry["parameter_count"],
        "context_length": entry["context_length"],
        # gpunet's additions (docs/gateway.md): the chat format the providers render with
        # ("template", "gemma", "generic"; "" unknown) and what they offer beyond text
        "chat_format": entry["chat_format"],
        "capabilities": list(entry["capabilities"]),
    }


def network_json(nodes: list[CapabilityRecord], now: float) -> dict[str, Any]:
    out_nodes = []
    for r in nodes:
        n = record_to_json(r)
        del n["public_key"]
        n["age_s"] = max(0.0, now - r.issued_at)
        out_nodes.append(n)
    return {"generated_at": now, "nodes": out_nodes, "models": model_table(nodes)}
