"""The values a generation request and its answer are made of, shared by both workers.

Pure data (attrs, frozen, validated once at construction); nothing here touches llama.cpp or
trio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from inference.prompt_probes import check_draws
from inference.token_logprobs import MAX_TOP_LOGPROBS, TokenLogprob

# --- The bounds of a request: the one definition. The session decoder (p2p/protocol/wire.py),
# the OpenAI parser (p2p/api/request_parsing.py) and `gpunet ask`'s options all check these, so
# a value one layer accepts is never refused by the next (issue #14: a seed the wire accepted
# made the worker raise, and the session was closed). ---

# llama.cpp's "pick a random seed" value (LLAMA_DEFAULT_SEED): never a seed a client may ask for.
RANDOM_SEED = 0xFFFFFFFF
MAX_SEED = RANDOM_SEED - 1
# Tokens one request may ask for (replayed ones included): 32K is the longest context the
# models a volunteer runs are usually trained for; the model's own context is checked later
# (`check_fits`, `too_long`).
MAX_TOKENS_LIMIT = 32768
# Temperatures above a few make every token equally likely; 10 leaves room for experiments.
# (OpenAI's API stops at 2, and the gateway keeps that: p2p/api/request_parsing.py.)
MAX_TEMPERATURE = 10.0
# top_p keeps the smallest set of tokens whose probability reaches it; 0 would keep none.
MIN_TOP_P = 1e-6
# Stop strings: OpenAI allows 4; 8 of at most 256 characters bound the work of matching them
# against every generated token.
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256
# A prompt (or the contents of a chat's messages together), in UTF-8 bytes: half of one session
# frame (crypto.secure_session.MAX_FRAME_PLAINTEXT, 1 MiB), which leaves room for the replay
# (at most 32K token ids, ≤ 5 bytes each in msgpack) and the other fields. Counted in bytes,
# not characters, as frames are.
MAX_PROMPT_BYTES = 512 * 1024
# --- Samplers beyond temperature and top_p (issue #17). The defaults are the chain every
# request got before these were per request (llama-cpp-python's create_completion defaults), so
# a request from a peer that sends none of them samples as it always did. ---
# top_k: 0 turns it off (llama.cpp's convention); no vocabulary we load has a million tokens.
DEFAULT_TOP_K = 40
MAX_TOP_K = 1_000_000
DEFAULT_MIN_P = 0.05
# typical_p 1 turns it off; like top_p, 0 would keep no token.
MIN_TYPICAL_P = MIN_TOP_P
# repeat_penalty divides a repeated token's positive logit (llama.cpp, "must be > 0"); 1 is off.
# The floor keeps the division finite; beyond 10 every repeat is already ruled out.
MIN_REPEAT_PENALTY = 0.01
MAX_REPEAT_PENALTY = 10.0
# presence/frequency penalties: OpenAI's range, kept on the wire too.
MAX_PRESENCE_PENALTY = 2.0
MAX_FREQUENCY_PENALTY = 2.0
# The window the three penalties look back over: llama.cpp's default (repeat_last_n = 64); the
# last prompt tokens count too, as in llama-server.
DEFAULT_PENALTY_LAST_N = 64
MAX_PENALTY_LAST_N = MAX_TOKENS_LIMIT
# logit_bias: OpenAI's range; its -100 means "never this token" and is applied as -infinity.
MAX_LOGIT_BIAS = 100.0
BAN_BIAS = -MAX_LOGIT_BIAS
# Entries per request: ample for banning or favouring words, and a bound on the table the
# sampler builds for every request.
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_TOKEN_ID = 2**31 - 1
# A GBNF grammar (llama.cpp's format) constraining the output, in UTF-8 bytes: what a JSON
# schema of a few hundred properties converts to, and a bound on llama.cpp's parse of it.
MAX_GRAMMAR_BYTES = 64 * 1024
# How a generation can end (GenerationDone.finish_reason); a node's answer says one of these.
FINISH_REASONS = ("stop", "length", "cancelled")


def _seed_ok(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise ValueError(f"{attribute.name} must be an integer from 0 to {MAX_SEED}, got {value}")


def _as_stops(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _stops_ok(
    _: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not all(isinstance(s, str) and s for s in value):
        raise ValueError(f"{attribute.name} must be non-empty strings")
    if len(value) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in value):
        raise ValueError(
            f"{attribute.name}: at most {MAX_STOP_STRINGS} strings of {MAX_STOP_CHARS} characters"
        )


def _as_bias(
    value: Iterable[tuple[int, float]] | Mapping[int, float],
) -> tuple[tuple[int, float], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((token, float(bias)) for token, bias in items)


def _bias_ok(
    _: object,
    attribute: attrs.Attribute[tuple[tuple[int, float], ...]],
    value: tuple[tuple[int, float], ...],
) -> None:
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise ValueError(f"{attribute.name}: at most {MAX_LOGIT_BIAS_ENTRIES} tokens")
    for token, bias in value:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= MAX_TOKEN_ID:
            raise ValueError(f"{attribute.name}: keys must be token ids (whole numbers >= 0)")
        if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:  # NaN fails both
            raise ValueError(
                f"{attribute.name}: biases must be from {-MAX_LOGIT_BIAS:g} to {MAX_LOGIT_BIAS:g}"
            )


def _grammar_ok(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or len(value.encode("utf-8", "surrogatepass")) > (
        MAX_GRAMMAR_BYTES
    ):
        raise ValueError(f"{attribute.name} must be a string of at most {MAX_GRAMMAR_BYTES} bytes")


def _range(lo: float, hi: float) -> list[Any]:
    return [attrs.validators.ge(lo), attrs.validators.le(hi)]


def _as_token_ids(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _replay_ok(
    request: GenerationRequest, attribute: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]
) -> None:
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        raise ValueError(f"{attribute.name} must be token ids (whole numbers >= 0)")
    if len(value) >= request.max_tokens:
        raise ValueError(
            f"{attribute.name} holds {len(value)} tokens: nothing left to generate within "
            f"max_tokens {request.max_tokens}"
        )


@attrs.frozen
class GenerationRequest:
    prompt: str
    max_tokens: int = attrs.field(
        default=128, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_TOKENS_LIMIT)]
    )
    temperature: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(MAX_TEMPERATURE)]
    )
    top_p: float = attrs.field(
        default=1.0, validator=[attrs.validators.ge(MIN_TOP_P), attrs.validators.le(1.0)]
    )
    seed: int | None = attrs.field(default=None, validator=_seed_ok)
    stop: tuple[str, ...] = attrs.field(default=(), converter=_as_stops, validator=_stops_ok)
    # Mid-stream failover by exact replay: the ids this request already produced elsewhere
    # (every TokenChunk.token_ids received, in order). The worker prefills the prompt as for a
    # fresh request, then feeds these one per decode step as if it had sampled them, sending no
    # text for them, and goes on generating. max_tokens counts them: a resumed request with the
    # same max_tokens ends where the uninterrupted one would have.
    replay_tokens: tuple[int, ...] = attrs.field(
        default=(), converter=_as_token_ids, validator=_replay_ok
    )
    # Served alone, never batched with others (the prompt prefilled, then one token per decode
    # step), so on the same build and hardware the output is bit-identical to any other
    # reproducible run of it — which exact replay and verification rely on. Costs the batch's
    # other requests a pause while it runs. ModelWorker serves every request this way.
    reproducible: bool = False
    # The sampler chain (inference/llama_lowlevel.py `Sampler`): logit_bias → penalties → top_k →
    # typical_p → top_p → min_p → temperature → draw; at temperature 0 the bias and penalties
    # still apply before the argmax. ignore_eos bans the end-of-generation tokens.
    top_k: int = attrs.field(default=DEFAULT_TOP_K, validator=_range(0, MAX_TOP_K))
    min_p: float = attrs.field(default=DEFAULT_MIN_P, validator=_range(0.0, 1.0))
    typical_p: float = attrs.field(default=1.0, validator=_range(MIN_TYPICAL_P, 1.0))
    repeat_penalty: float = attrs.field(
        default=1.0, validator=_range(MIN_REPEAT_PENALTY, MAX_REPEAT_PENALTY)
    )
    presence_penalty: float = attrs.field(
        default=0.0, validator=_range(-MAX_PRESENCE_PENALTY, MAX_PRESENCE_PENALTY)
    )
    frequency_penalty: float = attrs.field(
        default=0.0, validator=_range(-MAX_FREQUENCY_PENALTY, MAX_FREQUENCY_PENALTY)
    )
    penalty_last_n: int = attrs.field(
        default=DEFAULT_PENALTY_LAST_N, validator=_range(0, MAX_PENALTY_LAST_N)
    )
    # (token id, bias) pairs; a dict is accepted too.
    logit_bias: tuple[tuple[int, float], ...] = attrs.field(
        default=(), converter=_as_bias, validator=_bias_ok
    )
    ignore_eos: bool = False
    # GBNF (llama.cpp's grammar format, root rule `root`): only output the grammar allows is
    # sampled; "" leaves the output free. JSON schemas and response_format are converted to
    # GBNF before they reach the worker.
    grammar: str = attrs.field(default="", validator=_grammar_ok)
    # Log-probabilities of the generated tokens (inference/token_logprobs.py): -1 off, else
    # each TokenChunk carries its tokens' entries with this many alternatives (0..20).
    logprobs: int = attrs.field(default=-1, validator=_range(-1, MAX_TOP_LOGPROBS))
    # The prompt's tokens get entries too, with `logprobs` alternatives (OpenAI's echo), in
    # GenerationDone (inference/prompt_logprobs.py).
    prompt_logprobs: bool = attrs.field(default=False)
    # Prompt probes (inference/prompt_probes.py): draws naming prompt positions whose
    # log-probabilities GenerationDone.probe_logprobs returns, proof the prompt was computed.
    probes: tuple[int, ...] = attrs.field(default=(), converter=_as_token_ids)

    @probes.validator
    def _probes_ok(self, _: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
        check_draws(value)

    @prompt_logprobs.validator
    def _prompt_logprobs_ok(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if value and self.logprobs < 0:
            raise ValueError(f"{attribute.name} needs logprobs >= 0")

    @property
    def penalized(self) -> bool:
        """Whether the repeat, presence or frequency penalty changes anything."""
        return self.penalty_last_n > 0 and (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def plain_greedy(self) -> bool:
        """Temperature 0 with nothing between the logits and the argmax."""
        return (
            self.temperature == 0
            and not self.penalized
            and not self.logit_bias
            and not self.ignore_eos
            and not self.grammar
        )


@attrs.frozen
class TokenChunk:
    """New text, never empty: bytes of an unfinished UTF-8 character or of a possible stop string
    are held back until they resolve. `token_ids` are the tokens this text was decoded from
    (released with it; see inference/streaming.py); `token_count` is their number."""

    text: str
    token_count: int
    token_ids: tuple[int, ...] = ()
    # One entry per token id when the request asked for logprobs (else empty).
    logprobs: tuple[TokenLogprob, ...] = ()


@attrs.frozen
class GenerationDone:
    finish_reason: str  # "stop" (end-of-sequence or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float  # from the worker picking the request up; queueing excluded
    decode_tokens_per_s: float  # after the first token; 0.0 with fewer than two tokens
    # Generated tokens that no TokenChunk carried (from a stop string on, or tokens without text
    # at the end). The chunks' token_ids + these = every token this run generated; replayed
    # tokens are not sent back, but completion_tokens counts them (as max_tokens does), so
    # completion_tokens = len(replay_tokens) + that count.
    token_ids: tuple[int, ...] = ()
    # Prompt tokens whose KV cells were reused from an earlier request (not prefilled again).
    cached_prompt_tokens: int = 0
    # Greedy speculation (inference/speculation.py): tokens guessed and fed ahead, and how many
    # of them were the model's own choice and kept.
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    # The seed of the run's replayable draws (inference/replayable_draw.py): the request's, or
    # at temperature > 0 without one, the random seed the worker picked, so that the run can be
    # replayed and verified. None for a greedy run given none.
    seed: int | None = None
    # With GenerationRequest.prompt_logprobs: the entries of the prompt's tokens from the second
    # on, and the first one's text (it has no log-probability).
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    prompt_first: bytes = b""
    # With GenerationRequest.probes: per draw, in order, the log-probability at the prompt
    # position it names (inference/prompt_probes.py); () for a prompt under two tokens.
    probe_logprobs: tuple[float, ...] = ()


Item = TokenChunk | GenerationDone


class WorkerBusy(Exception):
    """More than max_queue requests are already waiting; try another node or later."""


class GenerationError(Exception):
    """This request cannot be served (prompt too long for the context, worker closed, ...)."""


class PromptTooLong(GenerationError):
    """The prompt plus max_tokens do not fit the context (the wire's `too_long`); the message
    gives both numbers and the limit."""


@attrs.frozen
class WorkerLoad:
    """A worker's `load`: what the capability record publishes, plus a step count."""

    active_requests: int  # requests being generated
    free_slots: int
    queue_depth: int  # accepted, waiting for a slot
    decode_steps: int  # llama_decode calls so far
    cached_tokens: int = 0  # tokens the prompt-prefix cache keeps in free slots


def check_fits(n_prompt: int, max_tokens: int, n_ctx: int) -> None:
    """PromptTooLong unless prompt + max_tokens fit one sequence's context."""
    if n_prompt + max_tokens > n_ctx:
        raise PromptTooLong(
            f"prompt is {n_prompt} tokens; with max_tokens {max_tokens} it "
            f"exceeds this model's context of {n_ctx} tokens"
        )
