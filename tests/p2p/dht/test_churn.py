"""30 real nodes on 127.0.0.1 with churn: a third killed, then restarted under the same identities
on new ports. Provider lookups for models with a live provider keep succeeding throughout."""

from __future__ import annotations

import random

import attrs
import trio

from crypto.identity import Identity
from p2p.dht.node import Dht, open_dht
from p2p.dht.records import ModelEntry, model_name_key, sign_record
from tests.p2p.dht.test_records import make_record

LOCAL = "127.0.0.1"
N = 30
MODELS = ("alpha", "beta", "gamma")
RPC_TIMEOUT = 0.3  # a dead contact costs a round this much; loopback answers in < 1 ms


@attrs.define
class Running:
    identity: Identity
    dht: Dht
    scope: trio.CancelScope
    serves: str | None = None
    seq: int = 1


async def _node(
    identity: Identity,
    bootstrap: list[tuple[str, int]],
    *,
    task_status: trio.TaskStatus[tuple[Dht, trio.CancelScope]] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as scope:
        async with open_dht(identity, LOCAL, 0, rpc_timeout=RPC_TIMEOUT) as dht:
            if bootstrap:
                assert await dht.bootstrap(bootstrap) >= 1
            task_status.started((dht, scope))
            await trio.sleep_forever()


def _record(r: Running) -> bytes:
    assert r.serves is not None
    entry = ModelEntry(f"{MODELS.index(r.serves) + 1:064x}", r.serves, "llama", 1, "F32", 512, 0, 2)
    record = make_record(r.identity, seq=r.seq, models=(entry,))
    record = attrs.evolve(record, addresses=(f"127.0.0.1:{r.dht.port}",))
    return sign_record(record, r.identity).blob


async def _publish(r: Running) -> None:
    from p2p.dht.records import open_record

    await r.dht.publish(open_record(_record(r), now=r.dht.server.clock()))


async def _providers_found(client: Dht, model: str) -> dict[str, str]:
    found = await client.find_records(model_name_key(model))
    return {rec.peer_id: rec.addresses[0] for rec in found}


async def test_provider_lookups_survive_churn() -> None:
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        nodes: list[Running] = []
        for _ in range(N):
            ident = Identity.generate()
            boot = [(LOCAL, rng.choice(nodes).dht.port)] if nodes else []
            dht, scope = await nursery.start(_node, ident, boot)
            nodes.append(Running(ident, dht, scope))
        # two providers per model, on nodes 1..6
        for i, r in enumerate(nodes[1:7]):
            r.serves = MODELS[i % len(MODELS)]
            await _publish(r)

        async with open_dht(
            Identity.generate(), LOCAL, 0, client_mode=True, rpc_timeout=RPC_TIMEOUT
        ) as client:
            assert await client.bootstrap([(LOCAL, nodes[0].dht.port)]) >= 1
            for model in MODELS:
                found = await _providers_found(client, model)
                assert found.keys() == {r.identity.peer_id for r in nodes if r.serves == model}

            # kill a third: one provider of each model, the bootstrap node, and six others
            victims = [nodes[1], nodes[2], nodes[3], nodes[0], *rng.sample(nodes[7:], 6)]
            for r in victims:
                r.scope.cancel()
            await trio.sleep(0)
            live = [r for r in nodes if r not in victims]
            for model in MODELS:
                found = await _providers_found(client, model)
                alive = {r.identity.peer_id for r in live if r.serves == model}
                assert alive and alive <= found.keys(), model

            # restart them under the same identities on new ports, all at once; providers
            # republish
            async def restart(r: Running) -> None:
                boot = [(LOCAL, rng.choice(live).dht.port)]
                r.dht, r.scope = await nursery.start(_node, r.identity, boot)
                if r.serves is not None:
                    r.seq += 1
                    await _publish(r)

            async with trio.open_nursery() as restarts:
                for r in victims:
                    restarts.start_soon(restart, r)
            for model in MODELS:
                found = await _providers_found(client, model)
                want = {
                    r.identity.peer_id: f"127.0.0.1:{r.dht.port}"
                    for r in nodes
                    if r.serves == model
                }
                assert found == want, model  # restarted providers at their new addresses

            for r in nodes:
                assert r.dht.protocol.tasks_in_flight <= 1
                assert r.dht.store.total() <= 4 * 6
        nursery.cancel_scope.cancel()
