"""Node-id proofs, verified contacts, self addresses, rate limits: plain calls, no sockets."""

from __future__ import annotations

import hashlib

from crypto.identity import Identity
from p2p.dht.identity_proof import (
    ADDRESS_QUORUM,
    MAX_VERIFIED,
    SelfAddresses,
    VerifiedContacts,
    answer_challenge,
    check_proof,
    new_nonce,
)
from p2p.dht.rate_limit import SourceRateLimiter

US = ("127.0.0.1", 4000)


def _id(ident: Identity) -> bytes:
    return hashlib.sha1(ident.public_key).digest()


def test_a_proof_verifies_for_the_id_nonce_and_network_it_was_made_for() -> None:
    v = Identity.generate()
    nonce = new_nonce()
    answer = answer_challenge(v, nonce, US)
    result = check_proof(answer, node_id=_id(v), nonce=nonce)
    assert result.ok and result.observed == US
    # another nonce (a replayed proof), another id, another network: refused
    assert not check_proof(answer, node_id=_id(v), nonce=new_nonce()).ok
    assert not check_proof(answer, node_id=_id(Identity.generate()), nonce=nonce).ok
    assert not check_proof(answer, node_id=_id(v), nonce=nonce, network_id=b"n" * 16).ok
    private = answer_challenge(v, nonce, US, b"n" * 16)
    assert check_proof(private, node_id=_id(v), nonce=nonce, network_id=b"n" * 16).ok


def test_a_key_that_is_not_behind_the_id_is_refused() -> None:
    v, mallory = Identity.generate(), Identity.generate()
    nonce = new_nonce()
    answer = answer_challenge(mallory, nonce, US)
    assert check_proof(answer, node_id=_id(v), nonce=nonce).reason == (
        "node id is not sha1(public key)"
    )
    # V's key with Mallory's signature
    assert answer is not None
    forged = [v.public_key, *answer[1:]]
    assert check_proof(forged, node_id=_id(v), nonce=nonce).reason == "bad signature"


def test_a_lie_about_the_observed_address_breaks_the_signature() -> None:
    v = Identity.generate()
    nonce = new_nonce()
    answer = answer_challenge(v, nonce, ("127.0.0.9", 5000))
    assert answer is not None
    answer[1], answer[2] = US
    assert not check_proof(answer, node_id=_id(v), nonce=nonce).ok


def test_malformed_proofs_are_refused_not_raised() -> None:
    v = Identity.generate()
    nonce = new_nonce()
    good = answer_challenge(v, nonce, US)
    assert good is not None
    junk: list[object] = [
        None,
        b"",
        5,
        [],
        good[:3],
        [*good, 1],
        [b"x" * 31, *good[1:]],
        [good[0], "not-an-ip", *good[2:]],
        [good[0], good[1], 0, good[3]],
        [good[0], good[1], True, good[3]],
        [good[0], good[1], 70000, good[3]],
        [good[0], good[1], good[2], b"s" * 63],
        {"a": 1},
    ]
    for answer in junk:
        assert not check_proof(answer, node_id=_id(v), nonce=nonce).ok
    assert answer_challenge(v, b"short", US) is None
    assert answer_challenge(v, ["x"], US) is None


def test_bound_to_a_specific_address_only_that_address_is_ours() -> None:
    addrs = SelfAddresses(bound=US)
    assert addrs.accepts(US, b"a" * 20)
    assert not addrs.accepts(("127.0.0.1", 4001), b"a" * 20)  # a relay's socket
    assert not addrs.accepts(("127.0.0.2", 4000), b"a" * 20)
    public = SelfAddresses(bound=("93.184.216.34", 4000))  # a global address
    assert not public.accepts(("203.0.113.66", 4000), b"a" * 20)


def test_bound_to_a_private_address_behind_nat_the_public_one_is_learned() -> None:
    addrs = SelfAddresses(bound=("100.64.1.5", 4000))
    assert addrs.accepts(("100.64.1.5", 4000), b"lan" * 7)  # same NAT (not global)
    assert addrs.accepts(("198.51.100.7", 61000), b"a" * 20)
    assert addrs.accepts(("198.51.100.7", 61000), b"b" * 20)
    assert not addrs.accepts(("203.0.113.66", 31337), b"c" * 20)


def test_behind_a_wildcard_the_address_is_learned_by_quorum() -> None:
    addrs = SelfAddresses(bound=("0.0.0.0", 4000))
    public = ("198.51.100.7", 4000)
    relay = ("203.0.113.66", 31337)
    # nothing confirmed yet: first contacts are trusted
    assert addrs.accepts(public, b"a" * 20)
    assert addrs.accepts(public, b"b" * 20)  # quorum reached: public is ours
    assert ADDRESS_QUORUM == 2
    assert not addrs.accepts(relay, b"c" * 20)
    assert addrs.accepts(public, b"d" * 20)
    # the same voter twice does not make a quorum
    assert not addrs.accepts(relay, b"c" * 20)


def test_verified_contacts_expire_are_keyed_by_address_and_bounded() -> None:
    cache = VerifiedContacts(verified_ttl=100, failed_ttl=10)
    nid = b"n" * 20
    cache.mark_verified(nid, US, now=0)
    assert cache.is_verified(nid, US, now=50)
    assert not cache.is_verified(nid, ("127.0.0.1", 4001), now=50)  # same id, new address
    assert not cache.is_verified(nid, US, now=101)
    cache.mark_failed(nid, US, now=200)
    assert cache.recently_failed(nid, US, now=205)
    assert not cache.recently_failed(nid, US, now=211)
    for i in range(MAX_VERIFIED + 10):
        cache.mark_verified(i.to_bytes(20, "big"), US, now=300)
    assert len(cache) == MAX_VERIFIED


def test_rate_limit_is_per_source_and_its_table_is_bounded() -> None:
    limiter = SourceRateLimiter(rate=1, burst=3, max_sources=100)
    a, b = ("127.0.0.11", 1), ("127.0.0.12", 1)
    assert [limiter.allow(a, 0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow(b, 0)  # another source has its own bucket
    assert limiter.allow(a, 1.0)
    assert limiter.dropped == 2
    for i in range(1000):
        limiter.allow(("127.1.0.0", i), 2.0)
    assert len(limiter) == 100
