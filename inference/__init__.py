"""Running models on this node: hardware probe, model files, and the llama.cpp workers.

Nothing here does networking; the p2p layer drives it. This file imports nothing, so importing
one module (say the pure `inference.generation`) never loads llama_cpp or trio: import each name
from the module that defines it.

Requests and answers (pure data, no llama.cpp, no trio):
- `generation.py` — `GenerationRequest`, `TokenChunk`, `GenerationDone`, `WorkerLoad`, the
  errors (`WorkerBusy`, `GenerationError`, `PromptTooLong`) and `check_fits`.
- `streaming.py` — `TextAssembler`: generated tokens into text chunks, stop strings, token ids.
- `chat.py` — chat messages (and tool definitions) rendered into one prompt for a completion
  model; which format a model gets (`chat_format`) and whether its template takes tools.
- `template_sandbox.py` — the bounded jinja2 sandbox GGUF chat templates run in (time, output
  and operation sizes bounded; `strftime_now`, `raise_exception`, HF's `tojson`).
- `tool_calls.py` — a model's output read into OpenAI tool calls (Hermes/Qwen, Llama 3,
  Mistral syntaxes), and the grammar that forces a call for `tool_choice` required/named.
- `json_schema_grammar.py` — JSON schemas (and `json_object`) into GBNF, with the schema
  features llama-cpp-python's converter would not enforce refused by name.
- `token_logprobs.py` — `TokenLogprob`: a token's log-probability and top alternatives from the
  raw logits (OpenAI's `logprobs`).
- `normalizer_pool.py` — a decode step's log-sum-exps (commitments, probes) shared with one
  helper thread where cores are idle (a GPU's decode); off on the CPU, where it did not pay.
- `embedding.py` — embedding requests and results and their bounds.
- `speculation.py` — `NgramDrafter`: draft tokens for greedy speculation from repeats.
- `scoring.py` — `ScoreRequest` / `ScoreResult`: given tokens teacher-forced after a prompt,
  per position their log-probability, rank, margin, top-k and the request's own sampler's
  choice margin (`score_tokens` runs on a worker's thread).
- `replayable_draw.py` — the sampled draw as Gumbel-max over llama.cpp's filtered candidates,
  with noise g(seed, step, token id), so a verifier can replay any sampled token.
- `verification.py` — `judge`: the check statistic (mismatch rate of choice margins, a binomial
  bound for honest noise) and its verdict; the calibration figures are in its docstring.
- `commitment_stat.py` — the statistic over a node's signed logprob commitments against the
  verifier's own (a Chernoff bound per request, an e-value for the ledger).
- `prompt_probes.py` — the prompt probes' contract: the client's draws, the prompt positions
  they name, the bounds (proof that a node computed the whole prompt).
- `probe_scoring.py` — the verifier's values at the probed positions, from its scoring prefill.
- `probe_stat.py` — the probes' statistic: node against verifier, an honest tail bound.
- `greedy_replay.py` — greedy with only a logit bias (ignore_eos, logit_bias) in numpy: the
  chain's exact pick (`BiasedArgmax.pick`, generation) and choice margin (scoring).

The workers (one thread owns each llama.cpp model; trio talks to it through queues):
- `worker_thread.py` — what both share: `ThreadOwnedWorker`, jobs, the hand-off to trio.
- `worker.py` — `ModelWorker`: one request at a time, the bit-reproducible reference.
- `batching.py` — `BatchingWorker`: continuous batching, the scheduler's loop.
- `batch_sequence.py` — one request's state in the batch and its share of a decode step.
- `prefix_cache.py` — which tokens free slots still hold; reuse of prompt prefixes.
- `llama_lowlevel.py` — `LoadedModel` and `Sampler` over llama-cpp-python's low-level API.
- `grammar.py` — `Grammar`: llama.cpp's grammar sampler applied lazily (the chain's pick checked
  first), never accepting a token the grammar forbids.
- `prompt_logprobs.py` — the prompt's own log-probabilities (`echo`), in bounded chunks.
- `probe_rows.py` — prompt probes in the batch: one row per probed position on a lent spare
  sequence id sharing the prompt's cells (`SpareSeqs`, `PromptProbes`).
- `vocab_tokens.py` — a prompt's token count from a vocabulary-only load (the test-only
  drop-prefix cheat).
- `sibling_prefill.py` — same-prompt requests that arrive together prefill once (`n` choices).
- `step_costs.py` — decode-step cost by batch rows, measured on the worker's thread.
- `online_step_costs.py` — those costs corrected by the steps the worker really ran (a full
  batch of long sequences costs more than the start-up measure says).
- `slot_planner.py` — `plan_slots`: the slot count where aggregate decode stops growing,
  within memory (`--slots auto`).
- `draft_policy.py` — how many draft tokens a sequence feeds this step: only when the expected
  kept tokens outweigh the measured cost of the extra rows.
- `embedding_worker.py` — `EmbeddingWorker`: llama.cpp's embedding mode, pooled, batched.
- `benchmark.py` — the self-benchmark (prefill and decode tokens/s).

Hardware and model files:
- `gpu.py` — NVIDIA GPUs through NVML, and the CPU (`probe_gpus`, `probe_host`).
- `offload.py` — `plan_offload`: how many layers go on the GPU(s).
- `model_file.py` — GGUF header inspection (`inspect_gguf`, `ModelInfo`), sha256 of a file.
- `sha256_cache.py` — sha256s remembered by (path, size, mtime).
- `model_cache.py` — where model files and that cache live (`GPUNET_MODEL_CACHE`).
- `default_model.py` — the default model (Gemma 3 270M Q4_K_M), assembled once.
- `quantize.py` — F32/F16 GGUF to Q4_K_M or Q8_0 with llama.cpp's quantizer.
"""
