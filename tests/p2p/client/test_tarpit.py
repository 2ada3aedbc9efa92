"""Issue #14, attack 4: validly signed records that claim the top speed and list addresses that
accept TCP and never answer must not hold a client.

A real node serves the tiny GGUF on 127.0.0.1 (DHT, Noise sessions, llama.cpp). Ten attackers,
each with a fresh identity and its own source network (127.40.<i>.1), publish a copy of the
honest record into the DHT re-signed as their own, claiming 100,000 tok/s and listing 8
addresses 127.40.<i>.<j> where a trio listener accepts connections and never sends a byte. A
fresh client then asks for the model, as `gpunet ask` does.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from crypto.identity import Identity
from inference.model_file import inspect_gguf
from p2p.client.failover import generate
from p2p.client.network import lookup_key, open_client
from p2p.dht.node import open_dht
from p2p.dht.records import CapabilityRecord, node_key, sign_record
from p2p.host_port import parse_host_port
from p2p.node.config import NodeConfig, NodeReady
from p2p.node.runtime import run_node
from p2p.protocol import wire

TARPITS = 10
ADDRESSES_PER_TARPIT = 8  # the most a record may list (records.MAX_ADDRESSES)
# Far above any honest node, under the record bound (records.MAX_DECODE_TOK_S, 10^6): ranked
# first by any client that believes claims.
CLAIMED_TOK_S = 100_000.0
# Issue #14's target: with the tarpits published, `ask` finishes within 3 s of its normal time.
TARGET_EXTRA_S = 3.0
# Before the defence one tarpit address cost 5 s connect + 10 s handshake, one after another:
# 10 records x 8 addresses would hold the ask for 800 s. The test gives up long before that.
GIVE_UP_EXTRA_S = 30.0
TEST_TIMEOUT_S = 180.0
REQUEST = wire.Generate(id=1, model="", prompt="once upon a time", max_tokens=8)


async def _hold_forever(stream: trio.SocketStream) -> None:
    """A tarpit: the connection is accepted and never answered."""
    async with stream:
        await trio.sleep_forever()


async def tarpit_addresses(nursery: trio.Nursery, i: int) -> tuple[str, ...]:
    """Listeners on 127.40.<i>.1..8 that hold every connection unanswered, served in *nursery*
    until the test ends."""
    listeners: list[trio.SocketListener] = []
    for j in range(1, ADDRESSES_PER_TARPIT + 1):
        listeners += await trio.open_tcp_listeners(0, host=f"127.40.{i}.{j}")
    nursery.start_soon(trio.serve_listeners, _hold_forever, listeners)
    return tuple(
        f"127.40.{i}.{j}:{listener.socket.getsockname()[1]}"
        for j, listener in enumerate(listeners, start=1)
    )


def tarpit_record(
    honest: CapabilityRecord, identity: Identity, addresses: tuple[str, ...]
) -> CapabilityRecord:
    """The honest node's record re-signed by a stranger: same models, top speed, its addresses."""
    models = tuple(attrs.evolve(m, decode_tok_s=CLAIMED_TOK_S) for m in honest.models)
    return attrs.evolve(
        honest,
        peer_id=identity.peer_id,
        public_key=identity.public_key,
        addresses=addresses,
        seq=1,
        models=models,
    )


def _ignore(_text: str) -> None:
    pass


async def timed_ask(bootstrap: tuple[str, int], model: str, limit_s: float) -> float | None:
    """Seconds a fresh client's `generate` took (lookup, dial, answer); None past *limit_s*."""
    async with open_client([bootstrap]) as client:
        started = trio.current_time()
        with trio.move_on_after(limit_s):
            done = await generate(client, model, attrs.evolve(REQUEST, model=model), _ignore)
            assert done.completion_tokens == REQUEST.max_tokens
            return trio.current_time() - started
    return None


async def test_ten_tarpit_records_claiming_the_top_speed_cost_an_ask_under_3_s(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    info = inspect_gguf(tiny_gguf)
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            config = NodeConfig(
                data_dir=tmp_path / "honest",
                models=(info,),
                dht_port=0,
                port=0,
                n_threads=1,
                benchmark=False,
            )
            ready: NodeReady = await nursery.start(run_node, config)
            bootstrap = parse_host_port(ready.dht_address)
            await timed_ask(bootstrap, info.name, TEST_TIMEOUT_S)  # warm-up: first decode
            normal = await timed_ask(bootstrap, info.name, TEST_TIMEOUT_S)
            assert normal is not None

            async with open_client([bootstrap]) as client:
                honest = (await client.dht.find_records(node_key(ready.peer_id)))[0]
            for i in range(1, TARPITS + 1):
                addresses = await tarpit_addresses(nursery, i)
                attacker = Identity.generate()
                signed = sign_record(tarpit_record(honest, attacker, addresses), attacker)
                async with open_dht(attacker, f"127.40.{i}.1", 0, client_mode=True) as dht:
                    assert await dht.bootstrap([bootstrap]) > 0
                    assert await dht.publish(signed) > 0
            async with open_client([bootstrap]) as client:
                listed, _ = await client.find_records(lookup_key(info.name))
            # The attack is in place: every tarpit is listed (10 signers from 10 source /24s,
            # within any fair share the DHT store keeps), the honest node among them.
            assert len(listed) == TARPITS + 1, f"{len(listed)} of {TARPITS + 1} records listed"

            took = await timed_ask(bootstrap, info.name, normal + GIVE_UP_EXTRA_S)
            nursery.cancel_scope.cancel()
    print(f"normal ask {normal:.2f} s; with {TARPITS} tarpits {took} s")  # the figures
    assert took is not None, f"the ask was held over {normal + GIVE_UP_EXTRA_S:.1f} s"
    assert took <= normal + TARGET_EXTRA_S, (took, normal)
