"""Spot checks: re-check a finished request's output on an independent provider of the same file.

A provider's segment (p2p/client/segments.py) is re-scored by another provider of the same model
sha256: one `Score` request (wire.Score) teacher-forces the same prompt (or chat), sampler
settings, effective seed and output tokens through its model, one prefill; the positions that
are the checked node's own work are judged (inference/verification.py `judge`, tolerant of
honest batching and hardware noise, intolerant of another model, a dropped prompt or junk).

The verifier is chosen to be independent of the checked node: another peer id, preferably from
another source network (/24, /48), never one this client caught cheating on that model. Its
verdict:

- "consistent": the node's standing for that model grows (p2p/client/reputation.py);
- "inconsistent": an evidence file is written (p2p/client/evidence.py) and a third provider, as
  independent of both as there is, checks again. If it agrees the node is caught (excluded for
  that model); if it disagrees the verifiers contradict each other and nothing is concluded
  ("inconclusive"); if there is no third provider the single verdict stands, and lowers the
  node's standing without excluding it (the verifier may be the liar; the evidence is there for
  anyone to re-check with `gpunet verify`).
- "inconclusive": said as such, with the reason: no other provider of the file, too few tokens,
  a sampled request without a seed (not replayable), no verifier answered.

Cost: a check asks for logits at only `CHECK_POSITIONS` of the node's own positions (the first
`FIRST_POSITIONS` and a random rest within a random window, drawn here with the OS's randomness
so the node cannot know which), since the output layer over the vocabulary costs more per
position than the rest of the model, and feeds the tokens up to the last of them only, since
the prefill is most of what is left (p2p/client/check_window.py). The node's signed logprob
commitments (crypto/receipts.py) are compared at those positions as well
(inference/verification.py), which is what catches a dropped prompt prefix or a close
quantization in one check even when its tokens are the model's choice.

The node's signed prompt-probe values (the receipt's, at the positions the request's draws
name: inference/prompt_probes.py) are judged against the verifier's (`Scores.probe_logprobs`):
inconsistent probes make the check inconsistent whatever the output; a receipt without them
(an older node, or one omitting them) is judged on its output, but a "consistent" check then
does not count as verified work. (The ledger does not sum probe evidence yet: a caught
probe check goes to a second verifier like any inconsistent one.) The verifier recomputes
`CHECK_PROBES` of the request's probes (all of them by default), fewer as a uniform subset drawn
after the node answered (check_window.py `probe_subset`): the Score it is sent carries those
draws only, and the node's signed values at the same draws are judged. Evidence keeps one
verifier value per draw of the request (NaN, null in the file, where it computed none);
`gpunet verify` recomputes them all.

Whatever the verdict, the judged positions and mismatches also go into the (node, model) ledger
(p2p/client/check_ledger.py via the reputation), which sums them over every checked request;
when two verifiers scored one request, the one whose scores move the ledger less counts, so a
verifier that lies cannot add evidence the other did not see.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from crypto.receipts import encode
from inference.prompt_probes import DEFAULT_PROBES
from inference.verification import CheckStat, judge
from p2p.client.check_ledger import request_step
from p2p.client.check_window import FIRST_POSITIONS as FIRST_POSITIONS  # read here by tools
from p2p.client.check_window import check_positions, probe_subset
from p2p.client.evidence import Evidence, VerifierScore, write_evidence
from p2p.client.network import Client, lookup_key
from p2p.client.ranking import Provider, rank_providers
from p2p.client.reputation import Reputation
from p2p.client.segments import Segment
from p2p.host_port import parse_host_port
from p2p.protocol import wire
from p2p.protocol.score_wire import MAX_SCORE_TOKENS, Scores
from p2p.protocol.session_table import network_key, source_key
from p2p.session.secure import SessionError

# One Score is a single prefill of prompt + output: seconds on a CPU for thousands of tokens.
SCORE_TIMEOUT_S = 60.0
# Verifiers tried for one opinion when the first ones are unreachable or busy.
MAX_VERIFIER_TRIES = 3
# A whole check (both opinions, every try): past it the check is inconclusive.
CHECK_DEADLINE_S = 120.0
# Positions judged per check (the rest are fed without logits), the first few always among them:
# a dropped prefix shows most where the answer begins (measured: tools/bench_verification.py).
# Each is an output-layer row (~10 ms on 2 CPU cores), the floor of a check's cost, so this and
# CHECK_PROBES set it (docs/benchmarks.md "A check's cost with prompt probes"; re-judged from raw
# data, tools/rejudge_check_knobs.py): 18 positions and all 16 probes are ~15.0 % of generating
# (32 and 16: ~19 %); a Q3_K_M node is then flagged within 50 requests at the 2 % budget's
# fraction 95 % of times (24 positions 96.6 %, 16 positions 94.5 %, each at its own cost).
CHECK_POSITIONS = 18
# Prompt probes the verifier recomputes per check, a random subset of the request's (each one an
# output-layer row, as dear as a scored position). All of them: a subset loses first-check
# catches of a dropped prefix (re-judged, 72 requests: 16 of 16 probes 100 %, 12 ~99 %, 8 ~95 %),
# which no later check makes up for, while 2 positions fewer cost as much as 2 probes.
CHECK_PROBES = DEFAULT_PROBES


@attrs.frozen
class CheckResult:
    verdict: str  # "consistent" | "inconsistent" | "inconclusive"
    peer_id: str
    model_sha256: str
    reason: str
    verifiers: tuple[VerifierScore, ...] = ()
    caught: bool = False  # two independent verifiers agree: excluded for this model
    evidence: Path | None = None


def networks(addresses: Sequence[str]) -> set[str]:
    """The source networks (/24, /48) of a record's session addresses."""
    out = set()
    for address in addresses:
        try:
            host, _port = parse_host_port(address)
        except ValueError:
            continue
        out.add(network_key(source_key(host)))
    return out


