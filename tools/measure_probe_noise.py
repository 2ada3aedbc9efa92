"""Measure prompt probes' honest noise and cheats' deltas on the default model (issue #16).

The verifier's probe value is a row of its scoring prefill (inference/probe_scoring.py); an
honest node's is a one-row decode at that position over cells shared with its own prefill
(batched with other sequences' rows, on its own thread count, its prompt fed in its own
chunks). This script computes both on real prompts (tools/verification_prompts.py, each
followed by a greedy continuation so that prompts are 60-150 tokens) for every position, and
prints the distribution of |node - verifier| per configuration, the largest per-row
max |logit difference| (|delta logprob| <= 2 max |delta logit|), and the deltas of cheats:
the first half of the prompt dropped (values after the cut computed without the prefix),
values from an 8-token window, and made-up values. `--json FILE` writes every delta.

    .venv/bin/python tools/measure_probe_noise.py --prompts 12 --json /tmp/probe_noise.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verification_prompts import PROMPTS

from inference.default_model import ensure_default_model
from inference.llama_lowlevel import LoadedModel
from inference.token_logprobs import log_normalizer

SEQS = 4  # the node's sequences: its own, the probe's scratch, two others batched alongside


def logprob(logits: Any, token: int) -> float:
    return float(logits[token]) - log_normalizer(logits)


def prefill_rows(
    model: LoadedModel, seq: int, tokens: list[int], rows: set[int], chunk: int, start: int = 0
) -> dict[int, Any]:
    """Feed *tokens* at positions start.. in chunks; a copy of the logits of *rows* (positions)."""
    out: dict[int, Any] = {}
    pos = 0
    while pos < len(tokens):
        model.clear_batch()
        marked = []
        for p in range(pos, min(len(tokens), pos + chunk)):
            i = model.add(tokens[p], start + p, seq, start + p in rows)
            if start + p in rows:
                marked.append((i, start + p))
        assert model.decode() == 0
        for i, p in marked:
            out[p] = model.logits(i).copy()
        pos += chunk
    return out


def continuation(model: LoadedModel, prompt: list[int], n: int) -> list[int]:
    model.forget_all()
    tokens = list(prompt)
    last = prefill_rows(model, 0, tokens, {len(tokens) - 1}, 512)[len(tokens) - 1]
    for _ in range(n):
        t = int(last.argmax())
        tokens.append(t)
        model.clear_batch()
        i = model.add(t, len(tokens) - 1, 0, True)
        assert model.decode() == 0
        last = model.logits(i).copy()
    model.forget_all()
    return tokens


def node_rows(model: LoadedModel, tokens: list[int], chunk: int, others: bool) -> dict[int, Any]:
    """An honest node's probe rows: its prefill in *chunk*s on seq 0, then per position p a
    one-row decode of tokens[p] at p on seq 1 sharing seq 0's cells [0, p), with (*others*)
    two other sequences' rows in the same batch."""
    model.forget_all()
    prefill_rows(model, 0, tokens, set(), chunk)
    if others:
        prefill_rows(model, 2, tokens[:7], set(), 512)
        prefill_rows(model, 3, tokens[:11], set(), 512)
    out: dict[int, Any] = {}
    for p in range(len(tokens) - 1):
        model.forget(1)
        model.share(0, 1, p)
        model.clear_batch()
        i = model.add(tokens[p], p, 1, True)
        if others:
            model.add(tokens[7 + p % 5], 7, 2, True)
            model.add(tokens[11 + p % 3], 11, 3, True)
        assert model.decode() == 0
        out[p] = model.logits(i).copy()
        if others:
            model.forget_from(2, 7)
            model.forget_from(3, 11)
    model.forget_all()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--continue-tokens", type=int, default=96)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    path = ensure_default_model()
    rng = random.Random(7)
    results: dict[str, list[dict[str, float]]] = {}
    models = {t: LoadedModel.load(path, n_ctx=512, n_seq=SEQS, n_threads=t, n_gpu_layers=0)
              for t in (1, 2)}  # fmt: skip
    verifier = models[2]
    for k, (kind, text) in enumerate(PROMPTS[: args.prompts]):
        tokens = continuation(verifier, verifier.tokenize(text), args.continue_tokens)
        n = len(tokens)
        probes = set(range(n - 1))
        verifier.forget_all()
        truth = prefill_rows(verifier, 0, tokens, probes | {n - 1}, 512)
        configs = {
            "t2-whole": (models[2], 512, False),
            "t2-chunk32-batched": (models[2], 32, True),
            "t1-chunk48-batched": (models[1], 48, True),
        }
        for name, (model, chunk, others) in configs.items():
            rows = node_rows(model, tokens, chunk, others)
            for p in range(n - 1):
                v, lg = logprob(truth[p], tokens[p + 1]), rows[p]
                d = logprob(lg, tokens[p + 1]) - v
                dl = float(np.abs(lg - truth[p]).max())
                results.setdefault(name, []).append({"p": p, "v": v, "d": d, "dlogit": dl})
        # Cheats: the first half dropped (positions after the cut see no prefix) ...
        cut = n // 2
        verifier.forget_all()
        cheat = prefill_rows(verifier, 0, [tokens[0], *tokens[cut:]], set(range(n)), 512)
        for q, lg in cheat.items():
            p = q + cut - 1  # row q of [bos, tokens[cut:]] stands for position p
            if cut <= p < n - 1:
                d = logprob(lg, tokens[p + 1]) - logprob(truth[p], tokens[p + 1])
                results.setdefault("cheat-after-cut", []).append({"p": p - cut, "v": 0, "d": d})
        # ... an 8-token window before each position, and made-up values.
        for p in range(0, n - 1, 3):
            verifier.forget_all()
            window = [tokens[0], *tokens[max(1, p - 7) : p + 1]]
            lg = prefill_rows(verifier, 0, window, {len(window) - 1}, 512)[len(window) - 1]
            v = logprob(truth[p], tokens[p + 1])
            results.setdefault("cheat-window8", []).append(
                {"p": p, "v": v, "d": logprob(lg, tokens[p + 1]) - v}
            )
            results.setdefault("cheat-made-up", []).append(
                {"p": p, "v": v, "d": -rng.uniform(0.0, 12.0) - v}
            )
        print(f"prompt {k} ({kind}): {n} tokens", file=sys.stderr, flush=True)
        if args.json:  # after every prompt: a long run stopped early keeps what it measured
            args.json.write_text(json.dumps(results))
    report(results)
    for model in models.values():
        model.close()


def report(results: dict[str, list[dict[str, float]]]) -> None:
    for name, rs in results.items():
        ds = np.abs(np.array([r["d"] for r in rs]))
        line = (
            f"{name:22s} n={len(ds):5d} |d| median {np.median(ds):.4f} p99 "
            f"{np.quantile(ds, 0.99):.3f} max {ds.max():.3f}; >0.5 {np.mean(ds > 0.5):.3%} "
            f">1 {np.mean(ds > 1):.3%} >2 {np.mean(ds > 2):.3%}"
        )
        if "dlogit" in rs[0]:
            line += f"; max |dlogit| {max(r['dlogit'] for r in rs):.3f}"
        print(line)


if __name__ == "__main__":
    main()
