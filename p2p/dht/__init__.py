"""The DHT: kademlia hosted in trio, with signed records, proven node ids and bounded intake.

The `kademlia` package (asyncio, UDP, k = 20, α = 3) is extended by subclassing, never forked.
Every file here that imports kademlia, rpcudp or asyncio stays in this folder; the record rules
(`records.py`, `record_store.py`) import neither trio nor asyncio and are tested with plain calls.

Records (sans-IO):
- `records.py` — `CapabilityRecord` and its parts, the DHT key names, signing and opening the
  msgpack envelope: what a valid record is, checked once as it becomes an object.
- `record_entries.py` — the record's entries (GPU, CPU, model, load, relay hint), the field
  validators and `RecordError`; `records.py` re-exports them.
- `record_bounds.py` — sanity bounds on what a record claims (VRAM, layers, context, slots,
  speed); `records.py` checks them and the cross-field rules (free ≤ total, offloaded ≤ layers).
- `record_store.py` — `RecordStore`, the local storage: one slot per signer under each key,
  newer sequence wins, bounded per key, per signer and in total; at a bound the newest signer of
  the most crowded source network gives way, never "the record expiring soonest"; answers are a
  fair share of the datagram across source networks.
- `signer_history.py` — since when each signer is known and the source network (/24, /48) that
  first stored it: the two facts a Sybil crowd cannot choose.
- `fair_share.py` — deficit round robin of a byte budget across groups (the answer's sharing).

The protocol (one class, `GpunetProtocol`, in three layers):
- `datagrams.py` — intake (per-source rate limit, sizes, tasks in flight, defensive parsing) and
  requests out, replies taken only from the address asked.
- `contact_proofs.py` — admission to the routing table: a contact proves its id first.
- `protocol.py` — the RPC handlers, the outgoing `call_*`, eviction, record hand-off.

Rules and state the protocol uses (sans-IO, `now` passed in):
- `identity_proof.py` — the `prove` challenge and proof, the cache of verified contacts, which
  observed addresses are ours.
- `rate_limit.py` — `SourceRateLimiter`, a token bucket per datagram source.
- `contact_health.py` — when a silent contact leaves the table and how long it is skipped.
- `answers.py` — shape checks of what peers answer, before a lookup sees it.
- `routing.py` — the routing table with an exact `find_neighbors`.
- `stats.py` — the protocol's counters.

Running it:
- `node.py` — `DhtServer` (kademlia's `Server` with our protocol and store) and `Dht`, the trio
  facade the rest of gpunet uses (`open_dht`).
- `lookup.py` — iterative lookups: a record crawl that asks every one of the k closest nodes and
  takes the union, rounds that do not wait for stragglers.
- `crawl.py` — enumerate the reachable network and each node's own record (tools/crawl.py).
- `aio_bridge.py` — the one place asyncio meets trio (trio-asyncio), swappable on its own.
- `netsim_transport.py` — an in-process datagram network in virtual time (tools/netsim.py).
"""
