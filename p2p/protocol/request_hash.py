"""The hash a receipt names: sha256 over the canonical encoding of what the client asked.

The canonical encoding is the `Generate` as this protocol version encodes it, with id 0 (ids are
per connection), after one decode: decoding normalises what a sender may spell differently (an
int for a float, an empty stop string), so client and node hash the same bytes for the same
request. It covers everything the client asked: the model (the sha256 failover sends), prompt or
messages, max_tokens, every sampler field and seed, and the replay tokens of a failover segment.
"""

from __future__ import annotations

import hashlib

import attrs

from p2p.protocol import wire


def canonical_request(msg: wire.Generate) -> bytes:
    normalised = wire.decode(wire.encode(attrs.evolve(msg, id=0)))
    return wire.encode(normalised)


def request_hash(msg: wire.Generate) -> bytes:
    return hashlib.sha256(b"gpunet-request/1\x00" + canonical_request(msg)).digest()


def sampler_settings(msg: wire.Generate) -> dict[str, float]:
    """The sampler settings a receipt repeats in the clear (the hash covers them too, and the
    logit bias, which is too long to repeat)."""
    return {
        "temperature": msg.temperature,
        "top_p": msg.top_p,
        "top_k": float(msg.top_k),
        "min_p": msg.min_p,
        "typical_p": msg.typical_p,
        "repeat_penalty": msg.repeat_penalty,
        "presence_penalty": msg.presence_penalty,
        "frequency_penalty": msg.frequency_penalty,
        "penalty_last_n": float(msg.penalty_last_n),
        "ignore_eos": float(msg.ignore_eos),
        "max_tokens": float(msg.max_tokens),
        "logit_bias_entries": float(len(msg.logit_bias)),
    }
