"""Shape checks for what peers answer: contacts and record lists, before any lookup sees them.

Pure functions, no I/O. Upstream kademlia hands a peer's reply to its crawlers as it came, so an
odd reply (a contact with a port of `True`, a value that is a dict) raised inside a lookup; here
an answer that is not the expected shape counts as no answer.
"""

from __future__ import annotations

from typing import Any

from p2p.host_port import is_ip

# A find_node answer holds k = 20 contacts; twice that is generous and still bounds the work a
# lying peer can make us do per answer.
MAX_CONTACTS_IN_ANSWER = 40


def valid_id(value: object) -> bool:
    """A 160-bit kademlia id (node id or DHT key) as it travels: 20 bytes."""
    return isinstance(value, bytes) and len(value) == 20


def valid_contact(c: object) -> bool:
    """`[node id, ip, port]` with an IP literal (never a name to resolve) and a real port."""
    if not (isinstance(c, (list, tuple)) and len(c) == 3):
        return False
    nid, ip, port = c
    if not (valid_id(nid) and isinstance(ip, str) and isinstance(port, int)):
        return False
    if isinstance(port, bool) or not 0 < port < 65536 or len(ip) > 64:
        return False
    return is_ip(ip)


def sanitize_nodes_answer(result: Any, *, exclude: frozenset[bytes] = frozenset()) -> Any:
    """`(answered, contacts)` with contacts as tuples, minus *exclude*; a bad shape: no answer."""
    ok, answer = result
    if not ok:
        return result
    if (
        isinstance(answer, list)
        and len(answer) <= MAX_CONTACTS_IN_ANSWER
        and all(valid_contact(c) for c in answer)
    ):
        return True, [tuple(c) for c in answer if c[0] not in exclude]
    return False, None


def sanitize_value_answer(result: Any, *, exclude: frozenset[bytes] = frozenset()) -> Any:
    """A find_value answer: `{"value": [blob, ...]}` exactly, or else a contacts answer."""
    ok, answer = result
    if ok and isinstance(answer, dict):
        blobs = answer.get("value")
        if (
            len(answer) == 1
            and isinstance(blobs, list)
            and all(isinstance(b, bytes) for b in blobs)
        ):
            return True, {"value": blobs}
        return False, None
    return sanitize_nodes_answer(result, exclude=exclude)
