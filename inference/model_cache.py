"""Where model files and their sha256 cache live: the one place below the CLI that reads the
environment.

Every node of one user shares this folder, so several nodes on one machine (as in the tests)
assemble the 253 MB default model once and hash each GGUF once. `GPUNET_MODEL_CACHE` moves it
(a CI cache, a bigger disk); it is read here rather than passed down from the CLI because tools
and tests that never see a command line need the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

MODEL_CACHE_ENV = "GPUNET_MODEL_CACHE"


def model_cache_dir() -> Path:
    """$GPUNET_MODEL_CACHE, else the platform's user cache dir for gpunet, plus /models."""
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env) if env else Path(platformdirs.user_cache_dir("gpunet")) / "models"
