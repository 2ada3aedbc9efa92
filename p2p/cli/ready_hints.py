"""What `gpunet node` prints once it serves: commands a volunteer can paste as they are.

Two things made the old hints wrong: in a clone the command is `.venv/bin/gpunet` or
`python -m p2p`, not a bare `gpunet` on PATH; and a node bound to loopback (the default) cannot
be joined from another machine, while one bound to 0.0.0.0 may advertise a loopback name
(Debian maps the host name to 127.0.1.1). Pure functions of their arguments, for tests.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from p2p.node.config import NodeReady

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def command_name(
    argv0: str,
    executable: str,
    cwd: str,
    which: Callable[[str], str | None],
) -> str:
    """How this shell can run gpunet again: `gpunet` when that is the command on PATH that is
    running, else the path it was run by (`.venv/bin/gpunet`), else `python -m p2p`."""
    run_by = Path(argv0)
    if run_by.name in ("__main__.py", "-m") or run_by.suffix == ".py" or not argv0:
        return f"{shlex.quote(_shorter(executable, cwd))} -m p2p"
    on_path = which(run_by.name)
    if on_path and _same_file(on_path, argv0):
        return run_by.name
    return shlex.quote(_shorter(argv0, cwd))


def _shorter(path: str, cwd: str) -> str:
    """*path* relative to *cwd* when it lies below it (`.venv/bin/gpunet`), else as given."""
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:
        return path
    if rel.startswith(".."):
        return path
    return rel if "/" in rel else f"./{rel}"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def join_lines(ready: NodeReady, bind_host: str, prog: str) -> list[str]:
    """How others join this node and ask it, given the address it was told to bind."""
    dht_host, _, dht_port = ready.dht_address.rpartition(":")
    lines = []
    if is_loopback(bind_host):
        lines.append(
            f"Only this machine can reach it (bound to {bind_host}); --host 0.0.0.0 lets "
            "other machines join."
        )
        lines.append(f"Another node here:  {prog} node --bootstrap {ready.dht_address}")
    else:
        address = ready.dht_address
        if bind_host in WILDCARD_HOSTS and is_loopback(dht_host.strip("[]")):
            address = f"THIS_MACHINE_IP:{dht_port}"  # a loopback name is no use to others
        lines.append(f"Others join with:   {prog} node --bootstrap {address}")
    lines.append(
        f'Ask it:             {prog} ask --bootstrap {ready.dht_address} "The capital of France is"'
    )
    return lines
