"""Dialling providers as a staggered race, and the request's overall deadline (issue #14,
attack 4), on trio's MockClock: scripted providers behind a fake DHT and session pool whose
dials to "tarpits" never finish, as a node that accepts TCP and never answers would not."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import pytest
import trio
import trio.testing

from crypto.identity import Identity
from p2p.client.failover import ASK_DEADLINE_S, generate
from p2p.client.network import AskError, Client
from p2p.client.provider_race import PROVIDER_STAGGER_S
from p2p.dht.records import CapabilityRecord
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.session.local import LocalConnection
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError
from tests.p2p.client.test_failover import REQUEST, FakeDht, FakePool, serves
from tests.p2p.dht.test_records import make_record

CLAIMED_TOK_S = 1e5  # a tarpit's claim: far above the honest node, ranked first


def claiming(tok_s: float) -> CapabilityRecord:
    record = make_record(Identity.generate())
    return attrs.evolve(record, models=(attrs.evolve(record.models[0], decode_tok_s=tok_s),))


class DialPool(FakePool):
    """FakePool whose dials to *hanging* peers never finish and to *refusing* ones fail."""

    def __init__(
        self,
        nursery: trio.Nursery,
        honest: str,
        *,
        hanging: Iterable[str] = (),
        refusing: Iterable[str] = (),
        serving: Iterable[str] = (),
        delay_s: float = 0.0,
    ) -> None:
        super().__init__(nursery, {honest: serves, **{p: serves for p in serving}})
        self.hanging, self.refusing, self.delay_s = set(hanging), set(refusing), delay_s
        self.dials: list[str] = []
        self.requests = 0

    async def get(self, peer_id: str, address: object) -> MultiplexedSession:
        self.dials.append(peer_id)
        if peer_id in self.hanging:
            await trio.sleep_forever()
        if peer_id in self.refusing:
            raise SessionError(f"handshake with {peer_id[:12]} failed")
        await trio.sleep(self.delay_s)
        return await super().get(peer_id, str(address))

    async def _answer(self, conn: LocalConnection, script: object) -> None:
        self.requests += 1
        await super()._answer(conn, script)  # type: ignore[arg-type]


async def test_ten_unanswering_providers_ranked_first_cost_ten_staggers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    honest = make_record(Identity.generate())
    tarpits = [claiming(CLAIMED_TOK_S) for _ in range(10)]
    async with trio.open_nursery() as nursery:
        pool = DialPool(nursery, honest.peer_id, hanging=[t.peer_id for t in tarpits])
        client = Client(FakeDht([*tarpits, honest]), Identity.generate(), pool)  # type: ignore[arg-type]
        started = trio.current_time()
        done = await generate(client, "tiny-llama", REQUEST, lambda _t: None)
        took = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert isinstance(done, wire.Done)
    assert took == pytest.approx(10 * PROVIDER_STAGGER_S)  # before: 10 x (5 s + 10 s) per address
    assert pool.dials[-1] == honest.peer_id and pool.requests == 1  # one request sent, no more
    # every tarpit lost to the honest node dialled after it: all in backoff, ranked last next time
    assert all(client.ranker.in_backoff(t.peer_id) for t in tarpits)
    assert not client.ranker.in_backoff(honest.peer_id)
    assert client.ranker.measured[honest.peer_id].ttft_s is not None


async def test_a_failed_handshake_puts_the_provider_into_backoff_and_moves_on_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    honest, refusing = make_record(Identity.generate()), claiming(CLAIMED_TOK_S)
    async with trio.open_nursery() as nursery:
        pool = DialPool(nursery, honest.peer_id, refusing=[refusing.peer_id])
        client = Client(FakeDht([refusing, honest]), Identity.generate(), pool)  # type: ignore[arg-type]
        started = trio.current_time()
        assert isinstance(await generate(client, "tiny-llama", REQUEST, lambda _t: None), wire.Done)
        assert trio.current_time() - started < PROVIDER_STAGGER_S  # no stagger waited
        nursery.cancel_scope.cancel()
    assert pool.dials == [refusing.peer_id, honest.peer_id]
    assert client.ranker.in_backoff(refusing.peer_id)


async def test_a_preferred_provider_is_dialled_alone_and_keeps_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chosen, faster = make_record(Identity.generate()), claiming(CLAIMED_TOK_S)
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        # every dial takes 1 s: more than a stagger, so a race would start the second
        pool = DialPool(nursery, chosen.peer_id, serving=[faster.peer_id], delay_s=1.0)
        client = Client(FakeDht([faster, chosen]), Identity.generate(), pool)  # type: ignore[arg-type]
        done = await generate(
            client,
            "tiny-llama",
            REQUEST,
            lambda _t: None,
            lambda p: seen.append(p.record.peer_id),
            prefer=chosen.peer_id[:8],
        )
        nursery.cancel_scope.cancel()
    assert isinstance(done, wire.Done)
    assert pool.dials == [chosen.peer_id] and seen == [chosen.peer_id]


def drips(msg: wire.Generate) -> list[wire.Message]:
    """A node that answers slowly forever: a token now and then, never Done (see _answer)."""
    return [wire.Token(msg.id, "t", (1,))]


class DrippingPool(FakePool):
    async def _answer(self, conn: LocalConnection, script: object) -> None:
        msg = await conn.receive()
        assert isinstance(msg, wire.Generate)
        while True:  # just inside the between-token timeout, every time
            await conn.send(wire.Token(msg.id, "t", (1,)))
            await trio.sleep(25)


@pytest.mark.parametrize("deadline_s", [None, 50.0])
async def test_the_whole_request_has_a_deadline(
    autojump_clock: trio.testing.MockClock, deadline_s: float | None
) -> None:
    record = make_record(Identity.generate())
    expected = ASK_DEADLINE_S if deadline_s is None else deadline_s
    with trio.fail_after(10 * ASK_DEADLINE_S):  # before: held for as long as the node likes
        async with trio.open_nursery() as nursery:
            pool = DrippingPool(nursery, {record.peer_id: drips})
            client = Client(FakeDht([record]), Identity.generate(), pool)  # type: ignore[arg-type]
            started = trio.current_time()
            with pytest.raises(AskError) as caught:
                if deadline_s is None:  # the default
                    await generate(client, "tiny-llama", REQUEST, lambda _t: None)
                else:
                    await generate(
                        client, "tiny-llama", REQUEST, lambda _t: None, deadline_s=deadline_s
                    )
            assert trio.current_time() - started == pytest.approx(expected)
            nursery.cancel_scope.cancel()
    assert caught.value.code is ErrorCode.TIMEOUT
    assert f"deadline of {expected:g} s" in str(caught.value)
