"""Noise_XX_25519_ChaChaPoly_BLAKE2b (Noise spec revision 34) as a sans-IO state machine.

Why our own: the Noise libraries on the registry have had no commits since 2020-2021, and the
protocol is small enough to check line by line against the spec and the cacophony test vectors
(tests/crypto/test_noise_vectors.py). Nothing here touches a socket: bytes in, bytes out.

The handshake is driven by a table of message patterns (``_PATTERNS``) processed token by token.
Two protocols are in the table: ``XX`` (the public network) and ``XXpsk3`` (private networks, spec
section 9): the same messages plus a "psk" token at the end of message 3, and the psk-mode rule
that every "e" token also calls MixKey(e.public_key). Both are checked against the vectors.

Primitives: X25519 from libsodium through PyNaCl; ChaCha20-Poly1305 (IETF, RFC 8439) from
`cryptography`; BLAKE2b from hashlib. Noise's HMAC is plain HMAC over BLAKE2b, not keyed BLAKE2b.
Why the AEAD is not PyNaCl's as well: the output is byte-identical (the vectors, and a test
against libsodium's own call, say so), but PyNaCl's cffi binding costs ~7.5 µs per call on a
64-byte token frame against ~1.9 µs for `cryptography`'s, and ~90 µs against ~28 µs on 64 KiB
(measured on the 2-core dev machine, docs/benchmarks.md). Every transport frame pays it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl import bindings

DHLEN = 32
HASHLEN = 64  # BLAKE2b
KEYLEN = 32
TAGLEN = 16
# Noise spec section 3: every Noise message, handshake or transport, is at most 65535 bytes.
MAX_MESSAGE_LEN = 65535
# Nonce 2**64-1 is reserved by the spec (section 5.1) and used only by REKEY.
_MAX_NONCE = 2**64 - 1

PSKLEN = 32  # spec section 9.2: a psk is exactly 32 bytes

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROTOCOL_NAME_PSK = b"Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"

# Pre-messages are empty for XX. Each inner tuple is one message; even indexes are written by the
# initiator.
_PATTERNS: dict[bytes, tuple[tuple[str, ...], ...]] = {
    PROTOCOL_NAME: (("e",), ("e", "ee", "s", "es"), ("s", "se")),
    PROTOCOL_NAME_PSK: (("e",), ("e", "ee", "s", "es"), ("s", "se", "psk")),
}


class NoiseError(Exception):
    """Any Noise failure: bad length, authentication failure, wrong state or turn."""


def x25519_public(private: bytes) -> bytes:
    """X25519 public key for a 32-byte private key (libsodium clamps the scalar itself)."""
    if not isinstance(private, bytes) or len(private) != DHLEN:
        raise NoiseError(f"X25519 private key must be {DHLEN} bytes")
    public: bytes = bindings.crypto_scalarmult_base(private)
    return public


def x25519_keypair() -> tuple[bytes, bytes]:
    """Fresh random X25519 key pair as (private, public)."""
    private = os.urandom(DHLEN)
    return private, x25519_public(private)


def _dh(private: bytes, public: bytes) -> bytes:
    # PyNaCl passes buffers straight to C without checking their lengths, so check here.
    if len(private) != DHLEN or len(public) != DHLEN:
        raise NoiseError(f"X25519 keys must be {DHLEN} bytes")
    try:
        shared: bytes = bindings.crypto_scalarmult(private, public)
    except RuntimeError as exc:  # libsodium refuses an all-zero result (low-order point)
        raise NoiseError("X25519 result is all zeros (low-order public key)") from exc
    if shared == bytes(DHLEN):
        raise NoiseError("X25519 result is all zeros (low-order public key)")
    return shared


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.blake2b)


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF as defined in Noise spec section 4.3 (2 or 3 outputs of HASHLEN bytes)."""
    temp_key = _hmac(chaining_key, ikm)
    out: list[bytes] = []
    previous = b""
    for i in range(1, outputs + 1):
        previous = _hmac(temp_key, previous + bytes([i]))
        out.append(previous)
    return tuple(out)


