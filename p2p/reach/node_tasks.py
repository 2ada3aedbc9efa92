"""The node's reachability tasks, in trio, started from `p2p/node/runtime.py`'s `_serve`:

- `keep_reachability`: asks peers from the DHT for a dial-back once port mapping has said what
  it maps (a few seconds at most), then every `ReachConfig.check_interval_s` (sooner while
  nobody answered or when port mapping reports a new address), records the verdict in
  `ReachState`, and runs `keep_relays` while the state wants relays: from the start (a node
  behind a NAT is served through them seconds after it starts, before any check ends), while
  "relayed", and while its proof is weak (docs/reachability.md);
- `keep_relays`: holds reservations at `ReachConfig.relays_wanted` relays, picked from the DHT's
  directory (nodes that are reachable themselves first), and moves to another relay when one
  refuses (`relay_full`) or goes away;
- `inbound_observer` / `observing_contacts`: the evidence (p2p/reach/strangers.py): hosts the
  node sent to, and connections from strangers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence

import attrs
import trio

from crypto.identity import Identity
from crypto.network_key import network_id
from p2p.bounded_lru import BoundedLRU
from p2p.dht.node import Dht
from p2p.dht.records import CapabilityRecord, RelayHint, directory_key
from p2p.host_port import parse_host_port
from p2p.node.config import NodeConfig
from p2p.protocol.session_table import SessionTable, source_key
from p2p.reach.dial_back import DialBackHelper, check_reachability
from p2p.reach.hole_punch import PunchResponder
from p2p.reach.reachability import HELPERS_PER_CHECK, ReachResult
from p2p.reach.relay_client import CircuitHandler, hold_reservation
from p2p.reach.relay_service import ProbeInbox, ReachService
from p2p.reach.relay_table import RelayLimits, RelayRefused, RelayTable
from p2p.reach.state import ReachState
from p2p.reach.strangers import ContactedHosts, behind_nat_range, proves_strangers_reach
from p2p.session.observers import DIAL_OBSERVER, AcceptObserver
from p2p.session.secure import Handler, SecureConnection, SessionError, serve_established

REACH_LOGGER = __name__  # `gpunet node` shows it at its default level
log = logging.getLogger(REACH_LOGGER)
# Which peers got in, and how (not a child of REACH_LOGGER: shown with `-v` only).
PATHS_LOGGER = "p2p.reach.paths"
paths_log = logging.getLogger(PATHS_LOGGER)
LOGGED_SOURCES = 4096  # hosts whose first inbound connection was logged (then again once forgotten)


# A directory lookup (helpers, relays) waits this long at most.
LOOKUP_S = 10.0
# (reach, names relays) -> how good a helper or relay the node is, lower first; a "relayed"
# node is neither. A node naming relays while its record says direct or mapped has only weak
# proof (an address-filtering router may drop strangers); "unknown" has none yet, and one
# that holds relays already is most likely behind a NAT.
_PREFERENCE = {
    ("direct", False): 0,
    ("mapped", False): 1,
    ("direct", True): 2,
    ("mapped", True): 3,
    ("unknown", False): 4,
    ("unknown", True): 5,
}


@attrs.frozen
class ReachConfig:
    check_interval_s: float = 600.0  # addresses of home connections change daily at most
    retry_s: float = 10.0  # while nobody could be asked (the first node, a lonely network)
    relays_wanted: int = 2  # one to use, one to fail over to
    relay_retry_s: float = 60.0  # a relay that refused or failed is not asked again sooner
    # Relays no longer wanted are held this long after they left the record (clients that read
    # it before still dial them; a record is republished at once, looked up afresh per ask).
    relay_linger_s: float = 60.0
    # While nobody answered: the first pause, doubling up to `retry_s`, and how often the DHT's
    # table is looked at for new peers meanwhile (a local read, no traffic).
    first_retry_s: float = 1.0
    peers_poll_s: float = 1.0
    # The first check waits this long at most for port mapping's first outcome (UPnP discovery
    # takes 2 s): checking the node's own port seconds before the mapping exists wastes a check.
    mapping_wait_s: float = 3.0
    # "auto": check; "direct" / "relayed": take that verdict without asking (tests, operators
    # who know their network)
    mode: str = "auto"


# The DHT's records of other nodes (the directory key), newest first per signer.
FindRecords = Callable[[str], Awaitable[list[CapabilityRecord]]]


def candidates(records: Sequence[CapabilityRecord], own_peer_id: str) -> list[RelayHint]:
    """Other nodes that may dial back or relay: not relayed themselves, best reached first; a
    node whose first address is one a NAT hands out (another home's LAN, most likely) after
    every other."""

    def rank(r: CapabilityRecord) -> tuple[bool, int]:
        lan = behind_nat_range(parse_host_port(r.addresses[0])[0])
        return lan, _PREFERENCE[(r.reach, bool(r.relays))]

    usable = [
        r for r in records if r.peer_id != own_peer_id and (r.reach, bool(r.relays)) in _PREFERENCE
    ]
    usable.sort(key=rank)
    return [RelayHint(r.peer_id, r.addresses[0]) for r in usable]


@attrs.define
class ReachContext:
    """What the tasks need from the node (passed once, not a dozen arguments)."""

    identity: Identity
    state: ReachState
    probes: ProbeInbox
    find_records: FindRecords
    on_session: CircuitHandler
    port: int
    dht_port: int
    config: ReachConfig = ReachConfig()
    psk: bytes | None = None
    network_id: bytes | None = None
    local_address: str | None = None
    # Told True while the verdict is "relayed": the DHT then takes part as a client-only member
    # (`Dht.set_client_only`), so nobody's lookups wait on a contact that cannot be dialled.
    client_only: Callable[[bool], None] = lambda _on: None
    # Answers the hole punches of circuits this node accepts (p2p/reach/hole_punch.py).
    punch: PunchResponder | None = attrs.Factory(PunchResponder)
    # Port mapping runs: the first check waits for its first outcome (`mapping_wait_s`).
    await_mapping: bool = False
    # Contacts the DHT knows (its routing table): news of peers while nobody could be asked.
    peers_known: Callable[[], int] = lambda: 0

    async def peers(self) -> list[RelayHint]:
        records: list[CapabilityRecord] = []
        try:
            with trio.move_on_after(LOOKUP_S) as scope:  # a lookup that hangs costs a retry
                records = await self.find_records(directory_key(self.network_id))
            if scope.cancelled_caught:
                log.info("directory lookup: no answer in %g s; trying again later", LOOKUP_S)
        except Exception as exc:  # a DHT lookup failure must not stop the node
            log.debug("directory lookup failed: %s", exc)
        return candidates(records, self.identity.peer_id)


async def keep_reachability(ctx: ReachContext) -> None:
    """Check and re-check (`_keep_checking`) and follow each verdict (`_follow_verdict`)."""
    if ctx.config.mode != "auto":  # before the follower's first look: no relays for "direct"
        ctx.state.set_result(ReachResult(ctx.config.mode, None))
    async with trio.open_nursery() as nursery:
        if ctx.config.mode == "auto":
            nursery.start_soon(_keep_checking, ctx)
        await _follow_verdict(ctx)


async def _keep_checking(ctx: ReachContext) -> None:
    """The first check once port mapping said what it maps (at most `mapping_wait_s`), then one
    every `check_interval_s`, at once when the mapping changes, and while nobody answered with
    a growing pause (`first_retry_s` doubling up to `retry_s`), at once when the DHT learns of
    new peers: the network's first node learns its verdict soon after others exist."""
    state, config = ctx.state, ctx.config
    if ctx.await_mapping:
        with trio.move_on_after(config.mapping_wait_s):
            await state.wait_mapping_reported()
    pause = config.first_retry_s
    while True:
        mapped = state.mapped
        helpers = await ctx.peers()
        result = ReachResult("unknown")
        if helpers:
            result = await check_reachability(
                helpers,
                ctx.identity,
                ctx.probes,
                port=ctx.port,
                dht_port=ctx.dht_port,
                mapped_port=mapped[1] if mapped else None,
                psk=ctx.psk,
                local_address=ctx.local_address,
            )
        if result.kind in ("direct", "mapped"):  # every helper was a host this node sent to
            result = attrs.evolve(result, weak=True)
        version = state.version
        state.set_result(result)
        # at info when the verdict changed: a check every 10 minutes is not news
        log.log(
            logging.INFO if state.version != version else logging.DEBUG,
            "reachability: %s%s (observed address %s, %d of %d peers asked answered)",
            state.reach,
            " (weak: only hosts this node sent to got through)" if state.weak else "",
            state.observed_host or "unknown",
            result.answered,
            min(len(helpers), HELPERS_PER_CHECK),
        )
        if result.answered:
            wait, pause = config.check_interval_s, config.first_retry_s
        else:
            wait, pause = min(pause, config.retry_s), min(pause * 2, config.retry_s)
        known = ctx.peers_known()
        with trio.move_on_after(wait):
            # port mapping's news (also news that came during the check): check again now
            while state.mapped == mapped:
                if not result.answered and ctx.peers_known() > known:
                    pause = config.first_retry_s
                    break
                with trio.move_on_after(config.peers_poll_s if not result.answered else wait):
                    await state.wait_changed()


async def _follow_verdict(ctx: ReachContext) -> None:
    """On each change of the reach state: DHT membership client-only while
    `ReachState.client_only` (no reservations taken then either), and relay reservations held
    while `ReachState.wants_relays`. Relays no longer wanted leave the record at once but are
    held `relay_linger_s` more: a client that read the record before may dial them."""
    state, config = ctx.state, ctx.config
    relays: trio.CancelScope | None = None
    release_at: float | None = None
    client_only: bool | None = None
    async with trio.open_nursery() as nursery:
        while True:
            seen = state.version
            if state.client_only != client_only:
                client_only = state.client_only
                ctx.client_only(client_only)
            if state.wants_relays:
                release_at = None
                if relays is None:
                    relays = trio.CancelScope()
                    nursery.start_soon(_scoped, relays, keep_relays(ctx))
            elif relays is not None and release_at is None:
                release_at = trio.current_time() + config.relay_linger_s
                why = "a stranger reached this node" if state.strangers_reach else state.reach
                log.info(
                    "relays: not needed any more (%s); letting them go in %g s",
                    why,
                    config.relay_linger_s,
                )
            wait = math.inf if release_at is None else release_at - trio.current_time()
            with trio.move_on_after(max(0.0, wait)):
                await state.wait_changed(seen)
            due = release_at is not None and trio.current_time() >= release_at
            if relays is not None and due and not state.wants_relays:
                relays.cancel()
                relays, release_at = None, None
                state.set_relays(())


async def _scoped(scope: trio.CancelScope, work: Awaitable[None]) -> None:
    with scope:
        await work


async def keep_relays(ctx: ReachContext) -> None:
    """Hold `relays_wanted` reservations, asking candidates at once rather than one after the
    other (one that does not answer costs its connect timeout); each lost or refused relay is
    replaced, and a refusing one is not asked again for `relay_retry_s`."""
    state, config = ctx.state, ctx.config
    held: dict[str, RelayHint] = {}
    trying: set[str] = set()
    # by relay and address: a node that failed at its LAN address before its first verdict is
    # asked again at once when its record names a public one
    failed_at: dict[RelayHint, float] = {}
    wake = trio.Event()

    async def hold(relay: RelayHint) -> None:
        nonlocal wake
        reserved = False

        def on_reserved(ttl: float) -> None:
            nonlocal reserved, wake
            if reserved:
                return
            reserved = True
            trying.discard(relay.peer_id)
            held[relay.peer_id] = relay
            state.set_relays(tuple(held.values()))
            log.info(
                "relay %s at %s holds our reservation (%g s)",
                relay.peer_id[:12],
                relay.address,
                ttl,
            )

        try:
            await hold_reservation(
                relay,
                ctx.identity,
                ctx.on_session,
                psk=ctx.psk,
                local_address=ctx.local_address,
                on_reserved=on_reserved,
                punch=ctx.punch,
            )
        except (SessionError, RelayRefused) as exc:
            code = getattr(exc, "code", None)
            if reserved:
                log.warning("relay %s lost: %s", relay.peer_id[:12], exc)
            else:
                log.info(
                    "relay %s refused our reservation: %s%s",
                    relay.peer_id[:12],
                    exc,
                    f" ({code.value})" if code is not None else "",
                )
        finally:
            trying.discard(relay.peer_id)
            failed_at[relay] = trio.current_time()
            if held.pop(relay.peer_id, None) is not None:
                state.set_relays(tuple(held.values()))
            wake.set()
            wake = trio.Event()

    def askable(relay: RelayHint, now: float) -> bool:
        last = failed_at.get(relay)
        if relay.peer_id in held or relay.peer_id in trying:
            return False
        return last is None or now - last >= config.relay_retry_s

    pause = config.first_retry_s
    async with trio.open_nursery() as nursery:
        while True:
            missing = config.relays_wanted - len(held) - len(trying)
            if missing > 0:
                found = await ctx.peers()
                now = trio.current_time()
                fresh = [r for r in found if askable(r, now)]
                for relay in fresh[:missing]:
                    trying.add(relay.peer_id)
                    nursery.start_soon(hold, relay)
                pause = config.first_retry_s if fresh else min(pause * 2, config.retry_s)
            with trio.move_on_after(pause):
                await wake.wait()


def inbound_observer(state: ReachState, contacted: ContactedHosts) -> AcceptObserver:
    """`serve_sessions(on_accept=...)`: a connection from a host this node never sent to, from
    outside its network, is strong proof that strangers reach it (p2p/reach/strangers.py).
    The first connection from each host is logged at info on `PATHS_LOGGER` (`-v`: which
    peers got in directly); once per host, so a flood of connections is no flood of lines."""
    logged: BoundedLRU[str, bool] = BoundedLRU(LOGGED_SOURCES)

    def seen(peer: str, local: str) -> None:
        stranger = proves_strangers_reach(peer, local, contacted, state.observed_host)
        if logged.get(peer) is None:
            logged.set(peer, True)
            paths_log.info("inbound tcp from %s%s", peer, " (a stranger)" if stranger else "")
        if stranger and not state.strangers_reach:
            log.info("reachability: a stranger (%s) reached this node: strong proof", peer)
            state.note_stranger()

    return seen


@contextlib.contextmanager
def observing_contacts(dht: Dht, contacted: ContactedHosts) -> Iterator[None]:
    """Feed *contacted* from every outbound path of the node: the DHT's requests, and every TCP
    dial of the tasks started inside the block (`DIAL_OBSERVER`: sessions, dial-backs, relay
    connections, probes)."""
    dht.observe_requests(contacted.sent)
    token = DIAL_OBSERVER.set(contacted.sent)
    try:
        yield
    finally:
        DIAL_OBSERVER.reset(token)
        dht.observe_requests(None)


def relay_limits(config: NodeConfig) -> RelayLimits:
    return RelayLimits(
        enabled=config.relay,
        max_reservations=config.relay_max_reservations,
        max_circuits=config.relay_max_circuits,
        bytes_per_s_per_peer=float(config.relay_bytes_per_s),
    )


def usable_host(bind: str, advertised: str, toward: Sequence[tuple[str, int]]) -> str:
    """The host a node bound to *bind* publishes before any check: for a wildcard bind, the
    address its routes use toward the first bootstrap given as an address (a connected UDP
    socket: nothing is sent), else *advertised* (what its hostname resolves to, often
    127.0.0.1, which sends others to their own machine)."""
    if bind not in ("0.0.0.0", "::", ""):
        return advertised
    for host, port in toward:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, port))
                local = str(probe.getsockname()[0])
        except (ValueError, OSError):
            continue  # a name (no DNS here), or no route
        if not ipaddress.ip_address(local).is_unspecified:
            return local
    return advertised


