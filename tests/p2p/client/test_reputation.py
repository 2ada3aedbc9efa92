"""Reputation (standing, exclusion, its file's bounds and recovery), the ranking weighing it, the
evidence file format, and a segment's receipt checked against what was sent and received."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from crypto.identity import Identity
from crypto.receipts import Receipt, encode, sign_receipt
from p2p.client import reputation as reputation_mod
from p2p.client.evidence import (
    Evidence,
    EvidenceError,
    VerifierScore,
    load_evidence,
    to_json,
    write_evidence,
)
from p2p.client.ranking import ProviderRanker, rank_providers
from p2p.client.reputation import REPUTATION_FILE, Reputation
from p2p.client.segments import check_receipt
from p2p.protocol import wire
from p2p.protocol.request_hash import request_hash, sampler_settings
from tests.p2p.dht.test_records import SHA, make_record

OTHER = hashlib.sha256(b"other model").hexdigest()


def test_standing_rises_with_verified_work_and_falls_with_failures(tmp_path: Path) -> None:
    rep = Reputation.load(tmp_path)
    assert rep.standing("a", SHA) == 1.0
    for _ in range(20):
        rep.record_verified("a", SHA)
    assert rep.standing("a", SHA) == pytest.approx(1.2)
    rep.record_failure("b", SHA, tmp_path / "e1.json", caught=False)
    assert rep.standing("b", SHA) == pytest.approx(0.25)
    assert not rep.is_excluded("b", SHA)
    rep.record_failure("b", SHA, tmp_path / "e2.json", caught=True)
    assert rep.standing("b", SHA) == 0.0 and rep.is_excluded("b", SHA)
    assert not rep.is_excluded("b", OTHER)  # only for the model it lied about
    again = Reputation.load(tmp_path)
    assert again.get("b", SHA).evidence == [str(tmp_path / "e1.json"), str(tmp_path / "e2.json")]
    assert again.is_excluded("b", SHA) and again.get("a", SHA).verified == 20


def test_the_file_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reputation_mod, "MAX_ENTRIES", 5)
    clock = iter(range(1000))
    rep = Reputation.load(tmp_path, clock=lambda: float(next(clock)))
    for i in range(8):
        rep.record_verified(f"peer{i}", SHA)
    for i in range(20):
        rep.record_failure("peer7", SHA, tmp_path / f"e{i}.json", caught=False)
    again = Reputation.load(tmp_path)
    assert again.get("peer0", SHA).verified == 0  # the least recently updated went
    assert again.get("peer3", SHA).verified == 1
    assert len(again.get("peer7", SHA).evidence) == reputation_mod.MAX_EVIDENCE


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"version": 99, "entries": {}}),
        json.dumps({"version": 1, "entries": []}),
        json.dumps({"version": 1, "entries": {"a/b": {"verified": -1, "caught": False}}}),
        json.dumps({"version": 1, "entries": {"a/b": {"verified": 1, "caught": "yes"}}}),
    ],
)
def test_an_unreadable_file_is_set_aside(tmp_path: Path, text: str) -> None:
    (tmp_path / REPUTATION_FILE).write_text(text)
    rep = Reputation.load(tmp_path)
    assert rep.standing("a", "b") == 1.0
    assert (tmp_path / (REPUTATION_FILE + ".unreadable")).read_text() == text
    rep.record_verified("a", "b")
    assert Reputation.load(tmp_path).get("a", "b").verified == 1


def test_ranking_weighs_standing_and_drops_the_excluded() -> None:
    ids = [Identity.generate() for _ in range(3)]
    records = [make_record(i) for i in ids]
    rep = Reputation()
    rep.record_failure(ids[0].peer_id, SHA, None, caught=True)
    for _ in range(3):
        rep.record_failure(ids[1].peer_id, SHA, None, caught=False)
    ranker = ProviderRanker(clock=time.time, standing=rep.standing)
    ranked = rank_providers(ranker, records, SHA)
    assert [p.record.peer_id for p in ranked] == [ids[2].peer_id, ids[1].peer_id]
    assert "reputation x0.02" in ranked[1].reason


REQUEST = wire.Generate(0, SHA, "a prompt", 16, 0.5, seed=3, replay_tokens=(1, 2))


def _signed(identity: Identity, **changes: Any) -> bytes:
    receipt = Receipt(
        peer_id=identity.peer_id,
        model_sha256=SHA,
        request_hash=request_hash(REQUEST),
        sampler=sampler_settings(REQUEST),
        seed=3,
        replayed=2,
        prompt_tokens=4,
        output_tokens=(7, 8),
        issued_at=1.0,
    )
    return encode(sign_receipt(attrs.evolve(receipt, **changes), identity))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, ""),
        ({"model_sha256": OTHER}, "model"),
        ({"output_tokens": (7, 9)}, "tokens"),
        ({"request_hash": request_hash(attrs.evolve(REQUEST, prompt="other"))}, "request"),
        ({"seed": 4}, "seed"),
        ({"replayed": 1}, "replayed"),
        ({"prompt_tokens": 5}, "prompt tokens"),
    ],
)
def test_a_receipt_must_vouch_for_exactly_the_segment(
    changes: dict[str, Any], problem: str
) -> None:
    node = Identity.generate()
    signed, why = check_receipt(
        _signed(node, **changes),
        peer_id=node.peer_id,
        model_sha256=SHA,
        request=attrs.evolve(REQUEST, id=77),  # ids are per connection: not hashed
        tokens=(7, 8),
        seed=3,
        prompt_tokens=4,
    )
    assert signed is not None
    assert why == "" if not problem else problem in why


def test_a_receipt_from_another_node_or_garbage_does_not_vouch() -> None:
    node, other = Identity.generate(), Identity.generate()
    kwargs = dict(model_sha256=SHA, request=REQUEST, tokens=(7, 8), seed=3, prompt_tokens=4)
    _, why = check_receipt(_signed(other), peer_id=node.peer_id, **kwargs)  # type: ignore[arg-type]
    assert "peer id" in why
    assert check_receipt(b"", peer_id=node.peer_id, **kwargs)[0] is None  # type: ignore[arg-type]
    assert check_receipt(b"\x01junk", peer_id=node.peer_id, **kwargs)[0] is None  # type: ignore[arg-type]


def _evidence() -> Evidence:
    node = Identity.generate()
    scores = VerifierScore("v" * 52, "inconsistent", 2, 2, 1.0, (math.inf, math.nan), (-1.0, -2.0))
    return Evidence(node.peer_id, SHA, REQUEST, 3, (1, 2, 7, 8), _signed(node), (scores,), 5.0)


def test_evidence_round_trips_through_its_file(tmp_path: Path) -> None:
    ev = _evidence()
    path = write_evidence(tmp_path, ev)
    assert path.parent == tmp_path / "evidence"
    back = load_evidence(path)
    assert back.request == REQUEST and back.tokens == ev.tokens and back.receipt == ev.receipt
    assert back.judged_from == 2
    margins = back.verifiers[0].choice_margins
    assert margins[0] == math.inf and math.isnan(margins[1])
    assert json.loads(path.read_text())["request_readable"]["prompt"] == "a prompt"


@pytest.mark.parametrize(
    "change",
    [
        {"format": "other"},
        {"version": 2},
        {"request": "!!!"},
        {"request": "AAAA"},
        {"tokens": []},
        {"tokens": [-1]},
        {"seed": "x"},
        {"model_sha256": "short"},
        {"verifiers": [{"peer_id": "x"}]},
        {"verifiers": [{}] * 10},
    ],
)
def test_a_bad_evidence_file_is_an_evidence_error(tmp_path: Path, change: dict[str, Any]) -> None:
    body = {**to_json(_evidence()), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(body))
    with pytest.raises(EvidenceError):
        load_evidence(path)
    with pytest.raises(EvidenceError):
        load_evidence(tmp_path / "missing.json")
