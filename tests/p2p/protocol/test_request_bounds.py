"""Attack 3 of issue #14, validation at the boundary, with plain calls: the session decoder, the
worker's `GenerationRequest` and `gpunet ask` share one definition of a request's bounds
(inference/generation.py), so a value one of them accepts is never refused by the next, and an
invalid field is refused where the message is decoded, naming the field."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from inference.generation import (
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_PROMPT_BYTES,
    MAX_SEED,
    MAX_STOP_CHARS,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    MAX_TOP_K,
    RANDOM_SEED,
)
from p2p.cli.ask import ask_command
from p2p.node.serving import generation_request
from p2p.protocol import wire

# generation_request reads only the model's chat format, and only for messages.
SERVED: Any = SimpleNamespace(
    info=SimpleNamespace(architecture="llama", chat_template=None), chat_format="", capabilities=()
)


def generate(**fields: Any) -> bytes:
    body = {"v": 1, "t": "generate", "id": 4, "model": "m", "prompt": "p", **fields}
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"seed": RANDOM_SEED}, "seed"),  # 2**32 - 1: llama.cpp's "random", refused by the worker
        ({"seed": 2**40}, "seed"),
        ({"max_tokens": 8, "replay_tokens": [1] * 8}, "replay_tokens"),  # nothing left to do
        ({"replay_tokens": [1] * 128}, "replay_tokens"),  # as long as the default max_tokens
        ({"max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens"),
        ({"temperature": MAX_TEMPERATURE * 2}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop": ["x" * (MAX_STOP_CHARS + 1)]}, "stop"),
        ({"stop": [3]}, "stop"),
        ({"prompt": "é" * (MAX_PROMPT_BYTES // 2 + 1)}, "prompt"),  # under the limit in chars
        ({"prompt": "p", "messages": [["user", "hi"]]}, "prompt"),  # one or the other
        ({"prompt": "", "messages": [["user", "é" * (MAX_PROMPT_BYTES // 2 + 1)]]}, "messages"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": MAX_TOP_K + 1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"repeat_penalty": 0.0}, "repeat_penalty"),  # llama.cpp divides by it
        ({"repeat_penalty": float("inf")}, "repeat_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"penalty_last_n": -1}, "penalty_last_n"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),  # pairs, not a map
        ({"logit_bias": [[5, 101]]}, "logit_bias"),
        ({"logit_bias": [[5, float("nan")]]}, "logit_bias"),
        ({"logit_bias": [[-1, 1]]}, "logit_bias"),
        ({"logit_bias": [[5, 1], [5, 2]]}, "logit_bias"),
        ({"logit_bias": [[t, 1] for t in range(MAX_LOGIT_BIAS_ENTRIES + 1)]}, "logit_bias"),
        ({"ignore_eos": 1}, "ignore_eos"),
    ],
)
def test_an_invalid_generate_is_refused_where_it_is_decoded_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    got = wire.decode_received(generate(**fields))
    assert isinstance(got, wire.Malformed), got
    assert (got.id, got.tag, got.field) == (4, "generate", field)
    assert field in got.reason


@pytest.mark.parametrize(
    "fields",
    [
        {"seed": MAX_SEED, "temperature": MAX_TEMPERATURE, "top_p": 1e-6},
        {"seed": 0, "max_tokens": 9, "replay_tokens": [1] * 8},
        {"max_tokens": MAX_TOKENS_LIMIT, "stop": ["s" * MAX_STOP_CHARS] * 8},
        {"prompt": "é" * (MAX_PROMPT_BYTES // 2)},
        {"prompt": "", "messages": [["system", "a"], ["user", "b"]]},
        {"top_k": MAX_TOP_K, "min_p": 1.0, "typical_p": 1e-6, "repeat_penalty": 0.01},
        {"top_k": 0, "min_p": 0.0, "repeat_penalty": 10, "penalty_last_n": MAX_TOKENS_LIMIT},
        {"presence_penalty": -2, "frequency_penalty": 2, "ignore_eos": True},
        {"logit_bias": [[t, (-100, 100)[t % 2]] for t in range(MAX_LOGIT_BIAS_ENTRIES)]},
    ],
)
def test_what_the_decoder_accepts_the_worker_accepts(fields: dict[str, Any]) -> None:
    msg = wire.decode(generate(**fields))
    assert isinstance(msg, wire.Generate)
    request = generation_request(msg, SERVED)
    for name in fields.keys() - {"prompt", "messages", "logit_bias", "stop", "replay_tokens"}:
        assert getattr(request, name) == fields[name], name
    assert request.logit_bias == tuple((t, float(b)) for t, b in fields.get("logit_bias", []))


def test_a_generate_without_the_sampler_fields_gets_the_old_chain() -> None:
    """An older peer sends none of them: top-k 40, min-p 0.05, no typical-p, penalties, bias."""
    msg = wire.decode(generate())
    assert isinstance(msg, wire.Generate)
    request = generation_request(msg, SERVED)
    assert (request.top_k, request.min_p, request.typical_p) == (40, 0.05, 1.0)
    assert not request.penalized and not request.logit_bias and not request.ignore_eos


@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (["--seed", str(RANDOM_SEED)], f"0<=x<={MAX_SEED}"),
        (["--max-tokens", str(MAX_TOKENS_LIMIT + 1)], str(MAX_TOKENS_LIMIT)),
        (["--temperature", "11"], "10"),
        (["--stop", "x" * (MAX_STOP_CHARS + 1)], str(MAX_STOP_CHARS)),
    ],
)
def test_gpunet_ask_refuses_what_a_node_would_at_the_command_line(
    args: list[str], bound: str
) -> None:
    result = CliRunner().invoke(ask_command, [*args, "hello"])
    assert result.exit_code == 2, result.output  # a usage error: nothing was sent
    assert bound in result.output and args[0] in result.output


def test_gpunet_ask_refuses_a_prompt_over_the_byte_limit() -> None:
    result = CliRunner().invoke(ask_command, ["é" * (MAX_PROMPT_BYTES // 2 + 1)])
    assert result.exit_code == 2 and str(MAX_PROMPT_BYTES) in result.output


def test_a_done_with_an_unknown_finish_reason_is_refused_naming_it() -> None:
    body = {
        **{"v": 1, "t": "done", "id": 3, "prompt_tokens": 1, "completion_tokens": 1},
        **{"ttft_s": 0.1, "decode_tok_s": 1.0, "finish_reason": "<script>"},
    }
    got = wire.decode_received(msgpack.packb(body, use_bin_type=True))
    assert isinstance(got, wire.Malformed) and got.field == "finish_reason"
