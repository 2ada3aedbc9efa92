"""The port spray (p2p/reach/spray.py) between two lab homes, without the rest of gpunet: a
*reflector* on the lab's internet plays the relay's part of the address exchange, and two
*peers* (one per home) punch with it, round after round. Used by tests/netns/test_port_spray.py
and for the figures in docs/benchmarks.md ("Port spray").

    sudo .venv/bin/python -m tests.netns.spray_probe lab --rounds 20 [--restricted-initiates]
        (builds the lab's two homes, runs the three below, prints each round and a summary)
    python -m tests.netns.spray_probe reflect --listen 198.18.0.1:7000 --rounds K
    python -m tests.netns.spray_probe peer --reflector 198.18.0.1:7000 --rounds K
        (--initiator | --responder) [--opener N --ports M --wave W --seed S]

Each round a peer connects to the reflector from a SO_REUSEPORT socket and sends one JSON line
(its socket's local port and its peer id); once both peers of the round have, the reflector
answers each with the other's observed address, local port and peer id and its own observed
address (what the relay's spray line carries). Both then run `spray_punch` in the role
`port_spray.role_for` gives them, with a real Noise XX handshake (the initiator insists on the
responder's peer id), and print one JSON line per round: ok, role, seconds, the TCP peer.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
from typing import Any

import trio

from crypto.identity import Identity
from p2p.host_port import format_host_port, parse_host_port
from p2p.reach.port_spray import SprayPlan, role_for
from p2p.reach.spray import bind_reusable, spray_punch
from p2p.session.secure import SecureConnection, SessionError, secure_stream

LINE_MAX = 1024


async def _read_line(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    with trio.fail_after(60):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(LINE_MAX)
            if not chunk or len(data) > LINE_MAX:
                raise RuntimeError("the other end closed or sent too much")
            data += chunk
    value: dict[str, Any] = json.loads(data)
    return value


async def reflect(listen: str, rounds: int) -> None:
    host, port = parse_host_port(listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    waiting: list[tuple[trio.SocketStream, dict[str, Any], str]] = []
    done = trio.Event()
    served = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal served
        hello = await _read_line(stream)
        peer = stream.socket.getpeername()
        seen = format_host_port(str(peer[0]), int(peer[1]))
        waiting.append((stream, hello, seen))
        if len(waiting) == 2:
            (a, ha, sa), (b, hb, sb) = waiting
            waiting.clear()
            for s, mine, other, other_hello in ((a, sa, sb, hb), (b, sb, sa, ha)):
                line = {"you": mine, "peer": other, **other_hello}
                await s.send_all(json.dumps(line).encode() + b"\n")
            served += 1
            if served >= rounds:
                done.set()
        with trio.move_on_after(30):  # the relay connection lives while the punch runs
            await stream.receive_some(1)
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        print("listening", flush=True)
        await done.wait()
        await trio.sleep(1)  # the last round's answers are out; their connections may close
        nursery.cancel_scope.cancel()


async def _round(
    args: argparse.Namespace, identity: Identity, rng: random.Random
) -> dict[str, Any]:
    host, port = parse_host_port(args.reflector)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bind_reusable(raw, None, 0)
    raw.setblocking(True)
    raw.settimeout(10)
    raw.connect((host, port))
    raw.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
    local_port = int(raw.getsockname()[1])
    await stream.send_all(
        json.dumps({"local_port": local_port, "peer_id": identity.peer_id}).encode() + b"\n"
    )
    answer = await _read_line(stream)
    you_port = parse_host_port(answer["you"])[1]
    peer_port = parse_host_port(answer["peer"])[1]
    role = role_for(local_port, you_port, int(answer["local_port"]), peer_port)
    result: dict[str, Any] = {"role": role.value if role else None, "ok": False}
    if role is None:
        await stream.aclose()
        return result
    peer_id = str(answer["peer_id"])

    tcp_peer: dict[int, list[Any]] = {}  # id(session): its TCP peer

    async def handshake(punched: trio.SocketStream) -> SecureConnection | None:
        expected = peer_id if args.initiator else None
        try:
            seen = list(punched.socket.getpeername())[:2]  # before either end closes
        except OSError:  # one of the spray's duplicates, reset before its handshake: a loser
            await punched.aclose()
            return None
        try:
            conn = await secure_stream(punched, identity, expected_peer_id=expected)
        except SessionError:
            return None
        if conn.remote_peer_id != peer_id:
            await conn.aclose()
            return None
        tcp_peer[id(conn)] = seen
        return conn

    plan = SprayPlan(opener_sockets=args.opener, sprayer_ports=args.ports, wave_sockets=args.wave)
    started = trio.current_time()
    conn = await spray_punch(
        role, "", local_port, answer["peer"], handshake, plan, rng=rng, room=10 * args.wave
    )
    result["seconds"] = round(trio.current_time() - started, 3)
    if conn is not None:
        result.update(ok=True, remote=tcp_peer[id(conn)])
        await conn.aclose()
    await stream.aclose()
    return result


async def peers(args: argparse.Namespace) -> None:
    identity = Identity.generate()
    rng = random.Random(args.seed)
    for i in range(args.rounds):
        result = await _round(args, identity, rng)
        print(json.dumps({"round": i, **result}), flush=True)


def lab_run(rounds: int, restricted_initiates: bool, extra: list[str]) -> None:
    """The reflector and both peers in a fresh lab: symmetric and port-restricted homes."""
    import statistics
    import subprocess
    import tempfile
    from pathlib import Path

    from tests.netns.lab import INTERNET_IP, open_lab
    from tests.netns.lab_gpunet import child_env
    from tests.netns.lab_process import ROOT

    reflector = f"{INTERNET_IP}:7000"
    me = [sys.executable, "-m", "tests.netns.spray_probe"]
    with tempfile.TemporaryDirectory() as work, open_lab(Path(work)) as lab:
        symmetric, restricted = lab.add_home("symmetric"), lab.add_home("port-restricted")
        started: list[subprocess.Popen[str]] = []

        def start(ns: str, *args: str) -> subprocess.Popen[str]:
            cmd = ["ip", "netns", "exec", ns, *me, *args]
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT
            )
            started.append(proc)
            return proc

        try:
            refl = start(lab.internet_ns, "reflect", "--listen", reflector, "--rounds", str(rounds))
            assert refl.stdout is not None and refl.stdout.readline().strip() == "listening"
            first, second = ("--responder", "--initiator")[:: -1 if restricted_initiates else 1]
            peer = ["peer", "--reflector", reflector, "--rounds", str(rounds), *extra]
            sym = start(symmetric.host_ns, *peer, first)
            res = start(restricted.host_ns, *peer, second)
            outs = {"symmetric": sym.communicate(timeout=30 + 15 * rounds)[0]}
            outs["port-restricted"] = res.communicate(timeout=30)[0]
        finally:
            for proc in started:
                proc.kill()
                proc.wait(timeout=10)
    for home, out in outs.items():
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for row in rows:
            print(home, json.dumps(row))
        times = [row["seconds"] for row in rows if row.get("ok")]
        ok = len(times)
        median = statistics.median(times) if times else float("nan")
        print(
            f"{home}: {ok}/{len(rows)} came up; median {median:.3f} s,"
            f" max {max(times, default=0):.3f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reflect")
    r.add_argument("--listen", required=True)
    r.add_argument("--rounds", type=int, default=1)
    p = sub.add_parser("peer")
    p.add_argument("--reflector", required=True)
    p.add_argument("--rounds", type=int, default=1)
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--initiator", action="store_true")
    side.add_argument("--responder", action="store_true")
    p.add_argument("--opener", type=int, default=SprayPlan().opener_sockets)
    p.add_argument("--ports", type=int, default=SprayPlan().sprayer_ports)
    p.add_argument("--wave", type=int, default=SprayPlan().wave_sockets)
    p.add_argument("--seed", type=int, default=None)
    lab = sub.add_parser("lab")
    lab.add_argument("--rounds", type=int, default=20)
    lab.add_argument("--restricted-initiates", action="store_true")
    args, extra = parser.parse_known_args()
    if args.command == "lab":
        lab_run(args.rounds, args.restricted_initiates, extra)
    elif extra:
        parser.error(f"unknown arguments: {' '.join(extra)}")
    elif args.command == "reflect":
        trio.run(reflect, args.listen, args.rounds)
    else:
        trio.run(peers, args)
    sys.exit(0)


if __name__ == "__main__":
    main()
