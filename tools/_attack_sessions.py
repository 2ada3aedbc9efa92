"""Session and gateway attacks of the drill (issue #14: hoarding, one bad value, gateway 500s).

Sessions are opened with this tree's Noise code (`p2p.session.secure.connect`, wire-compatible
with older nodes), each bound to a chosen 127.x.y.z source. Requests the wire would refuse to
build (a seed of 2^32 - 1, a replay as long as max_tokens) are written as plain msgpack maps and
encrypted on the session's channel directly: the drill must send what honest code never sends.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import httpx
import msgpack
import trio

from crypto.identity import Identity
from p2p.protocol import wire
from p2p.session.secure import SecureConnection, SessionError, connect

HANDSHAKES_AT_ONCE = 64  # concurrent, bounded: handshakes cost CPU on a 2-core machine
# A node out of descriptors leaves connections unaccepted in its backlog: each such attempt
# waits this long before it is retried.
HANDSHAKE_WAIT_S = 5.0
# How long the attacker works at filling its sessions before the legitimate ask is measured
# (the attack goes on during the ask).
HOARD_OPEN_S = 45.0
ANSWER_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 30.0


# --- attack 2: hoarded sessions -----------------------------------------------------------------


@attrs.define
class Hoard:
    """An attacker that keeps trying to hold `sessions` silent authenticated sessions.

    Sessions come from `sources` addresses (127.30.<i>.1) and send nothing after the
    handshake. `HANDSHAKES_AT_ONCE` attempts run at a time and are retried, for as long as the
    hoard runs, while fewer than `sessions` handshakes have finished: a slot the node frees is
    taken again, as a persistent attacker would. (A held session the node closes is not
    reopened: that would be a handshake flood, which the per-source handshake limits meter.)
    """

    address: str
    peer_id: str
    sessions: int
    sources: int
    held: list[SecureConnection] = attrs.field(factory=list)
    attempts: int = 0
    full: trio.Event = attrs.field(factory=trio.Event)

    async def run(self) -> None:
        """Until cancelled; the caller then calls `release`."""
        identities = [Identity.generate() for _ in range(self.sources)]
        async with trio.open_nursery() as nursery:
            for worker in range(HANDSHAKES_AT_ONCE):
                nursery.start_soon(self._worker, worker, identities)

    async def _worker(self, worker: int, identities: list[Identity]) -> None:
        while len(self.held) < self.sessions:
            index = self.attempts
            self.attempts += 1
            with trio.move_on_after(HANDSHAKE_WAIT_S):
                try:
                    conn = await connect(
                        self.address,
                        identities[index % self.sources],
                        self.peer_id,
                        local_address=f"127.30.{index % self.sources}.1",
                    )
                except (SessionError, OSError):
                    await trio.sleep(0.05 * (worker % 8 + 1))  # refused: retry, a little later
                    continue
                self.held.append(conn)
        self.full.set()

    async def release(self) -> None:
        await release(self.held)


async def release(held: list[SecureConnection]) -> None:
    for conn in held:
        await conn.abort()


# --- attack 3: one bad value --------------------------------------------------------------------


def _generate(request_id: int, model: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": wire.PROTOCOL_VERSION,
        "t": "generate",
        "id": request_id,
        "model": model,
        "prompt": "Once upon a time",
        "max_tokens": 4,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": None,
        "stop": [],
        "messages": [],
        "replay_tokens": [],
        "reproducible": False,
    }
    return {**body, **over}


async def _send_raw(conn: SecureConnection, body: dict[str, Any]) -> None:
    frame = conn._channel.encrypt(msgpack.packb(body, use_bin_type=True))
    await conn._stream.send_all(frame)


async def bad_values(address: str, peer_id: str, model: str, source: str) -> dict[str, Any]:
    """On one session: a seed of 2^32 - 1, a replay as long as max_tokens, then a valid request.

    Figures: what each request got back (the code, or how the session ended), and whether the
    valid request after them was served on the same session."""
    requests = {
        1: _generate(1, model, seed=2**32 - 1),
        2: _generate(2, model, replay_tokens=[5, 6, 7, 8]),
        3: _generate(3, model),
    }
    names = {1: "seed 4294967295", 2: "replay as long as max_tokens", 3: "valid request after"}
    answers: dict[int, str] = {}
    conn = await connect(address, Identity.generate(), peer_id, local_address=source)
    ended = "open"
    try:
        for body in requests.values():
            await _send_raw(conn, body)
        with trio.move_on_after(ANSWER_TIMEOUT_S):
            while len(answers) < len(requests):
                try:
                    msg = await conn.receive()
                except SessionError as exc:
                    ended = f"closed by the node ({exc})"
                    break
                if msg is None:
                    ended = "closed by the node"
                    break
                if isinstance(msg, wire.Error) and msg.id in requests:
                    answers[msg.id] = f"error {msg.code.value}: {msg.message[:80]}"
                elif isinstance(msg, wire.Done) and msg.id in requests:
                    answers[msg.id] = f"done ({msg.completion_tokens} tokens)"
    finally:
        await conn.abort()
    return {
        "answers": {names[i]: answers.get(i, f"no answer; session {ended}") for i in requests},
        "session": ended if ended != "open" else "survived",
        "valid_request_served": answers.get(3, "").startswith("done"),
    }


# --- attack 6: gateway 500s ---------------------------------------------------------------------


async def gateway_inputs(base_url: str, model: str) -> dict[str, Any]:
    """Status codes of the gateway for a 1.5 MB prompt and for deeply nested JSON."""
    prompt = "€" * 500_000  # 1.5 MB of UTF-8, under 524,288 characters
    bodies = {
        "1.5 MB prompt": json.dumps({"model": model, "prompt": prompt}, ensure_ascii=False),
        "nested JSON (100,000 levels)": "[" * 100_000 + "]" * 100_000,
        "lone surrogate in the prompt": json.dumps({"model": model, "prompt": "\ud800"}),
        "valid request after": json.dumps({"model": model, "prompt": "Hi", "max_tokens": 2}),
    }
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
        for what, body in bodies.items():
            started = time.monotonic()
            try:
                answer = await http.post(
                    base_url + "/completions",
                    content=body.encode("utf-8", "surrogatepass"),
                    headers={"content-type": "application/json"},
                )
                code = answer.status_code
                detail = answer.json().get("error", {}) if code >= 400 else {}
            except (httpx.HTTPError, ValueError) as exc:
                code, detail = 0, {"message": type(exc).__name__}
            out[what] = {
                "status": code,
                "code": detail.get("code"),
                "seconds": round(time.monotonic() - started, 2),
            }
    return out
