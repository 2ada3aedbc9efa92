"""The volunteer node: load models, join the DHT, publish a signed record, answer sessions.

The node never imports the OpenAI API: `run_node(api=...)` takes a starter the CLI builds from
`p2p.api.app.serve_gateway`, and hands it the in-process `Client` once the node serves.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from crypto.identity import Identity, load_or_create_identity
from crypto.network_key import network_id
from inference.gpu import GpuInfo, HostFacts, probe_gpus, probe_host
from p2p.client.network import Client
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import CapabilityRecord, LoadEntry, sign_record
from p2p.errors import ErrorCode
from p2p.host_port import format_host_port
from p2p.node.capability import ModelOffer, capability_record, load_entry
from p2p.node.config import NodeConfig, NodeError, NodeReady
from p2p.node.connection import Reply, serve_connection
from p2p.node.control import start_control
from p2p.node.embedding_serving import serve_embed
from p2p.node.join import join
from p2p.node.load_refresh import LoadChanges, publish_forever
from p2p.node.models import ServedModel, find_model, load_models
from p2p.node.node_stats import NodeStats
from p2p.node.pause import PauseState
from p2p.node.record_seq import RecordSequence
from p2p.node.request_log import FinalMessages, log_request, short_name
from p2p.node.serving import BUSY_TEXT, serve_on_worker, serve_score
from p2p.node.withdrawal import withdraw
from p2p.protocol import wire
from p2p.protocol.admission import AdmissionControl
from p2p.protocol.session_table import SessionTable
from p2p.reach.mapping_race import hold_port_mappings, ports_mapped_first
from p2p.reach.node_tasks import (
    inbound_observer,
    keep_reachability,
    observing_contacts,
    reach_context,
    reach_service,
    relayed_session_handler,
    usable_host,
)
from p2p.reach.port_mapping import PortMapping
from p2p.reach.relay_service import ProbeInbox
from p2p.reach.state import ReachState
from p2p.reach.strangers import ContactedHosts
from p2p.session.local import Connection
from p2p.session.pool import SessionPool
from p2p.session.secure import serve_sessions
from p2p.share.counters import ShareCounters
from p2p.share.share_service import node_share_service

__all__ = ["ApiStarter", "Node", "NodeConfig", "NodeError", "NodeReady", "join", "run_node"]

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


def published_host(config: NodeConfig) -> str:
    """The host of the node's record before any reachability check."""
    return config.advertise_host or usable_host(
        config.host, advertised_host(config.host), config.bootstrap
    )


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
        self.port_mapping: PortMapping | None = None  # what the home router maps, if anything
        self.reach = ReachState()  # how others reach this node (p2p/reach/)
        self.contacted = ContactedHosts()  # hosts it sent to (p2p/reach/strangers.py)
        # The owner's control ops (status, pause, resume) and the model files shared with peers;
        # until run_node sets them, both are refused.
        self.serve_control: Callable[[wire.Control, Reply], Awaitable[None]] = _no_control
        self.serve_share: Callable[[wire.FetchManifest | wire.FetchChunk, Reply], Awaitable[None]]
        self.serve_share = _no_share
        self.share_counters = ShareCounters()  # p2p/share/: what the node has shared
        self.load_changes = LoadChanges()  # bumped as requests come and go (load_refresh.py)
        self.stats = NodeStats()  # the work served, for `gpunet status` and /metrics
        self.pause = PauseState(config.serve_hours)  # `gpunet pause`, --serve-hours

    def on_port_mapping(self, mapping: PortMapping | None) -> None:
        """p2p/reach/port_mapping.py's report (each grant and renewal; None once lost)."""
        self.port_mapping = mapping
        if mapping is None:
            self.reach.clear_mapped()
        else:
            self.reach.set_mapped(mapping.external_ip, mapping.tcp_port)

    def total_slots(self) -> int:
        cap = self.config.max_requests  # beyond it the node answers busy: no slot is free then
        slots = sum(m.worker.slots for m in self.served)
        return slots if cap is None else min(slots, cap)

    def find_model(self, wanted: str) -> ServedModel | None:
        return find_model(self.served, wanted)

    def build_record(self, session_address: str) -> CapabilityRecord:
        now = time.time()
        # CPU, RAM and the llama.cpp build do not change while the node runs: probed once.
        if self._host is None:
            self._host = probe_host()
        return capability_record(
            self.identity,
            addresses=self.reach.published_addresses(session_address),
            seq=self._seq.next(now),
            now=now,
            ttl_s=self.config.ttl_s,
            models=[
                ModelOffer(
                    m.info,
                    m.worker.n_gpu_layers,
                    m.prefill_tok_s,
                    m.decode_tok_s,
                    n_ctx=m.n_ctx,
                    chat_format=m.chat_format,
                    capabilities=m.capabilities,
                )
                for m in self.served
            ],
            gpus=self.gpus,
            host=self._host,
            load=self.current_load(),
            network_id=self.network_id,
            reach=self.reach.reach,
            relays=self.reach.published_relays(),
            name=self.config.name,
        )

    def current_load(self) -> LoadEntry:
        # a paused node (p2p/node/pause.py) announces no free slot, as a draining one
        return load_entry(self.active_requests, self.total_slots(), draining=self.refusing())

    async def handle_connection(self, conn: Connection) -> None:
        observed = FinalMessages(conn)
        await serve_connection(observed, partial(self._generate, finals=observed.finals))

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.active_requests:
            await self._request_ended.wait()

    def refusing(self) -> bool:
        return self.draining or self.pause.paused

    def _refusal(self, peer_id: str) -> tuple[ErrorCode, str] | None:
        """Why the node will not start a request from *peer_id* now, if it will not."""
        if self.draining:
            return ErrorCode.SHUTTING_DOWN, "node is shutting down"
        if self.pause.paused:  # p2p/node/pause.py: in-flight requests finish
            return ErrorCode.PAUSED, self.pause.refusal_text()
        limit = self.config.max_requests
        if limit is not None and self.active_requests >= limit:
            return ErrorCode.BUSY, BUSY_TEXT
        refusal = self.admission.try_admit(peer_id)
        if refusal is None:
            return None
        text = "too many requests from you at once" if refusal is ErrorCode.BUSY else "slow down"
        return refusal, text

    async def _generate(
        self,
        msg: wire.Request,
        reply: Reply,
        finals: dict[int, wire.Message] | None = None,
    ) -> None:
        """Admit and serve one request: a generation, or a `Score` (a spot check), which costs
        a slot like one and goes through the same admission and fair shares. The owner's
        control ops and the model-file shares have admissions of their own."""
        if isinstance(msg, wire.Control):
            await self.serve_control(msg, reply)
            return
        if isinstance(msg, wire.FetchManifest | wire.FetchChunk):
            await self.serve_share(msg, reply)
            return
        wanted = msg.request.model if isinstance(msg, wire.Score) else msg.model
        refusal = self._refusal(reply.peer_id)
        if refusal is not None:
            await reply.fail(*refusal)
            self.stats.refused(refusal[0])
            if finals is not None:
                finals.pop(msg.id, None)
            # Not in the request log: refusals cost a requester nothing, and a flood of them
            # must not fill a volunteer's log file (/metrics counts them).
            log.debug("refused %s from %s: %s", short_name(wanted), reply.peer_id, refusal[0].value)
            return
        self.active_requests += 1
        self.load_changes.bump()
        started = time.monotonic()
        try:
            with trio.move_on_after(REQUEST_DEADLINE_S) as deadline:
                await self._serve_request(msg, reply)
            if deadline.cancelled_caught and not reply.finished:
                await reply.fail(ErrorCode.INTERNAL, "request ran past the deadline")
        finally:
            final = finals.pop(msg.id, None) if finals is not None else None
            served = self.find_model(wanted)
            model = served.info.name if served is not None else short_name(wanted)
            log_request(model, reply.peer_id, final, time.monotonic() - started)
            self.stats.finished(final, time.monotonic() - started, model if served else None)
            self.active_requests -= 1
            self.load_changes.bump()
            self.admission.release(reply.peer_id)
            self._request_ended.set()
            self._request_ended = trio.Event()

    async def _serve_request(
        self, msg: wire.Generate | wire.Score | wire.Embed, reply: Reply
    ) -> None:
        wanted = msg.request.model if isinstance(msg, wire.Score) else msg.model
        served = self.find_model(wanted)
        if served is None:
            offered = ", ".join(m.info.name for m in self.served)
            await reply.fail(
                ErrorCode.UNKNOWN_MODEL,
                f"{wanted!r:.80} is not served here; this node serves: {offered}",
            )
            return
        if isinstance(msg, wire.Score):
            await serve_score(served, msg, reply)
        elif isinstance(msg, wire.Embed):  # p2p/node/embedding_serving.py
            await serve_embed(served, msg, reply)
        else:
            await serve_on_worker(served, msg, reply, self.identity)

    async def publish_forever(self, dht: Dht, session_address: str) -> None:
        """Republish until cancelled: TTL/3, reach and load changes (p2p/node/load_refresh.py)."""
        await publish_forever(self, dht, session_address, published=self.current_load())


