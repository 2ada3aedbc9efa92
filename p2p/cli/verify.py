"""`gpunet verify FILE`: re-check an evidence file with the model alone, trusting no one.

The evidence (p2p/client/evidence.py) names a node, the model sha256 it claimed, the request, the
seed and the output tokens, with the node's signed receipt. This command checks the receipt's
signature and that it vouches for exactly that request and output, loads the model file of that
sha256 (`--model PATH`, else the model cache), teacher-forces prompt + output through it in one
prefill in this process (no network), and judges the node's own positions with the same
statistic a spot check uses (inference/verification.py), the node's signed prompt-probe values
included (inference/probe_stat.py: did it compute the whole prompt?). What the reporter's
verifiers said is shown but not used.

Exit status: 0 consistent, 1 inconsistent (the node signed an output its claimed model does not
produce), 2 inconclusive or unusable (no valid receipt, no model file, too few tokens).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from crypto.receipts import ReceiptError, decode
from inference.batching import BatchingWorker
from inference.generation import GenerationError, PromptTooLong
from inference.model_cache import model_cache_dir
from inference.model_file import ModelFileError, ModelInfo, inspect_gguf
from inference.scoring import MAX_SCORE_TOKENS, ScoreRequest
from inference.verification import judge
from p2p.cli.common import CommandError
from p2p.client.evidence import Evidence, EvidenceError, load_evidence
from p2p.client.segments import check_receipt
from p2p.node.models import ServedModel
from p2p.node.serving import generation_request

EXIT = {"consistent": 0, "inconsistent": 1, "inconclusive": 2}
# Context for the re-check: prompt + output, at most the model's trained context.
MAX_CHECK_CONTEXT = 8192


class Unusable(CommandError):
    """The file cannot be checked (one line on stderr, exit status 2)."""

    exit_code = 2


@attrs.frozen
class Recheck:
    verdict: str
    reason: str
    receipt_problem: str
    model_path: str
    n: int = 0
    mismatches: int = 0
    score: float = 0.0
    prompt_tokens: int = 0
    receipt_prompt_tokens: int = 0
    # The prompt probes (inference/probe_stat.py): "none", "missing", "consistent", ...
    probe_status: str = "none"
    probe_off: int = 0
    probe_asked: int = 0


def find_model(sha256: str, given: Path | None) -> ModelInfo:
    """The model file of *sha256*: *given*, or one in the model cache."""
    candidates = [given] if given is not None else sorted(model_cache_dir().glob("*.gguf"))
    for path in candidates:
        try:
            info = inspect_gguf(path)
        except (ModelFileError, OSError) as exc:
            if given is not None:
                raise Unusable(f"--model {path}: {exc}") from exc
            continue
        if info.sha256 == sha256:
            return info
        if given is not None:
            raise Unusable(f"--model {path} has sha256 {info.sha256}, the receipt names {sha256}")
    raise Unusable(
        f"no model file with sha256 {sha256} in the model cache ({model_cache_dir()}); "
        "pass --model PATH"
    )


async def recheck(ev: Evidence, info: ModelInfo, n_threads: int) -> Recheck:
    """Recompute *ev*'s scores on *info*'s model in this process and judge them."""
    receipt_problem, receipt_prompt = "", 0
    try:
        signed = decode(ev.receipt) if ev.receipt else None
    except ReceiptError as exc:
        signed, receipt_problem = None, f"malformed receipt: {exc}"
    if signed is None:
        receipt_problem = receipt_problem or "no receipt: nothing binds the output to the node"
    else:
        receipt_prompt = signed.receipt.prompt_tokens
        _, receipt_problem = check_receipt(
            ev.receipt,
            peer_id=ev.peer_id,
            model_sha256=ev.model_sha256,
            request=ev.request,
            tokens=ev.tokens[ev.judged_from :],
            seed=ev.seed,
            prompt_tokens=receipt_prompt,
        )
    if ev.request.temperature > 0 and ev.seed is None:
        return Recheck(
            "inconclusive", "sampled without a seed: not replayable", receipt_problem, ""
        )
    tokens = ev.tokens[:MAX_SCORE_TOKENS]
    limit = info.context_length or MAX_CHECK_CONTEXT
    worker = BatchingWorker(
        Path(info.path), n_ctx=min(limit, MAX_CHECK_CONTEXT), n_threads=n_threads, slots=1
    )
    await worker.start()
    try:
        request = generation_request(ev.request, ServedModel(info, worker))
        request = attrs.evolve(request, replay_tokens=(), seed=ev.seed)  # probes kept
        result = await worker.score(ScoreRequest(request, tokens, 0))
    finally:
        await worker.aclose()
    own = result.positions[ev.judged_from :]
    # The node's signed logprob commitments, when its receipt vouches for this output.
    committed = signed.receipt.committed() if signed is not None and not receipt_problem else ()
    lps = list(committed[: len(own)]) if len(committed) >= len(own) else None
    # And its signed prompt-probe values, against this prefill's (one per draw of the request).
    probes = signed.receipt.probes() if signed is not None and not receipt_problem else ()
    stat = judge(
        own,
        sampled=ev.request.temperature > 0,
        committed=lps,
        probes=probes,
        verifier_probes=result.probe_logprobs,
    )
    off = f"{stat.mismatches} of {stat.n} tokens are not the model's choice"
    verdict, reason = stat.verdict, f"{off} (score {stat.score:.3g})"
    reason += stat.probes.clause(detailed=True)
    if receipt_prompt and result.prompt_tokens != receipt_prompt:
        verdict = "inconsistent"
        reason += f"; the prompt is {result.prompt_tokens} tokens, the node signed {receipt_prompt}"
    if receipt_problem and verdict != "inconclusive":
        # The output is judged, but without a receipt that vouches for it, it proves nothing
        # about the node.
        reason += f"; but {receipt_problem}"
        verdict = "inconclusive"
    return Recheck(
        verdict,
        reason,
        receipt_problem,
        str(info.path),
        stat.n,
        stat.mismatches,
        stat.score,
        result.prompt_tokens,
        receipt_prompt,
        stat.probes.status,
        stat.probes.off,
        stat.probes.asked,
    )


def _print(ev: Evidence, path: Path, out: Recheck, as_json: bool) -> None:
    if as_json:
        body: dict[str, Any] = {
            "file": str(path),
            "peer_id": ev.peer_id,
            "model_sha256": ev.model_sha256,
            **attrs.asdict(out),
            "receipt_valid": out.receipt_problem == "",
            "reported": [attrs.asdict(v, filter=lambda a, _v: a.name in ("peer_id", "verdict"))
                         for v in ev.verifiers],
        }  # fmt: skip
        click.echo(json.dumps(body))
        return
    click.echo(f"node:    {ev.peer_id}")
    click.echo(f"claims:  model {ev.model_sha256}")
    click.echo(
        f"receipt: {out.receipt_problem or 'signed by the node, matches request and output'}"
    )
    click.echo(f"model:   {out.model_path}")
    if ev.verifiers:
        said = ", ".join(f"{v.peer_id[:12]} {v.verdict}" for v in ev.verifiers)
        click.echo(f"reported (not used): {said}")
    click.echo(f"verdict: {out.verdict}: {out.reason}")


@click.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The GGUF file the receipt names (its sha256 is checked). Default: the model cache.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 512),
    default=None,
    help="CPU threads for llama.cpp (default: the CPUs this process may use).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def verify_command(file: Path, model_path: Path | None, threads: int | None, as_json: bool) -> None:
    """Re-check an evidence FILE (written by a failed spot check) with the model alone.

    Checks the node's signed receipt, recomputes the model's scores of the output locally (no
    network, no trust in whoever wrote the file) and prints the verdict. Exit status: 0
    consistent, 1 inconsistent, 2 inconclusive or unusable.
    """
    try:
        ev = load_evidence(file)
    except EvidenceError as exc:
        raise Unusable(str(exc)) from exc
    info = find_model(ev.model_sha256, model_path)
    n_threads = threads or len(os.sched_getaffinity(0)) or 1
    try:
        out = trio.run(recheck, ev, info, n_threads)
    except (ModelFileError, ValueError, GenerationError, PromptTooLong) as exc:
        raise Unusable(f"cannot recompute the scores: {exc}") from exc
    _print(ev, file, out, as_json)
    raise SystemExit(EXIT[out.verdict])
