"""The node runtime: what `gpunet node` runs. It never imports the OpenAI API (`p2p/api/`): the
CLI hands `run_node` an API starter instead.

- `runtime.py` — `Node` and `run_node`: load models, join the DHT, serve sessions, publish the
  record and republish it, drain on shutdown.
- `config.py` — `NodeConfig`, `NodeReady`, `NodeError`: the values the runtime is given and reports.
- `connection.py` — the trio loop around `p2p.protocol.requests_server.RequestServer` for one
  session: a task per request, `Reply` for its answers.
- `serving.py` — serving one admitted request on a model's worker; faults become wire codes
  through `p2p.errors.code_of`.
- `cheats.py` — the test-only cheats (docs/security.md): what a cheating node runs and what it
  commits to instead, prompt probes included.
- `chat_prompt.py` — a chat request's prompt on the node: messages and tools rendered with the
  model's template, tools refused for a model without them, the grammar of a forced call.
- `embedding_serving.py` — serving an `Embed` request on an embedding model's worker.
- `auto_slots.py` — `--slots auto`: the step costs measured at start and the planner's pick.
- `models.py` — `ServedModel`, `load_models` (offload plan, self-benchmark), `find_model`.
- `capability.py` — the capability record as a pure function of what the node knows.
- `record_seq.py` — the record sequence number, persisted so it never goes backwards.
- `load_refresh.py` — when the record is republished: every TTL/3, on a reach change, and within
  5 s of a load change (debounced, without a crawl), so clients rank by load ≤ ~10 s old.
- `control.py` — the owner's control ops (`gpunet status`, `pause`, `resume`), answered only to a
  session with the node's own identity; the state JSON.
- `node_stats.py` — counters of the work served for others (outcomes, tokens, refusals, TTFT),
  sans-IO and bounded; `node_metrics.py` — the same as Prometheus series for `node --api`.
- `pause.py` — the pause state (the owner's and the serve hours'), and the tasks following it;
  `serve_hours.py` — `--serve-hours` ranges, sans-IO.
- `join.py` — joining through the bootstrap peers, retried with growing waits.
- `request_log.py` — the volunteer's one line per request, and the connection wrapper feeding it.
- `withdrawal.py` — the signed withdrawal a stopping node publishes before it drains, so lookups
  drop it at once.
"""
