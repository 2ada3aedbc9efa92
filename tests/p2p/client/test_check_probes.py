"""A check judges a random subset of the node's signed prompt probes (p2p/client/spot_check.py
`CHECK_PROBES`, check_window.py `probe_subset`): every subset alike, the Score carries only the
picked draws, the judge pairs the node's value of each picked draw with the verifier's, a receipt
without one value per draw is judged against all of them, and evidence keeps one verifier value
per draw (null where it computed none)."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest

from crypto.identity import Identity
from crypto.receipts import Receipt, pack_logprobs, sign_receipt
from inference.prompt_probes import DEFAULT_PROBES
from p2p.client.check_window import probe_subset
from p2p.client.evidence import Evidence, VerifierScore, load_evidence, write_evidence
from p2p.client.segments import Segment
from p2p.client.spot_check import CHECK_PROBES, _judge, per_draw, probe_pick, score_request
from p2p.protocol import wire
from p2p.protocol.request_hash import request_hash, sampler_settings
from p2p.protocol.score_wire import Scores

SHA = "ab" * 32
DRAWS = tuple(range(1000, 1000 + DEFAULT_PROBES))
REQUEST = wire.Generate(0, SHA, "a prompt", 8, probes=DRAWS)
# The node's value per draw: all distinct, so a value paired with another draw's is off.
NODE_VALUES = tuple(-0.5 * (i + 1) for i in range(DEFAULT_PROBES))


def _segment(values: tuple[float, ...] | None = NODE_VALUES) -> Segment:
    identity = Identity.generate()
    receipt = None
    if values is not None:
        unsigned = Receipt(
            peer_id=identity.peer_id,
            model_sha256=SHA,
            request_hash=request_hash(REQUEST),
            sampler=sampler_settings(REQUEST),
            seed=None,
            replayed=0,
            prompt_tokens=0,
            output_tokens=(7, 8),
            issued_at=1.0,
            probe_logprobs=pack_logprobs(list(values)),
        )
        receipt = sign_receipt(unsigned, identity)
    return Segment(identity.peer_id, SHA, REQUEST, (7, 8), None, receipt)


def _scores(probe_values: tuple[float, ...]) -> Scores:
    return Scores(0, 0, (), (), (), (), (), (), (), 0.0, (), probe_values)


def test_every_subset_is_equally_likely() -> None:
    rng = random.Random(7)
    n, k, draws = 6, 3, 20_000
    counts = {c: 0 for c in itertools.combinations(range(n), k)}
    for _ in range(draws):
        counts[probe_subset(n, k, rng)] += 1  # increasing, so a key of `counts`
    expected = draws / len(counts)
    assert all(abs(c - expected) < 0.15 * expected for c in counts.values())


def test_the_subset_edges() -> None:
    assert probe_subset(5, None) == probe_subset(5, 5) == probe_subset(5, 9) == (0, 1, 2, 3, 4)
    assert probe_subset(0, 3) == ()
    assert len(set(probe_subset(16, 4))) == 4  # the OS's randomness when no rng is given
    with pytest.raises(ValueError, match="at least one"):
        probe_subset(16, 0)


def test_the_score_carries_the_picked_draws_and_the_judge_pairs_them() -> None:
    segment = _segment()
    assert len(probe_pick(segment)) == min(CHECK_PROBES, DEFAULT_PROBES)  # the default
    rng = random.Random(3)
    for _ in range(20):
        pick = probe_pick(segment, 6, rng)  # a subset, as spot_check(probes=6) draws it
        assert len(pick) == 6
        score = score_request(segment, probe_pick=pick)
        assert score.request.probes == tuple(DRAWS[i] for i in pick)
        # a verifier that computes the picked draws' true values: consistent, K asked
        honest = _judge(_scores(tuple(NODE_VALUES[i] for i in pick)), segment, pick)
        assert honest.probes.status == "consistent"
        assert honest.probes.asked == honest.probes.given == len(pick)
        assert honest.probes.largest < 0.01  # the int16 receipt's rounding only
    # the values of other draws than the picked ones are far off: the pairing matters
    pick = tuple(range(6))
    others = tuple(NODE_VALUES[DEFAULT_PROBES - 1 - i] for i in pick)
    assert _judge(_scores(others), segment, pick).probes.status == "inconsistent"


@pytest.mark.parametrize("values", [None, (), NODE_VALUES[:5]])
def test_a_receipt_without_one_value_per_draw_is_judged_against_all(
    values: tuple[float, ...] | None,
) -> None:
    segment = _segment(values)
    pick = probe_pick(segment, CHECK_PROBES)
    assert pick == tuple(range(DEFAULT_PROBES))
    stat = _judge(_scores((-1.0,) * DEFAULT_PROBES), segment, pick)
    assert stat.probes.asked == DEFAULT_PROBES
    assert stat.probes.status == ("inconsistent" if values else "missing")


def test_evidence_keeps_one_verifier_value_per_draw(tmp_path: Path) -> None:
    pick = (1, 4, 9)
    spread = per_draw((-1.5, -2.5, -3.5), pick, DEFAULT_PROBES)
    assert len(spread) == DEFAULT_PROBES
    verifier = VerifierScore("peer-v", "inconsistent", 8, 3, 0.4, (), (), spread)
    ev = Evidence("peer-n", SHA, REQUEST, None, (7, 8), b"", (verifier,), 1.0)
    back = load_evidence(write_evidence(tmp_path, ev)).verifiers[0].probe_logprobs
    assert [back[i] for i in pick] == [-1.5, -2.5, -3.5]
    assert all(math.isnan(v) for i, v in enumerate(back) if i not in pick)
    # values not matching the pick (a verifier answering another count) are kept as they came
    assert per_draw((-1.0,), pick, DEFAULT_PROBES) == (-1.0,)
