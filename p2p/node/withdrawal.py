"""A stopping node's signed goodbye: the withdrawal that takes it out of every lookup at once.

On Ctrl-C or SIGTERM the node publishes its record once more, `withdrawn` set and the seq above
every live one, under the same keys: wherever the live record is stored the withdrawal replaces
it (a store keeps the highest seq per signer and key), and readers drop a signer whose newest
record is a withdrawal (`p2p.dht.records.live`). `gpunet peers`, provider lookups and the
dashboard stop listing the node before its process exits, instead of up to a TTL later.

The withdrawal goes out before in-flight requests drain (they may take `grace_s`), bounded by
`WITHDRAW_S` so a DHT that does not answer cannot hold up the exit. It keeps the live record's
lifetime: signed after it, it outlives it, so once a store forgets the withdrawal the record it
replaced has expired too and cannot be stored again (p2p/dht/record_store.py). A node killed
without a word (SIGKILL, a power cut) has no goodbye: its record lapses within the TTL (60 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from crypto.identity import Identity
from p2p.dht.node import Dht
from p2p.dht.records import CapabilityRecord, sign_record

log = logging.getLogger(__name__)

# How long the node waits for the withdrawal's stores before it goes on stopping. On loopback a
# publish takes ~0.25 s; the stores are sent as soon as the closest nodes are known, so a holder
# that answers late still gets the withdrawal.
WITHDRAW_S = 2.0


def withdrawal_of(record: CapabilityRecord) -> CapabilityRecord:
    """*record* (freshly built: the next seq) marked withdrawn."""
    return attrs.evolve(record, withdrawn=True)


async def withdraw(
    dht: Dht,
    identity: Identity,
    build_record: Callable[[], CapabilityRecord],
    *,
    reuse_closest_s: float,
    timeout_s: float = WITHDRAW_S,
) -> int | None:
    """Publish the node's withdrawal; the remote stores that accepted it, None if it ran out of
    time (it was sent to those the DHT had found by then). *reuse_closest_s*: store where the
    last publish stored, when that was at most this long ago, without a new crawl."""
    signed = sign_record(withdrawal_of(build_record()), identity)
    accepted = None
    with trio.move_on_after(timeout_s):
        accepted = await dht.publish(signed, reuse_closest_s=reuse_closest_s)
    if accepted is None:
        log.info("withdrawal seq %d: no answer within %g s", signed.record.seq, timeout_s)
    else:
        log.info("withdrew record (seq %d, %d remote stores)", signed.record.seq, accepted)
    return accepted
