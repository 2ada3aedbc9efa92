"""p2p/cli/common.py: one-line failures out of trio, and where a client joins by default."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from p2p.cli.common import (
    NODE_FILE,
    CommandError,
    client_bootstrap,
    fail,
    is_address_in_use,
    local_node_address,
    run_trio,
)


def test_an_expected_error_inside_trio_becomes_one_line_with_its_hint() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def listen() -> None:
            await trio.open_tcp_listeners(port, host="127.0.0.1")

        async def bind_again() -> None:
            async with trio.open_nursery() as nursery:  # an error group, as a server gives
                nursery.start_soon(listen)

        def hint(err: BaseException) -> str:
            return " (port taken)" if is_address_in_use(err) else ""

        with pytest.raises(CommandError) as caught:
            run_trio(bind_again, (OSError,), hint=hint)
    assert caught.value.format_message().endswith(" (port taken)")


def test_fail_inside_trio_is_not_wrapped() -> None:
    async def refuse() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail_soon)

    async def fail_soon() -> None:
        fail("no such thing")

    with pytest.raises(CommandError, match=r"^no such thing$"):
        run_trio(refuse, ())


def test_an_unexpected_error_is_not_hidden() -> None:
    async def bug() -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_trio(bug, (OSError,))


def test_ctrl_c_is_reported_not_raised() -> None:
    async def interrupted() -> None:
        raise KeyboardInterrupt

    assert run_trio(interrupted, ()) is False


def test_a_client_joins_the_node_of_its_data_dir(tmp_path: Path) -> None:
    assert client_bootstrap((), tmp_path) == []
    (tmp_path / NODE_FILE).write_text(json.dumps({"dht": "[::1]:8468"}))
    assert local_node_address(tmp_path) == ("::1", 8468)
    assert client_bootstrap((), tmp_path) == [("::1", 8468)]
    assert client_bootstrap((("192.0.2.1", 1),), tmp_path) == [("192.0.2.1", 1)]
    (tmp_path / NODE_FILE).write_text("{not json")
    assert client_bootstrap((), tmp_path) == []