def _nonce(n: int) -> bytes:
    return bytes(4) + n.to_bytes(8, "little")


class CipherState:
    """A key and a counter nonce (spec section 5.1).

    Without a key, encryption is the identity function, as the spec requires during the first
    handshake messages. Sizes are not limited here: the 65535-byte Noise limit is enforced by
    HandshakeState, and secure_session's frames choose their own limit.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and (not isinstance(key, bytes) or len(key) != KEYLEN):
            raise NoiseError(f"cipher key must be {KEYLEN} bytes")
        self._aead = None if key is None else ChaCha20Poly1305(key)
        self.nonce = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.nonce >= _MAX_NONCE:
            raise NoiseError("nonce exhausted; the session must be re-established")
        ciphertext = self._aead.encrypt(_nonce(self.nonce), plaintext, ad)
        self.nonce += 1
        return ciphertext

    def encrypt_into_with_ad(self, ad: bytes, plaintext: bytes, out: memoryview) -> int:
        """`encrypt_with_ad` written into *out* (len(plaintext) + TAGLEN bytes, keyed only),
        for a caller that frames the ciphertext without copying it again."""
        if self._aead is None:
            raise NoiseError("encrypt_into needs a key")
        if self.nonce >= _MAX_NONCE:
            raise NoiseError("nonce exhausted; the session must be re-established")
        written = self._aead.encrypt_into(_nonce(self.nonce), plaintext, ad, out)
        self.nonce += 1
        return int(written)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        """Decrypt and advance the nonce; on failure raise NoiseError and leave the nonce.
        *ciphertext* may be a view (the frame channel's buffer), decrypted without a copy."""
        if self._aead is None:
            return bytes(ciphertext)
        if self.nonce >= _MAX_NONCE:
            raise NoiseError("nonce exhausted; the session must be re-established")
        if len(ciphertext) < TAGLEN:
            raise NoiseError("ciphertext shorter than the authentication tag")
        try:
            plaintext = self._aead.decrypt(_nonce(self.nonce), ciphertext, ad)
        except InvalidTag as exc:
            raise NoiseError("authentication failed") from exc
        self.nonce += 1
        return plaintext

    def rekey(self) -> None:
        """REKEY(k) = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]; the nonce is left alone."""
        if self._aead is None:
            raise NoiseError("cannot rekey a cipher without a key")
        encrypted = self._aead.encrypt(_nonce(_MAX_NONCE), bytes(KEYLEN), b"")
        self._aead = ChaCha20Poly1305(encrypted[:KEYLEN])


class _SymmetricState:
    """ck, h and a CipherState (spec section 5.2)."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        """Spec section 5.2; used only for the "psk" token."""
        self.ck, temp_h, temp_k = _hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = _hkdf(self.ck, b"", 2)
        return CipherState(temp_k1[:KEYLEN]), CipherState(temp_k2[:KEYLEN])


class HandshakeState:
    """One side of a Noise XX handshake (spec section 5.3), or XXpsk3 when a psk is given.

    Any error is fatal: once write_message or read_message has raised, the symmetric state may be
    half-updated, so every later call raises NoiseError too. A handshake is cheap to restart and a
    half-failed one must never be resumed.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        prologue: bytes = b"",
        ephemeral_private: bytes | None = None,
        psk: bytes | None = None,
    ) -> None:
        if psk is not None and (not isinstance(psk, bytes) or len(psk) != PSKLEN):
            raise NoiseError(f"psk must be {PSKLEN} bytes")
        protocol_name = PROTOCOL_NAME if psk is None else PROTOCOL_NAME_PSK
        self._initiator = initiator
        self._psk = psk
        self._pattern = _PATTERNS[protocol_name]
        self._s = static_private
        self._s_public = x25519_public(static_private)
        # The override exists only so that test vectors can be reproduced.
        self._e_override = ephemeral_private
        if ephemeral_private is not None:
            x25519_public(ephemeral_private)  # validates the length
        self._e: bytes | None = None
        self._e_public: bytes | None = None
        self._rs: bytes | None = None
        self._re: bytes | None = None
        self._ss = _SymmetricState(protocol_name)
        self._ss.mix_hash(prologue)
        self._index = 0  # next message in self._pattern
        self._failed = False

    @property
    def complete(self) -> bool:
        return self._index == len(self._pattern) and not self._failed

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    @property
    def static_public(self) -> bytes:
        return self._s_public

    def _check_turn(self, writing: bool) -> tuple[str, ...]:
        if self._failed:
            raise NoiseError("handshake already failed")
        if self._index >= len(self._pattern):
            raise NoiseError("handshake already complete")
        initiator_turn = self._index % 2 == 0
        if initiator_turn != (self._initiator == writing):
            raise NoiseError("not this side's turn to " + ("write" if writing else "read"))
        return self._pattern[self._index]

    def _dh_token(self, token: str) -> bytes:
        # Token letters name (initiator key, responder key); map them to (local, remote).
        first, second = token[0], token[1]
        local, remote = (first, second) if self._initiator else (second, first)
        local_private = self._e if local == "e" else self._s
        remote_public = self._re if remote == "e" else self._rs
        if local_private is None or remote_public is None:
            raise NoiseError(f"missing key for token {token!r}")
        return _dh(local_private, remote_public)

    def _mix_psk(self) -> None:
        if self._psk is None:  # cannot happen: the pattern has "psk" only when a psk was given
            raise NoiseError("psk token without a psk")
        self._ss.mix_key_and_hash(self._psk)

    def write_message(self, payload: bytes = b"") -> bytes:
        tokens = self._check_turn(writing=True)
        try:
            out = bytearray()
            for token in tokens:
                if token == "e":
                    if self._e_override is not None:
                        self._e, self._e_override = self._e_override, None
                        self._e_public = x25519_public(self._e)
                    else:
                        self._e, self._e_public = x25519_keypair()
                    out += self._e_public
                    self._ss.mix_hash(self._e_public)
                    if self._psk is not None:  # spec section 9.2
                        self._ss.mix_key(self._e_public)
                elif token == "s":
                    out += self._ss.encrypt_and_hash(self._s_public)
                elif token == "psk":
                    self._mix_psk()
                else:
                    self._ss.mix_key(self._dh_token(token))
            out += self._ss.encrypt_and_hash(payload)
            if len(out) > MAX_MESSAGE_LEN:
                raise NoiseError(f"handshake message over {MAX_MESSAGE_LEN} bytes")
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        if self._index == len(self._pattern):
            self._e = None  # the ephemeral private key is not needed any more
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        tokens = self._check_turn(writing=False)
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise NoiseError(f"handshake message over {MAX_MESSAGE_LEN} bytes")
            rest = memoryview(message)
            for token in tokens:
                if token == "e":
                    if len(rest) < DHLEN:
                        raise NoiseError("handshake message truncated")
                    self._re, rest = bytes(rest[:DHLEN]), rest[DHLEN:]
                    self._ss.mix_hash(self._re)
                    if self._psk is not None:  # spec section 9.2
                        self._ss.mix_key(self._re)
                elif token == "s":
                    size = DHLEN + (TAGLEN if self._ss.cipher.has_key() else 0)
                    if len(rest) < size:
                        raise NoiseError("handshake message truncated")
                    self._rs = self._ss.decrypt_and_hash(bytes(rest[:size]))
                    rest = rest[size:]
                elif token == "psk":
                    self._mix_psk()
                else:
                    self._ss.mix_key(self._dh_token(token))
            payload = self._ss.decrypt_and_hash(bytes(rest))
        except NoiseError:
            self._failed = True
            raise
        except Exception as exc:  # never let a peer's bytes surface as anything but NoiseError
            self._failed = True
            raise NoiseError(f"malformed handshake message: {exc}") from exc
        self._index += 1
        if self._index == len(self._pattern):
            self._e = None  # the ephemeral private key is not needed any more
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states from this side's point of view."""
        if not self.complete:
            raise NoiseError("split() before the handshake is complete")
        c1, c2 = self._ss.split()
        return (c1, c2) if self._initiator else (c2, c1)
