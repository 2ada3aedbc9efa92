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
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio
from _bench_crypto_frames import CTX, paced, quantile, round_order, unpaced

from crypto.identity import Identity
from crypto.secure_session import SecureHandshake
from p2p.protocol import wire
from p2p.session.secure import (
    HandshakeAdmission,
    SecureConnection,
    SessionLimits,
    connect,
    serve_sessions,
)

UNLIMITED = SessionLimits(
    max_half_open=10_000,
    max_half_open_per_source=10_000,
    handshakes_per_source_per_s=1e9,
    handshake_burst_per_source=10**9,
)


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
        for mode in round_order(round_index):
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
            "p90_ms": quantile(times, 0.9) * 1e3,
            "per_s": len(times) / sum(times),
            "count": len(times),
            "server_cpu_ms": statistics.median(server_cpu[mode]) * 1e3,
        }
    times = []
    for _ in range(rounds):
        times.extend(trio.run(_in_process_handshakes, count))
    out["secure_in_process"] = {
        "median_ms": statistics.median(times) * 1e3,
        "p90_ms": quantile(times, 0.9) * 1e3,
        "per_s": len(times) / sum(times),
        "count": len(times),
    }
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
