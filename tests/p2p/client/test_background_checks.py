"""Background spot checks (the gateway's): a fraction of finished requests checked after the
answer, bounded in number, outcomes into the reputation; and the gateway wiring end to end."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from p2p.api.app import serve_gateway
from p2p.client.background_checks import BackgroundChecks
from p2p.client.check_ledger import LEAN_BOOST, LEAN_LEVEL
from p2p.client.reputation import Reputation
from tests.p2p.client.live_checks import live_network

TIMEOUT_S = 240


async def test_checks_run_after_the_answer_within_their_bound(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, tiny_gguf, [("honest", ""), ("verifier", "")]) as net:
            reputation = Reputation()
            checks = BackgroundChecks(
                net.client, 1.0, reputation, None, max_running=1, rng=random.Random(1)
            )
            segments = await net.ask("honest")
            assert not checks.offer(segments)  # not running yet: nothing started
            async with trio.open_nursery() as nursery:
                await nursery.start(checks.run)
                assert checks.offer(segments)
                assert not checks.offer(segments)  # one at a time: skipped, not queued
                assert checks.skipped == 1
                await checks.idle.wait()
                nursery.cancel_scope.cancel()
            assert checks.verdicts == {"consistent": 1}
            assert reputation.get(net.peer("honest"), segments[0].model_sha256).verified == 1
            never = BackgroundChecks(net.client, 0.0, reputation, None)
            assert not never.offer(segments)
            # A node whose ledger leans towards cheating is checked LEAN_BOOST times as often.
            some = BackgroundChecks(net.client, 0.1, reputation, None)
            assert some.fraction_for(segments) == 0.1
            ledger = reputation.get(net.peer("honest"), segments[0].model_sha256).ledger
            ledger.cusum = LEAN_LEVEL
            assert some.fraction_for(segments) == pytest.approx(0.1 * LEAN_BOOST)
            assert BackgroundChecks(net.client, 0.5, reputation, None).fraction_for(segments) == 1


async def test_the_gateway_checks_its_fraction_and_keeps_the_reputation(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, tiny_gguf, [("honest", ""), ("verifier", "")]) as net:
            checks = BackgroundChecks.of_settings(net.client, 1.0, tmp_path / "gateway")
            assert checks is not None
            assert BackgroundChecks.of_settings(net.client, 0.0, tmp_path / "gateway") is None
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    partial(serve_gateway, net.client, "127.0.0.1", 0, checks=checks)
                )
                model = net.nodes["honest"].models[0].sha256
                body = {"model": model, "prompt": "hello there", "max_tokens": 24}
                async with httpx.AsyncClient(timeout=60) as http:
                    answer = await http.post(url + "/v1/completions", json=body)
                    assert answer.status_code == 200, answer.text
                assert checks.started == 1
                await checks.idle.wait()  # the check runs after the answer went out
                nursery.cancel_scope.cancel()
            assert checks.verdicts == {"consistent": 1}, [c.reason for c in checks.recent]
            again = Reputation.load(tmp_path / "gateway")  # kept in the data dir
            assert sum(again.get(n.peer_id, model).verified for n in net.nodes.values()) == 1
