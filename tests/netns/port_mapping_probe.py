"""Runs a port mapping holder inside a lab host namespace, for tests/netns/test_port_mapping.py
and test_natpmp.py.

``python -m tests.netns.port_mapping_probe UDP_PORT TCP_PORT LEASE_S [PROTOCOL]``: PROTOCOL is
``upnp`` (the default: `hold_upnp_mappings`), ``natpmp`` (`hold_natpmp_mappings`), ``pcp``
(`hold_pcp_mappings`) or ``both``
(the node's race, `hold_port_mappings`). It listens on both ports
(TCP answers each connection with ``probe\\n``, so a test can tell that a connection from the
internet reached this host), holds the mappings, and prints one JSON line per event:
``{"event": "mapped", ...}`` at each grant and renewal, ``{"event": "lost"}``, ``{"event":
"first", "mapped": bool}`` for the first outcome, ``{"event": "recv", "from": [IP, PORT], "data":
TEXT}`` per datagram on the UDP port, ``{"event": "stopped"}`` once its stdin closed and the
mappings were removed. Stdin takes ``send IP PORT TEXT`` lines: a datagram from the UDP port
(``{"event": "sent"}`` once it left). The port mapping's log goes to stdout too.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable

import trio

from p2p.reach.mapping_race import hold_port_mappings
from p2p.reach.natpmp_client import hold_natpmp_mappings, hold_pcp_mappings
from p2p.reach.port_mapping import PortMapping, hold_upnp_mappings

HOLDERS: dict[str, Callable[..., Awaitable[None]]] = {
    "upnp": hold_upnp_mappings,
    "natpmp": hold_natpmp_mappings,
    "pcp": hold_pcp_mappings,
    "both": hold_port_mappings,
}


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def on_change(mapping: PortMapping | None) -> None:
    if mapping is None:
        emit(event="lost")
    else:
        emit(
            event="mapped",
            external_ip=mapping.external_ip,
            udp=mapping.udp_port,
            tcp=mapping.tcp_port,
            lease_s=mapping.lease_s,
        )


async def answer(listener: trio.SocketListener) -> None:
    while True:
        stream = await listener.accept()
        with trio.move_on_after(5):
            await stream.send_all(b"probe\n")
        await stream.aclose()


async def receive(udp: trio.socket.SocketType) -> None:
    while True:
        data, (ip, port) = await udp.recvfrom(2048)
        emit(event="recv", data=data.decode(errors="replace"), **{"from": [ip, port]})


async def commands(udp: trio.socket.SocketType) -> None:
    """``send IP PORT TEXT`` lines from stdin, until it closes."""
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        _, ip, port, text = line.split(maxsplit=3)
        await udp.sendto(text.strip().encode(), (ip, int(port)))
        emit(event="sent")


async def main(udp_port: int, tcp_port: int, lease_s: int, protocol: str) -> None:
    holder = HOLDERS[protocol]
    more = {} if protocol == "both" else {"rediscover_s": 3600}
    udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await udp.bind(("0.0.0.0", udp_port))
    listeners = await trio.open_tcp_listeners(tcp_port, host="0.0.0.0")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, listeners[0])
        nursery.start_soon(receive, udp)
        async with trio.open_nursery() as holding:
            first = await holding.start(
                lambda task_status: holder(
                    udp_port,
                    tcp_port,
                    on_change=on_change,
                    lease_s=lease_s,
                    task_status=task_status,
                    **more,
                )
            )
            emit(event="first", mapped=first is not None)
            await commands(udp)
            holding.cancel_scope.cancel()
        emit(event="stopped")
        nursery.cancel_scope.cancel()
    udp.close()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s")
    protocol = sys.argv[4] if len(sys.argv) > 4 else "upnp"
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), protocol)
