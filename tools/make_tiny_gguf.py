"""Write a tiny random-weight Llama GGUF that llama.cpp loads and generates from.

Tests need a real model file that loads in well under a second and takes a few MB, and we commit
no weights, so the file is generated at test time. The architecture is the smallest Llama that
still exercises grouped-query attention (4 heads, 2 KV heads); row sizes are multiples of 256 so
a K-quant of it would need no fallback. Its output is gibberish by design.

The output rows of the control tokens (<unk>, <s>, </s>) are zero, so greedy decoding never picks
end-of-sequence and a test asking for N tokens gets exactly N.

    python tools/make_tiny_gguf.py OUT.gguf [--seed N] [--quantize F32|F16|Q8_0|Q4_0]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import gguf
import numpy as np

N_EMBD = 256
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 512
N_CTX = 512
N_VOCAB = 512
HEAD_DIM = N_EMBD // N_HEAD

# llama.cpp's file_type ids for the quantizations gguf-py can write in pure Python.
_QUANTIZE = {
    "F32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "Q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

_WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by", "at",
    "from", "it", "be", "this", "are", "or", "an", "which", "not", "but", "have", "had", "were",
    "one", "all", "their", "there", "has", "been", "its", "more", "also", "new", "first", "after",
    "hello", "world", "model", "token", "paris", "france", "capital", "city", "country",
)  # fmt: skip


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: 3 control tokens, 256 byte tokens, then pieces.

    The byte tokens let the tokenizer spell any UTF-8 text; the pieces make ordinary text a bit
    shorter than one token per byte.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁", *(f"▁{c}" for c in string.ascii_lowercase), *string.ascii_lowercase]
    pieces += [*string.digits, *".,!?'-:;", *(f"▁{w}" for w in _WORDS)]
    letters = "etaoinshrdlucmfwyp"
    pieces += [a + b for a in letters for b in letters]
    unique = list(dict.fromkeys(pieces))[: N_VOCAB - len(tokens)]
    tokens += unique
    types += [gguf.TokenType.NORMAL] * len(unique)
    scores = [0.0] * 259 + [-float(i) for i in range(len(unique))]
    return tokens, scores, [int(t) for t in types]


def _tensors(rng: np.random.Generator, n_vocab: int) -> dict[str, np.ndarray]:
    """Weights in numpy order; llama.cpp's shapes are the reverse (gguf-py flips them)."""

    def w(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    out: dict[str, np.ndarray] = {"token_embd.weight": w(n_vocab, N_EMBD)}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = ones.copy()
        out[p + "attn_q.weight"] = w(N_HEAD * HEAD_DIM, N_EMBD)
        out[p + "attn_k.weight"] = w(N_HEAD_KV * HEAD_DIM, N_EMBD)
        out[p + "attn_v.weight"] = w(N_HEAD_KV * HEAD_DIM, N_EMBD)
        out[p + "attn_output.weight"] = w(N_EMBD, N_HEAD * HEAD_DIM)
        out[p + "ffn_norm.weight"] = ones.copy()
        out[p + "ffn_gate.weight"] = w(N_FF, N_EMBD)
        out[p + "ffn_up.weight"] = w(N_FF, N_EMBD)
        out[p + "ffn_down.weight"] = w(N_EMBD, N_FF)
    out["output_norm.weight"] = ones.copy()
    output = w(n_vocab, N_EMBD)
    output[:3] = 0.0  # control tokens: see the module docstring
    out["output.weight"] = output
    return out


def make_tiny_gguf(
    path: Path,
    *,
    seed: int = 0,
    quantize: str = "F32",
    architecture: str = "llama",
    chat_template: str | None = None,
    pooling_type: int | None = None,
) -> Path:
    """Write the tiny model to `path` (deterministic for a given seed) and return the path.

    Another `architecture` name gives a file llama.cpp refuses (tests of that refusal).
    `chat_template` is written as `tokenizer.chat_template`; `pooling_type` (llama.cpp's
    LLAMA_POOLING_TYPE_*: 1 mean, 2 cls, 3 last) marks the file as an embedding model."""
    if quantize not in _QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(_QUANTIZE)}, not {quantize!r}")
    qtype, ftype = _QUANTIZE[quantize]
    tokens, scores, types = _vocabulary()
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama")
    writer.add_file_type(int(ftype))
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if pooling_type is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling_type))

    for name, data in _tensors(rng, len(tokens)).items():
        if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data)  # norms stay F32, as in llama.cpp's own quantizer
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight Llama GGUF for tests.")
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument(
        "--quantize", choices=sorted(_QUANTIZE), default="F32", help="weight type (default F32)"
    )
    args = parser.parse_args(argv)
    path = make_tiny_gguf(args.out, seed=args.seed, quantize=args.quantize)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
