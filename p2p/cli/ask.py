"""`gpunet ask`: one prompt into the network, the answer streamed to stdout.

With `--verify` (or for a `verify_fraction` of asks) the answer is then spot-checked on another
provider of the same model file (p2p/client/spot_check.py) and the verdict printed; the outcome
goes into the data dir's reputation file, which ranks the providers of the next asks.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from functools import partial
from typing import Any

import attrs
import click

from inference.generation import (
    MAX_PROMPT_BYTES,
    MAX_SEED,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
)
from p2p.cli.common import (
    client_bootstrap,
    read_network_key,
    resolve_all,
    run_client,
    setup_logging,
)
from p2p.cli.options import command_settings, setting_options
from p2p.client.failover import ASK_DEADLINE_S, generate
from p2p.client.network import Client, list_nodes, open_client
from p2p.client.ranking import Provider
from p2p.client.reputation import Reputation
from p2p.client.segments import Segment
from p2p.client.spot_check import CheckResult, check_request
from p2p.model_match import model_matches
from p2p.protocol import wire
from p2p.reach.punch_rules import path_label
from p2p.settings import Settings

DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m"


@attrs.frozen
class Question:
    """What `gpunet ask` was asked, as typed."""

    prompt: str
    model: str | None
    max_tokens: int
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    chat: bool
    reproducible: bool
    prefer: str | None
    timeout_s: float | None = ASK_DEADLINE_S  # the whole request; None: no limit
    verify: bool = False  # spot-check the answer on another provider and say the verdict

    def request(self, model: str) -> wire.Generate:
        return wire.Generate(
            id=1,
            model=model,
            prompt="" if self.chat else self.prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            stop=self.stop,
            messages=(wire.ChatMessage("user", self.prompt),) if self.chat else (),
            reproducible=self.reproducible,
        )


async def pick_default_model(client: Client) -> str:
    """The default model when a node offers it, else the model most nodes offer."""
    offered = [m for r in await list_nodes(client) for m in r.models]
    if not offered or any(model_matches(DEFAULT_MODEL_NAME, m.sha256, m.name) for m in offered):
        return DEFAULT_MODEL_NAME
    return Counter(m.name for m in offered).most_common(1)[0][0]


def _check_json(c: CheckResult) -> dict[str, object]:
    return {
        "verdict": c.verdict,
        "peer_id": c.peer_id,
        "model_sha256": c.model_sha256,
        "reason": c.reason,
        "verifiers": [v.peer_id for v in c.verifiers],
        "caught": c.caught,
        "evidence": str(c.evidence) if c.evidence is not None else None,
    }


def _print_checks(checks: list[CheckResult], *, always: bool) -> None:
    """The verdicts on stderr: all of them when asked for (--verify), else only a failure."""
    for c in checks:
        if always or c.verdict == "inconsistent":
            line = f"[verify {c.peer_id[:12]}: {c.verdict}: {c.reason}]"
            if c.evidence is not None:
                line += f" [evidence: {c.evidence}; re-check it with `gpunet verify FILE`]"
            click.echo(line, err=True)


def _print_done(
    done: wire.Done,
    text: str,
    as_json: bool,
    verbose: int,
    checks: list[CheckResult] | None = None,
    paths: list[dict[str, str]] | None = None,
) -> None:
    if as_json:
        body: dict[str, object] = {
            "text": text,
            "finish_reason": done.finish_reason,
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "ttft_s": done.ttft_s,
            "decode_tok_s": done.decode_tok_s,
        }
        if checks is not None:
            body["verification"] = [_check_json(c) for c in checks]
        if paths is not None:  # per segment: direct / mapped / hole-punched / relayed / local
            body["paths"] = paths
        click.echo(json.dumps(body))
    else:
        sys.stdout.write("\n")
    if verbose:
        via = ", ".join(f"{p['peer_id'][:12]} {p['path']}" for p in paths or ())
        click.echo(
            f"[{done.completion_tokens} tokens, {done.finish_reason}, "
            f"{done.decode_tok_s:.1f} tok/s" + (f"; via {via}" if via else "") + "]",
            err=True,
        )


async def ask_network(settings: Settings, question: Question, as_json: bool) -> None:
    verbose = settings["verbose"]
    pieces: list[str] = []

    def on_text(text: str) -> None:
        pieces.append(text)
        if not as_json:
            sys.stdout.write(text)
            sys.stdout.flush()

    reach_of: dict[str, str] = {}  # how each provider's record says it is reached

    def on_provider(p: Provider) -> None:
        reach_of[p.record.peer_id] = p.record.reach
        if verbose:
            click.echo(
                f"[{p.record.peer_id[:16]} at {p.record.addresses[0]} serves "
                f"{p.model.name} {p.model.sha256[:12]}; chosen for: {p.reason}]",
                err=True,
            )

    segments: list[Segment] = []
    reputation = Reputation.load(settings.data_dir)
    check = question.verify or random.random() < settings["verify_fraction"]
    checks: list[CheckResult] | None = None
    addrs = await resolve_all(client_bootstrap(settings["bootstrap"], settings.data_dir))
    async with open_client(addrs, psk=read_network_key(settings["network_key"])) as client:
        client.ranker.standing = reputation.standing  # a node caught cheating is not asked
        chosen = question.model or await pick_default_model(client)
        done = await generate(
            client,
            chosen,
            question.request(chosen),
            on_text,
            on_provider,
            prefer=question.prefer,
            deadline_s=question.timeout_s,
            on_segment=segments.append,
            probes=settings["probes"],
        )
        paths = [
            {
                "peer_id": s.peer_id,
                "path": path_label(client.pool.served_path(s.peer_id), reach_of.get(s.peer_id)),
            }
            for s in segments
        ]
        if check:
            checks = await check_request(
                client, segments, reputation=reputation, data_dir=settings.data_dir
            )
    _print_done(done, "".join(pieces), as_json, verbose, checks, paths)
    if checks is not None and not as_json:
        _print_checks(checks, always=question.verify or verbose > 0)


def _check_stops(stops: tuple[str, ...]) -> tuple[str, ...]:
    """The node's bounds on stop strings (inference.generation), at the command line."""
    if len(stops) > MAX_STOP_STRINGS:
        raise click.BadParameter(f"at most {MAX_STOP_STRINGS} stop strings", param_hint="--stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise click.BadParameter(f"at most {MAX_STOP_CHARS} characters", param_hint="--stop")
    return stops


def _check_prompt(prompt: str) -> str:
    size = len(prompt.encode("utf-8", "surrogateescape"))
    if size > MAX_PROMPT_BYTES:
        raise click.BadParameter(
            f"{size} bytes; a node takes at most {MAX_PROMPT_BYTES}", param_hint="PROMPT"
        )
    return prompt


@click.command("ask")
@setting_options("ask")
@click.option(
    "--model",
    default=None,
    metavar="NAME_OR_SHA256",
    help=f"Model name or sha256 (default: {DEFAULT_MODEL_NAME} if offered).",
)
@click.option(
    "--max-tokens",
    default=128,
    show_default=True,
    type=click.IntRange(1, MAX_TOKENS_LIMIT),
    help="Tokens to generate at most (the node may stop sooner: end of text, a stop string).",
)
@click.option(
    "--timeout",
    default=ASK_DEADLINE_S,
    show_default=True,
    type=click.FloatRange(0.0, None),
    help="Seconds the whole request may take, lookups and failover included (0: no limit). "
    "Past it the request fails with a timeout error.",
)
@click.option(
    "--temperature",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, MAX_TEMPERATURE),
    help="0 is greedy (deterministic).",
)
@click.option("--seed", default=None, type=click.IntRange(0, MAX_SEED), help="Sampling seed.")
@click.option(
    "--stop",
    multiple=True,
    callback=lambda _ctx, _param, stops: _check_stops(stops),
    help=f"Stop string (repeatable, at most {MAX_STOP_STRINGS} of {MAX_STOP_CHARS} characters).",
)
@click.option(
    "--chat",
    is_flag=True,
    help="Send PROMPT as a user message, rendered with the model's chat template "
    "(or its architecture's turn format when the GGUF has none).",
)
@click.option(
    "--reproducible",
    is_flag=True,
    help="Decode alone on the node, never batched with other requests: bit-identical to any "
    "other reproducible run on the same build and hardware, at some cost in the node's throughput.",
)
@click.option(
    "--prefer",
    default=None,
    metavar="PEER_ID",
    help="Try this node first (peer id or a prefix, as `gpunet peers` shows); others are "
    "the fallback.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Then spot-check the answer on another provider of the same model file and print the "
    "verdict (consistent, inconsistent, inconclusive) on stderr; a failed check writes an "
    "evidence file for `gpunet verify`.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object at the end instead of streaming."
)
@click.argument("prompt", callback=lambda _ctx, _param, prompt: _check_prompt(prompt))
def ask_command(
    model: str | None,
    max_tokens: int,
    timeout: float,
    temperature: float,
    seed: int | None,
    stop: tuple[str, ...],
    chat: bool,
    reproducible: bool,
    prefer: str | None,
    verify: bool,
    as_json: bool,
    prompt: str,
    **_flags: Any,
) -> None:
    """Send PROMPT to the network and stream the generated text to stdout.

    The default model is a base model: it continues text rather than answering questions
    (with --chat it gets Gemma's turn format, but expect rambling rather than answers).
    """
    settings = command_settings("ask")
    setup_logging(settings["verbose"])
    question = Question(
        prompt,
        model,
        max_tokens,
        temperature,
        seed,
        stop,
        chat,
        reproducible,
        prefer,
        timeout_s=timeout or None,
        verify=verify,
    )
    run_client(partial(ask_network, settings, question, as_json))
