"""`gpunet status`, `pause` and `resume` as a volunteer runs them, against a real `gpunet node`
process on the tiny GGUF (its --serve-hours excluding now, so it starts paused), and their
one-line errors: no node in the data dir, a stale node.json, a node that does not answer."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crypto.identity import Identity, save_identity
from p2p.cli.main import main

GPUNET = [sys.executable, "-m", "p2p"]
READY_TIMEOUT_S = 120


def env_for(data_dir: Path) -> dict[str, str]:
    return dict(os.environ, GPUNET_DATA_DIR=str(data_dir), GPUNET_BOOTSTRAP="")


def gpunet(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GPUNET, *args], capture_output=True, text=True, timeout=120, env=env_for(data_dir)
    )


def hours_excluding_now() -> str:
    hour = dt.datetime.now().hour
    return f"{(hour + 2) % 24:02d}-{(hour + 3) % 24:02d}"


@pytest.fixture(scope="module")
def node(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("status") / "node"
    args = ["node", "--model", str(tiny_gguf), "--port", "0", "--dht-port", "0", "--json"]
    args += ["--no-benchmark", "--no-port-mapping", "--threads", "1", "--api", "127.0.0.1:0"]
    args += ["--serve-hours", hours_excluding_now()]
    proc = subprocess.Popen(
        [*GPUNET, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env_for(data_dir),
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    try:
        line = lines.get(timeout=READY_TIMEOUT_S)
        if not line:
            raise AssertionError(f"node exited: {proc.communicate(timeout=10)[1]}")
        yield {"data_dir": data_dir, **json.loads(line)}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def status(data_dir: Path) -> dict[str, Any]:
    result = gpunet(data_dir, "status", "--json")
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads(result.stdout)
    return state


def test_status_pause_resume_and_metrics(node: dict[str, Any]) -> None:
    data_dir = node["data_dir"]
    state = status(data_dir)
    assert state["peer_id"] == node["peer_id"]
    assert state["paused"] and state["reasons"] == ["serve_hours"]
    assert state["serve_hours"] == hours_excluding_now()
    assert state["models"][0]["name"] == "tiny-llama" and state["models"][0]["context"] == 512

    resumed = gpunet(data_dir, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "still PAUSED outside its serve hours" in resumed.stdout

    paused = gpunet(data_dir, "pause")
    assert paused.returncode == 0 and paused.stdout.startswith("paused:"), paused
    assert status(data_dir)["reasons"] == ["owner", "serve_hours"]

    refused = gpunet(data_dir, "ask", "--max-tokens", "4", "hello")
    assert refused.returncode == 1 and "paused" in refused.stderr, refused

    table = gpunet(data_dir, "status")
    assert table.returncode == 0, table.stderr
    assert "PAUSED by its owner" in table.stdout
    assert "tiny-llama" in table.stdout and "refused:    paused 1" in table.stdout

    with urllib.request.urlopen(node["api"].removesuffix("/v1") + "/metrics", timeout=10) as r:
        page = r.read().decode()
    assert 'gpunet_node_refusals_total{code="paused"} 1.0' in page
    assert "gpunet_node_paused 1.0" in page
    assert "gpunet_gateway_requests_total" in page  # the gateway's own series are still there


def test_no_node_and_a_stale_node_file_fail_naming_the_data_dir(
    node: dict[str, Any], tmp_path: Path
) -> None:
    empty = gpunet(tmp_path / "empty", "status")
    assert empty.returncode == 1
    assert f"no gpunet node is running from {tmp_path / 'empty'}" in empty.stderr
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "node.json").write_text((node["data_dir"] / "node.json").read_text())
    result = gpunet(stale, "pause")
    assert result.returncode == 1 and "is stale" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_node_that_does_not_answer_fails_within_the_timeout(tmp_path: Path) -> None:
    identity = Identity.generate()
    save_identity(identity, tmp_path / "identity.pem")
    with socket.socket() as silent:  # accepts TCP (the kernel's backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        node_file = {"peer_id": identity.peer_id, "session": f"127.0.0.1:{port}", "dht": "x"}
        (tmp_path / "node.json").write_text(json.dumps(node_file))
        with open(tmp_path / "node.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as a running node holds it
            result = CliRunner().invoke(
                main, ["status", "--data-dir", str(tmp_path), "--timeout", "0.5"]
            )
    assert result.exit_code == 1
    assert f"at 127.0.0.1:{port} did not answer within 0.5 s" in result.output


def test_an_unreadable_key_is_named(tmp_path: Path) -> None:
    node_file = {"peer_id": Identity.generate().peer_id, "session": "127.0.0.1:9", "dht": "x"}
    (tmp_path / "node.json").write_text(json.dumps(node_file))
    with open(tmp_path / "node.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = CliRunner().invoke(main, ["pause", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"cannot read the node's key {tmp_path / 'identity.pem'}" in result.output
    assert not (tmp_path / "identity.pem").exists()  # never created by a control command
