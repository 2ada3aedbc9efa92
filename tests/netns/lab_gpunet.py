"""gpunet inside the lab: `gpunet node` processes in namespaces, `gpunet ask` / `peers` run from
a namespace, and the path a request took as the volunteer's record tells it. Shared by
tests/netns/test_nat_matrix.py and tools/bench_nat.py.

Every command is the user's command (`.venv/bin/gpunet` through `python -m p2p`), started with
`ip netns exec`; readiness is the node's JSON ready line, never a sleep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from tests.netns.lab import INTERNET_IP, Lab, LabError
from tests.netns.lab_process import ROOT, LabProcess

GPUNET = [sys.executable, "-m", "p2p"]
DHT_PORT = 8468
SESSION_PORT = 8469
READY_TIMEOUT_S = 120.0
BOOTSTRAP = f"{INTERNET_IP}:{DHT_PORT}"
# What every lab node runs with: one thread and one slot on the 2-core machines, no start-up
# benchmark (1.5 s a model), a short context (the tiny model's prompts are short).
NODE_FLAGS = ("--threads", "1", "--slots", "1", "--ctx-size", "256", "--no-benchmark")


def child_env() -> dict[str, str]:
    """A lab child's environment: this checkout importable, no GPUNET_* of the user's."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@attrs.frozen
class LabNode:
    """A `gpunet node` running in a namespace, and what its ready line said."""

    label: str
    ns: str
    process: LabProcess
    ready: dict[str, Any]
    model_sha256: str
    started_at: float  # time.monotonic() when the process was started

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])


def start_node(
    lab: Lab,
    ns: str,
    label: str,
    model: Path,
    model_sha256: str,
    data_dir: Path,
    *,
    host: str = "0.0.0.0",
    bootstrap: str | None = BOOTSTRAP,
    extra: tuple[str, ...] = (),
) -> LabProcess:
    """Start `gpunet node` serving *model* in *ns*; `wait_ready` turns it into a LabNode."""
    args = [*GPUNET, "node", "--model", str(model), "--host", host, "--json", *NODE_FLAGS]
    args += ["--dht-port", str(DHT_PORT), "--port", str(SESSION_PORT), "--data-dir", str(data_dir)]
    if bootstrap is not None:
        args += ["--bootstrap", bootstrap]
    args += list(extra)
    return lab.start(ns, args, name=f"node-{label}", env=child_env(), stop_timeout_s=15.0)


def wait_ready(
    proc: LabProcess, ns: str, label: str, model_sha256: str, started_at: float
) -> LabNode:
    ready = proc.wait_json(lambda e: e.get("event") == "ready", READY_TIMEOUT_S)
    return LabNode(label, ns, proc, ready, model_sha256, started_at)


def start_bootstrap(
    lab: Lab, model: Path, model_sha256: str, data_dir: Path, extra: tuple[str, ...] = ()
) -> LabNode:
    """The network's first node, on the lab's internet at INTERNET_IP (the BOOTSTRAP others
    join), started and ready."""
    started = time.monotonic()
    proc = start_node(
        lab, lab.internet_ns, "internet", model, model_sha256, data_dir,
        host=INTERNET_IP, bootstrap=None, extra=extra,
    )  # fmt: skip
    return wait_ready(proc, lab.internet_ns, "internet", model_sha256, started)


@attrs.frozen
class Answer:
    """One `gpunet ask` from a namespace: whether it was served, its JSON, how long it took."""

    ok: bool
    took_s: float
    result: dict[str, Any] | None
    error: str


def ask(
    lab: Lab,
    ns: str,
    model_sha256: str,
    data_dir: Path,
    *,
    prompt: str = "Hello",
    max_tokens: int = 4,
    timeout_s: float = 20.0,
) -> Answer:
    """`gpunet ask --json` from *ns* for the model with *model_sha256*."""
    args = [*GPUNET, "ask", "--bootstrap", BOOTSTRAP, "--data-dir", str(data_dir), "-v"]
    args += ["--model", model_sha256, "--max-tokens", str(max_tokens), "--json"]
    args += ["--timeout", f"{timeout_s:g}", prompt]
    started = time.monotonic()
    try:
        done = _run_in(lab, ns, args, timeout_s + 30)
    except LabError as exc:
        return Answer(False, time.monotonic() - started, None, str(exc)[-300:])
    took = time.monotonic() - started
    if done.returncode != 0:
        return Answer(False, took, None, done.stderr.strip().splitlines()[-1:][0][-600:])
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Answer(False, took, None, f"no JSON answer: {done.stdout[-200:]!r}")
    return Answer(True, took, result, "")


def peers(lab: Lab, ns: str, data_dir: Path) -> list[dict[str, Any]]:
    """`gpunet peers --json` from *ns*: the records the DHT holds."""
    args = [*GPUNET, "peers", "--bootstrap", BOOTSTRAP, "--data-dir", str(data_dir), "--json"]
    done = _run_in(lab, ns, args, 60)
    if done.returncode != 0:
        raise LabError(f"gpunet peers failed: {done.stderr.strip()[-500:]}")
    records: list[dict[str, Any]] = json.loads(done.stdout)
    return records


def settled_records(lab: Lab, ns: str, data_dir: Path, wait_s: float) -> dict[str, dict[str, Any]]:
    """The records by peer id once none says "unknown" any more (a node's first verdict takes
    a few seconds: port mapping's answer, then the helpers' probes), or after *wait_s*."""
    deadline = time.monotonic() + wait_s
    by_peer: dict[str, dict[str, Any]] = {}
    for _ in range(100):  # each round is a `gpunet peers` process: a second or more
        by_peer = {r["peer_id"]: r for r in peers(lab, ns, data_dir)}
        if all(path_of(r) != "unknown" for r in by_peer.values()):
            break
        if time.monotonic() > deadline:
            break
    return by_peer


def listed_ids(lab: Lab, ns: str, address: str, ids: list[bytes]) -> dict[str, Any]:
    """Which of *ids* the DHT node at *address* (HOST:PORT, dialled from *ns*) lists in its
    routing table (tests/netns/dht_table_probe.py): `{"answered": bool, "listed": [hex]}`."""
    args = [sys.executable, "-m", "tests.netns.dht_table_probe", address, *(i.hex() for i in ids)]
    done = _run_in(lab, ns, args, 60)
    if done.returncode != 0:
        raise LabError(f"dht_table_probe failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def path_of(record: dict[str, Any] | None) -> str:
    """How a node says it is reached (its record's `reach`: direct / mapped / relayed), or
    "unknown" while no reachability check has said."""
    if record is None:
        return "no record"
    return str(record.get("reach", "unknown"))


def _run_in(lab: Lab, ns: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *args]
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(args[2:4])} in {ns} ran past {timeout:g} s") from exc
