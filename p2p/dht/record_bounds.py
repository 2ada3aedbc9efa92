"""Sanity bounds on what a capability record claims (issue #14, attack 7: "in-range lies").

Each bound is far above any real machine, so no honest node meets one; a lie below a bound stays
possible, and clients treat published speed as a claim they check (p2p/client/ranking.py). The
cross-field rules (free VRAM <= total, layers offloaded <= layers) live with the record classes in
`records.py`, which check every bound here as a record becomes an object.
"""

from __future__ import annotations

# 16 TiB: ~50x the largest GPU memory shipping in 2026 (288 GB).
MAX_GPU_VRAM_BYTES = 1 << 44
# 256 TiB: the largest single-system-image machines hold tens of TiB.
MAX_RAM_BYTES = 1 << 48
# Linux's largest CONFIG_NR_CPUS on x86_64 is 8192.
MAX_CPU_CORES = 8192
MAX_UTILIZATION_PCT = 100
# Published models have at most ~130 transformer blocks (Llama 3.1 405B: 126); 8x that.
MAX_LAYERS = 1024
# 2^24 = 16.7 M tokens; the longest trained context published is 10 M (Llama 4 Scout). The
# record carries only the context a node serves, not the model's trained one, so this bound is
# what can be checked here (a node serving more than the model was trained on is not detectable).
MAX_CONTEXT_TOKENS = 1 << 24
# 10^14 parameters: 50x the largest published models (~2 T).
MAX_PARAMETERS = 10**14
# One request at a time decodes at most a few thousand tok/s on 2026 hardware; 10^6 is ~100x the
# fastest published single-stream figures. Prefill is batched, so 10x more.
MAX_DECODE_TOK_S = 1e6
MAX_PREFILL_TOK_S = 1e7
# p2p/settings.py bounds a node to 64 slots and 1024 queued per model, 100 000 requests in flight,
# and a record to MAX_MODELS models; twice each leaves room for a newer node's settings.
MAX_FREE_SLOTS = 2 * 64 * 32
MAX_QUEUE_DEPTH = 2 * 1024 * 32
MAX_ACTIVE_REQUESTS = 2 * 100_000
