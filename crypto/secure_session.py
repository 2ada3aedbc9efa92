"""Identity-bound Noise XX (or XXpsk3) handshake and the encrypted frame stream after it, sans-IO.

Wire format, in order on one byte stream:
  1. three handshake messages, each with a 2-byte big-endian length prefix
     (``encode_handshake_message`` / ``HandshakeReader``), each at most
     MAX_HANDSHAKE_MESSAGE bytes;
  2. frames: 4-byte big-endian ciphertext length, then ChaCha20-Poly1305 ciphertext under the
     Noise transport keys (``FrameChannel``). A frame whose plaintext is empty is the close
     frame: the last frame its sender sends.

Private networks (a 32-byte network key, crypto/network_key.py) use Noise_XXpsk3 with the key
as psk and a prologue that carries a secret derived from it; the public network uses Noise_XX
with the plain prologue. The two never complete a handshake with each other, and a responder
drops an initiator with another network key at message 1 without answering (see
``handshake_prologue`` for why that works).

Noise authenticates X25519 static keys, but a gpunet peer is named by its Ed25519 identity. As in
libp2p's Noise handshake, each side therefore sends, inside the encrypted payload of its static-key
message (message 2 for the responder, 3 for the initiator), its Ed25519 public key and a signature
over its Noise static key. The static keys are fresh per handshake rather than converted from the
identity key, so one key never serves two algorithms and a leaked session key is not the identity.

Local misuse (calling start() on a responder, channel() too early) raises RuntimeError; anything
the peer did raises HandshakeFailed or FrameError, never anything else.
"""

from __future__ import annotations

import os

from crypto.identity import (
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    Identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify_signature,
)
from crypto.network_key import NETWORK_KEY_LEN, handshake_prologue
from crypto.noise import DHLEN, TAGLEN, CipherState, HandshakeState, NoiseError

PROLOGUE = b"gpunet/1 noise"
# Hard maximum plaintext per frame. Big enough for a batch of activations or a chunk of tokens
# in one frame, small enough that a peer cannot make us buffer more than ~1 MiB per connection
# before a frame is authenticated. Frames are deliberately larger than Noise's 65535-byte
# transport messages (our length prefix is 4 bytes, not 2); ChaCha20-Poly1305 IETF is safe for
# messages up to 256 GiB, so only the nonce-per-frame rule of Noise is kept.
MAX_FRAME_PLAINTEXT = 1 << 20
_MAX_FRAME_CIPHERTEXT = MAX_FRAME_PLAINTEXT + TAGLEN
_FRAME_HEADER = 4
_HANDSHAKE_HEADER = 2
# gpunet's handshake messages have fixed sizes: 32 / 48 bytes (message 1, XX / XXpsk3), 192
# (message 2), 160 (message 3). 1 KiB leaves room for a later payload field while keeping what a
# not-yet-authenticated peer can make us buffer tiny (Noise itself allows 65535).
MAX_HANDSHAKE_MESSAGE = 1024
# Noise spec section 11.3 leaves the rekey policy to the application. Both ends apply REKEY to
# a direction's key after every REKEY_INTERVAL_FRAMES frames in that direction (counted by the
# nonce, which keeps running), so they switch keys at the same frame without any message about
# it. Why rekey at all when the nonce cannot run out (2**64): REKEY is one-way, so a key captured
# from memory decrypts no frame sent before its last rekey: at most the last 65536 frames of a
# direction, not the whole session so far. Cost: one extra ChaCha20 block per 65536 frames.
REKEY_INTERVAL_FRAMES = 1 << 16
_STATIC_KEY_DOMAIN = "noise-static"
_IDENTITY_PAYLOAD_LEN = PUBLIC_KEY_LEN + SIGNATURE_LEN


class HandshakeFailed(Exception):
    """The peer sent garbage or is not who it should be; str(e) is one line."""


class FrameError(Exception):
    """A frame was oversize, truncated or failed authentication; the channel is unusable."""


def encode_handshake_message(msg: bytes) -> bytes:
    """Prefix a handshake message with its 2-byte big-endian length."""
    if not 0 < len(msg) <= MAX_HANDSHAKE_MESSAGE:
        raise ValueError(f"handshake message must be 1..{MAX_HANDSHAKE_MESSAGE} bytes")
    return len(msg).to_bytes(_HANDSHAKE_HEADER, "big") + msg


