"""Evidence files: a failed spot check written down, for anyone holding the model to re-check.

An evidence file holds the provider's signed receipt, the request exactly as it was sent (the
canonical wire encoding, base64, and a readable copy that is never read back), the seed, the
output tokens and what each verifier scored (its prompt-probe values too: the node's are in the
receipt, the draws in the request). `gpunet verify FILE` recomputes the scores from the
model alone and checks the receipt's signature: the file proves that *this* node signed *this*
output for *this* request and model, and the model says whether the output is its own; nothing
the reporter says (the verifiers' scores included) needs to be believed.

Format: versioned JSON (`FORMAT`, `VERSION`); floats that JSON cannot carry are spelled "inf" and
null (NaN: not replayable). Files live in the data dir's `evidence/` folder, at most `MAX_FILES`
of them (the oldest removed), each at most `MAX_FILE_BYTES`; written atomically.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import attrs

from crypto.receipts import MAX_RECEIPT_BYTES
from inference.prompt_probes import MAX_PROBES
from p2p.protocol import wire

FORMAT = "gpunet-evidence"
VERSION = 1
EVIDENCE_DIR = "evidence"
MAX_FILES = 1000
MAX_FILE_BYTES = 16 * 2**20
MAX_VERIFIERS = 4
MAX_TOKENS = wire.MAX_TOKENS_LIMIT


class EvidenceError(ValueError):
    """The file is not a readable evidence file (the message says why)."""


@attrs.frozen
class VerifierScore:
    """One verifier's judgement of the output (its scores are for people; `verify` recomputes)."""

    peer_id: str
    verdict: str
    n: int
    mismatches: int
    score: float
    choice_margins: tuple[float, ...] = ()
    logprobs: tuple[float, ...] = ()
    # Its values at the request's prompt probes (inference/prompt_probes.py), one per draw.
    probe_logprobs: tuple[float, ...] = ()


@attrs.frozen
class Evidence:
    peer_id: str  # the node whose output is in question
    model_sha256: str  # the model it claimed
    request: wire.Generate  # as sent to it (its replay_tokens: the part others generated)
    seed: int | None  # the seed its sampler used
    tokens: tuple[int, ...]  # the output through its segment: replayed + its own
    receipt: bytes  # its signed receipt (crypto/receipts.py encoding); b"" if it sent none
    verifiers: tuple[VerifierScore, ...] = ()
    created_at: float = 0.0

    @property
    def judged_from(self) -> int:
        """The first position that is this node's own work (the replayed ones are not)."""
        return len(self.request.replay_tokens)


def _float_out(v: float) -> float | str | None:
    if math.isnan(v):
        return None
    return "inf" if v == math.inf else v


def _float_in(v: object) -> float:
    if v is None:
        return math.nan
    if v == "inf":
        return math.inf
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise EvidenceError('scores must be numbers, "inf" or null')
    return float(v)


def to_json(ev: Evidence) -> dict[str, Any]:
    request = attrs.evolve(ev.request, id=0)
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_at": ev.created_at,
        "peer_id": ev.peer_id,
        "model_sha256": ev.model_sha256,
        "seed": ev.seed,
        "tokens": list(ev.tokens),
        "receipt": base64.b64encode(ev.receipt).decode("ascii"),
        "request": base64.b64encode(wire.encode(request)).decode("ascii"),
        "request_readable": json.loads(json.dumps(attrs.asdict(request), default=str)),
        "verifiers": [
            {
                **attrs.asdict(v),
                "choice_margins": [_float_out(x) for x in v.choice_margins],
                "logprobs": [_float_out(x) for x in v.logprobs],
                "probe_logprobs": [_float_out(x) for x in v.probe_logprobs],
            }
            for v in ev.verifiers
        ],
    }


def write_evidence(data_dir: Path, ev: Evidence) -> Path:
    """Write *ev* under the data dir's evidence folder; its path."""
    folder = Path(data_dir) / EVIDENCE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ev.created_at or time.time()))
    name = f"{stamp}-{ev.peer_id[:12]}-{ev.model_sha256[:12]}-{os.urandom(3).hex()}.json"
    path = folder / name
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(to_json(ev), indent=1), encoding="utf-8")
    os.replace(tmp, path)
    files = sorted(p for p in folder.glob("*.json") if p.is_file())
    for old in files[: max(0, len(files) - MAX_FILES)]:
        old.unlink(missing_ok=True)
    return path


def load_evidence(path: Path) -> Evidence:
    """The evidence in *path*, every field checked; EvidenceError on anything else."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise EvidenceError(f"{path} is over {MAX_FILE_BYTES} bytes: not an evidence file")
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvidenceError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvidenceError(f"{path} is not JSON") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise EvidenceError(f"{path} is not a gpunet evidence file")
    if body.get("version") != VERSION:
        raise EvidenceError(f"evidence format version {body.get('version')!r:.20} not supported")
    try:
        return _parse(body)
    except (KeyError, TypeError, ValueError, binascii.Error, wire.ProtocolError) as exc:
        raise EvidenceError(f"{path}: {exc}") from exc


def _parse(body: dict[str, Any]) -> Evidence:
    request = wire.decode(base64.b64decode(body["request"], validate=True))
    if not isinstance(request, wire.Generate):
        raise EvidenceError("request is not a generate request")
    receipt = base64.b64decode(body["receipt"], validate=True)
    if len(receipt) > MAX_RECEIPT_BYTES:
        raise EvidenceError("receipt is too long")
    tokens = body["tokens"]
    if not (
        isinstance(tokens, list)
        and 0 < len(tokens) <= MAX_TOKENS
        and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in tokens)
    ):
        raise EvidenceError("tokens: a list of token ids")
    seed = body["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise EvidenceError("seed: a non-negative integer or null")
    peer, sha = body["peer_id"], body["model_sha256"]
    if not (isinstance(peer, str) and isinstance(sha, str) and len(peer) < 128 and len(sha) == 64):
        raise EvidenceError("peer_id and model_sha256 must be strings")
    raw_verifiers = body.get("verifiers", [])
    if not isinstance(raw_verifiers, list) or len(raw_verifiers) > MAX_VERIFIERS:
        raise EvidenceError(f"verifiers: at most {MAX_VERIFIERS}")
    verifiers = tuple(
        VerifierScore(
            peer_id=str(v["peer_id"])[:128],
            verdict=str(v["verdict"])[:32],
            n=int(v["n"]),
            mismatches=int(v["mismatches"]),
            score=_float_in(v["score"]),
            choice_margins=tuple(_float_in(x) for x in v["choice_margins"][:MAX_TOKENS]),
            logprobs=tuple(_float_in(x) for x in v["logprobs"][:MAX_TOKENS]),
            probe_logprobs=tuple(_float_in(x) for x in v.get("probe_logprobs", [])[:MAX_PROBES]),
        )
        for v in raw_verifiers
    )
    created = body.get("created_at", 0.0)
    return Evidence(
        peer_id=peer,
        model_sha256=sha,
        request=request,
        seed=seed,
        tokens=tuple(tokens),
        receipt=receipt,
        verifiers=verifiers,
        created_at=float(created) if isinstance(created, int | float) else 0.0,
    )
