"""The generation request on the wire: `Generate` (and its chat messages), validated field by
field with the worker's own bounds (inference/generation.py).

A `Generate` that decodes is one the worker accepts: every field within the bounds
`GenerationRequest` checks, and the rules between fields (a replay shorter than max_tokens, a
prompt or messages but not both, sizes in UTF-8 bytes as frames count them), so no value can make
the node raise while it builds the request (issue #14, attack 3). wire.py dispatches to
`decode_generate` and encodes with `generate_body`.
"""

from __future__ import annotations

from typing import Any

import attrs

# The request bounds are inference.generation's (the worker's own), re-exported for the wire's
# users: one definition, so what this decoder accepts the worker never refuses.
from inference.generation import DEFAULT_MIN_P as DEFAULT_MIN_P
from inference.generation import DEFAULT_PENALTY_LAST_N as DEFAULT_PENALTY_LAST_N
from inference.generation import DEFAULT_TOP_K as DEFAULT_TOP_K
from inference.generation import MAX_FREQUENCY_PENALTY as MAX_FREQUENCY_PENALTY
from inference.generation import MAX_GRAMMAR_BYTES as MAX_GRAMMAR_BYTES
from inference.generation import MAX_LOGIT_BIAS as MAX_LOGIT_BIAS
from inference.generation import MAX_LOGIT_BIAS_ENTRIES as MAX_LOGIT_BIAS_ENTRIES
from inference.generation import MAX_PENALTY_LAST_N as MAX_PENALTY_LAST_N
from inference.generation import MAX_PRESENCE_PENALTY as MAX_PRESENCE_PENALTY
from inference.generation import MAX_PROMPT_BYTES as MAX_PROMPT_BYTES
from inference.generation import MAX_REPEAT_PENALTY as MAX_REPEAT_PENALTY
from inference.generation import MAX_SEED as MAX_SEED
from inference.generation import MAX_STOP_CHARS as MAX_STOP_CHARS
from inference.generation import MAX_STOP_STRINGS as MAX_STOP_STRINGS
from inference.generation import MAX_TEMPERATURE as MAX_TEMPERATURE
from inference.generation import MAX_TOKEN_ID as MAX_TOKEN_ID
from inference.generation import MAX_TOKENS_LIMIT as MAX_TOKENS_LIMIT
from inference.generation import MAX_TOP_K as MAX_TOP_K
from inference.generation import MIN_REPEAT_PENALTY as MIN_REPEAT_PENALTY
from inference.generation import MIN_TOP_P as MIN_TOP_P
from inference.generation import MIN_TYPICAL_P as MIN_TYPICAL_P
from inference.prompt_probes import DRAW_SPAN, MAX_PROBES
from inference.token_logprobs import MAX_TOP_LOGPROBS as MAX_TOP_LOGPROBS
from p2p.protocol import tool_wire
from p2p.protocol.tool_wire import ToolCallMessage
from p2p.protocol.wire_fields import Fields, is_int, utf8_len

MAX_MESSAGES = 256
CHAT_ROLES = ("system", "user", "assistant", "tool")
MAX_MODEL_CHARS = 256


