"""Prompt probes in live spot checks on the real default model: a node that drops the first half
of the prompt is caught on its first checked request even when its answer does not depend on
that half (its signed probe values are not the verifier's), the evidence it leaves is
inconsistent for `gpunet verify` too; an honest node's probes are consistent and it earns
standing."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import pytest
import trio
from click.testing import CliRunner

from inference.prompt_probes import DEFAULT_PROBES
from p2p.cli.main import main
from p2p.client.evidence import load_evidence
from p2p.client.reputation import Reputation
from p2p.client.spot_check import CHECK_PROBES, spot_check
from tests.p2p.client.live_checks import REQUEST, live_network

pytestmark = pytest.mark.slow

TIMEOUT_S = 300
# The answer hardly depends on the first half: the output's own statistics miss the cheat on
# most such prompts; the probes do not.
PROMPT = (
    "Lighthouses were once kept by families who lived on the rocks all year, trimming the wicks "
    "every few hours through the night and writing the weather into a log book that the "
    "inspectors read twice a year. Most of them are automatic now, and the keepers' houses are "
    "museums or holiday cottages.\n\nCount from one to thirty in words, separated by commas: "
    "one, two, three,"
)
ASKED = attrs.evolve(REQUEST, prompt=PROMPT, max_tokens=32)


async def test_a_dropped_prefix_is_caught_on_its_first_check(
    tmp_path: Path, default_model: Path
) -> None:
    roles = [("verifier", ""), ("cheater", "drop-prefix"), ("second", "")]
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, default_model, roles) as net:
            reputation = Reputation.load(tmp_path / "client")
            (segment,) = await net.ask("cheater", ASKED)
            assert segment.receipt is not None and segment.problem == ""
            assert len(segment.request.probes) == DEFAULT_PROBES  # the client's draws, signed for
            assert len(segment.receipt.receipt.probes()) == DEFAULT_PROBES
            result = await spot_check(
                net.client, segment, reputation=reputation, data_dir=tmp_path / "client"
            )
    assert result.verdict == "inconsistent", result.reason
    assert "prompt probes inconsistent" in result.reason
    assert result.caught and result.evidence is not None
    ev = load_evidence(result.evidence)
    # one value per draw; those the check did not judge are NaN (null in the file)
    assert all(len(v.probe_logprobs) == DEFAULT_PROBES for v in ev.verifiers)
    judged = min(CHECK_PROBES, DEFAULT_PROBES)
    assert all(sum(not math.isnan(x) for x in v.probe_logprobs) == judged for v in ev.verifiers)
    args = ["verify", str(result.evidence), "--model", str(default_model)]
    with trio.fail_after(TIMEOUT_S):  # the command runs its own trio loop: on a thread
        run = await trio.to_thread.run_sync(lambda: CliRunner().invoke(main, args))
    assert run.exit_code == 1, run.output
    assert "prompt probes inconsistent" in run.output


async def test_an_honest_nodes_probes_are_consistent(tmp_path: Path, default_model: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, default_model, [("honest", ""), ("verifier", "")]) as net:
            reputation = Reputation.load(tmp_path / "client")
            (segment,) = await net.ask("honest", ASKED)
            result = await spot_check(net.client, segment, reputation=reputation)
    assert result.verdict == "consistent", result.reason
    judged = min(CHECK_PROBES, DEFAULT_PROBES)  # a random subset of the node's probes
    assert f"prompt probes consistent (0/{judged} off" in result.reason
    assert reputation.get(segment.peer_id, segment.model_sha256).verified == 1