class HandshakeReader:
    """Splits a byte stream into length-prefixed handshake messages.

    A length of 0 or over MAX_HANDSHAKE_MESSAGE is refused as soon as its 2 bytes are here,
    before anything else is buffered for it. Bytes after the last handshake message belong to
    the frame stream (a peer may send its first frame in the same packet as message 3): hand
    them on with take_remaining().
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_message(self) -> bytes | None:
        if len(self._buffer) < _HANDSHAKE_HEADER:
            return None
        length = int.from_bytes(self._buffer[:_HANDSHAKE_HEADER], "big")
        if length == 0:
            raise HandshakeFailed("peer sent an empty handshake message")
        if length > MAX_HANDSHAKE_MESSAGE:
            raise HandshakeFailed(
                f"peer announced a handshake message of {length} bytes "
                f"(max {MAX_HANDSHAKE_MESSAGE})"
            )
        end = _HANDSHAKE_HEADER + length
        if len(self._buffer) < end:
            return None
        message = bytes(self._buffer[_HANDSHAKE_HEADER:end])
        del self._buffer[:end]
        return message

    def take_remaining(self) -> bytes:
        """Return and forget everything buffered but not returned as a message."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


class FrameChannel:
    """Encrypted frames after the handshake.

    Wire frame: 4-byte big-endian ciphertext length, then the ChaChaPoly ciphertext (Noise
    transport CipherState, counter nonce, empty associated data). Every header is checked as soon
    as its 4 bytes arrive, so a length over MAX_FRAME_PLAINTEXT+16 is refused before any of its
    body is buffered. After a FrameError the receiving side stays broken: the stream is out of
    sync and nothing after it can be trusted.

    Close: a frame with an empty plaintext (``encrypt_close``) says "nothing more from me". It is
    authenticated like any frame, so a receiver can tell a finished stream (``peer_closed``) from
    one cut short by an attacker or a crash (the byte stream ends without it): only the first is
    a clean end. Anything after the close frame is an error.

    Rekey: see REKEY_INTERVAL_FRAMES; both ends must use the same interval (it is part of the
    protocol, configurable only so that tests can reach it).
    """

    def __init__(
        self,
        send: CipherState,
        receive: CipherState,
        *,
        rekey_interval: int = REKEY_INTERVAL_FRAMES,
    ) -> None:
        if rekey_interval < 1:
            raise ValueError("rekey_interval must be at least 1")
        self._send = send
        self._receive = receive
        self._rekey_interval = rekey_interval
        self._buffer = bytearray()
        self._unchecked = 0  # offset in _buffer of the first frame header not yet checked
        self._error: str | None = None
        self._sent_close = False
        self.peer_closed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def missing(self) -> int:
        """Bytes still to come of the frame whose header has arrived (0 between frames): the
        I/O loop may read that much at once. Bounded by the header check, so by
        MAX_FRAME_PLAINTEXT + 20, whatever the peer announced."""
        return max(0, self._unchecked - len(self._buffer))

    @property
    def frames_sent(self) -> int:
        return self._send.nonce

    @property
    def frames_received(self) -> int:
        return self._receive.nonce

    def _seal(self, plaintext: bytes) -> bytearray:
        if self._sent_close:
            raise RuntimeError("frame after the close frame")
        if not self._send.has_key():  # a key-less stand-in (tools/_bench_crypto_frames.py)
            body = self._send.encrypt_with_ad(b"", plaintext)
            return bytearray(len(body).to_bytes(_FRAME_HEADER, "big") + body)
        length = len(plaintext) + TAGLEN
        # Header and ciphertext in one buffer, the cipher writing in place: joining them after
        # cost a copy of every frame (a 512 KiB model chunk's too).
        frame = bytearray(_FRAME_HEADER + length)
        frame[:_FRAME_HEADER] = length.to_bytes(_FRAME_HEADER, "big")
        try:
            with memoryview(frame) as view:
                self._send.encrypt_into_with_ad(b"", plaintext, view[_FRAME_HEADER:])
        except NoiseError as exc:
            raise FrameError(str(exc)) from exc
        if self._send.nonce % self._rekey_interval == 0:
            self._send.rekey()
        return frame

    def encrypt(self, plaintext: bytes) -> bytearray:
        """One data frame; the plaintext must be 1..MAX_FRAME_PLAINTEXT bytes."""
        if len(plaintext) > MAX_FRAME_PLAINTEXT:
            raise FrameError(f"frame of {len(plaintext)} bytes is over {MAX_FRAME_PLAINTEXT}")
        if not plaintext:
            raise FrameError("an empty frame is the close frame; use encrypt_close()")
        return self._seal(plaintext)

    def encrypt_close(self) -> bytearray:
        """The close frame; no frame may be encrypted after it."""
        frame = self._seal(b"")
        self._sent_close = True
        return frame

    def _fail(self, message: str) -> FrameError:
        self._error = message
        return FrameError(message)

    def receive_data(self, data: bytes) -> None:
        if self._error is not None:
            raise FrameError(self._error)
        if self.peer_closed and data:
            raise self._fail("peer sent data after its close frame")
        self._buffer += data
        while self._unchecked + _FRAME_HEADER <= len(self._buffer):
            start = self._unchecked
            length = int.from_bytes(self._buffer[start : start + _FRAME_HEADER], "big")
            if length > _MAX_FRAME_CIPHERTEXT:
                raise self._fail(
                    f"peer announced a frame of {length} bytes (max {_MAX_FRAME_CIPHERTEXT})"
                )
            if length < TAGLEN:
                raise self._fail(f"peer announced a frame of {length} bytes, shorter than a tag")
            self._unchecked = start + _FRAME_HEADER + length

    def next_frame(self) -> bytes | None:
        """The next data frame's plaintext, or None: either more bytes are needed, or the peer's
        close frame has arrived (then ``peer_closed`` is True)."""
        if self._error is not None:
            raise FrameError(self._error)
        if self.peer_closed or len(self._buffer) < _FRAME_HEADER:
            return None
        length = int.from_bytes(self._buffer[:_FRAME_HEADER], "big")
        end = _FRAME_HEADER + length
        if len(self._buffer) < end:
            return None
        # Decrypted from a view of the buffer: a copy of the ciphertext cost as much as a
        # quarter of the decryption. The view is let go before the buffer shrinks.
        with memoryview(self._buffer) as view, view[_FRAME_HEADER:end] as body:
            # a key-less stand-in (tools/_bench_crypto_frames.py) may hand the view back
            ciphertext = body if self._receive.has_key() else bytes(body)
            try:
                plaintext = self._receive.decrypt_with_ad(b"", ciphertext)
            except NoiseError as exc:
                raise self._fail(f"frame failed authentication: {exc}") from exc
        del self._buffer[:end]
        self._unchecked -= end
        if self._receive.nonce % self._rekey_interval == 0:
            self._receive.rekey()
        if plaintext:
            return plaintext
        self.peer_closed = True
        if self._buffer:
            raise self._fail("peer sent data after its close frame")
        return None


