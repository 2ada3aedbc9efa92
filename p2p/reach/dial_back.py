"""Dial-back, both sides, in trio (the rules are `reachability.py`'s).

The asker opens a CONTROL session to a helper and sends `DialBack(nonce, port, dht_port)`. The
helper, within its limits, opens a TCP connection to the session's *observed source host* on
*port* presenting PROBE(nonce), pings the DHT at that host's *dht_port*, and answers with what it
saw. The asker trusts its own listener for TCP (did a PROBE with its nonce arrive?) and the
helper only for the UDP ping and the observed address.

A check asks a few helpers at once and ends when all answered, or `ANSWER_GRACE_S` after the
first answer: a helper that never answers costs a second, not the whole `ASK_S` (and the
observed host is still the one most answers saw).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from crypto.identity import Identity
from p2p.dht.records import RelayHint
from p2p.errors import ErrorCode
from p2p.host_port import format_host_port
from p2p.reach.reachability import (
    HELPERS_PER_CHECK,
    DialBackLimiter,
    DialBackOutcome,
    ReachResult,
    decide,
)
from p2p.reach.relay_client import RelayDialError, read_status
from p2p.reach.relay_protocol import (
    TOKEN_BYTES,
    DialBack,
    DialBackResult,
    Kind,
    Preamble,
    Refused,
    RelayProtocolError,
    decode_control,
    encode_control,
)
from p2p.reach.relay_service import ProbeInbox
from p2p.session.secure import SecureConnection, SessionError, open_tcp, secure_stream

log = logging.getLogger(__name__)

PROBE_S = 3.0  # a dial-back's connect and status; behind a NAT the SYN is dropped: it times out
# The asker's whole exchange with one helper: handshake, the helper's probe and ping, the answer.
ASK_S = 12.0
# After the first answer of a check, how long the other helpers still have to answer.
ANSWER_GRACE_S = 1.0

# (host, port) -> whether a DHT node answered a ping there.
UdpPing = Callable[[str, int], Awaitable[bool]]


async def probe_tcp(
    host: str,
    port: int,
    nonce: bytes,
    *,
    wait_s: float = PROBE_S,
    local_address: str | None = None,
) -> bool:
    """Dial *host*:*port*, present PROBE(*nonce*), and say whether it answered "ok"."""
    with trio.move_on_after(wait_s):
        try:
            stream = await open_tcp(format_host_port(host, port), local_address=local_address)
        except SessionError:
            return False
        try:
            await stream.send_all(Preamble(Kind.PROBE, nonce).encode())
            await read_status(stream, wait_s, "dial-back")
            return True
        except (RelayDialError, trio.BrokenResourceError, OSError):
            return False
        finally:
            await trio.aclose_forcefully(stream)
    return False


class DialBackHelper:
    """Serves `DialBack` requests that arrive on CONTROL sessions (`ReachService(dial_back=)`)."""

    def __init__(
        self,
        ping_udp: UdpPing | None = None,
        limiter: DialBackLimiter | None = None,
        *,
        local_address: str | None = None,
    ):
        self.ping_udp = ping_udp
        self.limiter = limiter or DialBackLimiter()
        # A node bound to one address probes from it too: the asker sees the probe come from
        # the host it asked, not from another address of this machine.
        self.local_address = local_address
        self.served = 0

    async def __call__(self, conn: SecureConnection, observed: str, msg: DialBack) -> None:
        if not self.limiter.admit(
            conn.remote_peer_id, observed, trio.current_time(), port=msg.port
        ):
            refusal = Refused(
                ErrorCode.RATE_LIMITED, "one dial-back per port a while, per peer and address"
            )
            await conn.send_bytes(encode_control(refusal))
            return
        got = {"tcp": False, "udp": False}

        async def tcp() -> None:
            got["tcp"] = await probe_tcp(
                observed, msg.port, msg.nonce, local_address=self.local_address
            )

        async def udp() -> None:
            if self.ping_udp is not None:
                with trio.move_on_after(PROBE_S), contextlib.suppress(OSError):
                    got["udp"] = await self.ping_udp(observed, msg.dht_port)

        try:  # both at once: behind a NAT each waits its whole deadline
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tcp)
                nursery.start_soon(udp)
        finally:
            self.limiter.done()
        self.served += 1
        result = DialBackResult(msg.nonce, observed, got["tcp"], got["udp"])
        await conn.send_bytes(encode_control(result))


async def ask_dial_back(
    helper: RelayHint,
    identity: Identity,
    probes: ProbeInbox,
    *,
    port: int,
    dht_port: int,
    mapped: bool = False,
    psk: bytes | None = None,
    local_address: str | None = None,
    on_local_host: Callable[[str], None] = lambda _host: None,
) -> DialBackOutcome | None:
    """One helper's dial-back of this node on *port*; None when the helper did not answer.
    *on_local_host* is told the address the control session left from (behind a NAT: the
    node's LAN address, which a node bound to a wildcard does not know otherwise)."""
    nonce = os.urandom(TOKEN_BYTES)
    heard = probes.expect(nonce)
    try:
        with trio.move_on_after(ASK_S):
            stream = await open_tcp(helper.address, local_address=local_address)
            try:
                on_local_host(str(stream.socket.getsockname()[0]))
                await stream.send_all(Preamble(Kind.CONTROL).encode())
            except BaseException as exc:
                await trio.aclose_forcefully(stream)
                if isinstance(exc, (OSError, trio.BrokenResourceError)):
                    raise SessionError(f"control session to {helper.address}: {exc}") from exc
                raise
            conn = await secure_stream(
                stream,
                identity,
                expected_peer_id=helper.peer_id,
                psk=psk,
                label=f"helper {helper.address}",
            )
            try:
                await conn.send_bytes(encode_control(DialBack(nonce, port, dht_port)))
                data = await conn.receive_bytes()
            finally:
                await conn.aclose()
            answer = decode_control(data) if data is not None else None
            if isinstance(answer, DialBackResult) and answer.nonce == nonce:
                return DialBackOutcome(
                    helper.peer_id, answer.host, tcp=heard.is_set(), udp=answer.udp, mapped=mapped
                )
            log.debug("dial-back by %s: %r", helper.peer_id[:12], answer)
    except (SessionError, RelayProtocolError) as exc:
        log.debug("dial-back by %s failed: %s", helper.peer_id[:12], exc)
    finally:
        probes.forget(nonce)
    return None


async def check_reachability(
    helpers: Sequence[RelayHint],
    identity: Identity,
    probes: ProbeInbox,
    *,
    port: int,
    dht_port: int,
    mapped_port: int | None = None,
    psk: bytes | None = None,
    local_address: str | None = None,
) -> ReachResult:
    """Ask up to `HELPERS_PER_CHECK` helpers at once (on the mapped port when there is one);
    done when all answered, or `ANSWER_GRACE_S` after the first answer."""
    outcomes: list[DialBackOutcome] = []
    local_hosts: list[str] = []
    answered = trio.Event()
    asked = list(helpers[:HELPERS_PER_CHECK])
    left = len(asked)

    async def one(helper: RelayHint) -> None:
        nonlocal left
        try:
            outcome = await ask_dial_back(
                helper,
                identity,
                probes,
                port=mapped_port or port,
                dht_port=dht_port,
                mapped=mapped_port is not None,
                psk=psk,
                local_address=local_address,
                on_local_host=local_hosts.append,
            )
            if outcome is not None:
                outcomes.append(outcome)
                answered.set()
        finally:
            left -= 1
            if left == 0:
                nursery.cancel_scope.cancel()

    async def grace() -> None:
        await answered.wait()
        await trio.sleep(ANSWER_GRACE_S)
        nursery.cancel_scope.cancel()

    if asked:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(grace)
            for helper in asked:
                nursery.start_soon(one, helper)
    result = decide(outcomes)
    if local_hosts:
        local = collections.Counter(local_hosts).most_common(1)[0][0]
        result = attrs.evolve(result, local_host=local)
    return result
