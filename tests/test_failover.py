"""Clients that never lose a request: real node processes on 127.0.0.1, killed, busy, drained.

Every request here runs alone on its node (nothing is batched), so greedy output is
deterministic and a resumed stream must equal an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_end_to_end import GPUNET, NodeProcess, run

pytestmark = pytest.mark.slow

PROMPT = "List the numbers from 1 to 300, separated by commas:"


class AskProcess:
    """`gpunet ask -v` as a process, its stdout and stderr read as they arrive."""

    def __init__(self, boot: str, data_dir: Path, *args: str) -> None:
        env = dict(os.environ, GPUNET_DATA_DIR=str(data_dir), GPUNET_BOOTSTRAP="")
        self.proc = subprocess.Popen(
            [*GPUNET, "ask", "-v", "--bootstrap", boot, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.out: queue.Queue[bytes] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.stdout = b""
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            self.out.put(chunk)
        self.out.put(b"")

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.put(line.decode())
        self.err.put("")

    def next_provider(self, timeout: float = 180) -> str:
        """The peer-id prefix of the next node the client chose (from its -v line)."""
        while True:
            line = self.err.get(timeout=timeout)
            assert line, "ask ended before choosing a provider: " + "".join(self.stderr_lines)
            self.stderr_lines.append(line)
            if " serves " in line:
                return line.strip("[").split(" ", 1)[0]

    def first_output(self, timeout: float = 180) -> None:
        chunk = self.out.get(timeout=timeout)
        assert chunk, "no output"
        self.stdout += chunk

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        while (chunk := self.out.get(timeout=10)) != b"":
            self.stdout += chunk
        while (line := self.err.get(timeout=10)) != "":
            self.stderr_lines.append(line)
        return code


def by_prefix(nodes: dict[str, NodeProcess], prefix: str) -> str:
    return next(k for k, n in nodes.items() if n.ready["peer_id"].startswith(prefix))


@pytest.fixture(scope="module")
def default_trio(
    default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, NodeProcess]]:
    """Three nodes serving the same default model file, each with 2 threads."""
    base = tmp_path_factory.mktemp("failover")
    nodes: dict[str, NodeProcess] = {}
    try:
        args = ["--model", str(default_model), "--threads", "2"]
        nodes["a"] = NodeProcess(args, base / "a")
        join = ["--bootstrap", nodes["a"].ready["dht"]]
        nodes["b"] = NodeProcess([*join, *args], base / "b")
        nodes["c"] = NodeProcess([*join, *args], base / "c")
        yield nodes
    finally:
        for n in nodes.values():
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()


def test_sigkill_mid_stream_gives_the_same_greedy_text(
    default_trio: dict[str, NodeProcess], tmp_path: Path
) -> None:
    boot = default_trio["a"].ready["dht"]
    # reproducible: decoded alone and prefilled afresh (no batching, no reused prompt cache), so
    # the same build and hardware give bit-identical text on whichever node serves it
    exact = ("--reproducible", "--max-tokens", "64", PROMPT)
    reference = run("ask", "--bootstrap", boot, *exact, data_dir=tmp_path)
    assert reference.returncode == 0, reference.stderr

    entry = default_trio["a"].ready["dht"]
    ask = AskProcess(entry, tmp_path, *exact)
    victim = by_prefix(default_trio, ask.next_provider())
    ask.first_output()
    default_trio[victim].proc.kill()  # SIGKILL: no goodbye, mid-stream
    default_trio[victim].proc.wait()
    successor = by_prefix(default_trio, ask.next_provider())
    assert successor != victim
    assert ask.finish() == 0, "".join(ask.stderr_lines)
    assert ask.stdout.decode() == reference.stdout


def test_busy_node_is_skipped(tiny_gguf: Path, tmp_path: Path) -> None:
    busy = NodeProcess(["--model", str(tiny_gguf), "--max-requests", "0"], tmp_path / "busy")
    try:
        free = NodeProcess(
            ["--model", str(tiny_gguf), "--bootstrap", busy.ready["dht"]], tmp_path / "free"
        )
        try:
            # --prefer puts the busy node first, so the busy answer is met on every run
            ask = AskProcess(
                busy.ready["dht"],
                tmp_path,
                "--prefer",
                busy.ready["peer_id"][:12],
                "--max-tokens",
                "4",
                "hello",
            )
            assert busy.ready["peer_id"].startswith(ask.next_provider())
            assert free.ready["peer_id"].startswith(ask.next_provider())
            assert ask.finish() == 0, "".join(ask.stderr_lines)
            chosen = [line for line in ask.stderr_lines if " serves " in line]
            assert free.ready["peer_id"][:16] in chosen[-1]  # the free node served it

            # with every provider busy the answer is one clear line
            free.stop()
            both_busy = run(
                "ask",
                "--bootstrap",
                busy.ready["dht"],
                "--max-tokens",
                "4",
                "hi",
                data_dir=tmp_path,
            )
            assert both_busy.returncode == 1
            assert "Traceback" not in both_busy.stderr
            assert "busy" in both_busy.stderr.strip().splitlines()[-1]
        finally:
            if free.proc.poll() is None:
                free.stop()
    finally:
        busy.stop()


def test_sixteen_concurrent_asks_against_three_nodes_all_complete(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    nodes = [NodeProcess(["--model", str(tiny_gguf)], tmp_path / "n0")]
    try:
        boot = nodes[0].ready["dht"]
        for i in (1, 2):
            nodes.append(
                NodeProcess(["--model", str(tiny_gguf), "--bootstrap", boot], tmp_path / f"n{i}")
            )
        asks = [
            AskProcess(boot, tmp_path, "--json", "--max-tokens", "24", f"request {i}")
            for i in range(16)
        ]
        codes = [a.finish(timeout=180) for a in asks]
        assert codes == [0] * 16, [a.stderr_lines for a in asks if a.proc.returncode]
        for a in asks:
            assert json.loads(a.stdout)["completion_tokens"] == 24
    finally:
        for n in nodes:
            n.stop()


def test_sigterm_during_a_request_lets_it_complete(default_model: Path, tmp_path: Path) -> None:
    node = NodeProcess(["--model", str(default_model), "--threads", "2"], tmp_path / "n")
    try:
        ask = AskProcess(node.ready["dht"], tmp_path, "--json", "--max-tokens", "96", PROMPT)
        ask.next_provider()
        ask.first_output()  # the request is in flight on the node
        node.proc.send_signal(signal.SIGTERM)  # the node drains: in-flight work finishes
        assert ask.finish() == 0, "".join(ask.stderr_lines)
        assert json.loads(ask.stdout)["completion_tokens"] == 96
        assert node.proc.wait(timeout=60) == 0
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
