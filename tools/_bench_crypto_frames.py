"""tools/bench_crypto.py's frame measurements (its parts 2 and 3): a sender and a receiver
process stream frames over loopback, plain (FrameChannel with key-less cipher states) or
encrypted (a real Noise session's), unpaced or paced at token rates.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

import trio

from crypto.identity import Identity
from crypto.noise import CipherState
from crypto.secure_session import FrameChannel, SecureHandshake

CTX = mp.get_context("fork")  # children inherit the FrameChannels made before the fork
STAMP = struct.Struct("<d")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _IdentityCipher(CipherState):
    """The identity function with a counting nonce: FrameChannel's framing code, no crypto."""

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        self.nonce += 1
        return plaintext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        self.nonce += 1
        return ciphertext


def _plain_channel() -> FrameChannel:
    return FrameChannel(_IdentityCipher(), _IdentityCipher(), rekey_interval=2**62)


def _secure_channels() -> tuple[FrameChannel, FrameChannel]:
    initiator = SecureHandshake(Identity.generate(), initiator=True)
    responder = SecureHandshake(Identity.generate(), initiator=False)
    message2 = responder.receive(initiator.start())
    assert message2 is not None
    message3 = initiator.receive(message2)
    assert message3 is not None
    responder.receive(message3)
    return initiator.channel(), responder.channel()


def round_order(round_index: int) -> tuple[str, str]:
    """Plain first in even rounds, encrypted first in odd ones: no mode always runs second."""
    return ("plain", "secure") if round_index % 2 == 0 else ("secure", "plain")


def _receiver_main(channel: FrameChannel, control: Connection, count: int, paced: bool) -> None:
    async def main() -> None:
        with trio.fail_after(300):  # a failed sender must not leave this process behind
            await receive()

    async def receive() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        control.send(listeners[0].socket.getsockname()[1])
        stream = await listeners[0].accept()
        latencies: list[float] = []
        received = payload_bytes = 0
        first = last = 0.0
        cpu0 = time.process_time()
        while received < count:
            data = await stream.receive_some(262144)
            if not data:
                break
            channel.receive_data(bytes(data))
            while (frame := channel.next_frame()) is not None:
                now = time.perf_counter()
                if received == 0:
                    first = now
                    cpu0 = time.process_time()
                last = now
                received += 1
                payload_bytes += len(frame)
                if paced:
                    latencies.append(now - STAMP.unpack_from(frame)[0])
        cpu = time.process_time() - cpu0
        control.send(
            {
                "frames": received,
                "payload_bytes": payload_bytes,
                "elapsed_s": last - first,
                "cpu_s": cpu,
                "latencies": latencies,
            }
        )
        await stream.aclose()

    trio.run(main)


async def _send_frames(
    port: int, channel: FrameChannel, size: int, count: int, rate: float | None
) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    padding = bytes(size - STAMP.size)
    cpu0 = time.process_time()
    start = trio.current_time()
    for i in range(count):
        if rate is not None:
            await trio.sleep_until(start + i / rate)
        payload = STAMP.pack(time.perf_counter()) + padding
        await stream.send_all(channel.encrypt(payload))
    cpu = time.process_time() - cpu0
    await stream.aclose()
    return cpu


def stream_frames(mode: str, size: int, count: int, rate: float | None) -> dict[str, Any]:
    if mode == "secure":
        send_channel, receive_channel = _secure_channels()
    else:
        send_channel, receive_channel = _plain_channel(), _plain_channel()
    parent, child = CTX.Pipe()
    receiver = CTX.Process(
        target=_receiver_main, args=(receive_channel, child, count, rate is not None)
    )
    receiver.start()
    try:
        port = parent.recv()
        sender_cpu = trio.run(_send_frames, port, send_channel, size, count, rate)
        result: dict[str, Any] = parent.recv()
    finally:
        receiver.join(10)
        if receiver.is_alive():
            receiver.terminate()
    result["sender_cpu_s"] = sender_cpu
    return result


def unpaced(size: int, count: int, rounds: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"plain": [], "secure": []}
    for round_index in range(rounds):
        for mode in round_order(round_index):
            r = stream_frames(mode, size, count, None)
            assert r["frames"] == count, r
            rates[mode].append(r["frames"] / r["elapsed_s"])
    out: dict[str, Any] = {"payload_bytes": size, "frames": count, "rounds": rounds}
    for mode, values in rates.items():
        out[mode] = {
            "frames_per_s": statistics.median(values),
            "MB_per_s": statistics.median(values) * size / 1e6,
            "min_max_frames_per_s": [min(values), max(values)],
        }
    out["ratio"] = out["secure"]["frames_per_s"] / out["plain"]["frames_per_s"]
    return out


def paced(size: int, rate: float, seconds: float, rounds: int) -> dict[str, Any]:
    count = int(rate * seconds)
    collected: dict[str, dict[str, list[float]]] = {
        m: {"lat": [], "rx_cpu": [], "tx_cpu": []} for m in ("plain", "secure")
    }
    for round_index in range(rounds):
        for mode in round_order(round_index):
            r = stream_frames(mode, size, count, rate)
            assert r["frames"] == count, r
            collected[mode]["lat"].extend(r["latencies"][1:])  # the first includes connect
            collected[mode]["rx_cpu"].append(r["cpu_s"] / count)
            collected[mode]["tx_cpu"].append(r["sender_cpu_s"] / count)
    out: dict[str, Any] = {"payload_bytes": size, "frames_per_s": rate, "frames": count}
    for mode, c in collected.items():
        out[mode] = {
            "latency_median_us": statistics.median(c["lat"]) * 1e6,
            "latency_p99_us": quantile(c["lat"], 0.99) * 1e6,
            "receiver_cpu_us_per_frame": statistics.median(c["rx_cpu"]) * 1e6,
            "sender_cpu_us_per_frame": statistics.median(c["tx_cpu"]) * 1e6,
        }
    added = out["secure"]["latency_median_us"] - out["plain"]["latency_median_us"]
    out["added_latency_us"] = added
    out["added_latency_pct_of_plain"] = 100 * added / out["plain"]["latency_median_us"]
    out["added_latency_pct_of_interval"] = 100 * added / (1e6 / rate)
    added_cpu = sum(
        out["secure"][k] - out["plain"][k]
        for k in ("receiver_cpu_us_per_frame", "sender_cpu_us_per_frame")
    )
    out["added_cpu_us_per_frame"] = added_cpu
    out["added_cpu_pct_of_interval"] = 100 * added_cpu / (1e6 / rate)
    return out
