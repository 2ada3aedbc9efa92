"""OpenAI's `logprobs`, `top_logprobs` and `echo` in a request body, validated.

Chat: `logprobs` true/false, `top_logprobs` 0..20 alternatives per token (only with `logprobs`
true, as OpenAI requires). Completions: `logprobs` an integer 0..5 (the legacy API's number of
alternatives; 0 still reports each chosen token's log-probability) and `echo`: the answer's text
starts with the prompt, and with `logprobs` the prompt's tokens get entries too (the first one's
logprob null, as OpenAI's), computed by the node (inference/prompt_logprobs.py) and sent with
its Done. `echo` with `max_tokens: 0` scores the prompt alone, as evaluation harnesses (lm-eval)
do: the node is asked for one token, which the answer leaves out. Both are answered whole: the
prompt's entries come at the end, so `stream` is refused with them. Each bad value is a 400
naming the parameter. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

import attrs

from inference.token_logprobs import MAX_TOP_LOGPROBS
from p2p.api.openai_errors import bad_request

# The legacy completions API's limit on `logprobs` (OpenAI documents 5).
MAX_COMPLETION_LOGPROBS = 5


@attrs.frozen
class LogprobParams:
    count: int = -1  # alternatives per generated token; -1: no log-probabilities
    echo: bool = False  # completions: the prompt is the start of the answer's text
    prompt_only: bool = False  # echo with max_tokens 0: nothing generated is answered

    @property
    def wanted(self) -> bool:
        return self.count >= 0


def _count(value: object, name: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise bad_request(f"{name} must be an integer from 0 to {hi}", name)
    return value


def parse_logprobs(body: dict[str, Any], kind: str, stream: bool) -> LogprobParams:
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    echo = body.get("echo")
    if kind == "chat":
        if echo is not None and echo is not False:
            raise bad_request("echo is a parameter of /v1/completions, not of chat", "echo")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise bad_request("logprobs must be true or false", "logprobs")
        if top is not None:
            count = _count(top, "top_logprobs", MAX_TOP_LOGPROBS)
            if logprobs is not True:
                raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
            return LogprobParams(count)
        return LogprobParams(0 if logprobs else -1)
    if top is not None:
        raise bad_request(
            "top_logprobs is a chat parameter; completions take logprobs: 0..5", "top_logprobs"
        )
    if echo is not None and not isinstance(echo, bool):
        raise bad_request("echo must be true or false", "echo")
    off = logprobs is None or logprobs is False  # false: what chat's flag says, accepted here too
    count = -1 if off else _count(logprobs, "logprobs", MAX_COMPLETION_LOGPROBS)
    max_tokens = body.get("max_tokens")
    prompt_only = bool(echo) and max_tokens == 0 and not isinstance(max_tokens, bool)
    if stream and echo and (count >= 0 or prompt_only):
        raise bad_request(
            "echo with logprobs or max_tokens 0 is answered whole: stream must be false", "stream"
        )
    return LogprobParams(count, bool(echo), prompt_only)
