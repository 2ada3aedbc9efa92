"""The node runtime: what `gpunet node` runs. It never imports the OpenAI API (`p2p/api/`): the
CLI hands `run_node` an API starter instead.

- `runtime.py` — `Node` and `run_node`: load models, join the DHT, serve sessions, publish the
  record and republish it, drain on shutdown.
- `config.py` — `NodeConfig`, `NodeReady`, `NodeError`: the values the runtime is given and reports.
- `connection.py` — the trio loop around `p2p.protocol.requests_server.RequestServer` for one
  session: a task per request, `Reply` for its answers.
- `serving.py` — serving one admitted request on a model's worker; faults become wire codes
  through `p2p.errors.code_of`.
- `chat_prompt.py` — a chat request's prompt on the node: messages and tools rendered with the
  model's template, tools refused for a model without them, the grammar of a forced call.
- `embedding_serving.py` — serving an `Embed` request on an embedding model's worker.
- `auto_slots.py` — `--slots auto`: the step costs measured at start and the planner's pick.
- `models.py` — `ServedModel`, `load_models` (offload plan, self-benchmark), `find_model`.
- `capability.py` — the capability record as a pure function of what the node knows.
- `record_seq.py` — the record sequence number, persisted so it never goes backwards.
"""
