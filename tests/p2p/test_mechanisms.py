"""The shared mechanisms (token bucket, bounded LRU, HOST:PORT, model matching): plain calls."""

from __future__ import annotations

import pytest

from p2p.bounded_lru import BoundedLRU
from p2p.host_port import AddressError, format_host_port, is_ip, parse_host_port
from p2p.model_match import model_matches
from p2p.token_bucket import KeyedBuckets, TokenBucket

SHA = "ab" * 32


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, tokens=5, stamp=0)
    assert all(bucket.take(0) for _ in range(5))
    assert not bucket.take(0)
    assert bucket.take(0.1)  # one token back after 1/rate
    assert not bucket.take(0.1)
    assert all(bucket.take(100) for _ in range(5))  # refill caps at the burst
    assert not bucket.take(100)


def test_token_bucket_starts_full_and_a_refused_take_spends_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=3)
    assert bucket.take(50.0, cost=3)
    assert not bucket.take(50.0, cost=0.5)
    assert bucket.tokens == 0
    assert bucket.take(50.5, cost=0.5)
    assert not bucket.take(40.0)  # a clock that goes back refills nothing


def test_keyed_buckets_are_per_key_and_bounded() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(rate=1, burst=2, max_keys=3)
    assert [buckets.take("a", 0) for _ in range(3)] == [True, True, False]
    assert buckets.take("b", 0)  # another key has its own bucket
    for key in ("c", "d", "e"):
        buckets.take(key, 0)
    assert len(buckets) == 3
    assert buckets.bucket("a") is None  # forgotten, least recently used
    assert buckets.take("a", 0)  # and starts afresh, full
    buckets.forget("a")
    assert buckets.bucket("a") is None


def test_keyed_buckets_keep_what_may_not_be_evicted() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(
        rate=1, burst=1, max_keys=1, evictable=lambda key, _b: key != "pinned"
    )
    buckets.take("pinned", 0)
    assert buckets.take("x", 0)  # served, then the one evictable entry (itself) goes
    assert buckets.bucket("pinned") is not None
    assert len(buckets) == 1


def test_bounded_lru_exceeds_its_capacity_only_while_nothing_may_go() -> None:
    busy = {"a", "b"}
    lru: BoundedLRU[str, int] = BoundedLRU(1, evictable=lambda key, _v: key not in busy)
    lru.set("a", 1)
    lru.set("b", 2)
    assert len(lru) == 2
    busy.clear()
    lru.set("c", 3)
    assert list(lru) == ["c"]


def test_bounded_lru_forgets_the_least_recently_used() -> None:
    evicted: list[tuple[str, int]] = []
    lru: BoundedLRU[str, int] = BoundedLRU(2, on_evict=lambda k, v: evicted.append((k, v)))
    lru.set("a", 1)
    lru.set("b", 2)
    assert lru.get("a") == 1  # use: "b" is now the oldest
    lru.set("c", 3)
    assert evicted == [("b", 2)]
    assert list(lru) == ["a", "c"]
    assert lru.peek("a") == 1  # peek is not use
    lru.set("d", 4)
    assert evicted[-1] == ("a", 1)
    assert lru.oldest() == ("c", 3)
    assert lru.pop("c") == 3 and lru.pop("c") is None
    assert "d" in lru and len(lru) == 1
    assert lru.get("missing", 7) == 7


def test_bounded_lru_get_or_create_and_bad_capacity() -> None:
    lru: BoundedLRU[str, list[int]] = BoundedLRU(4)
    made = lru.get_or_create("k", list)
    made.append(1)
    assert lru.get_or_create("k", list) == [1]
    assert lru.items() == [("k", [1])]
    with pytest.raises(ValueError):
        BoundedLRU(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8469", ("127.0.0.1", 8469)),
        ("example.org:1", ("example.org", 1)),
        (" node.local:65535 ", ("node.local", 65535)),
        ("[::1]:8469", ("::1", 8469)),
        ("[2001:db8::7]:443", ("2001:db8::7", 443)),
    ],
)
def test_parse_host_port_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        ":8469",
        "host:",
        "host:0",
        "host:65536",
        "host:-1",
        "host:80a",
        "::1:8469",  # IPv6 without brackets
        "[::1]8469",
        "[::1",
        "[example.org]:80",  # brackets hold an IPv6 address only
        "[127.0.0.1]:80",
        "a b:80",
        "x" * 254 + ":80",
    ],
)
def test_parse_host_port_refuses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_host_port(text)


def test_parse_host_port_defaults_and_port_zero() -> None:
    assert parse_host_port(":9000", default_host="127.0.0.1") == ("127.0.0.1", 9000)
    assert parse_host_port("9000", default_host="127.0.0.1") == ("127.0.0.1", 9000)
    assert parse_host_port("host:0", allow_port_zero=True) == ("host", 0)
    with pytest.raises(AddressError):
        parse_host_port("9000")


def test_format_host_port_round_trips() -> None:
    for host, port in [("127.0.0.1", 1), ("::1", 8469), ("example.org", 80)]:
        assert parse_host_port(format_host_port(host, port)) == (host, port)
    assert format_host_port("::1", 80) == "[::1]:80"


def test_is_ip() -> None:
    assert is_ip("127.0.0.1") and is_ip("::1") and is_ip("2001:db8::1")
    assert not is_ip("example.org") and not is_ip("[::1]") and not is_ip("1" * 65)


def test_model_matches_by_sha256_or_name_in_any_case() -> None:
    assert model_matches(SHA, SHA, "gemma-3-270m")
    assert model_matches(SHA.upper(), SHA, "gemma-3-270m")
    assert model_matches("Gemma-3-270M", SHA, "gemma-3-270m")
    assert not model_matches("gemma", SHA, "gemma-3-270m")
    assert not model_matches(SHA[:-1], SHA, "gemma-3-270m")