def independent(
    providers: Sequence[Provider], avoid_peers: set[str], avoid_networks: set[str]
) -> list[Provider]:
    """*providers* without *avoid_peers*, those outside *avoid_networks* first (rank kept)."""
    left = [p for p in providers if p.record.peer_id not in avoid_peers]
    return sorted(left, key=lambda p: bool(networks(p.record.addresses) & avoid_networks))


def score_request(
    segment: Segment,
    sample: int | None = None,
    rng: random.Random | None = None,
    probe_pick: Sequence[int] | None = None,
) -> wire.Score:
    """The Score that re-checks *segment*: its request with the effective seed, and its output
    tokens (the replayed ones give the context its own tokens were made in). With *sample*,
    logits at only that many of its own positions, its first `FIRST_POSITIONS` and a random
    rest within a random window, and the tokens up to the last of them only
    (p2p/client/check_window.py: the prefill is most of a check's cost). With *probe_pick*
    (indices into the request's probe draws) only those draws, in that order."""
    request = attrs.evolve(segment.request, id=0, replay_tokens=(), seed=segment.seed)
    if probe_pick is not None:
        draws = segment.request.probes
        request = attrs.evolve(request, probes=tuple(draws[i] for i in probe_pick))
    tokens = segment.output[:MAX_SCORE_TOKENS]
    start = len(segment.request.replay_tokens)
    only: tuple[int, ...] = ()
    if sample is not None and sample < len(tokens) - start:
        only, end = check_positions(start, len(tokens), sample, rng)
        tokens = tokens[:end]
    return wire.Score(0, request, tokens, 0, only)


def commitments(segment: Segment) -> tuple[float | None, ...]:
    """The node's signed log-probability of each of its own tokens; () when its receipt has none
    or does not vouch for this segment."""
    if segment.receipt is None or segment.problem:
        return ()
    committed = segment.receipt.receipt.committed()
    return committed if len(committed) == len(segment.tokens) else ()


def probe_values(segment: Segment) -> tuple[float | None, ...]:
    """The node's signed prompt-probe values (inference/prompt_probes.py); () when its receipt
    has none or does not vouch for this segment."""
    if segment.receipt is None or segment.problem:
        return ()
    return segment.receipt.receipt.probes()


