"""The sans-IO session protocol: messages, the request state machines, admission.

Nothing here does I/O or imports an event loop (trio, asyncio); the clock, where one is needed,
is passed in. The trio adapters are `p2p/session/` (client side) and `p2p/node/connection.py`
(server side).

- `wire.py` — the session messages (attrs, frozen) and their one msgpack codec; decoding names the
  request and the field of an invalid message (`InvalidMessage`, `Malformed`).
- `wire_fields.py` — the typed, bounded field readers every decoder uses, `ProtocolError`,
  `InvalidMessage`, `Malformed`.
- `generate_wire.py` — `Generate` (a generation request) and its chat messages, validated with
  the worker's own bounds.
- `tool_wire.py` — the tool fields of a `Generate` (tool definitions, `tool_choice`, calls and
  results in messages), validated at decode.
- `logprob_wire.py` — the log-probability entries of `Token` and `Done`, bounded.
- `embed_wire.py` — `Embed` / `Embeddings`: an embedding request and its float32 vectors.
- `score_wire.py` — `Scores`, the answer to a `Score` request (per-position log-probabilities,
  ranks, margins, top-k), and its bounded decoder.
- `request_hash.py` — the canonical hash of what a client asked (the receipt signs it) and the
  sampler settings a receipt repeats.
- `request_events.py` — what the request machines report (`RequestStarted`, `RequestCancelled`)
  and `LocalProtocolError`, the error that is always our own bug.
- `requests_server.py` — `RequestServer`: one connection's requests on the node side (ids,
  duplicates, the per-connection cap, cancel, ping, one final message per request).
- `requests_client.py` — `RequestClient`: the same connection seen from the client (fresh ids,
  finals, cancels, what it ignores).
- `admission.py` — `AdmissionControl`: per-peer concurrency and request rate on a node.
- `session_table.py` — `SessionTable`: the node's established sessions (caps in total, per
  source and per source network, first-request and idle deadlines, eviction of the idlest);
  `source_key` / `network_key`, the units of per-source limits.
"""
