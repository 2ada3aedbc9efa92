"""Attack drill: issue #14's attacks against a local network, one figure per attack.

Starts a small network on loopback — real `python -m p2p node` processes of the target tree
(`--repo`, default this one) serving tiny random-weight GGUFs (tools/make_tiny_gguf.py), or
`--model FILE` — and runs, in this order (each bounded in time, each reported even when it
fails):

  gateway       `gpunet gateway` of the target: HTTP status for a 1.5 MB prompt (3-byte
                characters), 100,000 levels of nested JSON, a lone surrogate; then a valid one
  bad-values    one session: a seed of 2^32-1, a replay as long as max_tokens, then a valid
                request: each one's answer, whether the session survived
  lies          records with in-range lies (free VRAM > total, 10^18 % utilisation, 999 of 18
                layers, context 2^62, 10^18 free slots): which a node accepts
  amplification find_value on the directory key from a source that proved nothing: answer
                bytes / request bytes (and again after the crowd-out)
  hoarding      N silent authenticated sessions from S sources at one node, kept up while a
                legitimate `ask --prefer` that node runs: its time and result, against its
                time before; the node's descriptors (/proc/PID/fd; nodes run with the usual
                soft limit of 1,024)
  tarpit        R records claiming the top speed, each with 8 addresses that accept TCP and
                never answer, under a second model's keys: `ask` time with them vs without
  crowd-out     Sybil identities from several source /24s store maximum-size,
                maximum-lifetime records under the directory key and the model's keys at every
                node: honest nodes listed by `peers`, whether `ask` succeeds

The attacks use this tree's crypto, record and session code (wire-compatible with older trees),
so `--repo /tmp/gpunet-before` (e.g. `git worktree add /tmp/gpunet-before daa14b5`) measures an
older checkout with the same attacks: before/after figures. Every address is 127.x.y.z; the
nodes and the gateway are stopped at the end, also on failure or Ctrl-C. Takes 1-3 minutes.

    python tools/attack_drill.py [--repo DIR] [--python PY] [--json] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import _attack_dht as dht_attacks  # noqa: E402
from tools import _attack_sessions as session_attacks  # noqa: E402
from tools._attack_net import LocalNetwork, Node, local_network, log  # noqa: E402

ATTACKS = ("gateway", "bad-values", "lies", "amplification", "hoarding", "tarpit", "crowd-out")
NODES = 3
# Any one attack. The longest: hoarding (45 s to open sessions, then two asks of up to 30 s)
# and the tarpit (two asks).
ATTACK_TIMEOUT_S = 180.0
ASK_TIMEOUT_S = 30.0  # a tarpitted ask past it is reported as timed out
PEERS_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 30.0  # until `peers` lists every node


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repo", type=Path, default=ROOT, help="checkout whose nodes and CLI run")
    p.add_argument("--python", default=sys.executable, help="interpreter for the target tree")
    p.add_argument("--model", type=Path, help="GGUF the nodes serve (default: a tiny one)")
    p.add_argument("--only", nargs="+", choices=ATTACKS, help="run only these attacks")
    p.add_argument("--sessions", type=int, default=2000, help="hoarded sessions [2000]")
    p.add_argument("--sources", type=int, default=50, help="their source addresses [50]")
    p.add_argument("--sybils", type=int, default=50, help="crowd-out identities [50]")
    p.add_argument("--sybil-networks", type=int, default=10, help="their source /24s [10]")
    p.add_argument("--tarpits", type=int, default=10, help="tarpit records [10]")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--work", type=Path, help="keep logs and data here (default: a temp dir)")
    args = p.parse_args(argv)
    for name in ("sessions", "sources", "sybils", "sybil_networks", "tarpits"):
        if not 1 <= getattr(args, name) <= 5000:
            p.error(f"--{name.replace('_', '-')} must be 1..5000")
    if args.sybil_networks > 200 or args.sources > 250 or args.tarpits > 250:
        p.error("sources, Sybil networks and tarpits are 127.x.y.z octets: at most 200/250")
    return args


def tiny_models(work: Path) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_gguf", ROOT / "tools/make_tiny_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    make = module.make_tiny_gguf
    return make(work / "tiny-llama.gguf", seed=0), make(work / "tiny-tarpit.gguf", seed=3)


def raise_own_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask_figure(run: Any) -> dict[str, Any]:
    return {"ok": run.ok, "seconds": round(run.seconds, 2), "error": run.error or None}


class Drill:
    def __init__(self, net: LocalNetwork, args: argparse.Namespace, model: str, tarpit: str):
        self.net, self.args, self.model, self.tarpit_model = net, args, model, tarpit

    @property
    def node(self) -> Node:
        return self.net.nodes[0]

    def sha(self, name: str) -> str:
        return self.node.models[name]

    async def wait_joined(self) -> list[str]:
        deadline = trio.current_time() + JOIN_TIMEOUT_S
        listed: list[str] = []
        while trio.current_time() < deadline:
            listed = await self.net.peers(PEERS_TIMEOUT_S) or []
            if len(set(listed) & {n.peer_id for n in self.net.nodes}) == len(self.net.nodes):
                break
            await trio.sleep(1)  # waiting on other processes' publish: no event to wait on
        return listed

    async def gateway(self) -> dict[str, Any]:
        port = free_port()
        child = await trio.to_thread.run_sync(self.net.start_gateway, port)
        try:
            return await session_attacks.gateway_inputs(f"http://127.0.0.1:{port}/v1", self.model)
        finally:
            await trio.to_thread.run_sync(child.stop)

    async def bad_values(self) -> dict[str, Any]:
        result = await session_attacks.bad_values(
            self.node.session, self.node.peer_id, self.sha(self.model), "127.31.0.1"
        )
        cli = await self.net.ask(self.model, ASK_TIMEOUT_S, extra=("--seed", "4294967295"))
        result["cli_seed_4294967295"] = {"ok": cli.ok, "error": cli.error or None}
        return result

    async def lies(self) -> dict[str, Any]:
        accepted = await dht_attacks.in_range_lies(self.node.dht, "127.32.0.1")
        return {"accepted": sum(accepted.values()), "of": len(accepted), "each": accepted}

    async def amplification(self) -> dict[str, Any]:
        return await dht_attacks.amplification(self.node.dht, "127.33.0.1")

    async def hoarding(self) -> dict[str, Any]:
        a = self.args
        # the hoarded node is node 0: the ask prefers it (others serve the model too, and
        # would answer instead: the figure is what the hoard costs a client of that node)
        prefer = ("--prefer", self.node.peer_id)
        before = await self.net.ask(self.model, ASK_TIMEOUT_S, extra=prefer)
        fds_before = self.node.descriptors()
        hoard = session_attacks.Hoard(self.node.session, self.node.peer_id, a.sessions, a.sources)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hoard.run)
                started = time.monotonic()
                with trio.move_on_after(session_attacks.HOARD_OPEN_S):
                    await hoard.full.wait()
                opened_s = time.monotonic() - started
                fds_held = self.node.descriptors()
                completed = len(hoard.held)
                during = await self.net.ask(self.model, ASK_TIMEOUT_S, extra=prefer)
                fds_after_ask = self.node.descriptors()
                nursery.cancel_scope.cancel()
        finally:
            await hoard.release()
        return {
            "sessions_tried": a.sessions,
            "sources": a.sources,
            "handshakes_completed": completed,
            "handshake_attempts": hoard.attempts,
            "seconds_to_open": round(opened_s, 1),
            "node_fds": {"before": fds_before, "held": fds_held, "after_ask": fds_after_ask},
            "ask_before": ask_figure(before),
            "ask_while_held": ask_figure(during),
        }

    async def tarpit(self) -> dict[str, Any]:
        sha = self.sha(self.tarpit_model)
        nodes = [n.dht for n in self.net.nodes]
        normal = await self.net.ask(self.tarpit_model, ASK_TIMEOUT_S)
        async with trio.open_nursery() as nursery:
            rows = await dht_attacks.open_tarpits(nursery, self.args.tarpits, 8)
            stored = await dht_attacks.store_tarpits(nodes, sha, self.tarpit_model, rows)
            held = await self.net.ask(self.tarpit_model, ASK_TIMEOUT_S)
            nursery.cancel_scope.cancel()
        return {
            "records": len(rows),
            "stores_accepted": stored,
            "ask_without": ask_figure(normal),
            "ask_with_tarpits": ask_figure(held),
            "extra_seconds": round(held.seconds - normal.seconds, 1),
        }

    async def crowd_out(self) -> dict[str, Any]:
        a = self.args
        nodes = [n.dht for n in self.net.nodes]
        honest = {n.peer_id for n in self.net.nodes}
        stores = await dht_attacks.crowd_out(
            nodes, self.sha(self.model), self.model, a.sybils, a.sybil_networks
        )
        listed = await self.net.peers(PEERS_TIMEOUT_S)
        ask = await self.net.ask(self.model, ASK_TIMEOUT_S)
        amplified = await dht_attacks.amplification(self.node.dht, "127.33.0.2")
        return {
            "sybils": a.sybils,
            "source_networks": a.sybil_networks,
            **stores,
            "honest_listed": len(honest & set(listed or [])),
            "honest": len(honest),
            "peers_failed": listed is None,
            "ask": ask_figure(ask),
            "amplification_after": amplified,
        }


def summary(name: str, r: dict[str, Any]) -> str:
    """The one line per attack."""
    if "error" in r and len(r) == 1:
        return f"{name}: the attack itself failed: {r['error']}"
    if name == "gateway":
        return "gateway: " + ", ".join(f"{k} -> {v['status']}" for k, v in r.items())
    if name == "bad-values":
        cli = r["cli_seed_4294967295"]
        said = "accepted and served" if cli["ok"] else f"refused: {cli['error']}"
        return f"bad-values: {r['answers']}; session {r['session']}; `ask --seed 4294967295` {said}"
    if name == "lies":
        kept = [k for k, v in r["each"].items() if v]
        return f"lies: {r['accepted']} of {r['of']} accepted ({', '.join(kept) or 'none'})"
    if name == "amplification":
        return (
            f"amplification: {r['answer_bytes']} B answer / {r['request_bytes']} B request"
            f" = {r['ratio']}x"
        )
    if name == "hoarding":
        during, fds = r["ask_while_held"], r["node_fds"]
        return (
            f"hoarding: {r['handshakes_completed']} of {r['sessions_tried']} silent sessions "
            f"from {r['sources']} sources held after {r['seconds_to_open']} s "
            f"({r['handshake_attempts']} attempts, going on during the ask); ask "
            f"{'ok' if during['ok'] else 'FAILED'} in {during['seconds']} s (before: "
            f"{r['ask_before']['seconds']} s); node fds {fds['before']} -> {fds['held']}"
        )
    if name == "tarpit":
        w = r["ask_with_tarpits"]
        return (
            f"tarpit: {r['records']} records ({r['stores_accepted']} stores accepted); ask "
            f"{'ok' if w['ok'] else 'FAILED'} in {w['seconds']} s with them vs "
            f"{r['ask_without']['seconds']} s without (+{r['extra_seconds']} s)"
        )
    if name == "crowd-out":
        amp = r["amplification_after"]
        return (
            f"crowd-out: {r['stored']} of "
            f"{r['datagrams']} stores accepted; honest listed {r['honest_listed']} of "
            f"{r['honest']}; ask {'ok' if r['ask']['ok'] else 'FAILED'}; find_value answer "
            f"then {amp['ratio']}x"
        )
    return f"{name}: {r}"


async def run_drill(drill: Drill, attacks: list[str], as_json: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "gateway": drill.gateway,
        "bad-values": drill.bad_values,
        "lies": drill.lies,
        "amplification": drill.amplification,
        "hoarding": drill.hoarding,
        "tarpit": drill.tarpit,
        "crowd-out": drill.crowd_out,
    }
    joined = await drill.wait_joined()
    results["network"] = {"nodes": len(drill.net.nodes), "listed_at_start": len(joined)}
    for name in attacks:
        log(f"-- {name}")
        try:
            with trio.fail_after(ATTACK_TIMEOUT_S):
                results[name] = await runners[name]()
        except Exception as exc:  # one broken attack must not hide the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        if not as_json:
            print(summary(name, results[name]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    attacks = [a for a in ATTACKS if not args.only or a in args.only]
    raise_own_descriptor_limit()
    work = args.work or Path(tempfile.mkdtemp(prefix="attack-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    tiny, tarpit = tiny_models(work)
    served = [args.model or tiny, tarpit]
    started = time.monotonic()
    try:
        with local_network(args.repo.resolve(), args.python, work) as net:
            for _ in range(NODES):
                net.start_node(served)
            model = next(n for n in net.nodes[0].models if n != "tiny-tarpit")
            drill = Drill(net, args, model, "tiny-tarpit")
            log(f"{NODES} nodes of {args.repo} up; logs in {work}")
            results = trio.run(run_drill, drill, attacks, args.json)
    finally:
        if args.work is None:  # a temp dir of models, data dirs and logs: --work keeps them
            shutil.rmtree(work, ignore_errors=True)
    results["repo"] = str(args.repo)
    results["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
