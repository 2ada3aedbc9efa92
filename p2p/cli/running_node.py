"""The node of a data dir: the lock it holds for its life, the node.json it leaves for local
clients, and the check that its ports are free before anything slow starts.

One node per data dir: two would share an identity (one peer id, two records fighting over its
sequence number) and the second used to delete the first's node.json on its way out, after
which `gpunet ask` with no --bootstrap no longer found the running node. So `gpunet node` takes
an exclusive `flock` on ``node.lock`` before it reads or writes anything else in the data dir and
keeps it until it exits; the kernel drops the lock when the process dies, however it dies, so a
crash leaves no stale lock behind (a pid file alone would). The lock file holds the pid only to
name the running node in the second one's error.

node.json is written to a temporary file and renamed over the old one, so a client never reads
half of it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from p2p.cli.common import NODE_FILE, fail
from p2p.host_port import format_host_port

LOCK_FILE = "node.lock"


class NodeLock:
    """The data dir's lock, held by this process until `release` (or its exit)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd = fd

    def release(self) -> None:
        """Remove node.json (this node's, since it holds the lock), then drop the lock.

        The lock file stays: unlinking it would let a third node lock a new file while a second
        still holds the old one."""
        (self.data_dir / NODE_FILE).unlink(missing_ok=True)
        os.close(self._fd)  # closing the last descriptor releases the flock


def lock_data_dir(data_dir: Path) -> NodeLock:
    """Take *data_dir*'s node lock, or fail in one line naming the node that holds it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        fail(f"cannot use the data dir {data_dir}: {exc.strerror or exc}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd, data_dir)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            fail(
                f"another gpunet node is already running from {data_dir} ({holder}); stop it "
                "first, or give this node its own --data-dir (GPUNET_DATA_DIR)"
            )
        fail(f"cannot lock {data_dir / LOCK_FILE}: {exc.strerror or exc}")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return NodeLock(data_dir, fd)


def _holder(fd: int, data_dir: Path) -> str:
    """How the running node is named to a second one: its pid and, once ready, its addresses."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    parts = [f"pid {pid}" if pid.isdigit() else "pid unknown"]
    ready = _read_node_file(data_dir)
    if isinstance(ready.get("peer_id"), str):
        parts.append(f"peer {ready['peer_id'][:16]}")
    if isinstance(ready.get("dht"), str):
        parts.append(f"DHT {ready['dht']}")
    if len(parts) == 1:
        parts.append("still starting")
    return ", ".join(parts)


def _read_node_file(data_dir: Path) -> dict[str, Any]:
    try:
        found = json.loads((data_dir / NODE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_node_file(data_dir: Path, content: dict[str, Any]) -> None:
    """node.json, replaced atomically (a temporary file renamed over it)."""
    path = data_dir / NODE_FILE
    tmp = path.with_name(f".{NODE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, path)


def check_ports_free(host: str, dht_port: int, port: int) -> None:
    """Fail in one line naming the port if the DHT's UDP or the sessions' TCP port is taken.

    Checked by binding each port for a moment, before the model loads (seconds to minutes), so
    a port conflict does not wait for it. Port 0 (any free port) needs no check. Another program
    may still take a port between this check and the node's own bind; the node then fails with
    the same hint, only later."""
    for kind, number, flag in (
        (socket.SOCK_DGRAM, dht_port, "--dht-port"),
        (socket.SOCK_STREAM, port, "--port"),
    ):
        if number == 0:
            continue
        proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
        where = format_host_port(host, number)
        err = _try_bind(host, number, kind)
        if err is None:
            continue
        if err.errno == errno.EADDRINUSE:
            fail(
                f"{proto} port {number} ({where}) is in use: is another node running? "
                f"Pass {flag} with another port (0 picks a free one)"
            )
        fail(f"cannot bind {proto} {where}: {err.strerror or err}")


def _try_bind(host: str, number: int, kind: socket.SocketKind) -> OSError | None:
    try:
        infos = socket.getaddrinfo(host or None, number, type=kind, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    family, socktype, proto, _, address = infos[0]
    try:
        with socket.socket(family, socktype, proto) as s:
            if kind == socket.SOCK_STREAM:  # as trio's listeners do: TIME_WAIT is no conflict
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as exc:
        return exc
    return None
