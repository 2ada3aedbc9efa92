#!/usr/bin/env bash
# The main job: set up gpunet (first run compiles llama.cpp, ~10 min on 2 cores), obtain and
# verify the default model, and start a node serving it. Arguments go to `gpunet node`
# (e.g. --bootstrap HOST:PORT to join an existing network, --model FILE.gguf); every option can
# also live in GPUNET_* variables or in config.toml in the data dir (`gpunet config` shows them).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/_env.sh
gpunet_env ""
cat <<'TXT'
==> starting a gpunet node (Ctrl-C stops it)
    When it says it is serving, ask it from another terminal in this folder:
      .venv/bin/gpunet ask "The capital of France is"
TXT
exec .venv/bin/gpunet node "$@"