def probe_pick(
    segment: Segment, k: int | None = CHECK_PROBES, rng: random.Random | None = None
) -> tuple[int, ...]:
    """Which of *segment*'s probe draws a check judges: *k* of them at random when its receipt
    has one value per draw; every one otherwise, so that a receipt with none, or with another
    count, is judged (and named in the reason) against all the draws it was asked for."""
    n = len(segment.request.probes)
    if len(probe_values(segment)) != n:
        return tuple(range(n))
    return probe_subset(n, k, rng)


async def score_on(client: Client, provider: Provider, score: wire.Score) -> Scores | str:
    """*provider*'s scores, or why it gave none."""
    peer = provider.record.peer_id
    try:
        record = provider.record
        session = await client.pool.get(peer, record.addresses, record.relays)
        async with session.request(score) as (_rid, inbox):
            with trio.move_on_after(SCORE_TIMEOUT_S):
                msg = await inbox.receive()
                if isinstance(msg, Scores):
                    asked = score.only or tuple(range(len(score.tokens)))
                    scored = tuple(msg.index(i) for i in range(len(msg.token_ids)))
                    if scored != asked or msg.token_ids != tuple(score.tokens[i] for i in asked):
                        return f"{peer[:12]}: scored other tokens than asked"
                    return msg
                if isinstance(msg, wire.Error):
                    return f"{peer[:12]}: {msg.code.value}: {msg.message}"
                return f"{peer[:12]}: {msg}"
            return f"{peer[:12]}: no scores within {SCORE_TIMEOUT_S:g} s"
    except SessionError as exc:
        client.pool.drop(peer)
        return f"{peer[:12]}: {exc}"


def _judge(scores: Scores, segment: Segment, pick: Sequence[int]) -> CheckStat:
    """The statistic over the node's own positions and the probes *pick* names (the draws the
    verifier was sent); and a node that said it processed a prompt of another length than the
    verifier's (the same file tokenises alike) did not process the prompt it was sent, whatever
    its tokens look like."""
    replayed = len(segment.request.replay_tokens)
    own = [p for p in scores.positions() if p.index >= replayed]
    committed = commitments(segment)
    probes = probe_values(segment)
    if len(probes) == len(segment.request.probes):  # else all were asked (`probe_pick`)
        probes = tuple(probes[i] for i in pick)
    stat = judge(
        own,
        sampled=segment.request.temperature > 0,
        committed=[committed[p.index - replayed] for p in own] if committed else None,
        probes=probes,
        verifier_probes=scores.probe_logprobs,
    )
    if segment.prompt_tokens and scores.prompt_tokens != segment.prompt_tokens:
        return attrs.evolve(stat, verdict="inconsistent")
    return stat


async def _opinion(
    client: Client,
    candidates: list[Provider],
    score: wire.Score,
    segment: Segment,
    pick: Sequence[int],
) -> tuple[Provider, Scores, CheckStat] | list[str]:
    """The first verifier among *candidates* that answers, or why none did."""
    problems = []
    for provider in candidates[:MAX_VERIFIER_TRIES]:
        scores = await score_on(client, provider, score)
        if isinstance(scores, Scores):
            return provider, scores, _judge(scores, segment, pick)
        problems.append(scores)
    return problems


def per_draw(values: Sequence[float], pick: Sequence[int], n: int) -> tuple[float, ...]:
    """A verifier's probe *values* for the draws *pick* names, spread over all *n* draws of the
    request (NaN where it computed none): evidence files keep one value per draw."""
    if len(values) != len(pick):
        return tuple(values)
    out = [math.nan] * n
    for i, v in zip(pick, values, strict=True):
        out[i] = v
    return tuple(out)


def _told(
    provider: Provider, scores: Scores, stat: CheckStat, pick: Sequence[int], n: int
) -> VerifierScore:
    return VerifierScore(
        provider.record.peer_id,
        stat.verdict,
        stat.n,
        stat.mismatches,
        stat.score,
        scores.choice_margins,
        scores.logprobs,
        per_draw(scores.probe_logprobs, pick, n),
    )


