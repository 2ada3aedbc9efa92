"""This client's own view of providers' honesty: per (peer id, model sha256), in the data dir.

Earned by verified work (a spot check found a node's output consistent with the model it claims)
and lost by evidence (a check found it inconsistent; p2p/client/evidence.py wrote the proof). A
node is *caught* for a model when two independent verifiers agree its output is inconsistent;
a caught node is excluded for that model (`standing` 0: the ranking drops it), and only for that
model, since the claim that was false is "I serve this file". One failed check without a second
opinion lowers its standing but does not exclude it (the verifier may be the liar).

Checks also add up: every checked request's judged positions and mismatches (and its commitment
scores and prompt probes) go into the pair's `CheckLedger` (p2p/client/check_ledger.py), a
sequential test that catches a node whose output or prompt probes are a little off at many
positions (a close quantization, a context cut short) where no single check can. When it
flags the node, the node is excluded if the mismatches came from two verifiers or more, and
otherwise its standing drops as for one failed check.

Local and unshared: nothing here is an accusation others act on; the evidence files are what
anyone can re-check (`gpunet verify FILE`). The file is JSON with a version, bounded
(`MAX_ENTRIES` pairs, the least recently updated dropped first; `MAX_EVIDENCE` paths each),
written atomically (temporary file + rename), and holds no secrets. A file that cannot be read
(corrupt, too big, another version) is set aside, and the client starts from no opinion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from p2p.client.check_ledger import CheckLedger, ledger_from_json

log = logging.getLogger(__name__)

REPUTATION_FILE = "reputation.json"
FORMAT_VERSION = 1
MAX_ENTRIES = 4096
MAX_EVIDENCE = 8
# 4096 entries of up to ~1.5 KB each (8 evidence paths, a ledger): well under this.
MAX_FILE_BYTES = 16 * 2**20
# A failed check without a second opinion multiplies the standing by this (two: 1/16).
FAILURE_FACTOR = 0.25
# Verified work raises the standing by up to this fraction (reached after VERIFIED_FULL checks).
VERIFIED_BONUS = 0.2
VERIFIED_FULL = 10


@attrs.define
class Standing:
    verified: int = 0
    failed: int = 0
    caught: bool = False
    evidence: list[str] = attrs.field(factory=list)
    updated: float = 0.0
    ledger: CheckLedger = attrs.field(factory=CheckLedger)  # every checked position, summed

    def weight(self) -> float:
        """What the ranking multiplies a provider's score by; 0.0 = excluded."""
        if self.caught:
            return 0.0
        bonus = 1.0 + VERIFIED_BONUS * min(self.verified, VERIFIED_FULL) / VERIFIED_FULL
        return bonus * FAILURE_FACTOR ** min(self.failed, 16)


def _key(peer_id: str, sha256: str) -> str:
    return f"{peer_id}/{sha256}"


class Reputation:
    """The standings, kept in *path* (None: in memory only, e.g. a test or a throwaway client)."""

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._entries: dict[str, Standing] = {}

    @classmethod
    def load(cls, data_dir: Path, clock: Callable[[], float] = time.time) -> Reputation:
        rep = cls(Path(data_dir) / REPUTATION_FILE, clock)
        rep._read()
        return rep

    def get(self, peer_id: str, sha256: str) -> Standing:
        return self._entries.get(_key(peer_id, sha256), Standing())

    def standing(self, peer_id: str, sha256: str) -> float:
        return self.get(peer_id, sha256).weight()

    def is_excluded(self, peer_id: str, sha256: str) -> bool:
        return self.get(peer_id, sha256).caught

    def record_verified(self, peer_id: str, sha256: str) -> None:
        entry = self._entry(peer_id, sha256)
        entry.verified += 1
        self._save()

    def record_failure(
        self, peer_id: str, sha256: str, evidence: Path | None, *, caught: bool
    ) -> None:
        """A check found the node's output inconsistent; *caught*: a second verifier agreed."""
        entry = self._entry(peer_id, sha256)
        entry.failed += 1
        entry.caught = entry.caught or caught
        if evidence is not None:
            entry.evidence = [*entry.evidence, str(evidence)][-MAX_EVIDENCE:]
        self._save()

    def record_positions(
        self,
        peer_id: str,
        sha256: str,
        n: int,
        mismatches: int,
        *,
        sampled: bool,
        verifier: str,
        committed: tuple[int, float] = (0, 0.0),
        probes: tuple[int, float] = (0, 0.0),
    ) -> str:
        """Add one checked request's judged positions (and *committed*: its commitment scores'
        count and sum; *probes*: its prompt probes' count and sum of normalized deltas, as
        `ProbeStat.evidence` gives them) to the pair's ledger. "excluded" or "lowered"
        when the ledger flagged the node now (see the module docstring), else ""."""
        if n <= 0:
            return ""
        entry = self._entry(peer_id, sha256)
        outcome = ""
        count, total = committed
        probe_n, probe_total = probes
        added = entry.ledger.add(
            n, mismatches, sampled=sampled, verifier=verifier, committed_n=count,
            committed_score=total, probe_n=probe_n, probe_total=probe_total,
        )  # fmt: skip
        if added:
            if len(set(entry.ledger.verifiers)) >= 2:
                entry.caught, outcome = True, "excluded"
            else:
                entry.failed, outcome = entry.failed + 1, "lowered"
            entry.ledger.restart()
        self._save()
        return outcome

    def _entry(self, peer_id: str, sha256: str) -> Standing:
        key = _key(peer_id, sha256)
        entry = self._entries.pop(key, None) or Standing()
        entry.updated = self.clock()
        self._entries[key] = entry  # most recently updated last
        while len(self._entries) > MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
        return entry

    def _read(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"over {MAX_FILE_BYTES} bytes")
            body = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(body, dict) or body.get("version") != FORMAT_VERSION:
                raise ValueError("not a reputation file of this version")
            entries = body.get("entries")
            if not isinstance(entries, dict):
                raise ValueError("entries must be a map")
            loaded = {k: _standing(v) for k, v in list(entries.items())[-MAX_ENTRIES:]}
        except (OSError, ValueError, TypeError) as exc:
            aside = path.with_name(path.name + ".unreadable")
            log.warning("reputation file %s unreadable (%s); set aside as %s", path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            return
        self._entries = dict(sorted(loaded.items(), key=lambda kv: kv[1].updated))

    def _save(self) -> None:
        path = self.path
        if path is None:
            return
        body = {
            "version": FORMAT_VERSION,
            "entries": {k: attrs.asdict(v) for k, v in self._entries.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:  # a full disk costs the opinion, not the request
            log.warning("cannot write reputation file %s: %s", path, exc)
            tmp.unlink(missing_ok=True)


def _standing(raw: object) -> Standing:
    if not isinstance(raw, dict):
        raise ValueError("an entry must be a map")
    verified, failed, caught = raw.get("verified", 0), raw.get("failed", 0), raw.get("caught")
    evidence, updated = raw.get("evidence", []), raw.get("updated", 0.0)
    if not (
        isinstance(verified, int)
        and isinstance(failed, int)
        and verified >= 0
        and failed >= 0
        and isinstance(caught, bool)
        and isinstance(evidence, list)
        and all(isinstance(e, str) and len(e) < 4096 for e in evidence)
        and isinstance(updated, int | float)
    ):
        raise ValueError("an entry's fields have the wrong types")
    ledger = ledger_from_json(raw.get("ledger"))
    return Standing(verified, failed, caught, evidence[-MAX_EVIDENCE:], float(updated), ledger)
