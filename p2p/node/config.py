"""What a node is told to do (`NodeConfig`), what it reports once it serves (`NodeReady`), and the
one error that stops it (`NodeError`). Values only: the CLI builds them, the runtime reads them.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from inference.model_file import ModelInfo
from p2p.dht.records import DEFAULT_TTL_S

# On SIGTERM/Ctrl-C in-flight requests get this long to finish before they are cut (and their
# clients fail over to another node).
DEFAULT_GRACE_S = 30.0
# A node whose bootstrap peers do not answer yet (a service started before them, or nodes
# started together on a slow machine) keeps trying this long before it gives up.
DEFAULT_JOIN_TIMEOUT_S = 180.0


class NodeError(Exception):
    """The node cannot start or keep running; one-line message for the user."""


@attrs.frozen
class NodeConfig:
    data_dir: Path
    models: tuple[ModelInfo, ...]
    host: str = "127.0.0.1"
    dht_port: int = 8468
    port: int = 8469
    bootstrap: tuple[tuple[str, int], ...] = ()
    ttl_s: float = DEFAULT_TTL_S
    n_ctx: int = 2048  # per request; capped by each model's trained context
    n_threads: int | None = None
    max_queue: int = 8
    grace_s: float = DEFAULT_GRACE_S
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S  # 0: fail at the first unanswered bootstrap
    psk: bytes | None = None  # private network key; None: the public network
    slots: int = 4  # sequences decoded together per model (continuous batching)
    # Requests in flight on the whole node (None: every model's slots + queue); beyond it the
    # answer is `busy` at once. 0 announces the node but serves nothing (maintenance, tests).
    max_requests: int | None = None
    gpu_layers: str = "auto"  # --gpu-layers: auto | N | 0
    benchmark: bool = True  # measure each model's speed at start (published; clients rank by it)
    prompt_cache: bool = True  # reuse a slot's cached prompt prefix (inference/batching.py)
    speculate: bool = True  # greedy requests draft from their repeats (inference/speculation.py)


@attrs.frozen
class NodeReady:
    peer_id: str
    dht_address: str
    session_address: str
    models: tuple[ModelInfo, ...]
    api_url: str | None = None