def source_host(config: NodeConfig) -> str | None:
    """The source address of the node's own reach connections: dial-backs go to the address a
    helper sees, so a node bound to one address must also dial from it."""
    if config.source_host is not None:
        return config.source_host
    return None if config.host in ("0.0.0.0", "::", "") else config.host


def reach_service(
    identity: Identity, config: NodeConfig, dht: Dht, probes: ProbeInbox
) -> ReachService:
    """The session port's relay side (`serve_sessions(preamble=service.route)`)."""
    return ReachService(
        identity,
        RelayTable(relay_limits(config)),
        psk=config.psk,
        probes=probes,
        dial_back=DialBackHelper(ping_udp=dht.ping, local_address=source_host(config)),
    )


def relayed_mode(dht: Dht, service: ReachService) -> Callable[[bool], None]:
    """What changes while the node is "relayed" (or not known to be reachable yet on a LAN
    address, `ReachState.client_only`): its DHT membership becomes client-only and it stops
    taking reservations (a relay must be reachable itself)."""

    def switch(relayed: bool) -> None:
        dht.set_client_only(relayed)
        service.table.paused = relayed

    return switch


def relayed_session_handler(handler: Handler, sessions: SessionTable) -> CircuitHandler:
    """Sessions that arrive through a relay are served like any other, within the session
    table, counted under the relay (their source address is the relay's); one a hole punch
    upgraded (`via_relay` None) is counted under its own source address, as if dialled."""

    async def serve(conn: SecureConnection, relay: RelayHint) -> None:
        peer = conn.remote_address
        if conn.via_relay is None and peer is not None:
            source = source_key(peer)
        else:
            source = f"relay/{relay.peer_id}"
        how = "through relay" if conn.via_relay is not None else "hole-punched, circuit via"
        paths_log.info("session %s %s", how, relay.peer_id[:12])
        await serve_established(conn, source, handler, sessions)

    return serve


def reach_context(
    identity: Identity,
    config: NodeConfig,
    state: ReachState,
    probes: ProbeInbox,
    dht: Dht,
    service: ReachService,
    on_session: CircuitHandler,
    port: int,
) -> ReachContext:
    """The reach tasks' context for a node serving sessions on *port* (port mapping's first
    outcome is awaited when `config.port_mapping` is on)."""
    return ReachContext(
        identity,
        state,
        probes,
        dht.find_records,
        on_session,
        port=port,
        dht_port=dht.port,
        config=ReachConfig(mode=config.reach_mode, retry_s=config.reach_retry_s),
        psk=config.psk,
        network_id=network_id(config.psk) if config.psk is not None else None,
        local_address=source_host(config),
        client_only=relayed_mode(dht, service),
        await_mapping=config.port_mapping,
        peers_known=dht.routing_table_size,
        punch=PunchResponder() if config.hole_punch else None,
    )
