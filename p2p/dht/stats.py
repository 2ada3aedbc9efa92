"""Counters of the DHT protocol, shared by its layers (intake, proofs, stores)."""

from __future__ import annotations

import attrs


@attrs.define
class ProtocolStats:
    """Counters for tests, netsim and (later) /metrics."""

    rpcs_sent: int = 0
    datagrams_dropped: int = 0
    rate_limited: int = 0
    wrong_source_replies: int = 0
    refused_stores: int = 0
    proofs_ok: int = 0
    proofs_failed: int = 0