async def run_node(
    config: NodeConfig,
    *,
    identity: Identity | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[NodeReady] = trio.TASK_STATUS_IGNORED,
    on_progress: Callable[[str], None] = lambda _line: None,
    api: ApiStarter | None = None,
    stats: NodeStats | None = None,
) -> None:
    """Serve until cancelled, or until *shutdown* is set: then withdraw the record, refuse new
    requests, give in-flight ones `config.grace_s` to finish, cut the rest, and return.

    *api*, when given, is started with the node's in-process client once the node serves
    (`await nursery.start(api(client))`); the URL it reports is `NodeReady.api_url`."""
    if identity is None:
        identity = load_or_create_identity(config.data_dir / "identity.pem")
    node = Node(config, identity)
    node.stats = stats or node.stats  # the CLI's, when its API serves the node's /metrics
    node.gpus = await trio.to_thread.run_sync(probe_gpus)
    node.served = await load_models(
        config, node.gpus, benchmark=config.benchmark, on_progress=on_progress
    )
    try:
        async with open_dht(
            identity, config.host, config.dht_port, network_id=node.network_id
        ) as dht:
            with observing_contacts(dht, node.contacted):  # what a dial-back proves
                # On a LAN address (behind a NAT, most likely): relays from the start (p2p/reach/)
                node.reach.learn_local_host(published_host(config))
                early = None  # mapped before the DHT's first datagram (p2p/reach/mapping_race.py)
                if config.port_mapping and config.port:
                    early = partial(
                        hold_port_mappings,
                        dht.port,
                        config.port,
                        on_change=node.on_port_mapping,
                        internal_host=config.host,
                    )
                async with ports_mapped_first(early, node.reach.mapping_settled):
                    await join(dht, config.bootstrap, config.join_timeout_s)
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
    probes = ProbeInbox()
    reach = reach_service(identity, config, dht, probes)  # relay, dial-back: same port
    listeners = await nursery.start(
        partial(
            serve_sessions,
            identity,
            config.host,
            config.port,
            node.handle_connection,
            psk=config.psk,
            sessions=node.sessions,
            preamble=reach.route,
            on_accept=inbound_observer(node.reach, node.contacted),
        )
    )
    host = published_host(config)
    session_address = format_host_port(host, listeners[0].socket.getsockname()[1])
    start_control(node, nursery, dht, session_address)  # owner's ops, serve hours (control.py)
    # Reachability and the republisher before the first publish: a relay reserved meanwhile is
    # published at once, alongside the first publish (which may wait seconds on contacts that
    # do not answer), not after it.
    publishing = trio.CancelScope()
    nursery.start_soon(_republish_later, node, dht, session_address, publishing)
    port = listeners[0].socket.getsockname()[1]
    handler = relayed_session_handler(node.handle_connection, node.sessions)
    context = reach_context(identity, config, node.reach, probes, dht, reach, handler, port)
    nursery.start_soon(keep_reachability, context)
    if config.port_mapping and not config.port:  # an ephemeral port: mapped once it is known
        tcp_port = listeners[0].socket.getsockname()[1]
        holder = partial(
            hold_port_mappings, on_change=node.on_port_mapping, internal_host=config.host
        )
        nursery.start_soon(_map_ports, node, nursery, partial(holder, dht.port, tcp_port))
    share = node_share_service(node)  # its model files, for peers that fetch them (p2p/share/)
    await nursery.start(share.run)
    node.serve_share = share.serve
    await dht.publish(sign_record(node.build_record(session_address), identity))
    api_url = None
    if api is not None:
        pool = SessionPool(
            identity,
            nursery,
            psk=config.psk,
            local=node.handle_connection,
            hole_punch=config.hole_punch,
        )
        client = Client(dht, identity, pool, network_id=node.network_id)
        api_url = await nursery.start(api(client))
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


