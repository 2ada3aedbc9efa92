"""The prompt-probe count as a client setting (p2p/client/failover.py, `--probes`): the count
reaches the node over a real session and its receipt signs one value per draw; 0 sends none
and a spot check then says no probes were asked ("none") and still credits the node; the
gateway's queue sends its own count; out-of-range counts are refused with a clear error."""

from __future__ import annotations

import functools
from pathlib import Path

import attrs
import pytest
import trio
from click.testing import CliRunner

from crypto.identity import Identity
from inference.prompt_probes import DEFAULT_PROBES, MAX_PROBES
from p2p.api.app import serve_gateway
from p2p.api.gateway_queue import GatewayQueue
from p2p.cli.main import main
from p2p.cli.node import api_starter
from p2p.client.failover import generate, with_probes
from p2p.client.network import Client
from p2p.client.reputation import Reputation
from p2p.client.segments import Segment
from p2p.client.spot_check import spot_check
from p2p.protocol import wire
from p2p.settings import SETTINGS, resolve
from tests.p2p.client.live_checks import REQUEST, live_network
from tests.p2p.client.test_failover import FakeDht, FakePool, serves
from tests.p2p.dht.test_records import make_record

TIMEOUT_S = 240


def test_the_count_is_checked_and_zero_draws_none() -> None:
    assert with_probes(REQUEST, 0).probes == ()
    assert len(with_probes(REQUEST, 5).probes) == 5
    assert len(with_probes(REQUEST).probes) == DEFAULT_PROBES
    assert len(with_probes(REQUEST, MAX_PROBES).probes) == MAX_PROBES
    given = attrs.evolve(REQUEST, probes=(1, 2))
    assert with_probes(given, 0) == given  # the caller's own draws are kept
    for bad in (-1, MAX_PROBES + 1, True):
        with pytest.raises(ValueError, match=f"from 0 to {MAX_PROBES}"):
            with_probes(REQUEST, bad)


async def test_the_count_reaches_the_node_and_zero_probes_check_as_none(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """Real nodes on the tiny model: 5 probes give a receipt with 5 signed values; 0 give a
    request without draws, a receipt without values, and a consistent spot check whose probe
    status is "none", which counts as verified work (p2p/client/failover.py says why)."""
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, tiny_gguf, [("honest", ""), ("verifier", "")]) as net:
            sha = net.nodes["honest"].models[0].sha256
            by_count: dict[int, Segment] = {}
            for count in (5, 0):
                segments: list[Segment] = []
                await generate(
                    net.client,
                    sha,
                    attrs.evolve(REQUEST, model=sha),
                    lambda _t: None,
                    prefer=net.peer("honest"),
                    on_segment=segments.append,
                    probes=count,
                )
                (by_count[count],) = segments
            rep = Reputation(None)
            result = await spot_check(net.client, by_count[0], reputation=rep)
    for count, segment in by_count.items():
        assert len(segment.request.probes) == count
        assert segment.receipt is not None and segment.receipt.verify()
        assert len(segment.receipt.receipt.probes()) == count
    assert result.verdict == "consistent", result.reason
    assert result.verifiers[0].probe_logprobs == () and "probe" not in result.reason
    standing = rep.get(net.peer("honest"), sha)
    assert standing.verified == 1  # credited: see failover.py on "none"
    assert standing.ledger.checks == 1 and standing.ledger.probes == 0


async def test_the_gateway_queue_sends_its_count() -> None:
    """The queue's `probes` is what the provider receives (a scripted node)."""
    seen: list[int] = []

    def recording(msg: wire.Generate) -> list[wire.Message]:
        seen.append(len(msg.probes))
        return serves(msg)

    identity = Identity.generate()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for count in (0, 3, DEFAULT_PROBES):
                pool = FakePool(nursery, {identity.peer_id: recording})
                dht = FakeDht([make_record(identity)])
                client = Client(dht, Identity.generate(), pool)  # type: ignore[arg-type]
                queue = GatewayQueue(client, probes=count)
                await queue.generate(
                    "tiny-llama", REQUEST, lambda _t: None, lambda _p: None, lambda: False
                )
            nursery.cancel_scope.cancel()
    assert seen == [0, 3, DEFAULT_PROBES]


@pytest.mark.parametrize("value", ["-1", str(MAX_PROBES + 1), "many"])
def test_out_of_range_counts_are_refused_at_the_command_line(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    flag = CliRunner().invoke(main, ["ask", "--probes", value, "hello"])
    assert flag.exit_code == 2 and "--probes" in flag.output, flag.output
    assert "Traceback" not in flag.output
    env = CliRunner().invoke(main, ["ask", "hello"], env={"GPUNET_PROBES": value})
    assert env.exit_code == 1 and "GPUNET_PROBES" in env.output, env.output
    assert f"0 to {MAX_PROBES}" in env.output or "integer" in env.output


@pytest.mark.parametrize("command", ["ask", "node", "gateway"])
def test_the_help_says_what_zero_costs(command: str) -> None:
    text = CliRunner().invoke(main, [command, "--help"]).output
    assert "--probes" in text
    assert "skips part of the prompt" in " ".join(text.split())


def test_node_api_passes_its_count_to_the_gateway(tmp_path: Path) -> None:
    """`gpunet node --api ... --probes N`: the in-process gateway is started with N."""
    flags = {"api": ("127.0.0.1", 0), "probes": 3, "data_dir": tmp_path}
    starter = api_starter(resolve("node", flags, {}))
    assert starter is not None
    start = starter(None)  # type: ignore[arg-type]
    assert isinstance(start, functools.partial) and start.keywords["probes"] == 3
    assert start.func is serve_gateway
