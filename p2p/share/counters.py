"""What a node has shared with its peers, counted by the share service and read by
`gpunet status` and the node's metrics."""

from __future__ import annotations

import attrs


@attrs.define
class ShareCounters:
    bytes_sent: int = 0
    chunks_sent: int = 0
    manifests_sent: int = 0
    refused: int = 0  # share requests answered with an error (rate, unknown file, busy)
