"""The relay protocol's bytes and messages, sans-IO: the preamble, the status line, the control
messages, and their readers. No event loop; `relay_table.py` holds the relay's state machine.

One TCP port serves both protocols. A connection that opens with a Noise handshake is an ordinary
session; one that opens with the relay *preamble* is a relay connection. They cannot be confused:
a Noise handshake message starts with its 2-byte big-endian length, at most 1024
(crypto.secure_session.MAX_HANDSHAKE_MESSAGE), so its first byte is at most 0x04, while the
preamble's first byte is `MAGIC` (0xF7). The preamble is fixed-length per kind (at most 37
bytes), so a relay reads it in one bounded step:

    MAGIC(1) VERSION(1) KIND(1) payload
    CONTROL  no payload: a Noise XX session follows, the dialler as initiator, carrying the
             msgpack control messages below (reservations, dial-back requests)
    CONNECT  32-byte public key of the peer to reach: "a circuit to peer V, please"
    ACCEPT   16-byte circuit token: V answering "circuit X for you" on a fresh connection
    PROBE    16-byte nonce: a dial-back arriving at the node that asked for it
    CONNECT_PUNCH  as CONNECT, from a client that will try a hole punch (p2p/reach/hole_punch.py):
             after "ok" the relay adds an *observed line* (below)
    CONNECT_SPRAY  as CONNECT_PUNCH, plus the 2-byte local port of the client's socket: the
             client can take part in a port spray (p2p/reach/port_spray.py)
    ACCEPT_SPRAY   as ACCEPT, plus the 2-byte local port of the volunteer's socket, for a
             `Circuit` that named the client's local port (`peer_port`); after "ok" the relay
             adds an observed line for the volunteer too

The answer to CONNECT, ACCEPT and PROBE is a *status line*: one length byte (1..64) and an
ASCII code, "ok" or an `ErrorCode` value (`relay_full`, `no_reservation`, ...). After "ok" on
CONNECT and ACCEPT the relay splices the two connections byte for byte; client and volunteer
then run an ordinary Noise XX handshake end to end over them, so the relay sees peer ids and
ciphertext only, and a flipped byte fails the session's authentication.

Hole punching (DCUtR's shape): for CONNECT_PUNCH the relay answers "ok" and then one observed
line, a length byte (1..MAX_OBSERVED) and ASCII "PEER YOU": the source ip:port it saw for the
volunteer's ACCEPT connection and for the client's own connection. The `Circuit` it sends the
volunteer names the client's observed ip:port (`peer`), empty for a plain CONNECT. A plain
CONNECT still gets the old answer and an old volunteer ignores the extra field, so older peers
keep working; a client of this version through an older relay loses that relay attempt (the
relay drops an unknown kind).

Port spray (symmetric <-> port-restricted NATs): with CONNECT_SPRAY the `Circuit` also names
the client's local port (`peer_port`); a volunteer of this version answers with ACCEPT_SPRAY and
its own local port. The observed line then carries a third field, the other side's local port
as that side told the relay ("PEER YOU PORT"), to the client and (after ACCEPT_SPRAY's "ok") to
the volunteer, whose line names the client as PEER and itself as YOU. Each side compares its own
YOU with its socket's port and the peer's PORT with the peer's observed one: which NAT keeps
ports (`port_spray.role_for`). A volunteer that answers with a plain ACCEPT gives the client a
two-field line: no spray. Only a relay of this version knows the two kinds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs
import msgpack

from p2p.errors import ErrorCode
from p2p.host_port import AddressError, format_host_port, is_ip, parse_host_port

MAGIC = 0xF7
VERSION = 1
TOKEN_BYTES = 16  # 128-bit circuit tokens and dial-back nonces: unguessable
PUBLIC_KEY_BYTES = 32
MAX_STATUS = 64
# Control messages are a few fields; anything larger is hostile.
MAX_CONTROL_MESSAGE = 512
MAX_HOST_CHARS = 64  # an IPv6 address is at most 45 characters
# Two "[v6]:port" (at most 53 characters each) and a space; a spray line's " port" more.
MAX_OBSERVED = 2 * 53 + 1 + 6
PORT_BYTES = 2


class RelayProtocolError(ValueError):
    """Bytes or a message that break the relay protocol (the connection is closed)."""


class Kind(enum.IntEnum):
    CONTROL = 1
    CONNECT = 2
    ACCEPT = 3
    PROBE = 4
    CONNECT_PUNCH = 5
    CONNECT_SPRAY = 6
    ACCEPT_SPRAY = 7


_PAYLOAD = {
    Kind.CONTROL: 0,
    Kind.CONNECT: PUBLIC_KEY_BYTES,
    Kind.CONNECT_PUNCH: PUBLIC_KEY_BYTES,
    Kind.ACCEPT: TOKEN_BYTES,
    Kind.PROBE: TOKEN_BYTES,
    Kind.CONNECT_SPRAY: PUBLIC_KEY_BYTES + PORT_BYTES,
    Kind.ACCEPT_SPRAY: TOKEN_BYTES + PORT_BYTES,
}
MAX_PREAMBLE = 3 + max(_PAYLOAD.values())


@attrs.frozen
class Preamble:
    kind: Kind
    payload: bytes = b""

    def __attrs_post_init__(self) -> None:
        if len(self.payload) != _PAYLOAD[self.kind]:
            raise RelayProtocolError(f"{self.kind.name}: payload of {len(self.payload)} bytes")

    def encode(self) -> bytes:
        return bytes((MAGIC, VERSION, int(self.kind))) + self.payload


def spray_preamble(kind: Kind, head: bytes, local_port: int) -> Preamble:
    """CONNECT_SPRAY (*head*: the peer's public key) or ACCEPT_SPRAY (the circuit token) with
    the local port of the sender's socket."""
    if kind not in (Kind.CONNECT_SPRAY, Kind.ACCEPT_SPRAY) or not 0 < local_port < 65536:
        raise RelayProtocolError(f"{kind.name}: not a spray preamble with a port")
    return Preamble(kind, head + local_port.to_bytes(PORT_BYTES, "big"))


def split_spray(preamble: Preamble) -> tuple[bytes, int]:
    """A preamble's key or token, and the local port a spray preamble names (0 for the others);
    `RelayProtocolError` for port 0."""
    if preamble.kind not in (Kind.CONNECT_SPRAY, Kind.ACCEPT_SPRAY):
        return preamble.payload, 0
    head, port = preamble.payload[:-PORT_BYTES], int.from_bytes(preamble.payload[-2:], "big")
    if port == 0:
        raise RelayProtocolError(f"{preamble.kind.name}: port 0")
    return head, port


def is_preamble_start(first: bytes) -> bool:
    """Whether a connection's first bytes are a relay preamble (else: a Noise handshake)."""
    return bool(first) and first[0] == MAGIC


class PreambleReader:
    """Feed the first bytes of a connection; `result` once the preamble is whole. Bytes past it
    (a CONTROL's Noise handshake, a client that pipelines) stay in `remaining`."""

    def __init__(self) -> None:
        self._buffer = b""
        self.result: Preamble | None = None

    def feed(self, data: bytes) -> Preamble | None:
        if self.result is not None:
            self._buffer += data
            return self.result
        self._buffer += data
        buf = self._buffer
        if buf and buf[0] != MAGIC:
            raise RelayProtocolError("not a relay preamble")
        if len(buf) >= 2 and buf[1] != VERSION:
            raise RelayProtocolError(f"relay protocol version {buf[1]} is not supported")
        if len(buf) < 3:
            return None
        try:
            kind = Kind(buf[2])
        except ValueError:
            raise RelayProtocolError(f"unknown relay preamble kind {buf[2]}") from None
        end = 3 + _PAYLOAD[kind]
        if len(buf) < end:
            return None
        self.result = Preamble(kind, buf[3:end])
        self._buffer = buf[end:]
        return self.result

    @property
    def needed(self) -> int:
        """How many more bytes may be needed at most (read no more than this)."""
        return max(1, MAX_PREAMBLE - len(self._buffer)) if self.result is None else 0

    @property
    def remaining(self) -> bytes:
        return self._buffer


OK = "ok"


def encode_status(code: ErrorCode | None) -> bytes:
    text = OK if code is None else code.value
    raw = text.encode("ascii")
    assert 0 < len(raw) <= MAX_STATUS
    return bytes((len(raw),)) + raw


class StatusReader:
    """Reads one status line; `code` is None for "ok", else the `ErrorCode` (unknown ones as
    INTERNAL, as on the wire)."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False
        self.code: ErrorCode | None = None

    def feed(self, data: bytes) -> bool:
        """True once the line is whole; bytes past it are in `remaining`."""
        self._buffer += data
        if not self._buffer:
            return False
        n = self._buffer[0]
        if not 0 < n <= MAX_STATUS:
            raise RelayProtocolError("bad status line")
        if len(self._buffer) < 1 + n:
            return False
        try:
            text = self._buffer[1 : 1 + n].decode("ascii")
        except UnicodeDecodeError:
            raise RelayProtocolError("bad status line") from None
        self._buffer = self._buffer[1 + n :]
        self.done = True
        self.code = None if text == OK else ErrorCode.from_wire(text)
        return True

    @property
    def needed(self) -> int:
        if self.done:
            return 0
        return 1 if not self._buffer else max(1, 1 + self._buffer[0] - len(self._buffer))

    @property
    def remaining(self) -> bytes:
        return self._buffer


def observed_address(text: str) -> str:
    """An observed `ip:port` as the relay reports it: an IP literal (the relay saw a socket's
    peer, never a name) and a port; `RelayProtocolError` otherwise."""
    try:
        host, port = parse_host_port(text)
    except AddressError as exc:
        raise RelayProtocolError(f"observed address: {exc}") from None
    if not is_ip(host):
        raise RelayProtocolError("observed address: not an IP address")
    return format_host_port(host, port)


@attrs.frozen
class Observed:
    """What a relay saw for a CONNECT_PUNCH: the volunteer's source address (`peer`) and the
    client's (`you`), both `ip:port`; for a spray, the peer's local port as it told the relay
    (`peer_port`, 0: not told)."""

    peer: str
    you: str
    peer_port: int = 0

    def encode(self) -> bytes:
        text = f"{observed_address(self.peer)} {observed_address(self.you)}"
        if self.peer_port:
            if not 0 < self.peer_port < 65536:
                raise RelayProtocolError("observed line: bad port")
            text += f" {self.peer_port}"
        raw = text.encode("ascii")
        assert 0 < len(raw) <= MAX_OBSERVED
        return bytes((len(raw),)) + raw


class ObservedReader:
    """Reads one observed line after a CONNECT_PUNCH's "ok"; `result` once whole, bytes past
    it (the volunteer's first handshake bytes) in `remaining`."""

    def __init__(self) -> None:
        self._buffer = b""
        self.result: Observed | None = None

    def feed(self, data: bytes) -> Observed | None:
        self._buffer += data
        if self.result is not None or not self._buffer:
            return self.result
        n = self._buffer[0]
        if not 0 < n <= MAX_OBSERVED:
            raise RelayProtocolError("bad observed line")
        if len(self._buffer) < 1 + n:
            return None
        try:
            text = self._buffer[1 : 1 + n].decode("ascii")
        except UnicodeDecodeError:
            raise RelayProtocolError("bad observed line") from None
        parts = text.split(" ")
        if len(parts) not in (2, 3):
            raise RelayProtocolError("bad observed line")
        port = 0
        if len(parts) == 3:
            if not parts[2].isdigit() or not 0 < int(parts[2]) < 65536 or len(parts[2]) > 5:
                raise RelayProtocolError("bad observed line")
            port = int(parts[2])
        self.result = Observed(observed_address(parts[0]), observed_address(parts[1]), port)
        self._buffer = self._buffer[1 + n :]
        return self.result

    @property
    def needed(self) -> int:
        if self.result is not None:
            return 0
        return 1 if not self._buffer else max(1, 1 + self._buffer[0] - len(self._buffer))

    @property
    def remaining(self) -> bytes:
        return self._buffer


# --- control messages (inside the CONTROL session's Noise frames) ---


@attrs.frozen
class Reserve:
    """V to R: hold (or renew) a reservation for me; I am the session's authenticated peer."""


@attrs.frozen
class Reserved:
    """R to V: reserved until `ttl_s` from now; renew before."""

    ttl_s: float


@attrs.frozen
class Refused:
    """Either way: the request before it was refused, with a code and a line for people."""

    code: ErrorCode
    text: str = ""


@attrs.frozen
class Circuit:
    """R to V: a client asked for you; open a connection to me presenting `token` (ACCEPT).
    `peer`: the client's source `ip:port` as R saw it, when the client will try a hole punch
    (CONNECT_PUNCH); "" otherwise (and from relays older than the field). `peer_port`: the
    client's local port, as it told R (CONNECT_SPRAY); 0 otherwise: answer with ACCEPT_SPRAY
    only when it is set."""

    token: bytes
    peer: str = ""
    peer_port: int = 0


@attrs.frozen
class DialBack:
    """V to a helper: dial me back, at the source address you see for this session, on TCP
    `port` (presenting PROBE `nonce`) and UDP `dht_port` (a DHT ping)."""

    nonce: bytes
    port: int
    dht_port: int


@attrs.frozen
class DialBackResult:
    """Helper to V: the address it saw and whether each dial-back got through."""

    nonce: bytes
    host: str
    tcp: bool
    udp: bool


ControlMessage = Reserve | Reserved | Refused | Circuit | DialBack | DialBackResult

_TYPES: dict[str, type] = {
    "reserve": Reserve,
    "reserved": Reserved,
    "refused": Refused,
    "circuit": Circuit,
    "dial_back": DialBack,
    "dial_back_result": DialBackResult,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode_control(msg: ControlMessage) -> bytes:
    fields: dict[str, Any] = attrs.asdict(msg, recurse=False)
    if isinstance(msg, Refused):
        fields["code"] = msg.code.value
    if isinstance(msg, Circuit) and not msg.peer:
        del fields["peer"]  # the bytes of a relay older than the field
    if isinstance(msg, Circuit) and not msg.peer_port:
        del fields["peer_port"]
    fields["t"] = _NAMES[type(msg)]
    data = msgpack.packb(fields, use_bin_type=True)
    assert isinstance(data, bytes) and len(data) <= MAX_CONTROL_MESSAGE
    return data


def _want(fields: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = fields.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RelayProtocolError(f"control message: bad field {name!r}")
    return value


def _token(fields: Mapping[str, Any], name: str) -> bytes:
    value = _want(fields, name, bytes)
    if len(value) != TOKEN_BYTES:
        raise RelayProtocolError(f"control message: {name} must be {TOKEN_BYTES} bytes")
    return bytes(value)


def _port(fields: Mapping[str, Any], name: str) -> int:
    value = _want(fields, name, int)
    if not 0 < value < 65536:
        raise RelayProtocolError(f"control message: {name} is not a port")
    return int(value)


def decode_control(data: bytes) -> ControlMessage:
    """One control message from a frame; `RelayProtocolError` for anything else."""
    if len(data) > MAX_CONTROL_MESSAGE:
        raise RelayProtocolError("control message too large")
    try:
        fields = msgpack.unpackb(data, raw=False, max_str_len=256, max_bin_len=64)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RelayProtocolError("control message: not msgpack") from exc
    if not isinstance(fields, dict):
        raise RelayProtocolError("control message: not a map")
    kind = _TYPES.get(fields.get("t"))  # type: ignore[arg-type]
    if kind is None:
        raise RelayProtocolError("control message: unknown type")
    if kind is Reserve:
        return Reserve()
    if kind is Reserved:
        ttl = _want(fields, "ttl_s", (int, float))
        if not 0 < ttl <= 3600:
            raise RelayProtocolError("control message: bad ttl_s")
        return Reserved(float(ttl))
    if kind is Refused:
        text = _want(fields, "text", str)[:200]
        return Refused(ErrorCode.from_wire(_want(fields, "code", str)), text)
    if kind is Circuit:
        peer = fields.get("peer", "")
        if not isinstance(peer, str) or len(peer) > MAX_OBSERVED:
            raise RelayProtocolError("control message: bad field 'peer'")
        peer_port = _port(fields, "peer_port") if "peer_port" in fields else 0
        if peer_port and not peer:
            raise RelayProtocolError("control message: a peer_port without a peer")
        return Circuit(_token(fields, "token"), observed_address(peer) if peer else "", peer_port)
    if kind is DialBack:
        return DialBack(_token(fields, "nonce"), _port(fields, "port"), _port(fields, "dht_port"))
    host = _want(fields, "host", str)
    if len(host) > MAX_HOST_CHARS:
        raise RelayProtocolError("control message: host too long")
    return DialBackResult(
        _token(fields, "nonce"), host, _want(fields, "tcp", bool), _want(fields, "udp", bool)
    )
