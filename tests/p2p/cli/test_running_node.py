"""One node per data dir (p2p/cli/running_node.py): the lock, node.json, ports checked first."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from p2p.cli.common import NODE_FILE, CommandError
from p2p.cli.running_node import check_ports_free, lock_data_dir, write_node_file


def test_a_second_node_is_refused_naming_the_first_and_changes_nothing(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path)
    write_node_file(tmp_path, {"peer_id": "12D3KooWabcdefghijkl", "dht": "127.0.0.1:8468"})
    before = (tmp_path / NODE_FILE).read_text()
    with pytest.raises(CommandError) as refused:
        lock_data_dir(tmp_path)
    message = refused.value.format_message()
    assert f"another gpunet node is already running from {tmp_path}" in message
    assert f"pid {os.getpid()}" in message and "DHT 127.0.0.1:8468" in message
    assert "--data-dir" in message
    assert (tmp_path / NODE_FILE).read_text() == before  # the running node's file is untouched
    first.release()
    assert not (tmp_path / NODE_FILE).exists()
    again = lock_data_dir(tmp_path)  # released: the next node may start
    again.release()


def test_node_json_is_replaced_whole(tmp_path: Path) -> None:
    write_node_file(tmp_path, {"dht": "127.0.0.1:1"})
    write_node_file(tmp_path, {"dht": "127.0.0.1:2"})
    assert json.loads((tmp_path / NODE_FILE).read_text()) == {"dht": "127.0.0.1:2"}
    assert [p.name for p in tmp_path.iterdir()] == [NODE_FILE]  # no temporary file left


def test_a_port_in_use_is_named_before_anything_loads() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        taken = udp.getsockname()[1]
        in_use = rf"UDP port {taken} \(127\.0\.0\.1:{taken}\) is in use"
        with pytest.raises(CommandError, match=in_use):
            check_ports_free("127.0.0.1", taken, 0)
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        taken = tcp.getsockname()[1]
        with pytest.raises(CommandError, match=rf"TCP port {taken} .*--port"):
            check_ports_free("127.0.0.1", 0, taken)
    check_ports_free("127.0.0.1", 0, 0)  # any free port: nothing to check
