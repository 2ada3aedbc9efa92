"""Reaching the node of a data dir as its owner, for `gpunet status`, `pause` and `resume`.

The running node leaves its peer id and session address in node.json (p2p/cli/running_node.py);
this side opens an ordinary encrypted session there with the data dir's own identity key and
sends one `Control` (p2p/protocol/control_wire.py): the node answers only a session with its
own key. Each way this can fail says what to do, in one line: no node running from that data
dir (naming it), a key that cannot be read, a node that does not answer within the timeout.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import attrs
import trio

from crypto.identity import Identity
from p2p.cli.common import NODE_FILE, fail
from p2p.cli.running_node import LOCK_FILE
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError, connect

DEFAULT_TIMEOUT_S = 10.0


@attrs.frozen
class RunningNode:
    data_dir: Path
    peer_id: str
    session: str  # host:port of its encrypted sessions


def _lock_held(data_dir: Path) -> bool:
    """Whether a node holds the data dir's lock now (node.json may outlive a crashed node)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)  # also drops the shared lock taken just now
    return False


def find_running_node(data_dir: Path) -> RunningNode:
    """The node running from *data_dir*, or fail naming the data dir."""
    hint = "start one with `gpunet node`, or pass the --data-dir it runs from"
    try:
        found = json.loads((data_dir / NODE_FILE).read_text())
    except FileNotFoundError:
        if _lock_held(data_dir):
            fail(f"the gpunet node of {data_dir} is still starting; try again in a moment")
        fail(f"no gpunet node is running from {data_dir}; {hint}")
    except (OSError, ValueError) as exc:
        fail(f"cannot read {data_dir / NODE_FILE}: {exc}")
    if not _lock_held(data_dir):
        fail(f"no gpunet node is running from {data_dir} (its {NODE_FILE} is stale); {hint}")
    peer_id, session = (
        found.get(k) if isinstance(found, dict) else None for k in ("peer_id", "session")
    )
    if not isinstance(peer_id, str) or not isinstance(session, str):
        fail(f"{data_dir / NODE_FILE} names no peer id and session address; restart the node")
    return RunningNode(data_dir, peer_id, session)


async def send_control(
    node: RunningNode,
    identity: Identity,
    op: str,
    *,
    psk: bytes | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Send `Control(op)` to *node* as *identity*; the state it answers, or fail in one line."""
    if identity.peer_id != node.peer_id:
        fail(
            f"the key of {node.data_dir} is not the running node's (peer {node.peer_id[:16]}): "
            "was the key replaced while the node runs? restart the node"
        )
    answer: wire.Message | SessionError | None = None
    with trio.move_on_after(timeout_s):
        try:
            conn = await connect(node.session, identity, node.peer_id, psk=psk)
        except SessionError as exc:
            fail(f"cannot reach the node of {node.data_dir} at {node.session}: {exc}")
        session = MultiplexedSession(conn)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            async with session.request(wire.Control(0, op)) as (_rid, inbox):
                answer = await inbox.receive()
            nursery.cancel_scope.cancel()
    if answer is None:
        fail(f"the node of {node.data_dir} at {node.session} did not answer within {timeout_s:g} s")
    if isinstance(answer, SessionError):
        fail(f"the node of {node.data_dir} closed the session: {answer}")
    if isinstance(answer, wire.Error):
        fail(f"the node refused {op}: {answer.message} ({answer.code.value})")
    if not isinstance(answer, wire.ControlReply):
        fail(f"the node answered {op} with {type(answer).__name__}, not its state")
    try:
        state = json.loads(answer.state)
    except ValueError:
        state = None
    if not isinstance(state, dict):
        fail("the node's state is not a JSON object (a node of another version?)")
    return state
