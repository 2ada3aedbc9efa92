"""A prompt's token count from a GGUF's vocabulary alone, without a context or the weights.

For the test-only drop-prefix cheat (p2p/node/cheats.py): a realistic cheater tokenises the
whole prompt (cheap) to know which positions a request's probe draws name, while computing only
the part it keeps. Tokenises as `LoadedModel.tokenize` does (BOS added, special tokens parsed).
A vocabulary-only load is kept per file for the process's life (a few per process at most).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from inference.generation import GenerationError
from inference.llama_lowlevel import LOAD_LOCK, install_log_bridge

_TOKENIZE_LOCK = threading.Lock()  # one tokenisation at a time per process: plenty for tests


@functools.lru_cache(maxsize=4)
def _vocab(path: str) -> Any:
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with LOAD_LOCK:
        install_log_bridge(llama_cpp)
        llama_cpp.llama_backend_init()
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise GenerationError(f"could not read the vocabulary of {path}")
    return llama_cpp.llama_model_get_vocab(model)  # the model is kept: the cache holds it


def count_tokens(path: str, text: str) -> int:
    """How many tokens *text* is to the model in *path* (its BOS included)."""
    import llama_cpp

    vocab = _vocab(path)
    data = text.encode("utf-8")
    room = len(data) + 16
    with _TOKENIZE_LOCK:
        while True:
            tokens = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, room, True, True)
            if n >= 0:
                return int(n)
            room = -n
