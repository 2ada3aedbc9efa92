"""Noise XX and XXpsk3 against the cacophony vectors, plus spec rules the vectors don't exercise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings

from crypto.noise import (
    MAX_MESSAGE_LEN,
    CipherState,
    HandshakeState,
    NoiseError,
    x25519_keypair,
    x25519_public,
)

# Public-domain vectors from the cacophony project (source and commit named inside the file),
# kept beside the tests so they run wherever the repository is cloned.
VECTORS = Path(__file__).resolve().parent / "vectors" / "noise_xx_cacophony.json"
PROTOCOLS = ("Noise_XX_25519_ChaChaPoly_BLAKE2b", "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b")
HANDSHAKE_MESSAGES = 3


def _vectors(protocol: str | None = None) -> list[dict[str, Any]]:
    data = json.loads(VECTORS.read_text())
    wanted = PROTOCOLS if protocol is None else (protocol,)
    return [v for v in data["vectors"] if v["protocol_name"] in wanted]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_vectors_are_present(protocol: str) -> None:
    assert _vectors(protocol), f"no {protocol} vector in {VECTORS}"


def _psk(vector: dict[str, Any], side: str) -> bytes | None:
    psks = vector.get(f"{side}_psks", [])
    assert len(psks) <= 1, "XXpsk3 uses one psk"
    return bytes.fromhex(psks[0]) if psks else None


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: str(v["protocol_name"]))
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    h = bytes.fromhex
    assert ("psk" in vector["protocol_name"]) == (_psk(vector, "init") is not None)
    initiator = HandshakeState(
        initiator=True,
        static_private=h(vector["init_static"]),
        prologue=h(vector["init_prologue"]),
        ephemeral_private=h(vector["init_ephemeral"]),
        psk=_psk(vector, "init"),
    )
    responder = HandshakeState(
        initiator=False,
        static_private=h(vector["resp_static"]),
        prologue=h(vector["resp_prologue"]),
        ephemeral_private=h(vector["resp_ephemeral"]),
        psk=_psk(vector, "resp"),
    )
    messages = vector["messages"]
    assert len(messages) > HANDSHAKE_MESSAGES
    sides = (initiator, responder)
    for i, msg in enumerate(messages[:HANDSHAKE_MESSAGES]):
        writer, reader = sides[i % 2], sides[1 - i % 2]
        ciphertext = writer.write_message(h(msg["payload"]))
        assert ciphertext.hex() == msg["ciphertext"], f"handshake message {i}"
        assert reader.read_message(ciphertext) == h(msg["payload"])
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]
    assert initiator.remote_static == x25519_public(h(vector["resp_static"]))
    assert responder.remote_static == x25519_public(h(vector["init_static"]))

    # Transport messages keep alternating initiator/responder.
    ciphers = (initiator.split(), responder.split())
    for i, msg in enumerate(messages[HANDSHAKE_MESSAGES:], start=HANDSHAKE_MESSAGES):
        send, _ = ciphers[i % 2]
        _, receive = ciphers[1 - i % 2]
        ciphertext = send.encrypt_with_ad(b"", h(msg["payload"]))
        assert ciphertext.hex() == msg["ciphertext"], f"transport message {i}"
        assert receive.decrypt_with_ad(b"", ciphertext) == h(msg["payload"])


def _pair() -> tuple[HandshakeState, HandshakeState]:
    return (
        HandshakeState(initiator=True, static_private=x25519_keypair()[0], prologue=b"p"),
        HandshakeState(initiator=False, static_private=x25519_keypair()[0], prologue=b"p"),
    )


def test_psk_mismatch_fails_at_message_3() -> None:
    """Without the secret prologue of secure_session, the Noise psk token alone is what catches a
    wrong psk: message 3's payload fails to decrypt at the responder."""
    initiator = HandshakeState(
        initiator=True, static_private=x25519_keypair()[0], psk=bytes([1]) * 32
    )
    responder = HandshakeState(
        initiator=False, static_private=x25519_keypair()[0], psk=bytes([2]) * 32
    )
    assert responder.read_message(initiator.write_message()) == b""
    assert initiator.read_message(responder.write_message()) == b""
    with pytest.raises(NoiseError, match="authentication"):
        responder.read_message(initiator.write_message(b"payload"))


