"""`generate` over fake providers: the codes its failures carry, and what moves a request on.

The providers are in-process connections (p2p.session.local) answering from a script, behind a
fake DHT and session pool: no sockets, no model.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from crypto.identity import Identity
from p2p.client.failover import generate
from p2p.client.network import AskError, Client
from p2p.errors import ErrorCode
from p2p.protocol import wire
from p2p.session.local import LocalConnection, local_pair
from p2p.session.pool import MultiplexedSession
from tests.p2p.dht.test_records import make_record

REQUEST = wire.Generate(id=1, model="tiny-llama", prompt="p", max_tokens=3)
TIMEOUT_S = 10

# A scripted node: given the request, the messages it answers with.
Script = Callable[[wire.Generate], list[wire.Message]]


def refuses(code: ErrorCode) -> Script:
    return lambda msg: [wire.Error(msg.id, code, f"refused: {code.value}")]


def serves(msg: wire.Generate) -> list[wire.Message]:
    tokens: list[wire.Message] = [wire.Token(msg.id, f"t{i}", (i,)) for i in range(3)]
    return [*tokens, wire.Done(msg.id, "length", 1, 3, 0.1, 10.0)]


class FakeDht:
    def __init__(self, records: list[object]) -> None:
        self.records = records

    async def find_records(self, key: str) -> list[object]:
        return self.records


class FakePool:
    """Sessions to scripted nodes, run in the test's nursery."""

    def __init__(self, nursery: trio.Nursery, scripts: dict[str, Script]) -> None:
        self.nursery, self.scripts = nursery, scripts

    async def get(self, peer_id: str, address: str) -> MultiplexedSession:
        client_side, node_side = local_pair(peer_id)
        session = MultiplexedSession(client_side)
        self.nursery.start_soon(session.run)
        self.nursery.start_soon(self._answer, node_side, self.scripts[peer_id])
        return session

    async def _answer(self, conn: LocalConnection, script: Script) -> None:
        msg = await conn.receive()
        assert isinstance(msg, wire.Generate)
        for answer in script(msg):
            await conn.send(answer)
        await trio.sleep_forever()

    def drop(self, peer_id: str) -> None:
        pass


async def ask(scripts: list[Script]) -> tuple[wire.Done | AskError, str]:
    """`generate` over one provider per script (ranked in an unknown order); its result and
    the text delivered."""
    identities = [Identity.generate() for _ in scripts]
    records = [make_record(i) for i in identities]
    text: list[str] = []
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            by_peer = {i.peer_id: s for i, s in zip(identities, scripts, strict=True)}
            pool = FakePool(nursery, by_peer)
            client = Client(FakeDht(records), Identity.generate(), pool)  # type: ignore[arg-type]
            try:
                result: wire.Done | AskError = await generate(
                    client, "tiny-llama", REQUEST, text.append
                )
            except AskError as exc:
                result = exc
            nursery.cancel_scope.cancel()
    return result, "".join(text)


async def test_no_node_serving_the_model_is_unknown_model() -> None:
    result, _ = await ask([])
    assert isinstance(result, AskError) and result.code is ErrorCode.UNKNOWN_MODEL


@pytest.mark.parametrize(
    "code", [ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN, ErrorCode.INTERNAL, ErrorCode.TIMEOUT]
)
async def test_a_retryable_refusal_moves_the_request_on(code: ErrorCode) -> None:
    result, text = await ask([refuses(code), serves])
    assert isinstance(result, wire.Done) and text == "t0t1t2"


async def test_every_provider_refusing_for_room_is_unavailable() -> None:
    result, _ = await ask([refuses(ErrorCode.BUSY), refuses(ErrorCode.RATE_LIMITED)])
    assert isinstance(result, AskError) and result.code is ErrorCode.UNAVAILABLE
    assert "no provider could serve the request" in str(result)


@pytest.mark.parametrize("code", [ErrorCode.BAD_REQUEST, ErrorCode.TOO_LONG])
async def test_a_final_refusal_keeps_the_providers_code(code: ErrorCode) -> None:
    # whichever provider is asked first refuses for good: no other honest one would differ
    result, _ = await ask([refuses(code), refuses(code)])
    assert isinstance(result, AskError) and result.code is code