async def _map_ports(node: Node, nursery: trio.Nursery, holder: Callable[..., Any]) -> None:
    """Port mapping in *nursery*; its first outcome (a mapping, or none) lets the first
    reachability check go (p2p/reach/node_tasks.py waits a few seconds for it)."""
    await nursery.start(holder)
    node.reach.mapping_settled()


async def _republish_later(
    node: Node, dht: Dht, session_address: str, scope: trio.CancelScope
) -> None:
    with scope:
        await node.publish_forever(dht, session_address)


async def _drain(node: Node, dht: Dht, session_address: str, publishing: trio.CancelScope) -> None:
    node.draining = True
    publishing.cancel()
    # A signed withdrawal before in-flight requests drain: lookups drop the node at once.
    build = partial(node.build_record, session_address)
    await withdraw(dht, node.identity, build, reuse_closest_s=node.config.ttl_s / 3)
    with trio.move_on_after(node.config.grace_s):
        await node.wait_idle()


async def _no_control(msg: wire.Control, reply: Reply) -> None:
    await reply.fail(ErrorCode.FORBIDDEN, "this node takes no control requests")


async def _no_share(msg: wire.FetchManifest | wire.FetchChunk, reply: Reply) -> None:
    await reply.fail(ErrorCode.UNKNOWN_MODEL, "this node shares no model files")
