"""The client side of gpunet: finding providers of a model and getting tokens out of them.

Everything a caller that wants tokens needs (`gpunet ask`, the OpenAI gateway, a node's own API,
tools), and nothing a provider needs.

- `network.py`: `open_client` (a light DHT member with a throwaway identity and a session
  pool) and the `Client` it yields; provider lookups (`lookup_key`, cached briefly for a
  long-lived client), `list_nodes`, `describe_offer`; `AskError`, the client's failure, which
  always carries a `p2p.errors.ErrorCode`.
- `failover.py`: `generate`, which sends one request to the best provider and, when that one
  fails, continues it on the next by exact replay of the tokens delivered so far; the whole
  request has a deadline (`ASK_DEADLINE_S` by default; `ErrorCode.TIMEOUT` past it).
- `provider_race.py`: `connect_first`, providers dialled as a staggered race in rank order (the
  first session up is used), so providers that never answer cannot hold a request.
- `token_stream.py`: one provider's answer to one request: tokens to the caller, stalls caught
  by the first-token and between-token timeouts, refusals told apart by `p2p.errors.RETRYABLE`.
- `ranking.py`: which provider to try first (speed measured by this client, else the record's
  claim capped near the best measured; load; time to first token; backoff after failures), and
  the reorderings a caller asks for (a preferred node, the failed node's hardware class).
- `provider_query.py`: which records' models answer to a name or sha256 and pass the filters
  of `gpunet peers` (GPU, free VRAM, quantization); pure functions over verified records.
- `embeddings.py`: `embed`, an embedding request routed like generation (ranking, staggered
  dial, the next provider on a retryable refusal) to providers whose record says `embedding`.
- `segments.py`: a request's segments (one per node that finished part of it) with their
  signed receipts, checked against what was sent and received.
- `spot_check.py`: re-scoring a finished segment on an independent provider of the same sha256
  (another peer id, preferably another /24), a third provider on disagreement; the verdict.
- `check_window.py`: which positions a check scores (the first 8 and a random window) and so
  how much of the answer the verifier is fed.
- `background_checks.py`: the gateway's checks of a fraction of its requests, after the answer,
  at most two at a time.
- `reputation.py`: the local standing of each (peer id, model), earned by verified work and lost
  by evidence; the ranking reads it (a caught node is excluded for that model).
- `check_ledger.py`: every checked request's mismatches summed per (peer id, model) in one
  sequential test (a CUSUM with a stated false-positive bound), for cheats no single check sees.
- `evidence.py`: the self-proving evidence file a failed check writes (`gpunet verify FILE`).

Sans-IO: `ranking.py`, `provider_query.py` and `check_ledger.py`. The rest runs in trio; the
DHT behind `Client.dht` hosts kademlia's asyncio loop (p2p/dht/), so nothing here imports
asyncio.
"""
