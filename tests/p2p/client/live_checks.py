"""A small live network for spot-check tests: real nodes on many 127.x.y.z networks, each with
a role (honest, or one of the test-only cheats, docs/security.md), and a client joined to them.

Shared by tests/p2p/client/test_spot_check.py and tests/p2p/cli/test_verify.py.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from inference.model_file import inspect_gguf
from p2p.client.failover import generate
from p2p.client.network import Client, open_client
from p2p.client.segments import Segment
from p2p.node.runtime import NodeConfig, NodeReady, run_node
from p2p.protocol import wire

START_TIMEOUT_S = 120.0
PROMPT = "The quick brown fox jumps over the lazy dog, and then the dog"
REQUEST = wire.Generate(0, "served-model", PROMPT, max_tokens=24, ignore_eos=True)


@attrs.define
class Net:
    client: Client
    nodes: dict[str, NodeReady]  # by role name

    def peer(self, role: str) -> str:
        return self.nodes[role].peer_id

    async def ask(self, role: str, request: wire.Generate = REQUEST) -> list[Segment]:
        """*request* served by the node of *role* (preferred); its segments."""
        segments: list[Segment] = []
        request = attrs.evolve(request, model=self.nodes[role].models[0].sha256)
        await generate(
            self.client,
            request.model,
            request,
            lambda _t: None,
            prefer=self.peer(role),
            on_segment=segments.append,
        )
        return segments


@asynccontextmanager
async def live_network(
    base: Path, model: Path, roles: Sequence[tuple[str, str]]
) -> AsyncIterator[Net]:
    """Nodes serving *model*, one per (role name, cheat) in *roles*, each on its own /24
    (127.<i+1>.0.1); the first is the others' bootstrap."""
    info = inspect_gguf(model)
    nodes: dict[str, NodeReady] = {}
    with trio.fail_after(START_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            bootstrap: tuple[tuple[str, int], ...] = ()
            for i, (role, cheat) in enumerate(roles):
                config = NodeConfig(
                    data_dir=base / role,
                    models=(info,),
                    host=f"127.{i + 1}.0.1",
                    dht_port=0,
                    port=0,
                    n_threads=1,
                    slots=2,
                    n_ctx=512,
                    benchmark=False,
                    bootstrap=bootstrap,
                    cheat=cheat,
                )
                nodes[role] = await nursery.start(run_node, config)
                if not bootstrap:
                    host, _, port = nodes[role].dht_address.rpartition(":")
                    bootstrap = ((host, int(port)),)
            async with open_client(bootstrap) as client:
                yield Net(client, nodes)
            nursery.cancel_scope.cancel()


class NetworkThread:
    """`live_network` on a thread of its own, for synchronous tests of the CLI (which runs its
    own `trio.run`): `with NetworkThread(...) as net:` gives the running `Net`."""

    def __init__(self, base: Path, model: Path, roles: Sequence[tuple[str, str]]) -> None:
        self.base, self.model, self.roles = base, model, roles
        self.net: Net | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-checks", daemon=True)

    def __enter__(self) -> Net:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self.net is None:
            raise AssertionError(f"the network did not start: {self._error!r}")
        return self.net

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None and self._stop is not None:
            self._token.run_sync_soon(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the network did not stop"

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with live_network(self.base, self.model, self.roles) as net:
            self.net = net
            self._ready.set()
            await self._stop.wait()
