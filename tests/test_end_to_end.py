"""Three real `gpunet node` processes on 127.0.0.1 and `gpunet ask`/`peers` run as processes.

One bootstrap node serving the tiny GGUF, one joining node serving the real default model, one
joining node serving a second tiny GGUF. Every command is run the way a user runs it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.default_model import DEFAULT_MODEL_SHA256
from tests.conftest import _load_make_tiny_gguf

pytestmark = pytest.mark.slow

GPUNET = [sys.executable, "-m", "p2p"]
READY_TIMEOUT_S = 120


class NodeProcess:
    def __init__(self, args: list[str], data_dir: Path) -> None:
        env = dict(os.environ, GPUNET_DATA_DIR=str(data_dir), GPUNET_BOOTSTRAP="")
        self.proc = subprocess.Popen(
            [*GPUNET, "node", "--dht-port", "0", "--port", "0", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self._wait_ready()
        self.data_dir = data_dir
        assert (data_dir / "node.json").exists()  # how local clients find the node

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _wait_ready(self) -> dict[str, Any]:
        line = self.lines.get(timeout=READY_TIMEOUT_S)
        if not line:
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"node exited before it was ready: {err}")
        ready: dict[str, Any] = json.loads(line)
        assert ready["event"] == "ready"
        return ready

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def run(*args: str, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GPUNET_DATA_DIR=str(data_dir), GPUNET_BOOTSTRAP="")
    return subprocess.run(
        [*GPUNET, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def network(
    tiny_gguf: Path, default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, NodeProcess]]:
    other = _load_make_tiny_gguf()(tmp_path_factory.mktemp("m2") / "tiny-other.gguf", seed=7)
    base = tmp_path_factory.mktemp("nodes")
    nodes: dict[str, NodeProcess] = {}
    try:
        nodes["tiny"] = NodeProcess(["--model", str(tiny_gguf)], base / "a")
        join = ["--bootstrap", nodes["tiny"].ready["dht"]]
        nodes["default"] = NodeProcess([*join, "--model", str(default_model)], base / "b")
        nodes["other"] = NodeProcess([*join, "--model", str(other)], base / "c")
        yield nodes
    finally:
        signals = [signal.SIGINT, signal.SIGTERM, signal.SIGINT]
        codes = [n.stop(sig) for n, sig in zip(nodes.values(), signals, strict=False)]
    assert codes == [0] * len(codes), "nodes must exit cleanly on Ctrl-C and SIGTERM"
    assert not any((n.data_dir / "node.json").exists() for n in nodes.values())


def ask(
    network: dict[str, NodeProcess], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    boot = network["tiny"].ready["dht"]
    return run("ask", "--bootstrap", boot, *args, data_dir=tmp_path)


def test_peers_json_lists_all_three_nodes(network: dict[str, NodeProcess], tmp_path: Path) -> None:
    boot = network["other"].ready["dht"]  # any node works as the entry point
    result = run("peers", "--bootstrap", boot, "--json", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert {r["peer_id"] for r in records} == {n.ready["peer_id"] for n in network.values()}
    for r in records:
        assert r["addresses"] and isinstance(r["gpus"], list)
        for m in r["models"]:
            assert {"name", "sha256", "quantization"} <= set(m)
    default = next(r for r in records if r["peer_id"] == network["default"].ready["peer_id"])
    assert default["models"][0]["sha256"] == DEFAULT_MODEL_SHA256
    assert default["models"][0]["quantization"] == "Q4_K_M"


def test_peers_filtered_by_model(network: dict[str, NodeProcess], tmp_path: Path) -> None:
    boot = network["tiny"].ready["dht"]
    result = run("peers", "--bootstrap", boot, "--model", "tiny-other", "--json", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["peer_id"] for r in json.loads(result.stdout)] == [network["other"].ready["peer_id"]]


@pytest.mark.parametrize("node", ["tiny", "default", "other"])
@pytest.mark.parametrize("by", ["name", "sha256"])
def test_ask_streams_text_from_each_model(
    network: dict[str, NodeProcess], tmp_path: Path, node: str, by: str
) -> None:
    model = network[node].ready["models"][0][by]
    result = ask(
        network,
        tmp_path,
        "--model",
        model,
        "--max-tokens",
        "12",
        "--json",
        "The capital of France is",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["completion_tokens"] == 12 or out["finish_reason"] == "stop"
    assert out["text"]


def test_default_model_continues_text_greedily(
    network: dict[str, NodeProcess], tmp_path: Path
) -> None:
    result = ask(
        network,
        tmp_path,
        "--model",
        "gemma-3-270m-q4_k_m",
        "--max-tokens",
        "16",
        "The capital of France is",
    )
    assert result.returncode == 0, result.stderr
    assert "France" in result.stdout or "Paris" in result.stdout
    again = ask(
        network,
        tmp_path,
        "--model",
        DEFAULT_MODEL_SHA256,
        "--max-tokens",
        "16",
        "The capital of France is",
    )
    assert again.stdout == result.stdout  # greedy on the same node is deterministic


def test_chat_request_is_rendered_by_the_node(
    network: dict[str, NodeProcess], tmp_path: Path
) -> None:
    result = ask(
        network,
        tmp_path,
        "--model",
        "gemma-3-270m-q4_k_m",
        "--chat",
        "--json",
        "--max-tokens",
        "8",
        "What is the capital of France?",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # the rendered turn markers make the prompt longer than the question alone
    assert out["prompt_tokens"] > 10


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gpunet: error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])
    return errors[0]


def test_unknown_model_lists_what_the_network_offers(
    network: dict[str, NodeProcess], tmp_path: Path
) -> None:
    line = one_line_error(ask(network, tmp_path, "--model", "no-such-model", "hi"))
    assert "no-such-model" in line
    for name in ("tiny-llama", "tiny-other", "gemma-3-270m-q4_k_m"):
        assert name in line


def test_unreachable_bootstrap_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody answers on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        line = one_line_error(
            run("ask", "--bootstrap", f"127.0.0.1:{port}", "hi", data_dir=tmp_path)
        )
    assert "no bootstrap peer answered" in line


def test_non_gguf_model_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("not a model")
    line = one_line_error(
        run(
            "node", "--model", str(bogus), "--dht-port", "0", "--port", "0", data_dir=tmp_path / "d"
        )
    )
    assert "GGUF" in line


def test_loose_key_file_permissions_are_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert run("identity", data_dir=data).returncode == 0
    key = data / "identity.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    line = one_line_error(
        run("node", "--model", str(tiny_gguf), "--dht-port", "0", "--port", "0", data_dir=data)
    )
    assert "chmod 600" in line


def test_node_api_serves_the_openai_api_from_the_node(tiny_gguf: Path, tmp_path: Path) -> None:
    """`node --api`: the gateway in the node's process (it reaches its own node in-process,
    tests/p2p/test_node_requests.py)."""
    import openai

    node = NodeProcess(["--model", str(tiny_gguf), "--api", "127.0.0.1:0"], tmp_path / "n")
    try:
        api = openai.OpenAI(base_url=node.ready["api"], api_key="none", max_retries=0)
        raw = api.completions.with_raw_response.create(
            model="tiny-llama", prompt="hello", max_tokens=5, temperature=0
        )
        assert raw.headers["x-gpunet-provider"] == node.ready["peer_id"]
        completion = raw.parse()
        assert completion.usage is not None and completion.usage.completion_tokens == 5
    finally:
        assert node.stop() == 0


def test_node_takes_its_settings_from_config_toml(tiny_gguf: Path, tmp_path: Path) -> None:
    """`gpunet node` with no --model serves the models config.toml names, not the default."""
    data = tmp_path / "n"
    data.mkdir()
    (data / "config.toml").write_text(
        f"[node]\nmodels = [{json.dumps(str(tiny_gguf))}]\nbenchmark = false\n"
    )
    node = NodeProcess([], data)
    try:
        assert [m["name"] for m in node.ready["models"]] == ["tiny-llama"]
        shown = run("config", "--json", data_dir=data)
        by_name = {s["name"]: s for s in json.loads(shown.stdout)["settings"]}
        assert by_name["node.models"]["value"] == [str(tiny_gguf)]
        assert by_name["node.models"]["origin"] == "file"
    finally:
        assert node.stop() == 0


def test_a_broken_config_file_stops_the_node_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "config.toml").write_text("[node]\nslotz = 2\n")
    line = one_line_error(run("node", data_dir=data))
    assert "config.toml: unknown key [node] 'slotz' (did you mean 'slots'?)" in line


def test_a_second_node_on_a_data_dir_or_port_in_use_is_refused_first(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    """The bugs of issue 18 a volunteer meets first: a second node on the same data dir used to
    delete the first's node.json; a taken port used to be reported after the model loaded; the
    request log; `gpunet peers | head` used to print a broken-pipe error."""
    log = tmp_path / "node.log"
    data = tmp_path / "n"
    node = NodeProcess(["--model", str(tiny_gguf), "--no-benchmark", "--log-file", str(log)], data)
    try:
        second = run(
            "node", "--model", str(tiny_gguf), "--dht-port", "0", "--port", "0", data_dir=data
        )
        line = one_line_error(second)
        assert "another gpunet node is already running" in line
        assert node.ready["peer_id"][:16] in line and node.ready["dht"] in line
        assert (data / "node.json").exists()
        dht_port = node.ready["dht"].rpartition(":")[2]
        taken = run(
            "node",
            "--model",
            str(tiny_gguf),
            "--dht-port",
            dht_port,
            "--port",
            "0",
            data_dir=tmp_path / "m",
        )
        assert f"UDP port {dht_port} " in one_line_error(taken)
        assert "Inspecting" not in taken.stderr  # refused before the model is read
        asked = run("ask", "--max-tokens", "3", "--json", "hi", data_dir=data)  # zero-config
        assert asked.returncode == 0, asked.stderr
        piped = subprocess.run(
            f"{sys.executable} -m p2p peers | head -n 0",
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, GPUNET_DATA_DIR=str(data)),
        )
        assert "Broken pipe" not in piped.stderr and "Traceback" not in piped.stderr
    finally:
        assert node.stop() == 0
    served = [x for x in log.read_text().splitlines() if "p2p.node.requests" in x]
    assert len(served) == 1 and " served tiny-llama to " in served[0], served
    assert served[0][:4].isdigit()  # a timestamp first
