"""A request's segments (one per node that finished part of it) and their signed receipts.

With failover a request can be served by several nodes in turn; each one that ends its part with
`Done` is a segment: what was sent to it (the request with the tokens replayed so far), the
tokens it generated, the seed its sampler used, and its receipt (crypto/receipts.py), checked
here against what this client actually sent and received. A segment whose receipt is missing or
does not match keeps `problem` (an old node signs none; a lying one is caught by the spot check
anyway, since the check scores the tokens received, not the receipt's).
"""

from __future__ import annotations

import attrs

from crypto.receipts import ReceiptError, SignedReceipt, decode
from p2p.protocol import wire
from p2p.protocol.request_hash import request_hash


@attrs.frozen
class Segment:
    peer_id: str
    model_sha256: str
    request: wire.Generate  # as sent to this node: model = the sha256, replay_tokens so far
    tokens: tuple[int, ...]  # the tokens this node generated (the replayed ones not included)
    seed: int | None  # the seed its sampler used (Done.seed, else the request's own)
    receipt: SignedReceipt | None = None
    problem: str = ""  # why `receipt` is None or does not vouch for this segment; "" when it does
    addresses: tuple[str, ...] = ()  # the node's session addresses (its networks, for checks)
    prompt_tokens: int = 0  # the prompt's length as the node counted it (Done.prompt_tokens)

    @property
    def output(self) -> tuple[int, ...]:
        """Every output token up to this segment's end (replayed + generated)."""
        return (*self.request.replay_tokens, *self.tokens)


def check_receipt(
    data: bytes,
    *,
    peer_id: str,
    model_sha256: str,
    request: wire.Generate,
    tokens: tuple[int, ...],
    seed: int | None,
    prompt_tokens: int,
) -> tuple[SignedReceipt | None, str]:
    """The receipt in *data* if it is signed by *peer_id* and vouches for exactly this segment;
    else (None or the receipt, why not)."""
    if not data:
        return None, "no receipt (the node signs none)"
    try:
        signed = decode(data)
    except ReceiptError as exc:
        return None, f"malformed receipt: {exc}"
    r = signed.receipt
    mismatches = [
        name
        for name, ok in (
            ("signature", signed.verify()),
            ("peer id", r.peer_id == peer_id),
            ("model", r.model_sha256 == model_sha256),
            ("request", r.request_hash == request_hash(request)),
            ("tokens", r.output_tokens == tokens),
            ("replayed", r.replayed == len(request.replay_tokens)),
            ("seed", r.seed == seed),
            ("prompt tokens", r.prompt_tokens == prompt_tokens),
        )
        if not ok
    ]
    if mismatches:
        return signed, "receipt does not match: " + ", ".join(mismatches)
    return signed, ""


def segment_of(
    provider_peer: str,
    model_sha256: str,
    request: wire.Generate,
    tokens: tuple[int, ...],
    done: wire.Done,
    addresses: tuple[str, ...] = (),
) -> Segment:
    """The segment a provider's `Done` ends, its receipt checked."""
    seed = done.seed if done.seed is not None else request.seed
    receipt, problem = check_receipt(
        done.receipt,
        peer_id=provider_peer,
        model_sha256=model_sha256,
        request=request,
        tokens=tokens,
        seed=seed,
        prompt_tokens=done.prompt_tokens,
    )
    return Segment(
        provider_peer,
        model_sha256,
        request,
        tokens,
        seed,
        receipt,
        problem,
        addresses,
        done.prompt_tokens,
    )
