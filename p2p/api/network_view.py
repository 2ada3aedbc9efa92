"""What the network offers, from the signed records in the DHT: for the dashboard and /v1/models.

Separate from the HTTP code in p2p/api/app.py: the tables are pure functions of the records, and
`NetworkView` only adds a short cache in front of the DHT lookup, and a bounded memory of the
nodes it has seen (`SeenNodes`) so the dashboard can show a node that left as offline instead of
letting it vanish without a word.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from p2p.api.recent_history import RecentHistory
from p2p.bounded_lru import BoundedLRU
from p2p.client.network import Client, list_nodes
from p2p.dht.records import CapabilityRecord, record_to_json

# The dashboard and /v1/models would otherwise run a DHT lookup per page view; records change
# every few minutes, so a short cache costs no freshness that matters.
NETWORK_CACHE_S = 2.0
# A node that left (withdrew its record, or its record lapsed) is shown as offline this long
# after this gateway last saw it, then forgotten. At most MAX_REMEMBERED nodes are remembered:
# peer ids are anyone's to mint, so the memory must not grow with them.
OFFLINE_MEMORY_S = 600.0
MAX_REMEMBERED = 1024


# --- the network view (dashboard, /v1/models) -----------------------------------------------


@attrs.frozen
class Gone:
    """A node seen before and absent now: its last live record and when it was last seen."""

    record: CapabilityRecord
    last_seen: float  # wall-clock time


class SeenNodes:
    """The nodes a gateway has seen, so that those gone since can be shown as offline. Pure:
    `update` takes each lookup's records and the wall-clock time."""

    def __init__(self, capacity: int = MAX_REMEMBERED, memory_s: float = OFFLINE_MEMORY_S) -> None:
        self.memory_s = memory_s
        self._seen: BoundedLRU[str, Gone] = BoundedLRU(capacity)
        self._live: set[str] = set()

    def update(self, records: list[CapabilityRecord], now: float) -> list[CapabilityRecord]:
        """Remember a lookup's records; returns the live ones (a withdrawn record is a node
        that said it left: offline at once, remembered by its last live record if any)."""
        live = [r for r in records if not r.withdrawn]
        for r in records:
            if r.withdrawn and r.peer_id not in self._seen:
                self._seen.set(r.peer_id, Gone(r, r.issued_at))
        for r in live:
            self._seen.set(r.peer_id, Gone(r, now))
        self._live = {r.peer_id for r in live}
        return live

    def offline(self, now: float) -> list[Gone]:
        """Nodes seen within the memory and absent from the last lookup, latest seen first."""
        gone = []
        for peer_id, entry in self._seen.items():
            if peer_id in self._live:
                continue
            if now - entry.last_seen > self.memory_s:
                self._seen.pop(peer_id)  # forgotten
                continue
            gone.append(entry)
        return sorted(gone, key=lambda g: (-g.last_seen, g.record.peer_id))


class NetworkView:
    """The directory of signed node records, looked up at most every NETWORK_CACHE_S seconds."""

    def __init__(
        self,
        client: Client,
        ttl_s: float = NETWORK_CACHE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._ttl = ttl_s
        self._clock = clock
        self._lock = trio.Lock()
        self._at = -math.inf
        self._nodes: list[CapabilityRecord] = []
        self.seen = SeenNodes()

    async def nodes(self) -> list[CapabilityRecord]:
        """The live nodes: records found now, withdrawn ones left out."""
        async with self._lock:  # concurrent viewers share one lookup
            if trio.current_time() - self._at >= self._ttl:
                found = await list_nodes(self._client, withdrawn=True)  # offline at once
                self._nodes = self.seen.update(found, self._clock())
                self._at = trio.current_time()
            return self._nodes

    async def offline(self) -> list[Gone]:
        await self.nodes()  # refreshed first: a node that left is not also live
        return self.seen.offline(self._clock())


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


def network_json(
    nodes: list[CapabilityRecord],
    now: float,
    offline: list[Gone] | None = None,
    history: RecentHistory | None = None,
) -> dict[str, Any]:
    """The dashboard's data: the live nodes, then those gone (`state` says which), the model
    table of the live ones, and this gateway's recent requests when *history* is given."""
    history = history if history is not None else RecentHistory()
    out_nodes = []
    live = [(r, "online", now) for r in nodes]
    gone = [(g.record, "offline", g.last_seen) for g in offline or []]
    for r, state, last_seen in live + gone:
        n = record_to_json(r)
        del n["public_key"]
        n["name"] = r.name
        n["age_s"] = max(0.0, now - r.issued_at)
        n["state"] = state
        n["last_seen_s"] = max(0.0, now - last_seen)
        n["tokens_served"] = history.tokens_served(r.peer_id)
        n["requests_served"] = history.requests_served(r.peer_id)
        out_nodes.append(n)
    return {
        "generated_at": now,
        "nodes": out_nodes,
        "models": model_table(nodes),
        "history": history.to_json(now),
    }
