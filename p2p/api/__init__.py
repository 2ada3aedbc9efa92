"""The OpenAI-compatible HTTP API into the network, the network dashboard and `/metrics`.

Starlette under Hypercorn's trio worker; the only subpackage that imports either. Every
generation request is routed into the network through p2p/client/ (lookup, ranking, failover).

- `app.py`: the routes, the `Gateway` state they share (client, API key, metrics, queue), the
  Starlette application, and `serve_gateway`, which serves it inside the caller's nursery.
- `generation_response.py`: the ASGI response of one generation: runs it while writing it
  (whole JSON or SSE), its HTTP status from the network's first answer, cancelled on disconnect.
- `gateway_queue.py`: `GatewayQueue`, where a request waits while every provider is busy
  (decided by `ErrorCode`), each request's overall deadline (504 `timeout`), and the request
  ids of one gateway.
- `json_body.py`: a request body into JSON, its size (`MAX_BODY_BYTES`) and nesting depth
  (`MAX_JSON_DEPTH`) bounded before the parser runs: a 400, never a RecursionError.
- `openai_errors.py`: `ApiError` (an OpenAI error body with its status and metrics outcome)
  and the one table from `p2p.errors.ErrorCode` to OpenAI's error type and code.
- `request_parsing.py`: OpenAI request bodies into `wire.Generate`: validation and defaults;
  sizes in UTF-8 bytes against the wire's prompt limit and the session frame (400 `too_long`).
- `unsupported_params.py`: the parameters gpunet refuses by name (never accepts and ignores).
- `constrained_params.py`: `response_format`, `grammar`, `json_schema` into one GBNF grammar.
- `logprob_params.py`, `logprob_shape.py`: `logprobs`, `top_logprobs`, `echo` parsed, and the
  OpenAI shapes of the entries (chat and legacy completions, whole and streamed).
- `tool_params.py`: `tools`, `tool_choice`, messages with calls and results; `tool_calls` in
  the answer.
- `choices.py`: `n` choices, each its own generation (seed s+i), merged into one answer.
- `embeddings_route.py`: `POST /v1/embeddings` (body, OpenAI's answer, float or base64).
- `health_cors.py`: `GET /health` and the `--cors` middleware.
- `responses.py`: the JSON of whole and chunked completions, usage, SSE framing.
- `network_view.py`: what the network offers (the model table of /v1/models, the dashboard's
  JSON), from the signed records in the DHT behind a short cache; the nodes seen lately, so a
  withdrawn or lapsed one shows offline.
- `recent_history.py`: the gateway's last requests (provider, tokens, TTFT, tok/s, outcome), for
  the dashboard's charts and tokens per node.
- `dashboard.py`: the self-contained HTML page of the dashboard.

Pure (tested with plain calls): `openai_errors.py`, `json_body.py`, `request_parsing.py`,
`responses.py`, the tables of `network_view.py`. The `gpunet gateway` command is p2p/cli/gateway.py.
"""