def _unreplayable(segment: Segment) -> str:
    if not segment.tokens:
        return "the node generated no tokens of its own"
    if segment.request.temperature > 0 and segment.seed is None:
        return "a sampled request without a known seed cannot be replayed"
    if len(segment.request.replay_tokens) >= MAX_SCORE_TOKENS:
        return f"its tokens start past the {MAX_SCORE_TOKENS} a check scores"
    return ""


async def spot_check(
    client: Client,
    segment: Segment,
    *,
    reputation: Reputation | None = None,
    data_dir: Path | None = None,
    deadline_s: float = CHECK_DEADLINE_S,
    sample: int | None = CHECK_POSITIONS,
    probes: int | None = CHECK_PROBES,
) -> CheckResult:
    """Check *segment* on independent providers; record the outcome in *reputation* and write
    evidence of a failure into *data_dir* (when given). Inconclusive past *deadline_s*.
    *sample*: judge that many of its positions (see `score_request`); None: all of them.
    *probes*: judge that many of its prompt probes (see `probe_pick`); None: all of them."""
    with trio.move_on_after(deadline_s):
        return await _spot_check(client, segment, reputation, data_dir, (sample, probes))
    reason = f"no verdict within {deadline_s:g} s"
    return CheckResult("inconclusive", segment.peer_id, segment.model_sha256, reason)


async def _spot_check(
    client: Client,
    segment: Segment,
    reputation: Reputation | None,
    data_dir: Path | None,
    knobs: tuple[int | None, int | None],
) -> CheckResult:
    peer, sha = segment.peer_id, segment.model_sha256

    def result(verdict: str, reason: str, **more: object) -> CheckResult:
        return CheckResult(verdict, peer, sha, reason, **more)  # type: ignore[arg-type]

    why_not = _unreplayable(segment)
    if why_not:
        return result("inconclusive", why_not)
    records, _ = await client.find_records(lookup_key(sha, client.network_id))
    excluded = {
        r.peer_id
        for r in records
        if reputation is not None and reputation.is_excluded(r.peer_id, sha)
    }
    ranked = rank_providers(client.ranker, records, sha)
    avoid_nets = networks(segment.addresses)
    candidates = independent(ranked, {peer} | excluded, avoid_nets)
    if not candidates:
        return result("inconclusive", "no other provider of the same model file to check on")
    sample, k = knobs
    pick = probe_pick(segment, k)
    score = score_request(segment, sample, probe_pick=pick)
    draws = len(segment.request.probes)
    first = await _opinion(client, candidates, score, segment, pick)
    if isinstance(first, list):
        return result("inconclusive", "no verifier answered: " + "; ".join(first))
    provider, scores, stat = first
    told: tuple[VerifierScore, ...] = (_told(provider, scores, stat, pick, draws),)
    if stat.verdict != "inconsistent":
        summary = _summary(provider, stat, scores, segment)
        flagged = _add_up(reputation, segment, [(provider, stat)])
        # Without its prompt probes a node has not shown it computed the prompt: no credit.
        proven = stat.probes.status != "missing"
        if stat.verdict == "consistent" and proven and reputation is not None:
            reputation.record_verified(peer, sha)
        reason, caught = f"{summary}{flagged}", flagged.endswith("excluded")
        return result(stat.verdict, reason, verifiers=told, caught=caught)
    first_peer = provider.record.peer_id
    again = independent(candidates, {first_peer}, avoid_nets | networks(provider.record.addresses))
    second = await _opinion(client, again, score, segment, pick) if again else ["no third provider"]
    caught, verdict, reason = False, "inconsistent", _summary(provider, stat, scores, segment)
    if isinstance(second, tuple):
        provider2, scores2, stat2 = second
        told = (*told, _told(provider2, scores2, stat2, pick, draws))
        if stat2.verdict == "inconsistent":
            caught, reason = (
                True,
                f"{reason}; confirmed by {_summary(provider2, stat2, scores2, segment)}",
            )
        else:
            verdict = "inconclusive"
            reason = (
                f"verifiers disagree: {reason}; but {_summary(provider2, stat2, scores2, segment)}"
            )
    else:
        reason = f"{reason} (no second opinion: {'; '.join(second)})"
    evidence = None
    if data_dir is not None:
        evidence = write_evidence(data_dir, _evidence(segment, told))
    if reputation is not None and verdict == "inconsistent":
        reputation.record_failure(peer, sha, evidence, caught=caught)
    opinions = [(provider, stat)]
    if isinstance(second, tuple):
        opinions.append((second[0], second[2]))
    flagged = _add_up(reputation, segment, opinions)
    caught = caught or flagged.endswith("excluded")
    return result(verdict, reason + flagged, verifiers=told, caught=caught, evidence=evidence)


