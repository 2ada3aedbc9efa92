"""Identity-bound handshake and encrypted frames, driven by plain function calls.

The adversarial properties of issue 3 live here, sans-IO: an attacker who controls the bytes
between the two sides (flips, truncates, drops, duplicates, reorders, replays from another
session) gets an authentication failure, never a plaintext that was not sent, and never an
exception other than HandshakeFailed / FrameError.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.identity import Identity
from crypto.network_key import network_id
from crypto.secure_session import (
    MAX_FRAME_PLAINTEXT,
    MAX_HANDSHAKE_MESSAGE,
    FrameChannel,
    FrameError,
    HandshakeFailed,
    HandshakeReader,
    SecureHandshake,
    encode_handshake_message,
)

ALICE = Identity.from_seed(bytes([1]) * 32)
BOB = Identity.from_seed(bytes([2]) * 32)
MALLORY = Identity.from_seed(bytes([3]) * 32)
NETWORK_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PSKS = [None, NETWORK_KEY]
PSK_IDS = ["public", "private"]


def _pair(
    psk: bytes | None = None, *, responder_psk: bytes | None = None, rekey: int | None = None
) -> tuple[SecureHandshake, SecureHandshake]:
    extra = {} if rekey is None else {"rekey_interval": rekey}
    initiator = SecureHandshake(
        ALICE, initiator=True, expected_peer_id=BOB.peer_id, psk=psk, **extra
    )
    responder = SecureHandshake(
        BOB, initiator=False, psk=psk if responder_psk is None else responder_psk, **extra
    )
    return initiator, responder


def _handshake(
    initiator: SecureHandshake, responder: SecureHandshake
) -> tuple[bytes, bytes, bytes]:
    message1 = initiator.start()
    message2 = responder.receive(message1)
    assert message2 is not None
    message3 = initiator.receive(message2)
    assert message3 is not None and initiator.complete and not responder.complete
    assert responder.receive(message3) is None
    return message1, message2, message3


def _channels(
    psk: bytes | None = None, rekey: int | None = None
) -> tuple[FrameChannel, FrameChannel]:
    initiator, responder = _pair(psk, rekey=rekey)
    _handshake(initiator, responder)
    return initiator.channel(), responder.channel()


@pytest.mark.parametrize("psk", PSKS, ids=PSK_IDS)
def test_handshake_round_trip(psk: bytes | None) -> None:
    initiator, responder = _pair(psk)
    assert initiator.remote_peer_id is None and responder.remote_public_key is None
    message1, message2, message3 = _handshake(initiator, responder)
    # Fixed sizes (MAX_HANDSHAKE_MESSAGE's comment relies on them).
    assert [len(m) for m in (message1, message2, message3)] == [48 if psk else 32, 192, 160]
    assert initiator.complete and responder.complete
    assert initiator.private == responder.private == (psk is not None)
    assert initiator.remote_peer_id == BOB.peer_id
    assert responder.remote_peer_id == ALICE.peer_id
    assert responder.remote_public_key == ALICE.public_key
    assert initiator.channel() is initiator.channel()  # one channel: nonces never reused
    a, b = initiator.channel(), responder.channel()
    b.receive_data(a.encrypt(b"ping"))
    assert b.next_frame() == b"ping"
    a.receive_data(b.encrypt(b"pong"))
    assert a.next_frame() == b"pong"


def test_handshake_over_byte_stream_with_frame_in_same_packet() -> None:
    """Drive both sides through HandshakeReader, one byte at a time, the way a socket loop
    would; the initiator's first frame rides in the same packet as message 3."""
    initiator = SecureHandshake(ALICE, initiator=True)
    responder = SecureHandshake(BOB, initiator=False)
    readers = {id(initiator): HandshakeReader(), id(responder): HandshakeReader()}

    def deliver(wire: bytes, to: SecureHandshake) -> bytes | None:
        reader = readers[id(to)]
        for byte in wire:
            reader.feed(bytes([byte]))
            message = reader.next_message()
            if message is not None:
                assert reader.next_message() is None
                return to.receive(message)
        raise AssertionError("message never completed")

    message2 = deliver(encode_handshake_message(initiator.start()), responder)
    assert message2 is not None
    message3 = deliver(encode_handshake_message(message2), initiator)
    assert message3 is not None
    first_frame = initiator.channel().encrypt(b"hello")
    readers[id(responder)].feed(encode_handshake_message(message3) + first_frame)
    message = readers[id(responder)].next_message()
    assert message is not None and responder.receive(message) is None
    channel = responder.channel()
    channel.receive_data(readers[id(responder)].take_remaining())
    assert channel.next_frame() == b"hello"


