"""A private network: nodes and clients holding the same network key talk; others are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_end_to_end import NodeProcess, one_line_error, run

pytestmark = pytest.mark.slow


def test_only_key_holders_are_served(tiny_gguf: Path, tmp_path: Path) -> None:
    key = tmp_path / "net.key"
    made = run("identity", "network-key", "new", str(key), data_dir=tmp_path / "k")
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    node = NodeProcess(["--model", str(tiny_gguf), "--network-key", str(key)], tmp_path / "n")
    try:
        boot = node.ready["dht"]
        ok = run(
            "ask",
            "--bootstrap",
            boot,
            "--network-key",
            str(key),
            "--json",
            "--max-tokens",
            "4",
            "hello",
            data_dir=tmp_path,
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["completion_tokens"] == 4
        outsider = run("ask", "--bootstrap", boot, "--max-tokens", "4", "hello", data_dir=tmp_path)
        line = one_line_error(outsider)
        assert "no bootstrap peer answered" in line and "network-key" in line
    finally:
        assert node.stop() == 0
