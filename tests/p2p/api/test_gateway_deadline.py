"""Every API request has an overall deadline (issue #14, "clients no tarpit can hold").

A validly signed record points at an address that accepts TCP and never answers: the gateway
must give up at its deadline with 504 `timeout`, not when the failover below it runs out of
addresses (today's code: a 10 s handshake timeout per address, then a 503). Real parts: a DHT
node, the tarpit listener and the gateway on 127.0.0.1, one trio program.
"""

from __future__ import annotations

from functools import partial

import attrs
import httpx
import trio

from crypto.identity import Identity
from p2p.api.app import serve_gateway
from p2p.client.network import open_client
from p2p.dht.node import open_dht
from p2p.dht.records import sign_record
from tests.p2p.dht.test_records import make_record

LOCAL = "127.0.0.1"
DEADLINE_S = 1.0  # the gateway's generation deadline in this test (its default is 540 s)
# Generous: the deadline plus a lookup and an HTTP round trip on a loaded 2-core machine.
ANSWER_BY_S = DEADLINE_S + 4.0


async def hold(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


async def test_a_tarpit_provider_gets_a_504_at_the_gateways_deadline() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.40.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, hold, listeners)
            async with open_dht(Identity.generate(), LOCAL, 0) as node:
                tarpit = Identity.generate()
                record = attrs.evolve(
                    make_record(tarpit, ttl=300), addresses=(f"127.40.0.1:{port}",)
                )
                async with open_dht(Identity.generate(), LOCAL, 0) as attacker:
                    await attacker.bootstrap([(LOCAL, node.port)])
                    assert await attacker.publish(sign_record(record, tarpit)) >= 1
                async with open_client([(LOCAL, node.port)]) as client:
                    url = await nursery.start(
                        partial(
                            serve_gateway,
                            client,
                            LOCAL,
                            0,
                            queue_timeout_s=0.0,
                            generation_deadline_s=DEADLINE_S,
                        )
                    )
                    async with httpx.AsyncClient(timeout=30) as http:
                        started = trio.current_time()
                        answer = await http.post(
                            url + "/v1/completions",
                            json={"model": "tiny-llama", "prompt": "x", "max_tokens": 2},
                        )
                        took = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"]["code"] == "timeout"
    assert took < ANSWER_BY_S
