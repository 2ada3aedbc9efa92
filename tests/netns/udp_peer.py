"""A UDP endpoint for tests/netns/test_lab.py, run inside a lab namespace: what it receives
tells how the NAT between two namespaces maps and filters.

``python -m tests.netns.udp_peer PORT [PORT...]`` binds each port on 0.0.0.0, prints
``{"event": "bound"}``, then one ``{"event": "recv", "port": LOCAL, "from": [IP, PORT],
"data": TEXT}`` line per datagram; stdin takes ``send LOCAL_PORT IP PORT TEXT`` lines, each
answered with ``{"event": "sent"}`` once the datagram left.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys


def main(ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    socks = {}
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        socks[port] = s
        sel.register(s, selectors.EVENT_READ, port)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    print(json.dumps({"event": "bound"}), flush=True)
    while True:
        for key, _ in sel.select(timeout=60):
            if key.data is None:
                line = sys.stdin.readline()
                if not line:
                    return
                _, local, ip, port, text = line.split(maxsplit=4)
                socks[int(local)].sendto(text.strip().encode(), (ip, int(port)))
                print(json.dumps({"event": "sent", "data": text.strip()}), flush=True)
                continue
            data, (ip, port) = key.fileobj.recvfrom(2048)  # type: ignore[union-attr]
            event = {"event": "recv", "port": key.data, "from": [ip, port], "data": data.decode()}
            print(json.dumps(event), flush=True)


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1:]])
