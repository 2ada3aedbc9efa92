"""Which DHT ids a lab node lists in its routing table, asked from inside a lab namespace (for
tests/netns/test_nat_matrix.py: a relayed volunteer must be in nobody's table).

``python -m tests.netns.dht_table_probe HOST:PORT ID_HEX...`` asks the node at HOST:PORT, as a
light client, for the contacts nearest to each id with its last bit flipped (a node never
answers a key's own id among its neighbours, and the id itself is then the nearest contact:
listed exactly when it is in the answer, since a lab table holds fewer than k contacts), and
prints one JSON line ``{"answered": BOOL, "client_only": BOOL, "listed": [ID_HEX, ...]}``
(`client_only`: the node answered as a client-only member, p2p/dht/protocol.py).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from crypto.identity import Identity
from p2p.dht.contact_proofs import CLIENT_ID
from p2p.dht.node import open_dht
from p2p.dht.protocol import CLIENT_ONLY_ANSWER
from p2p.host_port import parse_host_port

RPC_TIMEOUT_S = 3.0


async def probe(host: str, port: int, targets: list[bytes]) -> dict[str, Any]:
    listed: list[str] = []
    answered = client_only = False
    key = Identity.generate().public_key
    with trio.fail_after(RPC_TIMEOUT_S * 3 * max(len(targets), 1) + 10):
        async with open_dht(key, "0.0.0.0", 0, client_mode=True, rpc_timeout=RPC_TIMEOUT_S) as dht:
            for target in targets:
                near = target[:-1] + bytes([target[-1] ^ 1])

                async def ask(near: bytes = near) -> Any:
                    return await dht.protocol.request((host, port), "find_node", CLIENT_ID, near)

                ok, answer = await dht.run(ask)
                answered = answered or ok
                client_only = client_only or (ok and answer == CLIENT_ONLY_ANSWER)
                if not ok or not isinstance(answer, list):
                    continue
                ids = {bytes(c[0]) for c in answer if isinstance(c, (list, tuple)) and c}
                if target in ids:
                    listed.append(target.hex())
    return {"answered": answered, "client_only": client_only, "listed": listed}


def main(argv: list[str]) -> None:
    host, port = parse_host_port(argv[0])
    result = trio.run(probe, host, port, [bytes.fromhex(t) for t in argv[1:]])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