def test_handshake_reader_refuses_bad_lengths_on_the_header() -> None:
    reader = HandshakeReader()
    reader.feed(b"\x00\x00")
    with pytest.raises(HandshakeFailed):
        reader.next_message()
    reader = HandshakeReader()
    reader.feed((MAX_HANDSHAKE_MESSAGE + 1).to_bytes(2, "big"))  # nothing of the body yet
    with pytest.raises(HandshakeFailed, match="handshake message of"):
        reader.next_message()
    with pytest.raises(ValueError):
        encode_handshake_message(b"")
    with pytest.raises(ValueError):
        encode_handshake_message(bytes(MAX_HANDSHAKE_MESSAGE + 1))


def test_wrong_expected_peer_refused() -> None:
    initiator = SecureHandshake(ALICE, initiator=True, expected_peer_id=ALICE.peer_id)
    responder = SecureHandshake(BOB, initiator=False)
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    with pytest.raises(HandshakeFailed) as info:
        initiator.receive(message2)
    assert str(info.value) == f"responder is {BOB.peer_id}, expected {ALICE.peer_id}"
    assert not initiator.complete and initiator.remote_peer_id is None
    with pytest.raises(HandshakeFailed):  # stays failed
        initiator.receive(message2)


@pytest.mark.parametrize("psk", PSKS, ids=PSK_IDS)
def test_impostor_responder_refused(psk: bytes | None) -> None:
    """Mallory (who may even hold the network key) answers a connection meant for Bob."""
    initiator = SecureHandshake(ALICE, initiator=True, expected_peer_id=BOB.peer_id, psk=psk)
    impostor = SecureHandshake(MALLORY, initiator=False, psk=psk)
    message2 = impostor.receive(initiator.start())
    assert message2 is not None
    with pytest.raises(HandshakeFailed, match="expected"):
        initiator.receive(message2)


def test_bad_arguments_are_local_errors() -> None:
    with pytest.raises(ValueError):
        SecureHandshake(ALICE, initiator=True, expected_peer_id="nope")
    with pytest.raises(ValueError, match="network key"):
        SecureHandshake(ALICE, initiator=True, psk=bytes(16))
    with pytest.raises(ValueError):
        SecureHandshake(ALICE, initiator=True, rekey_interval=0).start()


# --- private networks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initiator_psk", "responder_psk"),
    [(OTHER_KEY, NETWORK_KEY), (None, NETWORK_KEY), (NETWORK_KEY, None)],
    ids=["other-key", "public-to-private", "private-to-public"],
)
def test_other_network_refused_at_message_1(
    initiator_psk: bytes | None, responder_psk: bytes | None
) -> None:
    """The responder fails on the first message, before writing anything: the caller closes
    the connection and the peer learns nothing but that. The reason stays on the responder."""
    initiator = SecureHandshake(ALICE, initiator=True, psk=initiator_psk)
    responder = SecureHandshake(BOB, initiator=False, psk=responder_psk)
    with pytest.raises(HandshakeFailed):
        responder.receive(initiator.start())
    assert not responder.complete and responder.remote_public_key is None


def test_network_key_binds_the_transport_keys() -> None:
    """Same identities, two networks: frames of one do not decrypt in the other."""
    a1, b1 = _channels(NETWORK_KEY)
    _, b2 = _channels(OTHER_KEY)
    frame = a1.encrypt(b"secret")
    b2.receive_data(frame)
    with pytest.raises(FrameError):
        b2.next_frame()
    b1.receive_data(frame)
    assert b1.next_frame() == b"secret"
    assert network_id(NETWORK_KEY) != network_id(OTHER_KEY)


# --- adversarial handshakes ------------------------------------------------------------------


