"""The volunteer node: load models, join the DHT, publish a signed record, answer sessions.

The node never imports the OpenAI API: `run_node(api=...)` takes a starter the CLI builds from
`p2p.api.app.serve_gateway`, and hands it the in-process `Client` once the node serves.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from crypto.identity import Identity, load_or_create_identity
from crypto.network_key import network_id
from inference.gpu import GpuInfo, HostFacts, probe_gpus, probe_host
from p2p.client.network import Client
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import CapabilityRecord, sign_record
from p2p.errors import ErrorCode
from p2p.host_port import format_host_port
from p2p.node.capability import ModelOffer, capability_record, load_entry
from p2p.node.config import NodeConfig, NodeError, NodeReady
from p2p.node.connection import Reply, serve_connection
from p2p.node.models import ServedModel, find_model, load_models
from p2p.node.record_seq import RecordSequence
from p2p.node.serving import BUSY_TEXT, serve_on_worker
from p2p.protocol import wire
from p2p.protocol.admission import AdmissionControl
from p2p.protocol.session_table import SessionTable
from p2p.session.local import Connection
from p2p.session.pool import SessionPool
from p2p.session.secure import serve_sessions

__all__ = ["ApiStarter", "Node", "NodeConfig", "NodeError", "NodeReady", "run_node"]

log = logging.getLogger(__name__)

# A request may hold a slot this long at most; past it the client is told to go elsewhere.
REQUEST_DEADLINE_S = 600.0

# What `run_node(api=...)` takes: given the node's in-process client, an async function that
# serves the API, calling `task_status.started(url)` once it listens (`nursery.start` protocol).
ApiStarter = Callable[[Client], Callable[..., Awaitable[Any]]]


def advertised_host(host: str) -> str:
    """The address peers should dial: the bind address, unless it is a wildcard."""
    if host in ("0.0.0.0", "::", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


class Node:
    def __init__(self, config: NodeConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self.served: list[ServedModel] = []
        self.gpus: list[GpuInfo] = []
        self.active_requests = 0
        self.draining = False
        self.admission = AdmissionControl(clock=time.monotonic)
        # Established sessions: caps, deadlines, eviction (its counters are for logs and tests).
        self.sessions = SessionTable()
        self._request_ended = trio.Event()
        self._seq = RecordSequence(config.data_dir)
        self._host: HostFacts | None = None
        self.network_id = network_id(config.psk) if config.psk is not None else None

    def total_slots(self) -> int:
        return sum(m.worker.slots for m in self.served)

    def find_model(self, wanted: str) -> ServedModel | None:
        return find_model(self.served, wanted)

    def build_record(self, session_address: str) -> CapabilityRecord:
        now = time.time()
        # CPU, RAM and the llama.cpp build do not change while the node runs: probed once.
        if self._host is None:
            self._host = probe_host()
        return capability_record(
            self.identity,
            addresses=(session_address,),
            seq=self._seq.next(now),
            now=now,
            ttl_s=self.config.ttl_s,
            models=[
                ModelOffer(m.info, m.worker.n_gpu_layers, m.prefill_tok_s, m.decode_tok_s)
                for m in self.served
            ],
            gpus=self.gpus,
            host=self._host,
            load=load_entry(self.active_requests, self.total_slots(), draining=self.draining),
            network_id=self.network_id,
        )

    async def handle_connection(self, conn: Connection) -> None:
        await serve_connection(conn, self._generate)

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.active_requests:
            await self._request_ended.wait()

    def _refusal(self, peer_id: str) -> tuple[ErrorCode, str] | None:
        """Why the node will not start a request from *peer_id* now, if it will not."""
        if self.draining:
            return ErrorCode.SHUTTING_DOWN, "node is shutting down"
        limit = self.config.max_requests
        if limit is not None and self.active_requests >= limit:
            return ErrorCode.BUSY, BUSY_TEXT
        refusal = self.admission.try_admit(peer_id)
        if refusal is None:
            return None
        text = "too many requests from you at once" if refusal is ErrorCode.BUSY else "slow down"
        return refusal, text

    async def _generate(self, msg: wire.Generate, reply: Reply) -> None:
        refusal = self._refusal(reply.peer_id)
        if refusal is not None:
            await reply.fail(*refusal)
            return
        self.active_requests += 1
        try:
            with trio.move_on_after(REQUEST_DEADLINE_S) as deadline:
                await self._serve_request(msg, reply)
            if deadline.cancelled_caught and not reply.finished:
                await reply.fail(ErrorCode.INTERNAL, "request ran past the deadline")
        finally:
            self.active_requests -= 1
            self.admission.release(reply.peer_id)
            self._request_ended.set()
            self._request_ended = trio.Event()

    async def _serve_request(self, msg: wire.Generate, reply: Reply) -> None:
        served = self.find_model(msg.model)
        if served is None:
            offered = ", ".join(m.info.name for m in self.served)
            await reply.fail(
                ErrorCode.UNKNOWN_MODEL,
                f"{msg.model!r:.80} is not served here; this node serves: {offered}",
            )
            return
        await serve_on_worker(served, msg, reply)

    async def publish_forever(self, dht: Dht, session_address: str) -> None:
        """Republish well before expiry, so a record never lapses while the node lives."""
        while True:
            signed = sign_record(self.build_record(session_address), self.identity)
            accepted = await dht.publish(signed)
            log.info(
                "published record seq %d (%d remote stores accepted)", signed.record.seq, accepted
            )
            await trio.sleep(self.config.ttl_s / 3)


async def run_node(
    config: NodeConfig,
    *,
    identity: Identity | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[NodeReady] = trio.TASK_STATUS_IGNORED,
    on_progress: Callable[[str], None] = lambda _line: None,
    api: ApiStarter | None = None,
) -> None:
    """Serve until cancelled, or until *shutdown* is set: then stop announcing, refuse new
    requests, give in-flight ones `config.grace_s` to finish, cut the rest, and return.

    *api*, when given, is started with the node's in-process client once the node serves
    (`await nursery.start(api(client))`); the URL it reports is `NodeReady.api_url`."""
    if identity is None:
        identity = load_or_create_identity(config.data_dir / "identity.pem")
    node = Node(config, identity)
    node.gpus = await trio.to_thread.run_sync(probe_gpus)
    node.served = await load_models(
        config, node.gpus, benchmark=config.benchmark, on_progress=on_progress
    )
    try:
        async with open_dht(
            identity, config.host, config.dht_port, network_id=node.network_id
        ) as dht:
            await _join(dht, config.bootstrap)
            async with trio.open_nursery() as nursery:
                await _serve(node, dht, nursery, shutdown, task_status, api)
    finally:
        with trio.CancelScope(shield=True):
            for m in node.served:
                await m.worker.aclose()


async def _serve(
    node: Node,
    dht: Dht,
    nursery: trio.Nursery,
    shutdown: trio.Event | None,
    task_status: trio.TaskStatus[NodeReady],
    api: ApiStarter | None,
) -> None:
    config, identity = node.config, node.identity
    listeners = await nursery.start(
        partial(
            serve_sessions,
            identity,
            config.host,
            config.port,
            node.handle_connection,
            psk=config.psk,
            sessions=node.sessions,
        )
    )
    host = advertised_host(config.host)
    session_address = format_host_port(host, listeners[0].socket.getsockname()[1])
    await dht.publish(sign_record(node.build_record(session_address), identity))
    api_url = None
    if api is not None:
        pool = SessionPool(identity, nursery, psk=config.psk, local=node.handle_connection)
        client = Client(dht, identity, pool, network_id=node.network_id)
        api_url = await nursery.start(api(client))
    publishing = trio.CancelScope()
    nursery.start_soon(_republish_later, node, dht, session_address, publishing)
    task_status.started(
        NodeReady(
            peer_id=identity.peer_id,
            dht_address=format_host_port(host, dht.port),
            session_address=session_address,
            models=tuple(m.info for m in node.served),
            api_url=api_url,
        )
    )
    if shutdown is not None:
        await shutdown.wait()
        await _drain(node, dht, session_address, publishing)
        nursery.cancel_scope.cancel()


async def _republish_later(
    node: Node, dht: Dht, session_address: str, scope: trio.CancelScope
) -> None:
    with scope:
        await trio.sleep(node.config.ttl_s / 3)
        await node.publish_forever(dht, session_address)


async def _drain(node: Node, dht: Dht, session_address: str, publishing: trio.CancelScope) -> None:
    node.draining = True
    publishing.cancel()
    # A last record with no free slot, so clients that still find it rank this node last.
    with trio.move_on_after(2):
        await dht.publish(sign_record(node.build_record(session_address), node.identity))
    with trio.move_on_after(node.config.grace_s):
        await node.wait_idle()


async def _join(dht: Dht, bootstrap: Sequence[tuple[str, int]]) -> None:
    if not bootstrap:
        return
    answered = await dht.bootstrap(list(bootstrap))
    if answered == 0:
        listed = ", ".join(format_host_port(h, p) for h, p in bootstrap)
        raise NodeError(
            f"no bootstrap peer answered ({listed}); is a gpunet node of this network "
            "running there (same --network-key, or none)?"
        )