def _add_up(
    reputation: Reputation | None, segment: Segment, opinions: list[tuple[Provider, CheckStat]]
) -> str:
    """Feed the ledger the opinion that moves it least; what it concluded, if anything, as a
    clause for the check's reason."""
    if reputation is None:
        return ""
    sampled = segment.request.temperature > 0

    def step(stat: CheckStat) -> float:
        probe_n, probe_total = stat.probes.evidence()
        return request_step(
            stat.n,
            stat.mismatches,
            sampled=sampled,
            committed_n=stat.committed_n,
            committed_score=stat.committed_score,
            probe_n=probe_n,
            probe_total=probe_total,
        )

    provider, stat = min(opinions, key=lambda o: step(o[1]))
    outcome = reputation.record_positions(
        segment.peer_id,
        segment.model_sha256,
        stat.n,
        stat.mismatches,
        sampled=sampled,
        verifier=provider.record.peer_id,
        committed=(stat.committed_n, stat.committed_score),
        probes=stat.probes.evidence(),
    )
    if not outcome:
        return ""
    ledger = reputation.get(segment.peer_id, segment.model_sha256).ledger
    probes = (
        f", prompt probes {ledger.probe_mean:.2f} nats off on average over {ledger.probes}"
        if ledger.probes
        else ""
    )
    return (
        f"; over {ledger.checks} checked requests {ledger.mismatches}/{ledger.positions} "
        f"tokens off{probes}, more than honest noise: {outcome}"
    )


def _summary(provider: Provider, stat: CheckStat, scores: Scores, segment: Segment) -> str:
    score = f"{stat.score:.3g}" if math.isfinite(stat.score) else str(stat.score)
    prompt = ""
    if segment.prompt_tokens and scores.prompt_tokens != segment.prompt_tokens:
        prompt = f"; prompt of {scores.prompt_tokens} tokens, the node said {segment.prompt_tokens}"
    if stat.committed_n:
        prompt += (
            f"; commitments {stat.committed_score:.1f} off of {stat.committed_n} positions, "
            f"inconsistent from {stat.committed_threshold:.1f}"
        )
    prompt += stat.probes.clause()
    return (
        f"{provider.record.peer_id[:12]} says {stat.verdict} "
        f"({stat.mismatches}/{stat.n} tokens off, score {score}{prompt})"
    )


def _evidence(segment: Segment, told: tuple[VerifierScore, ...]) -> Evidence:
    return Evidence(
        peer_id=segment.peer_id,
        model_sha256=segment.model_sha256,
        request=segment.request,
        seed=segment.seed,
        tokens=segment.output,
        receipt=encode(segment.receipt) if segment.receipt is not None else b"",
        verifiers=told,
        created_at=time.time(),
    )


async def check_request(
    client: Client,
    segments: Sequence[Segment],
    *,
    reputation: Reputation | None = None,
    data_dir: Path | None = None,
) -> list[CheckResult]:
    """Spot-check every segment of one request (one per node that finished a part of it)."""
    return [await spot_check(client, s, reputation=reputation, data_dir=data_dir) for s in segments]
