"""What a node is told to do (`NodeConfig`), what it reports once it serves (`NodeReady`), and the
one error that stops it (`NodeError`). Values only: the CLI builds them, the runtime reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs

from inference.model_file import ModelInfo
from p2p.dht.records import DEFAULT_TTL_S
from p2p.node.serve_hours import ServeHours

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
    # Per request; capped by each model's trained context. None: from the memory plan
    # (inference/memory_plan.py `default_context`: up to 8192 on a GPU, 2048 on the CPU).
    n_ctx: int | None = None
    n_threads: int | None = None
    max_queue: int = 8
    grace_s: float = DEFAULT_GRACE_S
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S  # 0: fail at the first unanswered bootstrap
    psk: bytes | None = None  # private network key; None: the public network
    name: str = ""  # --name: the owner's label in the record (p2p/dht/records.py is_node_name)
    # Sequences decoded together per model (continuous batching); "auto": the knee of this
    # machine's measured decode curve (p2p/node/auto_slots.py).
    slots: int | str = 4
    # Requests in flight on the whole node (None: every model's slots + queue); beyond it the
    # answer is `busy` at once. 0 announces the node but serves nothing (maintenance, tests).
    max_requests: int | None = None
    gpu_layers: str = "auto"  # --gpu-layers: auto | N | 0
    max_vram: int | None = None  # --max-vram: bytes the offload plan may use (None: all free)
    serve_hours: ServeHours | None = None  # --serve-hours: paused outside (p2p/node/pause.py)
    benchmark: bool = True  # measure each model's speed at start (published; clients rank by it)
    prompt_cache: bool = True  # reuse a slot's cached prompt prefix (inference/batching.py)
    speculate: bool = True  # greedy requests draft from their repeats (inference/speculation.py)
    port_mapping: bool = True  # UPnP, NAT-PMP or PCP on the home router (reach/mapping_race.py)
    hole_punch: bool = True  # start and answer punches of relayed sessions (reach/hole_punch.py)
    # Relays and reachability (p2p/reach/, docs/reachability.md). A reachable node relays for
    # volunteers behind NAT within these bounds; `relay=False` refuses every reservation.
    relay: bool = True
    relay_max_reservations: int = 32
    relay_max_circuits: int = 48
    relay_bytes_per_s: int = 4 * 1024 * 1024  # per relayed peer, both directions together
    reach_mode: str = "auto"  # auto: ask peers to dial back; "direct" / "relayed": take that
    reach_retry_s: float = 10.0  # re-check this soon while no peer could be asked
    # The host the record names instead of the bind host (None: the bind host, or the observed
    # one once dial-backs prove it), and the source host of the node's own outbound relay and
    # dial-back connections (None: the bind host unless it is a wildcard). Tests use both to
    # stand in for a node behind NAT on loopback.
    advertise_host: str | None = None
    source_host: str | None = None
    # Model files shared with peers (p2p/share/): the node's whole upload for them in MB/s
    # (10^6 bytes; one peer gets at most half; 0: no cap), and `share=False` shares nothing.
    share: bool = True
    share_rate: float = 50.0
    # Tests only: corrupts the chunks this node sends, (index, data) -> data
    # (p2p/share/share_service.py).
    share_tamper: Callable[[int, bytes], bytes] | None = None
    # Tests only (GPUNET_TEST_CHEAT, read by p2p/cli/node.py; docs/security.md): "" (honest),
    # "other-model:PATH", "random-tokens", "drop-prefix" or "lying-logprobs" (what each does, to
    # the output and to the prompt probes: p2p/node/cheats.py).
    cheat: str = ""


@attrs.frozen
class NodeReady:
    peer_id: str
    dht_address: str
    session_address: str
    models: tuple[ModelInfo, ...]
    api_url: str | None = None
