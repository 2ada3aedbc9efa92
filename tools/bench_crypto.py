#!/usr/bin/env python
"""Crypto benchmark (not a test): handshakes and encrypted frames on loopback, beside plain TCP.

    python tools/bench_crypto.py            # about a minute on 2 cores
    python tools/bench_crypto.py --quick    # a smoke run, figures too noisy to quote
    python tools/bench_crypto.py --json     # one JSON object instead of the table

What is measured, each in its own processes so that the two ends run on two cores as they do
on two machines (client and server, or sender and receiver):

1. **Handshake**: `p2p.session.secure.connect()` to a `serve_sessions()` server in another process,
   then one ping/pong frame, then `aclose()`, sequentially: median and p90 ms per "full
   handshake + first frame", and handshakes per second. Beside it, plain TCP: connect + the same
   ping/pong in length-prefixed msgpack without any crypto; and the secure case again with both
   ends in one process (no cross-process wake-ups: on a loaded machine, the cost of our code
   rather than of the run queue). The server's admission limits are lifted for this (the
   defaults allow 20 handshakes/s per source). Also the CPU time one handshake costs each side,
   sans-IO (no sockets), and the server process's CPU per connection over the whole run.
2. **Throughput, unpaced**: one sender process writes N frames as fast as it can, one
   `send_all` per frame as `SecureConnection.send` does; the receiver parses them with
   `FrameChannel`. Plain = the same FrameChannel code with key-less Noise cipher states (the
   identity function), so the only difference is ChaCha20-Poly1305. Token frames (32 and 64
   bytes of payload) and 64 KiB frames; frames/s, MB/s of payload, and encrypted ÷ plain.
3. **Token streams, paced**: 60 frames/s (a fast volunteer's decode rate; the default model
   does ~40-55 tok/s on 2 CPU cores) and 1000 frames/s, each frame stamped with the sender's
   monotonic clock: one-way latency (median, p99) and CPU µs per frame on each side, plain vs
   encrypted. "Overhead at token rates" is reported two ways: added latency per token as a
   share of the plain loopback latency, and as a share of the time between tokens.

Rounds alternate plain and encrypted; figures are medians over rounds. The machine is shared,
so load from other work moves the absolute numbers: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from crypto.identity import Identity
from crypto.noise import CipherState
from crypto.secure_session import FrameChannel, SecureHandshake
from p2p.protocol import wire
from p2p.session.secure import (
    HandshakeAdmission,
    SecureConnection,
    SessionLimits,
    connect,
    serve_sessions,
)

CTX = mp.get_context("fork")  # children inherit the FrameChannels made before the fork
UNLIMITED = SessionLimits(
    max_half_open=10_000,
    max_half_open_per_source=10_000,
    handshakes_per_source_per_s=1e9,
    handshake_burst_per_source=10**9,
)
_STAMP = struct.Struct("<d")


def _quantile(values: list[float], q: float) -> float:
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


# --- 1. handshakes ----------------------------------------------------------------------------


def sans_io_handshake_cpu(rounds: int) -> dict[str, float]:
    """CPU per handshake for each side, without sockets (µs, median)."""
    client_identity, server_identity = Identity.generate(), Identity.generate()
    initiator_us, responder_us = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        initiator = SecureHandshake(
            client_identity, initiator=True, expected_peer_id=server_identity.peer_id
        )
        message1 = initiator.start()
        t1 = time.perf_counter()
        responder = SecureHandshake(server_identity, initiator=False)
        message2 = responder.receive(message1)
        t2 = time.perf_counter()
        assert message2 is not None
        message3 = initiator.receive(message2)
        t3 = time.perf_counter()
        assert message3 is not None
        responder.receive(message3)
        t4 = time.perf_counter()
        initiator_us.append(((t1 - t0) + (t3 - t2)) * 1e6)
        responder_us.append(((t2 - t1) + (t4 - t3)) * 1e6)
    return {
        "initiator_us": statistics.median(initiator_us),
        "responder_us": statistics.median(responder_us),
    }


async def _echo(conn: SecureConnection) -> None:
    while (msg := await conn.receive()) is not None:
        if isinstance(msg, wire.Ping):
            await conn.send(wire.Pong(msg.id))


async def _plain_echo(stream: trio.SocketStream) -> None:
    buffer = b""
    try:
        while data := await stream.receive_some(65536):
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                end = 4 + int.from_bytes(buffer[:4], "big")
                msg = wire.decode(buffer[4:end])
                buffer = buffer[end:]
                body = wire.encode(wire.Pong(msg.id))
                await stream.send_all(len(body).to_bytes(4, "big") + body)
    except trio.BrokenResourceError:
        pass


def _server_main(control: Connection, secure: bool) -> None:
    async def main() -> None:
        identity = Identity.generate()
        async with trio.open_nursery() as nursery:
            if secure:
                listeners = await nursery.start(
                    partial(
                        serve_sessions,
                        identity,
                        "127.0.0.1",
                        0,
                        _echo,
                        admission=HandshakeAdmission(UNLIMITED),
                    )
                )
            else:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, _plain_echo, 0, host="127.0.0.1")
                )
            control.send((listeners[0].socket.getsockname()[1], identity.peer_id))
            while (request := await trio.to_thread.run_sync(control.recv)) != "stop":
                assert request == "cpu"
                control.send(time.process_time())
            nursery.cancel_scope.cancel()

    trio.run(main)


async def _secure_handshakes(port: int, peer_id: str, count: int) -> list[float]:
    identity = Identity.generate()
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        conn = await connect(f"127.0.0.1:{port}", identity, peer_id)
        await conn.send(wire.Ping(i))
        pong = await conn.receive()
        times.append(time.perf_counter() - t0)
        assert pong == wire.Pong(i)
        await conn.aclose()
    return times


async def _plain_handshakes(port: int, count: int) -> list[float]:
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        body = wire.encode(wire.Ping(i))
        await stream.send_all(len(body).to_bytes(4, "big") + body)
        buffer = b""
        while len(buffer) < 4 or len(buffer) < 4 + int.from_bytes(buffer[:4], "big"):
            buffer += await stream.receive_some(65536)
        times.append(time.perf_counter() - t0)
        assert wire.decode(buffer[4:]) == wire.Pong(i)
        await stream.aclose()
    return times


def _order(round_index: int) -> tuple[str, str]:
    """Plain first in even rounds, encrypted first in odd ones: no mode always runs second."""
    return ("plain", "secure") if round_index % 2 == 0 else ("secure", "plain")


async def _in_process_handshakes(count: int) -> list[float]:
    """Server and client in one trio loop: no cross-process wake-ups, so on a loaded machine
    this shows the cost of our code rather than the run queue's."""
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(
                serve_sessions,
                server,
                "127.0.0.1",
                0,
                _echo,
                admission=HandshakeAdmission(UNLIMITED),
            )
        )
        port = listeners[0].socket.getsockname()[1]
        await _secure_handshakes(port, server.peer_id, 10)
        times = await _secure_handshakes(port, server.peer_id, count)
        nursery.cancel_scope.cancel()
    return times


