"""`gpunet verify FILE`: evidence from a live spot check re-checked with the model alone.

The evidence comes from a real network (tests/p2p/client/live_checks.py): a cheater's output
caught by two verifiers, and an honest node's output written down the same way. The command
recomputes the scores in-process from the tiny GGUF; its verdict and exit status are checked, as
are the receipt checks (a token changed after signing) and unusable input.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import attrs
import pytest
import trio
from click.testing import CliRunner

from crypto.receipts import encode
from p2p.cli.main import main
from p2p.client.evidence import Evidence, load_evidence, to_json, write_evidence
from p2p.client.reputation import Reputation
from p2p.client.spot_check import spot_check
from tests.p2p.client.live_checks import NetworkThread, live_network

TIMEOUT_S = 240


async def _evidence(base: Path, model: Path) -> tuple[Path, Path]:
    """(evidence of a caught random-tokens cheater, the same written for an honest answer)."""
    roles = [("honest", ""), ("cheater", "random-tokens"), ("second", "")]
    with trio.fail_after(TIMEOUT_S):
        async with live_network(base, model, roles) as net:
            (cheated,) = await net.ask("cheater")
            # Every position: the tiny model's logits are nearly flat, and 18 of them can miss
            # random tokens (tests/p2p/client/test_spot_check.py says how often).
            result = await spot_check(net.client, cheated, data_dir=base / "client", sample=None)
            assert result.verdict == "inconsistent" and result.evidence is not None
            (honest,) = await net.ask("honest")
    assert honest.receipt is not None
    written = Evidence(
        honest.peer_id,
        honest.model_sha256,
        honest.request,
        honest.seed,
        honest.output,
        encode(honest.receipt),
        created_at=time.time(),
    )
    return result.evidence, write_evidence(base / "honest", written)


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> tuple[Path, Path]:
    return trio.run(_evidence, tmp_path_factory.mktemp("verify"), tiny_gguf)


def _verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["verify", *args])
    return result.exit_code, result.output


def test_a_cheaters_evidence_is_inconsistent(evidence: tuple[Path, Path], tiny_gguf: Path) -> None:
    code, out = _verify(str(evidence[0]), "--model", str(tiny_gguf), "--threads", "1")
    assert code == 1, out
    assert "verdict: inconsistent" in out
    assert "signed by the node, matches request and output" in out
    code, out = _verify(str(evidence[0]), "--model", str(tiny_gguf), "--json")
    body = json.loads(out)
    assert code == 1 and body["verdict"] == "inconsistent" and body["receipt_valid"]
    assert body["n"] > 0 and body["mismatches"] >= body["n"] // 4


def test_an_honest_answer_is_consistent(evidence: tuple[Path, Path], tiny_gguf: Path) -> None:
    code, out = _verify(str(evidence[1]), "--model", str(tiny_gguf), "--json")
    assert code == 0, out
    assert json.loads(out)["verdict"] == "consistent"


def test_a_token_changed_after_signing_makes_the_file_unusable(
    evidence: tuple[Path, Path], tiny_gguf: Path, tmp_path: Path
) -> None:
    ev = load_evidence(evidence[1])
    changed = attrs.evolve(ev, tokens=(*ev.tokens[:-1], (ev.tokens[-1] + 1) % 512))
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(to_json(changed)))
    code, out = _verify(str(path), "--model", str(tiny_gguf), "--json")
    body = json.loads(out)
    assert code == 2 and body["verdict"] == "inconclusive"
    assert "tokens" in body["receipt_problem"]


def test_unusable_input_is_one_line_and_status_2(
    evidence: tuple[Path, Path], tmp_path: Path, make_tiny_gguf: object
) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"format": "something else"}')
    code, out = _verify(str(garbage))
    assert code == 2 and "not a gpunet evidence file" in out and "Traceback" not in out
    other = make_tiny_gguf(tmp_path / "other.gguf", seed=3)  # type: ignore[operator]
    code, out = _verify(str(evidence[0]), "--model", str(other))
    assert code == 2 and "the receipt names" in out


def test_ask_verify_says_the_verdict(tmp_path: Path, tiny_gguf: Path) -> None:
    with NetworkThread(tmp_path, tiny_gguf, [("honest", ""), ("verifier", "")]) as net:
        boot = net.nodes["honest"].dht_address
        sha = net.nodes["honest"].models[0].sha256
        args = ["ask", "--bootstrap", boot, "--data-dir", str(tmp_path / "me"), "--model", sha]
        result = CliRunner().invoke(
            main, [*args, "--max-tokens", "24", "--verify", "--json", "hello"]
        )
        assert result.exit_code == 0, result.output
        checks = json.loads(result.stdout)["verification"]
        assert [c["verdict"] for c in checks] == ["consistent"]
        result = CliRunner().invoke(main, [*args, "--max-tokens", "24", "--verify", "hello"])
        assert result.exit_code == 0, result.output
        assert ": consistent: " in result.stderr
        standing = Reputation.load(tmp_path / "me").get(checks[0]["peer_id"], sha)
        assert standing.verified >= 1


def test_the_model_is_found_in_the_model_cache_by_sha256(
    evidence: tuple[Path, Path],
    tiny_gguf: Path,
    tmp_path: Path,
    make_tiny_gguf: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    make_tiny_gguf(cache / "another.gguf", seed=9)  # type: ignore[operator]
    (cache / "the-claimed-one.gguf").symlink_to(tiny_gguf)
    monkeypatch.setenv("GPUNET_MODEL_CACHE", str(cache))
    code, out = _verify(str(evidence[0]), "--json")
    assert code == 1, out
    assert json.loads(out)["model_path"].endswith("the-claimed-one.gguf")
    (cache / "the-claimed-one.gguf").unlink()
    code, out = _verify(str(evidence[0]))
    assert code == 2 and "pass --model PATH" in out
