"""The local network the attack drill attacks: real `python -m p2p` processes of a target tree.

The target is any checkout (`--repo`): its nodes, its `peers`, `ask` and `gateway` run from its
own source with the interpreter given, so an older tree is measured with its own code. Nodes
run with the usual soft limit of 1,024 descriptors (what a volunteer's shell gives them), even
when the drill raised its own limit to hold many sessions. Loopback only: every process binds
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import trio

from tools._bench_servers import Process

NODE_READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
# The soft limit a login shell usually gives a process; the hoarding attack is about it.
NODE_SOFT_NOFILE = 1024
HOST = "127.0.0.1"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _node_limits() -> None:  # runs in the child, before exec
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NODE_SOFT_NOFILE if hard == resource.RLIM_INFINITY else min(NODE_SOFT_NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


@attrs.define
class Node:
    child: Process
    peer_id: str
    dht: tuple[str, int]
    session: str
    models: dict[str, str]  # name -> sha256

    @property
    def pid(self) -> int:
        return self.child.proc.pid

    def descriptors(self) -> int:
        """Open descriptors of the node process, from /proc."""
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return -1


@attrs.define
class CliRun:
    ok: bool
    seconds: float
    stdout: str
    error: str  # the last line of stderr when it failed, or "timed out after N s"


@attrs.define
class LocalNetwork:
    """Nodes of the target tree on loopback, and its CLI pointed at them."""

    repo: Path
    python: str
    work: Path
    nodes: list[Node] = attrs.field(factory=list)
    children: list[Process] = attrs.field(factory=list)

    def _start(self, cmd: list[str], env: dict[str, str], log_path: Path) -> Process:
        return Process(
            cmd,
            log_path,
            env,
            cwd=self.repo,
            preexec_fn=_node_limits,
            stop_timeout_s=STOP_TIMEOUT_S,
        )

    def env(self, data_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
        env["GPUNET_DATA_DIR"] = str(data_dir)
        env["PYTHONPATH"] = str(self.repo)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @property
    def bootstrap(self) -> str:
        host, port = self.nodes[0].dht
        return f"{host}:{port}"

    def start_node(self, models: list[Path], threads: int = 1) -> Node:
        index = len(self.nodes)
        data = self.work / f"node{index}"
        cmd = [self.python, "-m", "p2p", "node", "--host", HOST, "--dht-port", "0"]
        cmd += ["--port", "0", "--threads", str(threads), "--json"]
        for m in models:
            cmd += ["--model", str(m)]
        if self.nodes:
            cmd += ["--bootstrap", self.bootstrap]
        child = self._start(cmd, self.env(data), self.work / f"node{index}.log")
        self.children.append(child)
        ready = child.ready_json(NODE_READY_TIMEOUT_S)
        host, _, port = str(ready["dht"]).rpartition(":")
        node = Node(
            child,
            str(ready["peer_id"]),
            (host, int(port)),
            str(ready["session"]),
            {str(m["name"]): str(m["sha256"]) for m in ready.get("models", [])},
        )
        self.nodes.append(node)
        return node

    def start_gateway(self, port: int) -> Process:
        cmd = [self.python, "-m", "p2p", "gateway", "--bootstrap", self.bootstrap]
        cmd += ["--api", f"{HOST}:{port}", "--json"]
        child = self._start(cmd, self.env(self.work / "gateway"), self.work / "gw.log")
        self.children.append(child)
        child.ready_json(NODE_READY_TIMEOUT_S)
        return child

    async def cli(self, args: list[str], timeout: float) -> CliRun:
        """One `python -m p2p ARGS` of the target tree, with a fresh client data dir."""
        data = Path(tempfile.mkdtemp(prefix="client", dir=self.work))
        cmd = [self.python, "-m", "p2p", *args]
        started = time.monotonic()
        with trio.move_on_after(timeout):
            done = await trio.run_process(
                cmd,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env(data),
                cwd=self.repo,
            )
            seconds = time.monotonic() - started
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            error = (
                "" if done.returncode == 0 else (lines[-1] if lines else f"rc {done.returncode}")
            )
            return CliRun(
                done.returncode == 0, seconds, done.stdout.decode(errors="replace"), error
            )
        return CliRun(False, time.monotonic() - started, "", f"timed out after {timeout:g} s")

    async def ask(
        self, model: str, timeout: float, max_tokens: int = 4, extra: tuple[str, ...] = ()
    ) -> CliRun:
        args = ["ask", "--bootstrap", self.bootstrap, "--model", model]
        args += ["--max-tokens", str(max_tokens), "--json", *extra, "Once upon a time"]
        return await self.cli(args, timeout)

    async def peers(self, timeout: float) -> list[str] | None:
        run = await self.cli(["peers", "--bootstrap", self.bootstrap, "--json"], timeout)
        if not run.ok:
            return None
        try:
            return [str(r["peer_id"]) for r in json.loads(run.stdout)]
        except (ValueError, KeyError, TypeError):
            return None

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


@contextlib.contextmanager
def local_network(repo: Path, python: str, work: Path) -> Iterator[LocalNetwork]:
    net = LocalNetwork(repo, python, work)
    try:
        yield net
    finally:
        net.stop()
