"""Spot checks on a live network: an honest node passes, each cheat is caught by two independent
verifiers, evidence is written, and reputation takes the cheater out of the ranking."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from p2p.client.evidence import load_evidence
from p2p.client.network import lookup_key
from p2p.client.ranking import rank_providers
from p2p.client.reputation import Reputation
from p2p.client.segments import segment_of
from p2p.client.spot_check import CHECK_POSITIONS, spot_check
from p2p.client.token_stream import Progress, receive_answer
from p2p.protocol import wire
from tests.p2p.client.live_checks import REQUEST, live_network

TIMEOUT_S = 240
CODE_PROMPT = (
    "The secret code is 4 9 2 7 1 8 3 6 5 0 4 9 2 7 1 8 3 6. "
    "Now write the secret code five times, one per line:\n"
)


async def test_an_honest_node_is_consistent_and_earns_standing(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, tiny_gguf, [("honest", ""), ("verifier", "")]) as net:
            reputation = Reputation.load(tmp_path / "client")
            net.client.ranker.standing = reputation.standing
            sampled = attrs.evolve(REQUEST, temperature=0.8, seed=11)
            # a sampled request without a seed: the node reports the one it drew with
            unseeded = attrs.evolve(REQUEST, temperature=0.8)
            for request in (REQUEST, sampled, unseeded):
                (segment,) = await net.ask("honest", request)
                assert segment.problem == "" and segment.receipt is not None
                result = await spot_check(
                    net.client, segment, reputation=reputation, data_dir=tmp_path / "client"
                )
                assert result.verdict == "consistent", result.reason
                assert result.verifiers[0].peer_id == net.peer("verifier")
            sha = segment.model_sha256
            assert segment.seed is not None  # the unseeded one's, as the node reported it
            sampled = await spot_check(net.client, segment, sample=16)
            assert sampled.verdict == "consistent" and sampled.verifiers[0].n == 16
            late = await spot_check(net.client, segment, reputation=reputation, deadline_s=0)
            assert late.verdict == "inconclusive" and "no verdict within 0 s" in late.reason
            assert reputation.get(net.peer("honest"), sha).verified == 3
            assert not (tmp_path / "client" / "evidence").exists()
            # kept on disk: a new client reads the same standing
            again = Reputation.load(tmp_path / "client")
            assert again.get(net.peer("honest"), sha).verified == 3


async def test_with_no_other_provider_the_check_is_inconclusive(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, tiny_gguf, [("alone", "")]) as net:
            (segment,) = await net.ask("alone")
            result = await spot_check(net.client, segment)
            assert result.verdict == "inconclusive"
            assert "no other provider" in result.reason


@pytest.mark.parametrize(
    "cheat",
    [
        "other-model",
        "random-tokens",
        # the model's own tokens, with made-up logprob commitments in its signed receipts
        "lying-logprobs",
        # The tiny random model's logits are too flat for a shortened prompt to move its greedy
        # choices by more than honest noise: a real model is needed to see it.
        pytest.param("drop-prefix", marks=pytest.mark.slow),
    ],
)
async def test_a_cheat_is_caught_written_down_and_excluded(
    tmp_path: Path,
    tiny_gguf: Path,
    make_tiny_gguf: Callable[..., Path],
    request: pytest.FixtureRequest,
    cheat: str,
) -> None:
    model, asked, sample, first = tiny_gguf, REQUEST, 16, CHECK_POSITIONS
    if cheat == "random-tokens":
        # The tiny model's logits are nearly flat: a uniformly random token is within the 1-logit
        # margin of the greedy one about half the time, so 16 positions miss the cheat in ~8 %
        # of runs (4 of 16 off is within honest noise). 32 of 48 miss it in ~1e-3.
        # The default 18 positions miss it as often (seen once in a clean-clone run).
        asked, sample = attrs.evolve(REQUEST, max_tokens=48), 32
        first = sample
    if cheat == "other-model":
        other = make_tiny_gguf(tmp_path / "other.gguf", seed=5)
        cheat = f"other-model:{other}"
    if cheat == "drop-prefix":
        model = request.getfixturevalue("default_model")
        # What the answer needs is in the first half, the half the cheater drops.
        asked = attrs.evolve(REQUEST, prompt=CODE_PROMPT)
    roles = [("verifier", ""), ("cheater", cheat), ("second", "")]
    with trio.fail_after(TIMEOUT_S):
        async with live_network(tmp_path, model, roles) as net:
            reputation = Reputation.load(tmp_path / "client")
            net.client.ranker.standing = reputation.standing
            (segment,) = await net.ask("cheater", asked)
            # the receipt is valid: the cheater signs what it sent, and that is the evidence
            assert segment.problem == "" and segment.receipt is not None
            result = await spot_check(
                net.client,
                segment,
                reputation=reputation,
                data_dir=tmp_path / "client",
                sample=first,
            )
            assert result.verdict == "inconsistent", result.reason
            assert result.caught
            sampled = await spot_check(net.client, segment, sample=sample)
            assert sampled.verdict == "inconsistent", sampled.reason
            assert all(v.n == sample for v in sampled.verifiers)
            assert {v.peer_id for v in result.verifiers} == {
                net.peer("verifier"),
                net.peer("second"),
            }
            assert result.evidence is not None
            evidence = load_evidence(result.evidence)
            assert evidence.peer_id == net.peer("cheater")
            assert evidence.tokens == segment.output
            sha = segment.model_sha256
            assert reputation.is_excluded(net.peer("cheater"), sha)
            assert Reputation.load(tmp_path / "client").is_excluded(net.peer("cheater"), sha)
            records, _ = await net.client.find_records(lookup_key(sha))
            ranked = {p.record.peer_id for p in rank_providers(net.client.ranker, records, sha)}
            assert ranked == {net.peer("verifier"), net.peer("second")}
            # even when asked for by name, the excluded node gets no more requests
            (segment,) = await net.ask("cheater")
            assert segment.peer_id != net.peer("cheater")


async def test_a_failover_segment_is_judged_on_its_own_tokens(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    """A segment that continued another node's tokens (failover by exact replay) is checked on
    the tokens it generated, with the replayed ones as context; its receipt counts them."""
    with trio.fail_after(TIMEOUT_S):
        async with live_network(
            tmp_path, tiny_gguf, [("first", ""), ("second", ""), ("verifier", "")]
        ) as net:
            longer = attrs.evolve(REQUEST, max_tokens=32, temperature=0.7, seed=5)
            (whole,) = await net.ask("first", longer)
            # what failover sends the next node once 8 tokens were delivered
            resumed = attrs.evolve(longer, model=whole.model_sha256, replay_tokens=whole.output[:8])
            second = net.nodes["second"]
            session = await net.client.pool.get(second.peer_id, second.session_address)
            progress = Progress()
            done = await receive_answer(session, resumed, progress, lambda _t: None)
            assert isinstance(done, wire.Done)
            tokens = (*progress.token_ids, *done.token_ids)
            segment = segment_of(second.peer_id, whole.model_sha256, resumed, tokens, done)
            assert segment.problem == "" and segment.receipt is not None
            assert segment.receipt.receipt.replayed == 8
            assert segment.output[:8] == whole.output[:8] and len(segment.tokens) == 24
            result = await spot_check(net.client, segment, sample=None)  # every own position
            assert result.verdict == "consistent", result.reason
            assert result.verifiers[0].n == 24  # only its own tokens are judged
