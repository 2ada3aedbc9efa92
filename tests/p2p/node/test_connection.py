"""The node's connection loop around the request machine, over an in-process connection: no
model, no socket. A fake `serve` stands in for the worker."""

from __future__ import annotations

from functools import partial

import msgpack
import trio

from crypto.identity import Identity
from p2p.errors import ErrorCode
from p2p.node.connection import Reply, serve_connection
from p2p.protocol import wire
from p2p.session.local import LocalConnection, local_pair
from p2p.session.secure import connect, serve_sessions

TIMEOUT_S = 10


async def echo(msg: wire.Generate, reply: Reply) -> None:
    """One token (the prompt), then Done; a prompt "hang" waits to be cancelled."""
    if msg.prompt == "hang":
        await trio.sleep_forever()
    if msg.prompt == "silent":
        return  # no final message: the loop must still send one
    await reply.send(wire.Token(msg.id, msg.prompt, (1,)))
    await reply.send(wire.Done(msg.id, "length", 1, 1, 0.0, 1.0))


async def answers(conn: LocalConnection, count: int) -> list[wire.Received]:
    out = []
    with trio.fail_after(TIMEOUT_S):
        while len(out) < count:
            msg = await conn.receive()
            assert msg is not None
            out.append(msg)
    return out


async def test_an_invalid_generate_is_refused_for_its_id_and_the_others_go_on() -> None:
    client, node = local_pair("peer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, node, echo)
        await client.send(wire.Generate(1, "m", "hang"))
        # what SecureConnection.receive hands over for a Generate whose top_p is invalid
        bad = wire.Malformed(2, "generate", "top_p", "top_p: out of range")
        await client._send.send(bad)  # type: ignore[arg-type]
        await client.send(wire.Generate(3, "m", "three"))
        got = await answers(client, 3)
        assert got[0] == wire.Error(2, ErrorCode.BAD_REQUEST, f"invalid generate: {bad.reason}")
        assert got[1:] == [wire.Token(3, "three", (1,)), wire.Done(3, "length", 1, 1, 0.0, 1.0)]
        await client.send(wire.Ping(9))
        assert await answers(client, 1) == [wire.Pong(9)]  # request 1 still hangs; all is well
        await client.aclose()


async def test_cancel_stops_the_request_and_a_duplicate_id_is_one_bad_request() -> None:
    client, node = local_pair("peer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, node, echo)
        await client.send(wire.Generate(1, "m", "hang"))
        await client.send(wire.Generate(1, "m", "again"))
        [refusal] = await answers(client, 1)
        assert isinstance(refusal, wire.Error) and refusal.code is ErrorCode.BAD_REQUEST
        await client.send(wire.Generate(2, "m", "hang"))
        await client.send(wire.Cancel(2))
        await client.send(wire.Generate(3, "m", "silent"))
        [missing] = await answers(client, 1)
        assert missing == wire.Error(3, ErrorCode.INTERNAL, "the request ended without an answer")
        await client.aclose()


async def test_over_a_real_session_an_invalid_generate_does_not_close_it() -> None:
    server = Identity.generate()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_sessions, server, "127.0.0.1", 0, partial(serve_connection, serve=echo))
        )
        address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        with trio.fail_after(TIMEOUT_S):
            conn = await connect(address, Identity.generate(), server.peer_id)
            bad = {"v": 1, "t": "generate", "id": 5, "model": "m", "prompt": "p", "seed": -1}
            await conn._stream.send_all(conn._channel.encrypt(msgpack.packb(bad)))
            refusal = await conn.receive()
            assert isinstance(refusal, wire.Error) and refusal.id == 5
            assert refusal.code is ErrorCode.BAD_REQUEST and "seed" in refusal.message
            await conn.send(wire.Generate(6, "m", "six"))
            assert await conn.receive() == wire.Token(6, "six", (1,))
            assert isinstance(await conn.receive(), wire.Done)
            await conn.aclose()
        nursery.cancel_scope.cancel()
