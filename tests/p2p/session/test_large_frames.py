"""Large frames (a 512 KiB model chunk): the rest of an announced frame is read in one receive,
the bound on what a peer can make us buffer stays the frame limit, and the bytes arrive intact.
Real Noise sessions over a trio memory stream pair whose receiving end records what was asked."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from crypto.identity import Identity
from crypto.secure_session import MAX_FRAME_PLAINTEXT, FrameChannel, FrameError, SecureHandshake
from p2p.session.secure import RECEIVE_CHUNK, SecureConnection

TIMEOUT_S = 30


class Recording(trio.abc.Stream):
    """A stream that records the max_bytes of every receive."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.asked: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        assert max_bytes is not None
        self.asked.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def channels() -> tuple[FrameChannel, FrameChannel]:
    a = SecureHandshake(Identity.generate(), initiator=True)
    b = SecureHandshake(Identity.generate(), initiator=False)
    m2 = b.receive(a.start())
    assert m2 is not None
    m3 = a.receive(m2)
    assert m3 is not None and b.receive(m3) is None
    return a.channel(), b.channel()


async def test_a_large_frame_is_read_whole_after_its_first_piece() -> None:
    sender, receiver = channels()
    left, right = trio.testing.memory_stream_pair()
    recording = Recording(right)
    here = SecureConnection(left, sender, "peer")
    there = SecureConnection(recording, receiver, "peer")
    frames = [os.urandom(n) for n in (512 * 1024, 3, MAX_FRAME_PLAINTEXT)]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for frame in frames:
                nursery.start_soon(here.send_bytes, frame)
                assert await there.receive_bytes() == frame
    assert max(recording.asked) == MAX_FRAME_PLAINTEXT + 16 - (RECEIVE_CHUNK - 4)
    assert min(recording.asked) == RECEIVE_CHUNK


def test_missing_is_what_the_announced_frame_lacks_and_never_over_the_limit() -> None:
    sender, receiver = channels()
    frame = sender.encrypt(b"x" * 100_000)
    receiver.receive_data(frame[:10])
    assert receiver.missing == len(frame) - 10
    receiver.receive_data(frame[10:])
    assert receiver.missing == 0 and receiver.next_frame() == b"x" * 100_000
    huge = (MAX_FRAME_PLAINTEXT + 17).to_bytes(4, "big")
    with pytest.raises(FrameError):
        receiver.receive_data(huge)  # refused at its header: nothing asked for its body
    assert receiver.missing == 0
