"""A client that times requests as the client sees them, run inside a lab namespace by
tools/bench_nat.py (a `gpunet ask` process spends seconds starting Python and joining the DHT,
which would hide what a relay hop costs).

``python -m tests.netns.stream_timer BOOTSTRAP_HOST:PORT`` joins the DHT once, prints
``{"event": "joined"}``, then reads commands from stdin, one JSON object a line, and answers each
with one JSON line:

  {"first": SHA, "limit_s": S}     retries a 1-token request until one is served; answers
                                   {"event": "served", "at": time.monotonic()} (the clock every
                                   process of the machine shares) or {"event": "never"}
  {"time": SHA, "runs": N, "max_tokens": M, "prompt": P}
                                   one warm-up, then N streamed requests; answers with the
                                   medians of the client's TTFT and decode tok/s and the failures

Both take an optional "prefer": PEER_ID (the request goes to that node alone: volunteers that
serve the same model), and "time" an optional "warmup": false; with "prefer" the answer also
says the path the pool's session to it took (direct / hole-punched / relayed).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import trio

from p2p.client.failover import generate
from p2p.client.network import Client, open_client
from p2p.protocol import wire

RETRY_PAUSE_S = 0.2  # between tries while a volunteer is not findable yet (a benchmark's poll)
TRY_DEADLINE_S = 10.0


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def request(sha: str, prompt: str, max_tokens: int) -> wire.Generate:
    return wire.Generate(id=1, model=sha, prompt=prompt, max_tokens=max_tokens, temperature=0.0)


async def timed(
    client: Client, sha: str, prompt: str, max_tokens: int, prefer: str | None = None
) -> tuple[float, float]:
    """(TTFT s, decode tok/s) of one streamed request, as this client sees them."""
    started = time.monotonic()
    stamps: list[float] = []
    done = await generate(
        client,
        sha,
        request(sha, prompt, max_tokens),
        lambda _text: stamps.append(time.monotonic()),
        prefer=prefer,
        deadline_s=60.0,
    )
    if not stamps:
        raise RuntimeError("no token arrived")
    span = stamps[-1] - stamps[0]
    rate = (done.completion_tokens - 1) / span if span > 0 and done.completion_tokens > 1 else 0.0
    return stamps[0] - started, rate


async def first(client: Client, sha: str, limit_s: float, prefer: str | None = None) -> None:
    deadline = time.monotonic() + limit_s
    for _ in range(10_000):  # bounded by the deadline long before this
        if time.monotonic() > deadline:
            break
        try:
            hi = request(sha, "Hi", 1)
            await generate(client, sha, hi, lambda _t: None, prefer=prefer, deadline_s=10.0)
        except Exception as exc:  # not findable or not reachable yet: the benchmark's point
            # (its log says what each try met: where a volunteer's first seconds go)
            print(f"{time.monotonic():.2f} try failed: {exc!r:.300}", file=sys.stderr, flush=True)
            await trio.sleep(RETRY_PAUSE_S)
            continue
        emit(event="served", at=time.monotonic())
        return
    emit(event="never")


async def time_runs(client: Client, sha: str, cmd: dict[str, Any]) -> None:
    runs, max_tokens, prompt = int(cmd["runs"]), int(cmd["max_tokens"]), str(cmd["prompt"])
    prefer = cmd.get("prefer")
    warmup = 1 if cmd.get("warmup", True) else 0  # warms the session and the node's cache
    ttft, rate, failed = [], [], 0
    for run in range(runs + warmup):
        try:
            t, r = await timed(client, sha, prompt, max_tokens, prefer)
        except Exception as exc:
            failed += 1
            print(f"run {run}: {exc}", file=sys.stderr, flush=True)
            continue
        if run >= warmup:
            ttft.append(t)
            rate.append(r)
    emit(
        event="timed",
        failed=failed,
        ttft_ms=round(statistics.median(ttft) * 1000, 2) if ttft else None,
        decode_tok_s=round(statistics.median(rate), 1) if rate else None,
        path=client.pool.served_path(prefer) if prefer else None,
    )


async def main(bootstrap: str) -> None:
    host, port = bootstrap.rsplit(":", 1)
    async with open_client([(host, int(port))]) as client:
        emit(event="joined")
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            cmd = json.loads(line)
            if "first" in cmd:
                await first(client, cmd["first"], float(cmd["limit_s"]), cmd.get("prefer"))
            else:
                await time_runs(client, cmd["time"], cmd)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
