"""What every command does alike: fail in one line, log, read the network key, find the network.

An expected failure is `fail(message)`: it raises `CommandError`, which click prints as one
`gpunet: error: ...` line on stderr and exits with status 1. Inside `trio.run` the error may come
back wrapped in exception groups; `run_trio` unwraps it (and the other expected errors) so that a
user never sees a traceback for something that is not a bug.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import trio

from crypto.identity import KeyFileError
from crypto.network_key import load_network_key
from p2p.client.network import AskError
from p2p.dht.node import resolve
from p2p.host_port import parse_host_port

NODE_FILE = "node.json"  # where a running node leaves its addresses for local clients


class CommandError(click.ClickException):
    """An expected failure: one line on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"gpunet: error: {self.format_message()}", err=True)


def fail(message: str) -> NoReturn:
    raise CommandError(message)


def find_error(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of *kinds* inside *exc* (trio wraps errors in exception groups)."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_error(inner, kinds)
            if found is not None:
                return found
    return None


def is_address_in_use(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def run_trio(
    main_fn: Callable[[], Awaitable[Any]],
    expected: tuple[type[BaseException], ...],
    *,
    hint: Callable[[BaseException], str] = lambda _exc: "",
) -> bool:
    """`trio.run(main_fn)`; an error of *expected* kinds (or a `CommandError`) fails in one line
    with `hint(error)` appended. Returns False when Ctrl-C ended it, True otherwise."""
    try:
        trio.run(main_fn)
    except BaseException as exc:
        if find_error(exc, (KeyboardInterrupt,)):
            return False
        broken_pipe = find_error(exc, (BrokenPipeError,))
        if broken_pipe is not None:  # stdout's reader left (`| head`): not an error of ours
            raise broken_pipe from None
        command_error = find_error(exc, (CommandError,))
        if command_error is not None:
            raise command_error from None
        err = find_error(exc, expected)
        if err is None:
            raise
        fail(f"{err}{hint(err)}")
    return True


def run_client(main_fn: Callable[[], Awaitable[Any]]) -> None:
    """Run a client command; Ctrl-C exits with 130, as a shell's own commands do."""
    if not run_trio(main_fn, (AskError, OSError)):
        sys.exit(130)


# The request log (p2p/node/runtime.py) is for volunteers: shown without -v.
REQUEST_LOGGER = "p2p.node.requests"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logging(verbose: int, log_file: Path | None = None) -> None:
    """Log to stderr, and also to *log_file* (appended) when given; timestamps on each line."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT, datefmt=DATE_FORMAT)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write the log file {log_file}: {exc.strerror or exc}")
        to_file.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        logging.getLogger().addHandler(to_file)
    logging.getLogger(REQUEST_LOGGER).setLevel(min(level, logging.INFO))
    # kademlia logs every unanswered RPC as a warning (departed clients are normal here);
    # show its chatter only when asked twice.
    for name in ("kademlia", "rpcudp"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)
    # llama.cpp's notes about its own cache layout are for developers, not volunteers.
    logging.getLogger("llama.cpp").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def read_network_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return load_network_key(path)
    except KeyFileError as exc:
        fail(str(exc))


def local_node_address(data_dir: Path) -> tuple[str, int] | None:
    """The DHT address of the node running from *data_dir*, from the file it leaves there."""
    try:
        return parse_host_port(str(json.loads((data_dir / NODE_FILE).read_text())["dht"]))
    except (ValueError, KeyError, TypeError, OSError):  # no node, or a file from another version
        return None


def client_bootstrap(given: Sequence[tuple[str, int]], data_dir: Path) -> list[tuple[str, int]]:
    """Where a client joins: the configured addresses, else the node of the same data dir."""
    if given:
        return list(given)
    local = local_node_address(data_dir)
    return [local] if local is not None else []


async def resolve_all(addresses: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Each (host, port) with the host's name looked up (DHT peers are dialled by address)."""
    out = []
    for host, port in addresses:
        try:
            out.append(await resolve(host, port))
        except OSError as exc:
            fail(f"cannot resolve bootstrap address {host}:{port}: {exc}")
    return out


def printable(text: str) -> str:
    """Text from a stranger's record, with control characters (terminal escapes) replaced."""
    return "".join(c if c.isprintable() else "?" for c in text)
