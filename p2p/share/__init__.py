"""Model files from the network itself: nodes share the GGUFs they serve, chunk by chunk.

- `counters.py` — what a node has shared (for `gpunet status` and `/metrics`).
- `manifest.py` — a file's chunk hashes and whole sha256 in one pass, cached in the model cache;
  `manifest_root` compares manifests.
- `share_service.py` — the serving side: manifest pages and chunks of the node's own files, within
  per-peer concurrency and byte buckets (`--share-rate`, `--no-share`).
- `fetch_plan.py` — the pull's bookkeeping, sans-IO: which chunk to ask which peer, in-flight
  depth, strikes for bad chunks, dropped peers, the end game, the state a resume restores.
- `file_choice.py` — which file a name means (the sha256 most providers serve), its providers,
  and the manifest most of them agree on.
- `fetcher.py` — `pull`: chunks from several peers at once, each checked before it is written,
  the whole sha256 checked, the file moved into the model cache.
- `pull_files.py` — the disk side: the partial file (and the whole sha256 fed in order as its
  chunks are written), the resume state, the atomic move.
- `pull_progress.py` — what a pull reports (the CLI's progress bar, `--json`).
- `suspects.py` — peers a pull caught lying (a manifest outvoted, or one that failed the
  whole-file check), asked last by later pulls: for the process, and for a day in a file.

The messages are p2p/protocol/share_wire.py's; docs/sharing.md says how a pull works.
"""
