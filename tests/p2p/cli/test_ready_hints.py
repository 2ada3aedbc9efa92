"""The ready hints (p2p/cli/ready_hints.py): commands that work where they are printed."""

from __future__ import annotations

from pathlib import Path

from p2p.cli.ready_hints import command_name, join_lines
from p2p.node.config import NodeReady


def nowhere(_name: str) -> str | None:
    return None


def test_the_command_is_the_one_that_runs(tmp_path: Path) -> None:
    script = tmp_path / ".venv" / "bin" / "gpunet"
    script.parent.mkdir(parents=True)
    script.write_text("")
    python = str(tmp_path / ".venv" / "bin" / "python")
    cwd = str(tmp_path)
    assert command_name(str(script), python, cwd, nowhere) == ".venv/bin/gpunet"
    assert command_name(str(script), python, cwd, lambda _n: str(script)) == "gpunet"
    assert command_name(str(script), python, "/elsewhere", nowhere) == str(script)
    main = "/src/p2p/__main__.py"
    assert command_name(main, python, cwd, nowhere) == ".venv/bin/python -m p2p"


def ready(dht: str) -> NodeReady:
    return NodeReady(peer_id="p", dht_address=dht, session_address=dht, models=())


def test_a_loopback_node_says_so_and_a_wildcard_one_never_offers_loopback() -> None:
    local = join_lines(ready("127.0.0.1:8468"), "127.0.0.1", "gpunet")
    assert "Only this machine can reach it" in local[0] and "--host 0.0.0.0" in local[0]
    assert "Others join" not in "\n".join(local)
    wild = "\n".join(join_lines(ready("127.0.1.1:8468"), "0.0.0.0", "gpunet"))
    assert "Others join with:   gpunet node --bootstrap THIS_MACHINE_IP:8468" in wild
    public = "\n".join(join_lines(ready("192.0.2.7:8468"), "0.0.0.0", "x"))
    assert "x node --bootstrap 192.0.2.7:8468" in public
    assert 'x ask --bootstrap 192.0.2.7:8468 "' in public
