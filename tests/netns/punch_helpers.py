"""What tests/netns/test_hole_punch.py needs beyond lab.py: the client side, run inside a home
namespace as `python -m tests.netns.punch_helpers --bootstrap HOST:PORT --peer ID --model SHA256`.

lab.py's routers drop an unsolicited SYN rather than answer it with a reset (a reset would close
the sender's fresh mapping, and a punch would then work only when the two SYNs cross in flight,
which on the lab's sub-millisecond links they never do).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from typing import Any

import trio

from p2p.client.failover import generate
from p2p.client.network import open_client
from p2p.dht.records import node_key
from p2p.host_port import parse_host_port
from p2p.protocol import wire
from p2p.session.pool import MultiplexedSession
from tests.netns.lab import Lab, LabError
from tests.netns.lab_gpunet import child_env
from tests.netns.lab_process import ROOT

RECORD_WAIT_S = 60.0  # the volunteer's reachability check, reservation and publish
PUNCH_WAIT_S = 10.0  # the punch's own window is 3 s


async def _second_request(session: MultiplexedSession, model: str) -> int:
    """One request on exactly this session: the completion tokens it was answered with."""
    msg = wire.Generate(0, model, "Hello again", max_tokens=2)
    async with session.request(msg) as (_rid, inbox):
        with trio.fail_after(30):
            while True:
                answer = await inbox.receive()
                if isinstance(answer, wire.Done):
                    return answer.completion_tokens
                if not isinstance(answer, wire.Token):
                    raise RuntimeError(f"the second request got {answer!r}")


async def ask_twice(bootstrap: str, peer_id: str, model: str) -> dict[str, Any]:
    async with open_client([parse_host_port(bootstrap)]) as client:
        with trio.fail_after(RECORD_WAIT_S):
            while True:  # a DHT lookup per round: the volunteer publishes on its own schedule
                records = await client.dht.find_records(node_key(peer_id))
                if records and records[0].relays:
                    record = records[0]
                    break
                await trio.sleep(0.5)
        # the session the client dials first: through the relay, which starts the punch
        first = (await client.pool.get(peer_id, record.addresses, record.relays)).path
        relayed_at = trio.current_time()
        request = wire.Generate(1, model, "Hello", max_tokens=2)
        with trio.fail_after(60):
            done = await generate(client, model, request, lambda _t: None, prefer=peer_id)
        finished = client.pool.punch_finished(peer_id)
        if finished is not None:
            with trio.move_on_after(PUNCH_WAIT_S):
                await finished.wait()
        punch_s = trio.current_time() - relayed_at
        session = await client.pool.get(peer_id, record.addresses, record.relays)
        second = session.path
        tokens = await _second_request(session, model)
        remote = getattr(session.conn, "remote_address", None)
        return {
            "first": first,
            "second": second,
            "remote": list(remote) if remote else None,
            "tokens": [done.completion_tokens, tokens],
            "punched": client.pool.punched,
            "handshakes": client.pool.handshakes,
            "punch_s": round(punch_s, 3),  # from the relayed session to the punch's end
        }


def run_client(lab: Lab, ns: str, bootstrap: str, peer_id: str, model: str) -> dict[str, Any]:
    """This module's client in namespace *ns*; its JSON line (LabError when it fails). Its
    stderr (the punch's tries) goes to `punch-client.log` in the lab's work dir."""
    args = ["--bootstrap", bootstrap, "--peer", peer_id, "--model", model]
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.punch_helpers", *args]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=150, env=child_env(), cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"the punch client in {ns} ran past 150 s") from exc
    (lab.work_dir / "punch-client.log").write_text(done.stderr)
    if done.returncode != 0:
        raise LabError(f"the punch client failed: {done.stderr.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--model", required=True)
    parsed = parser.parse_args()
    # the punch's tries, on stderr: what a failing test shows
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("p2p.reach.hole_punch").setLevel(logging.DEBUG)
    result = trio.run(ask_twice, parsed.bootstrap, parsed.peer, parsed.model)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