def handshakes(count: int, rounds: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {"plain": [], "secure": []}
    server_cpu: dict[str, list[float]] = {"plain": [], "secure": []}
    for round_index in range(rounds):
        for mode in _order(round_index):
            parent, child = CTX.Pipe()
            server = CTX.Process(target=_server_main, args=(child, mode == "secure"))
            server.start()
            port, peer_id = parent.recv()
            warm = 10
            if mode == "secure":
                client: Callable[[int], Any] = partial(_secure_handshakes, port, peer_id)
            else:
                client = partial(_plain_handshakes, port)
            trio.run(client, warm)
            parent.send("cpu")
            cpu0 = parent.recv()
            t = trio.run(client, count)
            parent.send("cpu")
            server_cpu[mode].append((parent.recv() - cpu0) / count)
            results[mode].extend(t)
            parent.send("stop")
            server.join(10)
    out: dict[str, Any] = {}
    for mode, times in results.items():
        out[mode] = {
            "median_ms": statistics.median(times) * 1e3,
            "p90_ms": _quantile(times, 0.9) * 1e3,
            "per_s": len(times) / sum(times),
            "count": len(times),
            "server_cpu_ms": statistics.median(server_cpu[mode]) * 1e3,
        }
    times = []
    for _ in range(rounds):
        times.extend(trio.run(_in_process_handshakes, count))
    out["secure_in_process"] = {
        "median_ms": statistics.median(times) * 1e3,
        "p90_ms": _quantile(times, 0.9) * 1e3,
        "per_s": len(times) / sum(times),
        "count": len(times),
    }
    return out


# --- 2 and 3. frames --------------------------------------------------------------------------


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
                    latencies.append(now - _STAMP.unpack_from(frame)[0])
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
    padding = bytes(size - _STAMP.size)
    cpu0 = time.process_time()
    start = trio.current_time()
    for i in range(count):
        if rate is not None:
            await trio.sleep_until(start + i / rate)
        payload = _STAMP.pack(time.perf_counter()) + padding
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
        for mode in _order(round_index):
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
        for mode in _order(round_index):
            r = stream_frames(mode, size, count, rate)
            assert r["frames"] == count, r
            collected[mode]["lat"].extend(r["latencies"][1:])  # the first includes connect
            collected[mode]["rx_cpu"].append(r["cpu_s"] / count)
            collected[mode]["tx_cpu"].append(r["sender_cpu_s"] / count)
    out: dict[str, Any] = {"payload_bytes": size, "frames_per_s": rate, "frames": count}
    for mode, c in collected.items():
        out[mode] = {
            "latency_median_us": statistics.median(c["lat"]) * 1e6,
            "latency_p99_us": _quantile(c["lat"], 0.99) * 1e6,
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


# --- report -----------------------------------------------------------------------------------


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def run(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    scale = 0.1 if quick else 1.0
    rounds = 2 if quick else 4
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "load_before": _load(),
        "quick": quick,
    }
    log("sans-IO handshake CPU...")
    result["handshake_cpu"] = sans_io_handshake_cpu(int(2000 * scale))
    log("handshakes over loopback...")
    result["handshake"] = handshakes(int(300 * scale), rounds)
    result["unpaced"] = []
    for size, count in ((32, 40_000), (64, 40_000), (65536, 3000)):
        log(f"unpaced {size}-byte frames...")
        result["unpaced"].append(unpaced(size, int(count * scale), rounds))
    result["paced"] = []
    for rate, seconds in ((60.0, 5.0), (1000.0, 2.0)):
        log(f"paced 64-byte frames at {rate:g}/s...")
        result["paced"].append(paced(64, rate, seconds * (0.4 if quick else 1.0), rounds))
    result["load_after"] = _load()
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"machine: {r['machine']}; load {r['load_before']} before, {r['load_after']} after")
    cpu = r["handshake_cpu"]
    print(
        f"\nhandshake CPU, sans-IO: initiator {cpu['initiator_us']:.0f} µs, "
        f"responder {cpu['responder_us']:.0f} µs"
    )
    h = r["handshake"]
    print(
        "\n| connect + first frame (ping/pong), loopback | median ms | p90 ms | per s "
        "| server CPU ms each |"
    )
    print("|---|---|---|---|---|")
    for mode, label in (
        ("plain", "plain TCP + msgpack"),
        ("secure", "Noise XX session"),
        ("secure_in_process", "Noise XX session, both ends in one process"),
    ):
        server_cpu = h[mode].get("server_cpu_ms")
        print(
            f"| {label} | {h[mode]['median_ms']:.2f} | {h[mode]['p90_ms']:.2f} "
            f"| {h[mode]['per_s']:.0f} | {'–' if server_cpu is None else f'{server_cpu:.2f}'} |"
        )
    print(
        "\n| unpaced, payload | plain frames/s | encrypted frames/s | ratio "
        "| plain MB/s | enc MB/s |"
    )
    print("|---|---|---|---|---|---|")
    for u in r["unpaced"]:
        print(
            f"| {u['payload_bytes']} B | {u['plain']['frames_per_s']:.0f} "
            f"| {u['secure']['frames_per_s']:.0f} | {u['ratio']:.3f} "
            f"| {u['plain']['MB_per_s']:.1f} | {u['secure']['MB_per_s']:.1f} |"
        )
    print(
        "\n| paced 64 B | latency median µs plain / enc | p99 µs plain / enc "
        "| added µs (% of plain, % of interval) | CPU µs/frame rx+tx plain / enc |"
    )
    print("|---|---|---|---|---|")
    for p in r["paced"]:
        pl, se = p["plain"], p["secure"]
        cpu_plain = pl["receiver_cpu_us_per_frame"] + pl["sender_cpu_us_per_frame"]
        cpu_secure = se["receiver_cpu_us_per_frame"] + se["sender_cpu_us_per_frame"]
        print(
            f"| {p['frames_per_s']:g}/s | {pl['latency_median_us']:.0f} / "
            f"{se['latency_median_us']:.0f} | {pl['latency_p99_us']:.0f} / "
            f"{se['latency_p99_us']:.0f} | {p['added_latency_us']:.1f} "
            f"({p['added_latency_pct_of_plain']:.1f} %, {p['added_latency_pct_of_interval']:.3f} %)"
            f" | {cpu_plain:.0f} / {cpu_secure:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, ~10x shorter")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.quick, lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