@pytest.mark.parametrize(("initiator_psk", "responder_psk"), [(None, bytes(32)), (bytes(32), None)])
def test_psk_and_plain_do_not_mix(initiator_psk: bytes | None, responder_psk: bytes | None) -> None:
    """XX and XXpsk3 differ from message 1 on (XXpsk3 encrypts message 1's empty payload: a
    16-byte tag), so the two never complete a handshake with each other."""
    initiator = HandshakeState(
        initiator=True, static_private=x25519_keypair()[0], psk=initiator_psk
    )
    responder = HandshakeState(
        initiator=False, static_private=x25519_keypair()[0], psk=responder_psk
    )
    message1 = initiator.write_message()
    assert len(message1) == (48 if initiator_psk else 32)
    try:
        payload = responder.read_message(message1)
    except NoiseError:
        return
    assert payload  # the plain responder reads the tag as a (forbidden) message-1 payload


def test_bad_psk_length() -> None:
    with pytest.raises(NoiseError, match="psk"):
        HandshakeState(initiator=True, static_private=bytes(32), psk=bytes(31))


def test_wrong_turn_is_refused() -> None:
    initiator, responder = _pair()
    with pytest.raises(NoiseError):
        responder.write_message()
    with pytest.raises(NoiseError):
        initiator.read_message(bytes(32))
    with pytest.raises(NoiseError):
        initiator.split()


def test_prologue_mismatch_fails() -> None:
    initiator = HandshakeState(initiator=True, static_private=x25519_keypair()[0], prologue=b"a")
    responder = HandshakeState(initiator=False, static_private=x25519_keypair()[0], prologue=b"b")
    responder.read_message(initiator.write_message())
    with pytest.raises(NoiseError):
        initiator.read_message(responder.write_message())


def test_failure_is_sticky_and_messages_are_bounded() -> None:
    initiator, responder = _pair()
    with pytest.raises(NoiseError):
        responder.read_message(bytes(MAX_MESSAGE_LEN + 1))
    with pytest.raises(NoiseError, match="already failed"):
        responder.read_message(initiator.write_message())
    _, responder = _pair()
    with pytest.raises(NoiseError, match="truncated"):
        responder.read_message(bytes(31))
    initiator, _ = _pair()
    with pytest.raises(NoiseError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN))


def test_all_zero_dh_is_refused() -> None:
    initiator, responder = _pair()
    responder.read_message(initiator.write_message())
    message2 = bytearray(responder.write_message())
    message2[:32] = bytes(32)  # a low-order ephemeral key makes ee all zeros
    with pytest.raises(NoiseError, match="all zeros"):
        initiator.read_message(bytes(message2))


def test_cipher_state_rules() -> None:
    assert CipherState().encrypt_with_ad(b"ad", b"clear") == b"clear"
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    ciphertext = sender.encrypt_with_ad(b"ad", b"hello")
    tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"ad", tampered)
    assert receiver.nonce == 0  # not advanced on failure
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"other ad", ciphertext)
    assert receiver.decrypt_with_ad(b"ad", ciphertext) == b"hello"
    assert receiver.nonce == sender.nonce == 1
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"", b"short")

    sender.nonce = 2**64 - 1  # reserved for rekey
    with pytest.raises(NoiseError):
        sender.encrypt_with_ad(b"", b"")


def test_rekey_matches_spec_formula() -> None:
    key = bytes(range(32))
    expected = bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(32), b"", bytes(4) + (2**64 - 1).to_bytes(8, "little"), key
    )[:32]
    cipher = CipherState(key)
    cipher.encrypt_with_ad(b"", b"x")
    cipher.rekey()
    assert cipher.nonce == 1  # rekey leaves the nonce alone
    assert cipher.encrypt_with_ad(b"", b"y") == bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        b"y", b"", bytes(4) + (1).to_bytes(8, "little"), expected
    )
    with pytest.raises(NoiseError):
        CipherState().rekey()


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    ad=st.binary(max_size=80),
    plaintext=st.binary(max_size=300),
    nonce=st.integers(0, 2**64 - 2),
)
def test_cipher_state_matches_libsodium(
    key: bytes, ad: bytes, plaintext: bytes, nonce: int
) -> None:
    """The transport AEAD comes from `cryptography`; libsodium must produce the same bytes."""
    cipher = CipherState(key)
    cipher.nonce = nonce
    expected = bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        plaintext, ad, bytes(4) + nonce.to_bytes(8, "little"), key
    )
    assert cipher.encrypt_with_ad(ad, plaintext) == expected


def test_bad_key_lengths() -> None:
    with pytest.raises(NoiseError):
        x25519_public(bytes(31))
    with pytest.raises(NoiseError):
        CipherState(bytes(16))
    with pytest.raises(NoiseError):
        HandshakeState(initiator=True, static_private=bytes(5))