class SecureHandshake:
    """XX with identity binding like libp2p: the payload of message 2 (responder) and message 3
    (initiator) carries the Ed25519 identity public key (32 B) + Ed25519 signature (domain
    "noise-static") over the sender's Noise static public key. Message 1 carries no payload.

    Static X25519 keys are fresh per SecureHandshake (not derived from the identity).

    With *psk* (a private network's 32-byte key) the handshake is XXpsk3 with a secret prologue
    (crypto/network_key.py): a responder fails an initiator with another key on message 1, before
    it has sent anything, and the caller just closes the connection, so the peer learns nothing
    about why. psk=None is the public network, byte for byte what it was before psk existed.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        expected_peer_id: str | None = None,
        psk: bytes | None = None,
        prologue: bytes = PROLOGUE,
        rekey_interval: int = REKEY_INTERVAL_FRAMES,
    ) -> None:
        # Parsed now: a bad peer id is a ValueError here rather than a puzzle later, and the
        # check in the handshake compares 32 bytes instead of encoding base32.
        self._expected_public_key = (
            None if expected_peer_id is None else public_key_from_peer_id(expected_peer_id)
        )
        if psk is not None and (not isinstance(psk, bytes) or len(psk) != NETWORK_KEY_LEN):
            raise ValueError(f"a network key (psk) is {NETWORK_KEY_LEN} bytes")
        if rekey_interval < 1:
            raise ValueError("rekey_interval must be at least 1")
        self._identity = identity
        self._initiator = initiator
        self._expected_peer_id = expected_peer_id
        self._rekey_interval = rekey_interval
        self.private = psk is not None
        self._noise = HandshakeState(
            initiator=initiator,
            static_private=os.urandom(DHLEN),
            prologue=handshake_prologue(prologue, psk),
            psk=psk,
        )
        self._static_public = self._noise.static_public
        self._started = False
        self._remote_public_key: bytes | None = None
        self._remote_peer_id: str | None = None
        self._channel: FrameChannel | None = None
        self._error: str | None = None

    @property
    def complete(self) -> bool:
        return self._channel is not None

    @property
    def remote_public_key(self) -> bytes | None:
        return self._remote_public_key

    @property
    def remote_peer_id(self) -> str | None:
        return self._remote_peer_id

    def start(self) -> bytes:
        """Initiator only: the first wire message (without length prefix)."""
        if not self._initiator:
            raise RuntimeError("start() is for the initiator; a responder only receives")
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        return self._noise.write_message(b"")

    def _identity_payload(self) -> bytes:
        signature = self._identity.sign(_STATIC_KEY_DOMAIN, self._static_public)
        return self._identity.public_key + signature

    def _check_identity_payload(self, payload: bytes) -> None:
        role = "responder" if self._initiator else "initiator"
        if len(payload) != _IDENTITY_PAYLOAD_LEN:
            raise HandshakeFailed(f"{role} sent an identity payload of {len(payload)} bytes")
        public_key, signature = payload[:PUBLIC_KEY_LEN], payload[PUBLIC_KEY_LEN:]
        remote_static = self._noise.remote_static
        if remote_static is None or not verify_signature(
            public_key, _STATIC_KEY_DOMAIN, remote_static, signature
        ):
            raise HandshakeFailed(f"{role}'s identity signature over its Noise key is invalid")
        if self._expected_public_key is not None and public_key != self._expected_public_key:
            raise HandshakeFailed(
                f"{role} is {peer_id_from_public_key(public_key)}, "
                f"expected {self._expected_peer_id}"
            )
        self._remote_public_key = public_key
        self._remote_peer_id = peer_id_from_public_key(public_key)

    def receive(self, message: bytes) -> bytes | None:
        """Feed one handshake message (without length prefix); returns the reply, if any."""
        if self._initiator and not self._started:
            raise RuntimeError("initiator must call start() before receive()")
        if self._error is not None:
            raise HandshakeFailed(self._error)
        if self.complete:
            raise self._fail("peer sent a handshake message after the handshake completed")
        try:
            payload = self._noise.read_message(message)
            if self._initiator:  # message 2 read: check the responder, answer with message 3
                self._check_identity_payload(payload)
                reply: bytes | None = self._noise.write_message(self._identity_payload())
            elif self._noise.complete:  # message 3 read
                self._check_identity_payload(payload)
                reply = None
            else:  # message 1 read; writing message 2 does DH with the peer's ephemeral key
                if payload:
                    raise HandshakeFailed("initiator sent a payload in message 1")
                reply = self._noise.write_message(self._identity_payload())
        except NoiseError as exc:
            raise self._fail(f"handshake failed: {exc}") from exc
        except HandshakeFailed as exc:
            self._remote_public_key = self._remote_peer_id = None
            raise self._fail(str(exc)) from None
        if self._noise.complete:
            send, receive = self._noise.split()
            self._channel = FrameChannel(send, receive, rekey_interval=self._rekey_interval)
        return reply

    def _fail(self, message: str) -> HandshakeFailed:
        self._error = message
        return HandshakeFailed(message)

    def channel(self) -> FrameChannel:
        """The frame channel; the same object on every call, so nonces are never reused."""
        if self._channel is None:
            raise RuntimeError("channel() before the handshake is complete")
        return self._channel
