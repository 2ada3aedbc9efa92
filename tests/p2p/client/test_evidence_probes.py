"""Evidence files keep each verifier's prompt-probe values (p2p/client/evidence.py): written and
read back, absent in a file from before probes (empty), bounded and checked on reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.prompt_probes import MAX_PROBES
from p2p.client.evidence import (
    Evidence,
    EvidenceError,
    VerifierScore,
    load_evidence,
    write_evidence,
)
from p2p.protocol import wire

REQUEST = wire.Generate(0, "m", "a prompt", 8, probes=(1, 2, 3))


def _written(tmp_path: Path, probes: tuple[float, ...]) -> Path:
    verifier = VerifierScore("peer-v", "inconsistent", 8, 3, 0.4, (0.0,) * 2, (-0.1,) * 2, probes)
    ev = Evidence("peer-n", "ab" * 32, REQUEST, 5, (1, 2), b"", (verifier,), 1.0)
    return write_evidence(tmp_path, ev)


def test_probe_values_and_draws_are_kept(tmp_path: Path) -> None:
    ev = load_evidence(_written(tmp_path, (-0.5, -3.25, -9.0)))
    assert ev.verifiers[0].probe_logprobs == (-0.5, -3.25, -9.0)
    assert ev.request.probes == (1, 2, 3)  # in the canonical request: what the node was sent


def test_a_file_from_before_probes_reads_as_none(tmp_path: Path) -> None:
    path = _written(tmp_path, (-1.0,))
    body = json.loads(path.read_text())
    del body["verifiers"][0]["probe_logprobs"]
    path.write_text(json.dumps(body))
    assert load_evidence(path).verifiers[0].probe_logprobs == ()


@pytest.mark.parametrize("bad", [["x"], [True], 5, {"a": 1}])
def test_bad_probe_values_are_refused(tmp_path: Path, bad: object) -> None:
    path = _written(tmp_path, (-1.0,))
    body = json.loads(path.read_text())
    body["verifiers"][0]["probe_logprobs"] = bad
    path.write_text(json.dumps(body))
    with pytest.raises(EvidenceError):
        load_evidence(path)


def test_at_most_max_probes_are_read(tmp_path: Path) -> None:
    path = _written(tmp_path, (-1.0,))
    body = json.loads(path.read_text())
    body["verifiers"][0]["probe_logprobs"] = [-1.0] * (MAX_PROBES + 5)
    path.write_text(json.dumps(body))
    assert len(load_evidence(path).verifiers[0].probe_logprobs) == MAX_PROBES