@attrs.frozen
class ChatMessage:
    role: str
    content: str
    # An assistant's tool calls, a tool result's call id and function name (p2p/protocol/
    # tool_wire.py); empty for a plain message.
    tool_calls: tuple[ToolCallMessage, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@attrs.frozen
class Generate:
    """A completion of `prompt`, or, when `messages` is not empty, a chat reply to them (the node
    renders them with the model's chat template; `prompt` is then empty)."""

    id: int
    model: str
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    messages: tuple[ChatMessage, ...] = ()
    # Failover by exact replay: tokens another node already generated for this request. The node
    # prefills the prompt as usual, feeds these one per decode step, then continues; max_tokens
    # counts them, so the total matches an uninterrupted run.
    replay_tokens: tuple[int, ...] = ()
    # Served alone, never batched with other requests: bit-identical to any other reproducible
    # run on the same build and hardware (what verification compares), at the cost of throughput.
    reproducible: bool = False
    # The sampler chain's other parameters (inference.generation.GenerationRequest). A peer
    # that sends none of them (an older one) gets the chain every request had before: top-k 40,
    # min-p 0.05, no typical-p, no penalties, no bias.
    top_k: int = DEFAULT_TOP_K
    min_p: float = DEFAULT_MIN_P
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = DEFAULT_PENALTY_LAST_N
    # (token id, bias) pairs, sent as a list of pairs (msgpack map keys are strings here).
    logit_bias: tuple[tuple[int, float], ...] = ()
    ignore_eos: bool = False
    # A GBNF grammar the output must follow ("" for none; GenerationRequest.grammar).
    grammar: str = ""
    # Log-probabilities with each Token: -1 none, else this many alternatives per token (0..20).
    logprobs: int = -1
    # The prompt's tokens get entries too, in the Done (OpenAI's echo); needs logprobs >= 0.
    prompt_logprobs: bool = False
    # OpenAI's tools as JSON text ("" for none), tool_choice ("auto", "none", "required",
    # "function:NAME") and parallel_tool_calls: p2p/protocol/tool_wire.py.
    tools: str = ""
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    # Prompt probes: the client's draws naming prompt positions whose log-probabilities the
    # node's receipt commits to (inference/prompt_probes.py).
    probes: tuple[int, ...] = ()


def generate_body(msg: Generate) -> dict[str, Any]:
    """The msgpack map of a `Generate` (without ``v`` and ``t``)."""
    body: dict[str, Any] = attrs.asdict(msg)
    body["stop"] = list(msg.stop)
    body["messages"] = [
        [m.role, m.content, *tool_wire.message_extra(m.tool_calls, m.tool_call_id, m.name)]
        for m in msg.messages
    ]
    body["replay_tokens"] = list(msg.replay_tokens)
    body["logit_bias"] = [[token, bias] for token, bias in msg.logit_bias]
    body["probes"] = list(msg.probes)
    return body


def decode_generate(f: Fields) -> Generate:
    """Every field within the worker's own bounds (inference.generation), and the rules between
    fields, so that what passes here is never refused by `GenerationRequest` later."""
    stop = f.array("stop", MAX_STOP_STRINGS)
    seed = f.body.get("seed")
    messages = tuple(_chat_message(f, m) for m in f.array("messages", MAX_MESSAGES))
    if sum(tool_wire.message_bytes(m) for m in messages) > MAX_PROMPT_BYTES:
        f.fail("messages", f"messages: contents over {MAX_PROMPT_BYTES} bytes (UTF-8) together")
    prompt = f.string("prompt", MAX_PROMPT_BYTES)
    if utf8_len(prompt) > MAX_PROMPT_BYTES:
        f.fail("prompt", f"prompt must be at most {MAX_PROMPT_BYTES} bytes (UTF-8)")
    if messages and prompt:
        f.fail("prompt", "prompt must be empty when messages are given")
    tools = tool_wire.decode_tools(f)
    max_tokens = f.integer("max_tokens", 1, MAX_TOKENS_LIMIT, 128)
    replay = f.token_ids("replay_tokens", MAX_TOKENS_LIMIT)
    if len(replay) >= max_tokens:
        f.fail(
            "replay_tokens",
            f"replay_tokens holds {len(replay)} tokens: nothing left to generate within "
            f"max_tokens {max_tokens}",
        )
    return Generate(
        id=f.id,
        model=f.string("model", MAX_MODEL_CHARS),
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=f.number("temperature", 0.0, MAX_TEMPERATURE, 0.0),
        top_p=f.number("top_p", MIN_TOP_P, 1.0, 1.0),
        seed=None if seed is None else f.integer("seed", 0, MAX_SEED),
        stop=tuple(f.text(s, MAX_STOP_CHARS, "stop") for s in stop if s != ""),
        messages=messages,
        replay_tokens=replay,
        reproducible=f.flag("reproducible", False),
        top_k=f.integer("top_k", 0, MAX_TOP_K, DEFAULT_TOP_K),
        min_p=f.number("min_p", 0.0, 1.0, DEFAULT_MIN_P),
        typical_p=f.number("typical_p", MIN_TYPICAL_P, 1.0, 1.0),
        repeat_penalty=f.number("repeat_penalty", MIN_REPEAT_PENALTY, MAX_REPEAT_PENALTY, 1.0),
        presence_penalty=f.number(
            "presence_penalty", -MAX_PRESENCE_PENALTY, MAX_PRESENCE_PENALTY, 0.0
        ),
        frequency_penalty=f.number(
            "frequency_penalty", -MAX_FREQUENCY_PENALTY, MAX_FREQUENCY_PENALTY, 0.0
        ),
        penalty_last_n=f.integer("penalty_last_n", 0, MAX_PENALTY_LAST_N, DEFAULT_PENALTY_LAST_N),
        logit_bias=_logit_bias(f),
        ignore_eos=f.flag("ignore_eos", False),
        grammar=_grammar(f),
        logprobs=(logprobs := f.integer("logprobs", -1, MAX_TOP_LOGPROBS, -1)),
        prompt_logprobs=_prompt_logprobs(f, logprobs),
        tools=tools,
        tool_choice=tool_wire.decode_tool_choice(f, tools),
        parallel_tool_calls=f.flag("parallel_tool_calls", True),
        probes=_probes(f),
    )


def _probes(f: Fields) -> tuple[int, ...]:
    draws = f.array("probes", MAX_PROBES)
    if not all(is_int(d, 0, DRAW_SPAN - 1) for d in draws):
        f.fail("probes", f"probes: whole numbers from 0 to {DRAW_SPAN - 1}")
    return tuple(draws)


def _logit_bias(f: Fields) -> tuple[tuple[int, float], ...]:
    """[[token id, bias], ...] with distinct token ids and biases within ±MAX_LOGIT_BIAS."""
    pairs = []
    for raw in f.array("logit_bias", MAX_LOGIT_BIAS_ENTRIES):
        if not (
            isinstance(raw, list)
            and len(raw) == 2
            and is_int(raw[0], 0, MAX_TOKEN_ID)
            and isinstance(raw[1], int | float)
            and not isinstance(raw[1], bool)
            and -MAX_LOGIT_BIAS <= raw[1] <= MAX_LOGIT_BIAS  # NaN fails
        ):
            f.fail(
                "logit_bias",
                f"logit_bias: [token id, bias] pairs, biases from {-MAX_LOGIT_BIAS:g} to "
                f"{MAX_LOGIT_BIAS:g}",
            )
        pairs.append((raw[0], float(raw[1])))
    if len({token for token, _ in pairs}) != len(pairs):
        f.fail("logit_bias", "logit_bias: each token id at most once")
    return tuple(pairs)


def _prompt_logprobs(f: Fields, logprobs: int) -> bool:
    wanted = f.flag("prompt_logprobs", False)
    if wanted and logprobs < 0:
        f.fail("prompt_logprobs", "prompt_logprobs needs logprobs >= 0")
    return wanted


def _grammar(f: Fields) -> str:
    grammar = f.string("grammar", MAX_GRAMMAR_BYTES, "")
    if utf8_len(grammar) > MAX_GRAMMAR_BYTES:
        f.fail("grammar", f"grammar must be at most {MAX_GRAMMAR_BYTES} bytes (UTF-8)")
    return grammar


def _chat_message(f: Fields, raw: object) -> ChatMessage:
    if not isinstance(raw, list) or len(raw) not in (2, 5):
        f.fail("messages", "messages: each is [role, content]")
    role = f.text(raw[0], 16, "messages")
    if role not in CHAT_ROLES:
        f.fail("messages", f"message role must be one of {', '.join(CHAT_ROLES)}")
    content = f.text(raw[1], MAX_PROMPT_BYTES, "messages")
    return ChatMessage(role, content, *tool_wire.decode_message_extra(f, raw, MAX_PROMPT_BYTES))
