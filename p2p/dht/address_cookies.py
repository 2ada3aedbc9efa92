"""Address cookies: proof that a datagram's source receives at its address, sans-IO.

UDP source addresses are not authenticated, so an answer much larger than its request turns a
node into a reflection amplifier: spoof the victim's address, send 78 bytes, the victim gets
kilobytes. The defence is DNS cookies' (RFC 7873, RFC 9018) and QUIC address validation's (RFC
9000 §8.1): until a source has shown it receives what we send to its address, every answer to it
is at most `AMPLIFICATION_FACTOR` times its request. It shows that by echoing a cookie we gave
it — a keyed MAC over its (ip, port) and a coarse time window, so our side keeps no state per
source — or by being a contact that answered one of our challenges from that address.

`AddressCookies` is the server side (issue, check); `CookieJar` the client side (the cookie each
address gave us, bounded, so a lookup pays the extra round trip once per first contact).
"""

from __future__ import annotations

import hashlib
import hmac
import os

import attrs

from p2p.bounded_lru import BoundedLRU

# QUIC's anti-amplification limit (RFC 9000 §8.1): at most three times the bytes received from
# an unvalidated address.
AMPLIFICATION_FACTOR = 3
# 16 bytes: DNS server cookies are 8–32 bytes (RFC 7873 §4.2); 128 bits cannot be guessed by a
# spoofer who never sees them.
COOKIE_LEN = 16
# A window's secret signs cookies for one window and checks them for one more, so a cookie lives
# between COOKIE_WINDOW_S and twice that. RFC 9018 §4.3 rotates the server secret about every
# half hour; ten minutes keeps a leaked secret short-lived and is still far above a lookup's
# seconds. Clients keep a cookie only as long as it is sure to be valid.
COOKIE_WINDOW_S = 600.0
COOKIE_CLIENT_TTL_S = COOKIE_WINDOW_S
# A client contacts a few hundred nodes in a busy hour; 4096 addresses bound the jar's memory.
MAX_JAR_ENTRIES = 4096

Address = tuple[str, int]


def _mac(secret: bytes, window: int, source: Address) -> bytes:
    host = str(source[0]).encode("utf-8", "replace")[:64]
    message = (
        window.to_bytes(8, "big", signed=True)
        + len(host).to_bytes(1, "big")
        + host
        + (int(source[1]) & 0xFFFF).to_bytes(2, "big")
    )
    return hmac.new(secret, message, hashlib.sha256).digest()[:COOKIE_LEN]


@attrs.define
class AddressCookies:
    """Stateless per source: a fresh random secret per time window, the current and the previous
    one kept. `now` is any monotonic clock of this node (only this node checks its cookies)."""

    window_s: float = COOKIE_WINDOW_S
    _secrets: dict[int, bytes] = attrs.field(factory=dict)

    def _secret(self, window: int) -> bytes:
        secret = self._secrets.get(window)
        if secret is None:
            secret = os.urandom(32)
            self._secrets[window] = secret
            for old in [w for w in self._secrets if w < window - 1]:
                del self._secrets[old]
        return secret

    def _window(self, now: float) -> int:
        return int(now // self.window_s)

    def issue(self, source: Address, *, now: float) -> bytes:
        window = self._window(now)
        return _mac(self._secret(window), window, source)

    def check(self, cookie: object, source: Address, *, now: float) -> bool:
        """Did *source* echo a cookie we issued to it in this window or the one before?"""
        if not (isinstance(cookie, bytes) and len(cookie) == COOKIE_LEN):
            return False
        window = self._window(now)
        self._secret(window)  # rotates out windows older than the previous one
        for w in (window, window - 1):
            secret = self._secrets.get(w)
            if secret is not None and hmac.compare_digest(cookie, _mac(secret, w, source)):
                return True
        return False


@attrs.define
class CookieJar:
    """The cookie each address gave us, kept `ttl` seconds, at most `capacity` addresses."""

    ttl: float = COOKIE_CLIENT_TTL_S
    capacity: int = MAX_JAR_ENTRIES
    _jar: BoundedLRU[Address, tuple[bytes, float]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._jar = BoundedLRU(self.capacity)

    def get(self, address: Address, *, now: float) -> bytes | None:
        entry = self._jar.get(address)
        if entry is None:
            return None
        cookie, at = entry
        if now - at > self.ttl:
            self._jar.pop(address)
            return None
        return cookie

    def put(self, address: Address, cookie: bytes, *, now: float) -> None:
        self._jar.set(address, (cookie, now))

    def __len__(self) -> int:
        return len(self._jar)


@attrs.define
class CookieStats:
    """What the amplification rule did (tests, tools)."""

    small_answers: int = 0  # answers cut to the unproven budget, a cookie attached
    cookie_retries: int = 0  # our requests sent again with a cookie a peer gave us
    refused_answers: int = 0  # answers with no small form, over the budget, not sent
