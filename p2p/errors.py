"""Error codes: the one table of what can go wrong, how it is told on the wire and over HTTP.

aioquic's shape (`h3/connection.py`): an `ErrorCode` enum, exceptions that each carry their code,
and one function (`code_of`) that turns any fault into the code sent back. Nothing in gpunet derives
a code from message text or compares a code as a bare string: the text is for people, the code is
for programs (a client retries elsewhere on `busy`, fixes its request on `bad_request`), so
rewording a message can never change an HTTP status or a metric label.

The enum's values are what travels in `wire.Error.code`. A code this version does not know (a newer
peer's) decodes as `INTERNAL`: retryable, so an unknown failure moves the request elsewhere rather
than failing it.

`RecordRefusal` is the same idea for DHT records: the record rules name why they refused one, and
`/metrics` counts by that name, not by the wording of the refusal.
"""

from __future__ import annotations

import enum

from inference.generation import GenerationError, PromptTooLong, WorkerBusy


class ErrorCode(enum.Enum):
    """Stable codes clients act on (retry elsewhere, give up, fix the request)."""

    UNKNOWN_MODEL = "unknown_model"  # this node (or the network) does not serve that model
    BUSY = "busy"  # no slot or queue place now; another provider may have one
    RATE_LIMITED = "rate_limited"  # this requester sent too much; slow down or go elsewhere
    SHUTTING_DOWN = "shutting_down"  # the node is draining; go elsewhere
    BAD_REQUEST = "bad_request"  # the request is invalid; resending it unchanged cannot help
    TOO_LONG = "too_long"  # the prompt (or prompt + max_tokens) exceeds a limit
    TIMEOUT = "timeout"  # a deadline passed before the work finished
    UNAVAILABLE = "unavailable"  # no provider could serve the request (client side)
    INTERNAL = "internal"  # the serving side failed; another provider may not
    # A relay (p2p/reach/) at one of its bounds (reservations, circuits, circuits per peer), or
    # not relaying at all: reserve at, or dial through, another relay.
    RELAY_FULL = "relay_full"
    # The relay holds no reservation for the peer a client asked for (expired, never made, or
    # an unknown circuit token): the client tries the peer's other relays.
    NO_RESERVATION = "no_reservation"
    # The node's owner paused it (`gpunet pause`, or outside `--serve-hours`): it finishes what it
    # has and takes nothing new for now; another provider may.
    PAUSED = "paused"
    # Only the node's owner (a session with the node's own identity) may ask this.
    FORBIDDEN = "forbidden"

    @classmethod
    def from_wire(cls, text: str) -> ErrorCode:
        """The code a peer sent; one this version does not know counts as `INTERNAL`."""
        try:
            return cls(text)
        except ValueError:
            return cls.INTERNAL


# Codes after which a client moves the request to the next provider of the same model file. A
# `bad_request` or `too_long` would be refused by every honest provider alike.
RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.BUSY,
        ErrorCode.RATE_LIMITED,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.TIMEOUT,
        ErrorCode.INTERNAL,
        # one node's catalogue may lag the DHT's (a model dropped after a failed load)
        ErrorCode.UNKNOWN_MODEL,
        # another relay of the same node may have room or a reservation
        ErrorCode.RELAY_FULL,
        ErrorCode.NO_RESERVATION,
        ErrorCode.PAUSED,
    }
)

# What the OpenAI gateway answers when a request ends in each code.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.BUSY: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.TOO_LONG: 400,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 502,  # the gateway is fine; the node behind it failed
    ErrorCode.RELAY_FULL: 503,
    ErrorCode.NO_RESERVATION: 502,
    ErrorCode.PAUSED: 503,
    ErrorCode.FORBIDDEN: 403,
}


class GpunetError(Exception):
    """A fault with a code. Subclasses fix the code; `GpunetError(msg, code=...)` picks one."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class BadRequest(GpunetError):
    """The request is invalid. `field` names the offending field when one is to blame."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TooLong(GpunetError):
    code = ErrorCode.TOO_LONG


class Busy(GpunetError):
    code = ErrorCode.BUSY


class RateLimited(GpunetError):
    code = ErrorCode.RATE_LIMITED


class ShuttingDown(GpunetError):
    code = ErrorCode.SHUTTING_DOWN


class UnknownModel(GpunetError):
    code = ErrorCode.UNKNOWN_MODEL


class Timeout(GpunetError):
    code = ErrorCode.TIMEOUT


class Unavailable(GpunetError):
    code = ErrorCode.UNAVAILABLE


class RecordRefusal(enum.Enum):
    """Why a DHT record was refused (on store or on lookup): the `/metrics` label it counts under.

    The record rules (p2p/dht/records.py, record_store.py) say which applies where they refuse,
    so nothing classifies a refusal by its message text. Values are the metric label values.
    """

    MALFORMED = "malformed"  # not msgpack, wrong envelope, schema violation
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    FUTURE = "future"  # issued further in the future than the allowed clock skew
    LIFETIME = "lifetime"  # expires too long after it was issued
    UNBOUND_KEY = "unbound_key"  # a valid record stored under a key it is not bound to
    STALE = "stale"  # sequence number not newer than the stored one
    TOO_LARGE = "too_large"
    FULL = "full"  # a storage bound (per key, per peer, in total) was reached


# Exceptions raised below p2p (inference knows nothing of wire codes), most specific first.
_FOREIGN: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (WorkerBusy, ErrorCode.BUSY),
    (PromptTooLong, ErrorCode.TOO_LONG),
    (GenerationError, ErrorCode.BAD_REQUEST),
)


def code_of(exc: BaseException) -> ErrorCode:
    """The code to answer with for *exc*: its own, the table's, else `INTERNAL`."""
    if isinstance(exc, GpunetError):
        return exc.code
    for kind, code in _FOREIGN:
        if isinstance(exc, kind):
            return code
    return ErrorCode.INTERNAL
