"""The owner's control of a running node (`gpunet status`, `pause`, `resume`) on the node's side.

`gpunet status` opens an ordinary session to the node with the data dir's identity key, the
node's own (p2p/protocol/control_wire.py): so a `Control` is answered only on a session whose
remote peer id is the node's, and anyone else gets `forbidden`. The answer is the node's state
as one JSON object (`node_state`), the same for every op, after the op took effect.

`start_control` is what the runtime calls once the node serves: it installs the handler and runs
the pause tasks (the serve-hours schedule, a republish after each change; p2p/node/pause.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import attrs
import trio

from crypto.identity import Identity
from inference.batching import BatchingWorker
from p2p.dht.node import Dht
from p2p.dht.records import CapabilityRecord, sign_record
from p2p.errors import ErrorCode
from p2p.node.config import NodeConfig
from p2p.node.connection import Reply
from p2p.node.models import ServedModel
from p2p.node.node_stats import NodeStats
from p2p.node.pause import (
    PauseState,
    apply_serve_hours,
    follow_serve_hours,
    local_now,
    publish_changes,
)
from p2p.protocol import wire
from p2p.protocol.control_wire import MAX_STATE_BYTES
from p2p.reach.state import ReachState
from p2p.share.counters import ShareCounters
from p2p.version import SOFTWARE_VERSION

FORBIDDEN_TEXT = "only this node's owner (a session with the node's own key) may control it"


class ControlledNode(Protocol):
    """What of p2p/node/runtime.py's `Node` the control reads."""

    config: NodeConfig
    identity: Identity
    served: list[ServedModel]
    active_requests: int
    draining: bool
    reach: ReachState
    share_counters: ShareCounters
    stats: NodeStats
    pause: PauseState
    serve_control: Callable[[wire.Control, Reply], Awaitable[None]]

    def total_slots(self) -> int: ...

    def build_record(self, session_address: str) -> CapabilityRecord: ...


def model_state(m: ServedModel) -> dict[str, Any]:
    worker = m.worker
    in_use = queue = 0
    if isinstance(worker, BatchingWorker):
        load = worker.load
        in_use, queue = load.active_requests, load.queue_depth
    return {
        "name": m.info.name,
        "sha256": m.info.sha256,
        "slots": worker.slots,
        "slots_in_use": in_use,
        "slots_how": m.slots_how,
        "queue": queue,
        "context": m.n_ctx,
        "layers_on_gpu": m.plan.layers_offloaded if m.plan is not None else 0,
        "layers": m.info.layer_count,
        "decode_tok_s": round(m.decode_tok_s, 1),
        "prefill_tok_s": round(m.prefill_tok_s, 1),
    }


def live_figures(node: ControlledNode) -> dict[str, float]:
    """The node's figures of the moment, for its /metrics (p2p/node/node_metrics.py)."""
    models = [model_state(m) for m in node.served]
    return {
        "active_requests": node.active_requests,
        "slots": node.total_slots(),
        "slots_in_use": sum(m["slots_in_use"] for m in models),
        "queue_depth": sum(m["queue"] for m in models),
        "paused": float(node.pause.paused),
        "shared_bytes": node.share_counters.bytes_sent,
        "shared_chunks": node.share_counters.chunks_sent,
    }


def node_state(node: ControlledNode, session_address: str) -> dict[str, Any]:
    """The node's state: what `gpunet status --json` prints."""
    summary = node.stats.summary()
    models = []
    for m in node.served:
        entry = model_state(m)
        work = node.stats.by_model.get(m.info.name)
        entry["requests"] = work.requests if work is not None else 0
        entry["tokens_generated"] = work.tokens if work is not None else 0
        models.append(entry)
    return {
        "peer_id": node.identity.peer_id,
        "name": node.config.name,
        "version": SOFTWARE_VERSION,
        "time": round(time.time(), 1),
        "session_address": session_address,
        "addresses": list(node.reach.published_addresses(session_address)),
        "reach": node.reach.reach,
        "relays": [r.address for r in node.reach.published_relays()],
        "models": models,
        "load": {
            "active_requests": node.active_requests,
            "slots": node.total_slots(),
            "max_requests": node.config.max_requests,
        },
        "draining": node.draining,
        **node.pause.describe(),
        **summary,
        "shared": attrs.asdict(node.share_counters),
    }


def state_text(node: ControlledNode, session_address: str) -> str:
    text = json.dumps(node_state(node, session_address), separators=(",", ":"))
    if len(text.encode()) > MAX_STATE_BYTES:  # cannot happen with bounded counters; never send it
        text = json.dumps({"peer_id": node.identity.peer_id, "error": "state too large"})
    return text


async def serve_control(
    node: ControlledNode, session_address: str, msg: wire.Control, reply: Reply
) -> None:
    """Answer one `Control` from the owner; `forbidden` to anyone else."""
    if reply.peer_id != node.identity.peer_id:
        node.stats.refused(ErrorCode.FORBIDDEN)
        await reply.fail(ErrorCode.FORBIDDEN, FORBIDDEN_TEXT)
        return
    if msg.op == "pause":
        node.pause.set_owner(True)
    elif msg.op == "resume":
        node.pause.set_owner(False)
    await reply.send(wire.ControlReply(msg.id, state_text(node, session_address)))


async def publish_now(node: ControlledNode, dht: Dht, session_address: str) -> None:
    """The record as it is now; nothing once the node drains (its last record, or withdrawal,
    must stay the last)."""
    if not node.draining:
        await dht.publish(sign_record(node.build_record(session_address), node.identity))


def start_control(
    node: ControlledNode, nursery: trio.Nursery, dht: Dht, session_address: str
) -> None:
    """Once the node serves: answer its owner, follow its serve hours, and republish on every
    pause and resume."""
    node.serve_control = partial(serve_control, node, session_address)
    node.stats.live = partial(live_figures, node)
    if node.pause.hours is not None:  # in force before the first record and request
        apply_serve_hours(node.pause, node.pause.hours, local_now())
        nursery.start_soon(follow_serve_hours, node.pause, node.pause.hours)
    seen = node.pause.version  # the first record, published next, tells this much already
    publish = partial(publish_now, node, dht, session_address)
    nursery.start_soon(publish_changes, node.pause, publish, seen)
