"""The parameters of OpenAI's API and llama-server's OpenAI endpoints that gpunet does not
honour: a value other than the one that asks for nothing is a 400 naming the parameter.

Pure data and one check (p2p/api/request_parsing.py calls it first). A parameter that gets
honoured leaves this table in the same change that honours it.
"""

from __future__ import annotations

from typing import Any

from p2p.api.openai_errors import bad_request

# Parameters of OpenAI's API or llama-server's OpenAI endpoints that gpunet does not honour,
# each with the values that ask for nothing (OpenAI's or llama-server's own defaults): any other
# value is a 400 naming the parameter, so nothing a client asks for is silently ignored
# (issue #17; the table in docs/gateway.md). A key that neither API knows is ignored.
NOT_HONOURED: dict[str, tuple[str, tuple[object, ...]]] = {
    "best_of": ("best_of is not supported; n choices are (see docs/gateway.md)", (1,)),
    "n_probs": ("token probabilities are not supported", (0,)),
    "post_sampling_probs": ("token probabilities are not supported", (False,)),
    "suffix": ("suffix (fill-in-the-middle) is not supported", ("",)),
    "functions": ("functions is deprecated: send tools", ([],)),
    "function_call": ("function_call is deprecated: send tool_choice", ("none",)),
    "mirostat": ("mirostat sampling is not supported", (0,)),
    "mirostat_tau": ("mirostat sampling is not supported", ()),
    "mirostat_eta": ("mirostat sampling is not supported", ()),
    "dry_multiplier": ("DRY sampling is not supported", (0,)),
    "dry_base": ("DRY sampling is not supported", ()),
    "dry_allowed_length": ("DRY sampling is not supported", ()),
    "dry_penalty_last_n": ("DRY sampling is not supported", ()),
    "dry_sequence_breakers": ("DRY sampling is not supported", ()),
    "xtc_probability": ("XTC sampling is not supported", (0,)),
    "xtc_threshold": ("XTC sampling is not supported", ()),
    "dynatemp_range": ("dynamic temperature is not supported", (0,)),
    "dynatemp_exponent": ("dynamic temperature is not supported", (1,)),
    "top_n_sigma": ("top-n-sigma sampling is not supported", (-1,)),
    "tfs_z": ("tail-free sampling is not supported", (1,)),
    "penalize_nl": ("penalize_nl is not supported", ()),
    "min_keep": ("min_keep is not supported", (0,)),
    "samplers": ("the sampler order is fixed (see docs/gateway.md)", ()),
    # gpunet reuses cached prompt prefixes, as llama-server's default true does; `reproducible`
    # is how to turn that (and batching) off.
    "cache_prompt": ("prompt caching cannot be turned off; send reproducible: true", (True,)),
    "n_predict": ("use max_tokens", ()),
    "n_keep": ("context shifting is not supported", ()),
    "n_indent": ("n_indent is not supported", (0,)),
    "t_max_predict_ms": ("time limits per request are not supported", (0,)),
    "id_slot": ("requests cannot choose a slot", (-1,)),
    "lora": ("LoRA adapters are not supported", ([],)),
    "return_tokens": ("token ids in the answer are not supported", (False,)),
    "timings_per_token": ("timings are not supported", (False,)),
    "response_fields": ("response_fields is not supported", ()),
    "chat_template_kwargs": ("chat template arguments are not supported", ({},)),
    "reasoning_format": ("reasoning formats are not supported", ()),
    "reasoning_effort": ("reasoning effort is not supported", ()),
    "audio": ("audio output is not supported", ()),
    "modalities": ("only text output is supported", (["text"],)),
    "prediction": ("predicted outputs are not supported", ()),
    "web_search_options": ("web search is not supported", ()),
    "store": ("stored completions are not supported", (False,)),
    "metadata": ("stored completions are not supported", ({},)),
    "service_tier": ("service tiers are not supported", ("auto", "default")),
    "verbosity": ("verbosity is not supported", ()),
}


def refuse_unsupported(body: dict[str, Any]) -> None:
    for name, (why, neutral) in NOT_HONOURED.items():
        value = body.get(name)
        if value is not None and not any(_same(value, n) for n in neutral):
            raise bad_request(f"{name}: {why}", name)


def _same(value: object, neutral: object) -> bool:
    """Equal and of the same kind: true is not 1 here, nor 1 a flag."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    if type(value) in (int, float) and type(neutral) in (int, float):
        return value == neutral
    return type(value) is type(neutral) and value == neutral
