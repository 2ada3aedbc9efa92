"""Model files from the network itself: nodes share the GGUFs they serve, chunk by chunk.

- `counters.py` — what a node has shared (for `gpunet status` and `/metrics`).

The messages are p2p/protocol/share_wire.py's; docs/sharing.md says how a pull works.
"""
