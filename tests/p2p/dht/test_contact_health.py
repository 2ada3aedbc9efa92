"""Eviction of silent contacts and shape checks of answers: plain calls, no sockets."""

from __future__ import annotations

from p2p.dht.answers import MAX_CONTACTS_IN_ANSWER, sanitize_nodes_answer, sanitize_value_answer
from p2p.dht.contact_health import FAILURES_TO_EVICT, UNRESPONSIVE_TTL_S, ContactHealth

NID = b"n" * 20
ADDR = ("127.0.0.1", 4000)


def test_a_contact_is_evicted_after_failures_in_a_row_only() -> None:
    health = ContactHealth()
    assert FAILURES_TO_EVICT == 2
    assert not health.failed(NID, ADDR, now=0)
    health.answered(NID)  # an answer resets the count
    assert not health.failed(NID, ADDR, now=1)
    assert not health.is_unresponsive(ADDR, now=1)
    assert health.failed(NID, ADDR, now=2)
    assert health.is_unresponsive(ADDR, now=2 + UNRESPONSIVE_TTL_S - 1)
    assert not health.is_unresponsive(ADDR, now=2 + UNRESPONSIVE_TTL_S + 1)


def test_unresponsive_contacts_are_dropped_from_answers() -> None:
    health = ContactHealth()
    health.failed(NID, ADDR, now=0)
    health.failed(NID, ADDR, now=0)
    answer = (True, [(NID, *ADDR), (b"m" * 20, "127.0.0.2", 4000)])
    assert health.drop_unresponsive(answer, now=1) == (True, [(b"m" * 20, "127.0.0.2", 4000)])
    assert health.drop_unresponsive((False, None), now=1) == (False, None)


def test_answers_of_the_wrong_shape_count_as_none() -> None:
    good = [NID, "127.0.0.1", 1]
    assert sanitize_nodes_answer((True, [good])) == (True, [tuple(good)])
    assert sanitize_nodes_answer((True, [good]), exclude=frozenset({NID})) == (True, [])
    for bad in (
        [[NID, "127.0.0.1", True]],
        [[NID, "example.org", 1]],  # a name, never resolved
        [[b"short", "127.0.0.1", 1]],
        [good] * (MAX_CONTACTS_IN_ANSWER + 1),
        {"value": [b"x"]},
    ):
        assert sanitize_nodes_answer((True, bad)) == (False, None)
    assert sanitize_value_answer((True, {"value": [b"x"]})) == (True, {"value": [b"x"]})
    assert sanitize_value_answer((True, {"value": [b"x"], "more": 1})) == (False, None)
    assert sanitize_value_answer((True, {"value": ["text"]})) == (False, None)
    assert sanitize_value_answer((True, [good])) == (True, [tuple(good)])