def _drive(
    psk: bytes | None,
    attack: Callable[[int, bytes], list[bytes]],
) -> tuple[SecureHandshake, SecureHandshake]:
    """Run a handshake where message *i* is replaced by attack(i, message): the list of byte
    strings the receiver gets instead (empty: dropped). Raises HandshakeFailed when a side
    notices; every other exception is a bug."""
    initiator, responder = _pair(psk)
    pending: bytes | None = initiator.start()
    for index in range(3):
        receiver = responder if index % 2 == 0 else initiator
        assert pending is not None
        deliveries = attack(index, pending)
        if not deliveries:
            return initiator, responder
        reply: bytes | None = None
        for delivery in deliveries:
            reply = receiver.receive(delivery)
        pending = reply
    return initiator, responder


def _reference_messages(psk: bytes | None) -> tuple[bytes, bytes, bytes]:
    return _handshake(*_pair(psk))


HandshakeAttack = tuple[str, int, bytes | None, Callable[[int, bytes], list[bytes]]]


@st.composite
def handshake_attacks(draw: st.DrawFn) -> HandshakeAttack:
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "replay", "duplicate", "swap"]))
    target = draw(st.integers(0, 2))
    bit = draw(st.integers(0, 8 * 48 - 1))  # all messages are >= 32 bytes; index taken mod len
    cut = draw(st.integers(0, 159))
    junk = draw(st.binary(min_size=1, max_size=64))
    psk = draw(st.sampled_from(PSKS))
    other = _reference_messages(psk)  # a whole other session between the same identities

    def attack(index: int, message: bytes) -> list[bytes]:
        if index != target:
            return [message]
        if kind == "flip":
            position = bit % (8 * len(message))
            flipped = bytearray(message)
            flipped[position // 8] ^= 1 << (position % 8)
            return [bytes(flipped)]
        if kind == "truncate":
            return [message[: cut % len(message)]]
        if kind == "extend":
            return [message + junk]
        if kind == "replay":
            return [other[index]]
        if kind == "duplicate":
            return [message, message]
        # swap: the receiver first gets a message meant for a later (or earlier) step
        return [other[(index + 1) % 3], message]

    return kind, target, psk, attack


@settings(max_examples=300, deadline=None)
@given(handshake_attacks())
def test_any_handshake_tampering_fails_cleanly(case: HandshakeAttack) -> None:
    """Every attack changes what some side receives, so some side must refuse; anything but
    HandshakeFailed escaping _drive fails the test as an error."""
    kind, target, psk, attack = case
    try:
        initiator, responder = _drive(psk, attack)
    except HandshakeFailed:
        return
    raise AssertionError(
        f"{kind} of message {target + 1} went unnoticed "
        f"(initiator complete={initiator.complete}, responder complete={responder.complete})"
    )


@pytest.mark.parametrize("psk", PSKS, ids=PSK_IDS)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_bit_flip_in_a_handshake_message_fails(psk: bytes | None, index: int) -> None:
    """Exhaustive over the bits of one message; the hypothesis test above samples the rest."""
    reference = _reference_messages(psk)
    for bit in range(len(reference[index]) * 8):

        def flip(i: int, message: bytes, bit: int = bit) -> list[bytes]:
            if i != index:
                return [message]
            flipped = bytearray(message)
            flipped[bit // 8] ^= 1 << (bit % 8)
            return [bytes(flipped)]

        with pytest.raises(HandshakeFailed):
            _drive(psk, flip)


def test_truncated_and_garbage_messages() -> None:
    for garbage in [b"", b"x", bytes(31), bytes(32) + b"junk", bytes(1000)]:
        initiator = SecureHandshake(ALICE, initiator=True)
        responder = SecureHandshake(BOB, initiator=False)
        message2 = responder.receive(initiator.start())
        assert message2 is not None
        with pytest.raises(HandshakeFailed):
            initiator.receive(garbage)
    responder = SecureHandshake(BOB, initiator=False)
    with pytest.raises(HandshakeFailed, match="all zeros"):  # low-order ephemeral key
        responder.receive(bytes(32))


def test_message_after_completion_refused() -> None:
    initiator = SecureHandshake(ALICE, initiator=True)
    responder = SecureHandshake(BOB, initiator=False)
    _, _, message3 = _handshake(initiator, responder)
    with pytest.raises(HandshakeFailed):
        responder.receive(message3)


def test_local_misuse() -> None:
    responder = SecureHandshake(BOB, initiator=False)
    with pytest.raises(RuntimeError):
        responder.start()
    with pytest.raises(RuntimeError):
        responder.channel()
    initiator = SecureHandshake(ALICE, initiator=True)
    with pytest.raises(RuntimeError):
        initiator.receive(b"x" * 32)
    initiator.start()
    with pytest.raises(RuntimeError):
        initiator.start()


# --- frames ------------------------------------------------------------------------------------


def test_frames_round_trip_byte_by_byte() -> None:
    sender, receiver = _channels()
    payloads = [b"a", bytes(range(256)) * 10, b"last"]
    wire = b"".join(sender.encrypt(p) for p in payloads) + sender.encrypt_close()
    received = []
    for byte in wire:
        receiver.receive_data(bytes([byte]))
        while (frame := receiver.next_frame()) is not None:
            received.append(frame)
    assert received == payloads
    assert receiver.peer_closed and receiver.buffered == 0
    assert receiver.next_frame() is None  # stays closed


def test_close_frame_rules() -> None:
    sender, receiver = _channels()
    with pytest.raises(FrameError, match="close frame"):
        sender.encrypt(b"")
    close = sender.encrypt_close()
    with pytest.raises(RuntimeError):
        sender.encrypt(b"more")
    with pytest.raises(RuntimeError):
        sender.encrypt_close()
    receiver.receive_data(close)
    assert receiver.next_frame() is None and receiver.peer_closed
    with pytest.raises(FrameError, match="after its close frame"):
        receiver.receive_data(b"\x00")
    # Data behind the close frame in the same read is refused too.
    sender, receiver = _channels()
    receiver.receive_data(sender.encrypt_close() + b"\x00\x00\x00\x10" + bytes(16))
    with pytest.raises(FrameError, match="after its close frame"):
        receiver.next_frame()


def test_forged_close_frame_fails() -> None:
    """A close frame is authenticated: 16 bytes of anything are not one."""
    _, receiver = _channels()
    receiver.receive_data((16).to_bytes(4, "big") + bytes(16))
    with pytest.raises(FrameError, match="authentication"):
        receiver.next_frame()
    assert not receiver.peer_closed


def test_truncation_is_visible() -> None:
    sender, receiver = _channels()
    wire = sender.encrypt(b"hello")
    receiver.receive_data(wire[:-1])
    assert receiver.next_frame() is None
    assert receiver.buffered == len(wire) - 1 and not receiver.peer_closed


def test_max_frame() -> None:
    sender, receiver = _channels()
    receiver.receive_data(sender.encrypt(bytes(MAX_FRAME_PLAINTEXT)))
    assert receiver.next_frame() == bytes(MAX_FRAME_PLAINTEXT)
    with pytest.raises(FrameError):
        sender.encrypt(bytes(MAX_FRAME_PLAINTEXT + 1))


@pytest.mark.parametrize("length", [MAX_FRAME_PLAINTEXT + 17, 2**32 - 1, 0, 15])
def test_bad_header_refused_at_once(length: int) -> None:
    _, receiver = _channels()
    with pytest.raises(FrameError):
        receiver.receive_data(length.to_bytes(4, "big"))
    assert receiver.buffered == 4  # nothing was allocated for the announced body
    with pytest.raises(FrameError):  # the channel stays broken
        receiver.next_frame()


def test_oversize_header_behind_a_frame_refused_at_once() -> None:
    sender, receiver = _channels()
    with pytest.raises(FrameError):
        receiver.receive_data(sender.encrypt(b"ok") + (2**31).to_bytes(4, "big"))


def test_replayed_frame_fails() -> None:
    sender, receiver = _channels()
    frame = sender.encrypt(b"once")
    receiver.receive_data(frame + frame)
    assert receiver.next_frame() == b"once"
    with pytest.raises(FrameError):
        receiver.next_frame()


def test_rekey_keeps_both_sides_in_step() -> None:
    a, b = _channels(rekey=3)
    for i in range(20):  # crosses six rekeys in each direction
        b.receive_data(a.encrypt(b"to b %d" % i))
        assert b.next_frame() == b"to b %d" % i
        a.receive_data(b.encrypt(b"to a %d" % i))
        assert a.next_frame() == b"to a %d" % i
    assert a.frames_sent == b.frames_received == 20


def test_rekey_changes_the_key() -> None:
    """Frame 3 under interval 3 is encrypted with the rekeyed key: a receiver that does not
    rekey (another interval) fails exactly there, after reading frames 0-2."""
    initiator = SecureHandshake(ALICE, initiator=True, rekey_interval=3)
    responder = SecureHandshake(BOB, initiator=False, rekey_interval=4)
    _handshake(initiator, responder)
    sender, receiver = initiator.channel(), responder.channel()
    for i in range(3):
        receiver.receive_data(sender.encrypt(b"%d" % i))
        assert receiver.next_frame() == b"%d" % i
    receiver.receive_data(sender.encrypt(b"3"))
    with pytest.raises(FrameError, match="authentication"):
        receiver.next_frame()


# --- adversarial frame streams -----------------------------------------------------------------


def _frames_of(sender: FrameChannel, payloads: list[bytes]) -> list[bytes]:
    return [sender.encrypt(p) for p in payloads] + [sender.encrypt_close()]


@st.composite
def frame_attacks(draw: st.DrawFn) -> tuple[str, list[bytes], Callable[[list[bytes]], bytes]]:
    payloads = draw(st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=6))
    kind = draw(
        st.sampled_from(
            ["none", "flip", "truncate", "drop", "duplicate", "swap", "replay", "insert"]
        )
    )
    i = draw(st.integers(0, len(payloads)))  # a frame index; len(payloads) is the close frame
    j = draw(st.integers(0, len(payloads)))
    bit = draw(st.integers(0, 8 * 100 - 1))
    cut = draw(st.integers(0, 10_000))
    junk = draw(st.binary(min_size=1, max_size=40))

    def attack(frames: list[bytes]) -> bytes:
        frames = list(frames)
        if kind == "flip":
            wire = bytearray(b"".join(frames))
            position = bit % (8 * len(wire))
            wire[position // 8] ^= 1 << (position % 8)
            return bytes(wire)
        if kind == "truncate":
            wire = b"".join(frames)
            return wire[: cut % len(wire)]
        if kind == "drop":
            del frames[i]
        elif kind == "duplicate":
            frames.insert(i, frames[i])
        elif kind == "swap":
            frames[i], frames[j] = frames[j], frames[i]
        elif kind == "replay":  # a frame of another session between the same identities
            other_sender, _ = _channels()
            frames[i] = _frames_of(other_sender, payloads)[i]
        elif kind == "insert":
            frames.insert(i, junk)
        return b"".join(frames)

    return kind, payloads, attack


@settings(max_examples=400, deadline=None)
@given(case=frame_attacks(), chunk=st.integers(1, 300), psk=st.sampled_from(PSKS))
def test_frame_stream_tampering_never_yields_foreign_plaintext(
    case: tuple[str, list[bytes], Callable[[list[bytes]], bytes]],
    chunk: int,
    psk: bytes | None,
) -> None:
    """Whatever the attacker does to the byte stream, the receiver's output is a prefix of what
    was sent; it reports a clean close only when every frame arrived intact; otherwise it
    raises FrameError or is left waiting (truncation, which the session layer reports)."""
    _, payloads, attack = case
    sender, receiver = _channels(psk)
    original = _frames_of(sender, payloads)
    wire = attack(original)
    received: list[bytes] = []
    error: FrameError | None = None
    try:
        for start in range(0, len(wire), chunk):
            receiver.receive_data(wire[start : start + chunk])
            while (frame := receiver.next_frame()) is not None:
                received.append(frame)
    except FrameError as exc:
        error = exc
    assert received == payloads[: len(received)]
    if receiver.peer_closed:  # the close frame is the last one sent: everything came first
        assert received == payloads
        if error is None:  # and nothing came after it (a duplicated close frame errs here)
            assert wire == b"".join(original)
    if wire == b"".join(original):
        assert receiver.peer_closed and received == payloads
    else:
        assert error is not None or not receiver.peer_closed


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(min_size=1, max_size=200), data=st.data())
def test_bit_flip_in_frame_detected(payload: bytes, data: st.DataObject) -> None:
    sender, receiver = _channels()
    wire = bytearray(sender.encrypt(payload))
    bit = data.draw(st.integers(0, len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        receiver.receive_data(bytes(wire))
        frame = receiver.next_frame()
        if frame is None:  # a flipped length bit made the frame look longer: truncation
            assert receiver.buffered > 0
            raise FrameError("truncated")
