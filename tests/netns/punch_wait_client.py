"""A one-shot ask from a lab namespace that also reports what `gpunet ask` does not print: how
the session pool waited for the hole punch (`SessionPool.punch_wait`) and the time to first
token as the client saw it (from the request's start: lookup, dial, the wait, the answer). Run
as `python -m tests.netns.punch_wait_client --bootstrap HOST:PORT --model SHA256 [--peer ID]`;
used by tests/netns/test_punch_wait.py and tools/bench_direct_share.py.

A fresh process and session pool, one request through `generate` as `gpunet ask` sends it; one
JSON line: the path its last segment went (labelled as `ask --json` labels it), the peer, the
pool's punch wait (null when no punch was started), the TTFT and the tokens; or the path
"NOT SERVED" with the error.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from typing import Any

import attrs
import trio

from p2p.client.failover import generate
from p2p.client.network import AskError, open_client
from p2p.client.ranking import Provider
from p2p.client.segments import Segment
from p2p.dht.records import node_key
from p2p.host_port import parse_host_port
from p2p.protocol import wire
from p2p.reach.punch_rules import path_label
from tests.netns.lab import Lab, LabError
from tests.netns.lab_gpunet import child_env
from tests.netns.lab_process import ROOT

RECORD_WAIT_S = 60.0  # the volunteer's reservation and publish


async def one_shot(
    bootstrap: str, model: str, peer_id: str | None, timeout_s: float
) -> dict[str, Any]:
    async with open_client([parse_host_port(bootstrap)]) as client:
        if peer_id is not None:
            with trio.fail_after(RECORD_WAIT_S):
                while True:  # a lookup per round: the volunteer publishes on its own schedule
                    records = await client.dht.find_records(node_key(peer_id))
                    if records and records[0].relays:
                        break
                    await trio.sleep(0.5)
        reach_of: dict[str, str] = {}
        segments: list[Segment] = []
        first: list[float] = []

        def on_provider(p: Provider) -> None:
            reach_of[p.record.peer_id] = p.record.reach

        def on_text(_text: str) -> None:
            if not first:
                first.append(trio.current_time())

        request = wire.Generate(1, model, "Hello", max_tokens=4)
        started = trio.current_time()
        try:
            done = await generate(
                client, model, request, on_text, on_provider,
                prefer=peer_id, deadline_s=timeout_s, on_segment=segments.append,
            )  # fmt: skip
        except AskError as exc:  # one line for the caller, as `gpunet ask` prints it
            return {"path": "NOT SERVED", "error": str(exc), "wait": None, "ttft_s": None}
        peer = segments[-1].peer_id if segments else peer_id or ""
        wait = client.pool.punch_wait(peer)
        return {
            "path": path_label(client.pool.served_path(peer), reach_of.get(peer)),
            "peer_id": peer,
            "wait": attrs.asdict(wait) if wait is not None else None,
            "ttft_s": round(first[0] - started, 4) if first else None,
            "tokens": done.completion_tokens,
            "handshakes": client.pool.handshakes,
        }


def run_one_shot(
    lab: Lab,
    ns: str,
    bootstrap: str,
    model: str,
    *,
    peer_id: str | None = None,
    timeout_s: float = 60.0,
    log_name: str | None = None,
) -> dict[str, Any]:
    """This module's client in namespace *ns* (with *peer_id*: that volunteer, once its record
    names relays); its JSON line (LabError when it fails). Its stderr goes to
    `<log_name or punch-wait-client-NS>.log` in the lab's work dir."""
    args = ["--bootstrap", bootstrap, "--model", model, "--timeout", f"{timeout_s:g}"]
    args += ["--peer", peer_id] if peer_id is not None else []
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.punch_wait_client"]
    limit = timeout_s + RECORD_WAIT_S + 30
    try:
        done = subprocess.run(
            cmd + args, capture_output=True, text=True, timeout=limit, env=child_env(), cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"the one-shot client in {ns} ran past {limit:g} s") from exc
    (lab.work_dir / f"{log_name or f'punch-wait-client-{ns}'}.log").write_text(done.stderr)
    if done.returncode != 0:
        raise LabError(f"the one-shot client failed: {done.stderr.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--peer", help="wait for this volunteer's record to name relays")
    parser.add_argument("--timeout", type=float, default=60.0, help="the request's deadline")
    parsed = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("p2p.reach.hole_punch").setLevel(logging.DEBUG)
    result = trio.run(one_shot, parsed.bootstrap, parsed.model, parsed.peer, parsed.timeout)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
