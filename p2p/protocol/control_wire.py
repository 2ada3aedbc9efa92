"""The owner's control of a running node: `gpunet status`, `pause`, `resume`.

The CLI opens an ordinary session to the node of its data dir with that data dir's identity key
(the node's own), and sends one `Control`; the node answers only a session whose remote peer id
is its own (anyone else: `forbidden`), with one `ControlReply` holding the node's state as a JSON
object (the shape `gpunet status --json` prints). No new listener, no new secret: whoever can
read the key file owns the node already.
"""

from __future__ import annotations

from typing import Any

import attrs

from p2p.protocol.embed_wire import FieldReader

CONTROL_OPS = ("status", "pause", "resume")
MAX_STATE_BYTES = 256 * 1024


@attrs.frozen
class Control:
    id: int
    op: str  # one of CONTROL_OPS


@attrs.frozen
class ControlReply:
    """The node's state after the operation, as UTF-8 JSON text of one object."""

    id: int
    state: str


def control_body(msg: Control) -> dict[str, Any]:
    return {"id": msg.id, "op": msg.op}


def control_reply_body(msg: ControlReply) -> dict[str, Any]:
    return {"id": msg.id, "state": msg.state}


def decode_control(f: FieldReader, rid: int) -> Control:
    op = f.string("op", 16)
    if op not in CONTROL_OPS:
        f.fail("op", f"op must be one of {', '.join(CONTROL_OPS)}")
    return Control(rid, op)


def decode_control_reply(f: FieldReader, rid: int) -> ControlReply:
    return ControlReply(rid, f.string("state", MAX_STATE_BYTES))
