"""`POST /v1/embeddings` end to end through the official `openai` client: gateway → DHT lookup →
node → embedding worker → vectors, on a tiny embedding GGUF made at test time. Vectors equal
llama.cpp's own (cosine ≈ 1), base64 decodes to the same floats as "float", every parameter is
honoured or refused with a 400 naming it, and a generation model and an embedding model each
refuse the other's requests clearly."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types import CreateEmbeddingResponse

from inference.model_file import inspect_gguf
from p2p.api.app import DEFAULT_QUEUE_TIMEOUT_S
from p2p.node.runtime import NodeConfig
from tests.p2p.api.test_gateway import LiveNetwork

EMBED_MODEL = "tiny-embed"
TEXT_MODEL = "tiny-llama"
TEXTS = ["hello world", "the capital of france is paris", "one"]


class EmbeddingNetwork(LiveNetwork):
    """One node serving the tiny text model and the tiny embedding model, and a gateway."""

    queue_timeout_s = DEFAULT_QUEUE_TIMEOUT_S  # serve_gateway's own

    def node_configs(self) -> list[NodeConfig]:
        return [
            NodeConfig(
                data_dir=self.base / "a",
                models=(inspect_gguf(self.tiny), inspect_gguf(self.busy)),
                dht_port=0,
                port=0,
                n_threads=1,
                benchmark=False,
            )
        ]


@pytest.fixture(scope="module")
def embedding_gguf(
    tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]
) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("emb") / f"{EMBED_MODEL}.gguf", pooling_type=1)


@pytest.fixture(scope="module")
def net(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, embedding_gguf: Path
) -> Iterator[LiveNetwork]:
    network = EmbeddingNetwork(
        tmp_path_factory.mktemp("net"), tiny_gguf, embedding_gguf, api_key=None
    )
    yield network
    network.stop()


@pytest.fixture(scope="module")
def api(net: LiveNetwork) -> openai.OpenAI:
    return net.openai()


def post(net: LiveNetwork, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(net.url + "/v1/embeddings", json=body, timeout=60)


def direct(path: Path, text: str) -> np.ndarray[Any, Any]:
    """llama.cpp's own pooled embedding (llama-cpp-python's high-level API), normalised."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), embedding=True, n_ctx=512, verbose=False)
    try:
        v = np.array(llm.embed(text), dtype=np.float64)
    finally:
        llm.close()
    return v / np.linalg.norm(v)


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_openai_client_gets_llama_cpp_vectors(api: openai.OpenAI, embedding_gguf: Path) -> None:
    """The client's default (it asks for base64 and decodes it) parses into its own types."""
    got = api.embeddings.create(model=EMBED_MODEL, input=TEXTS)
    assert isinstance(got, CreateEmbeddingResponse)
    assert got.object == "list" and got.model == EMBED_MODEL
    assert [d.index for d in got.data] == [0, 1, 2]
    assert all(d.object == "embedding" and len(d.embedding) == 256 for d in got.data)
    for d, text in zip(got.data, TEXTS, strict=True):
        assert cosine(d.embedding, direct(embedding_gguf, text)) > 0.9999
        assert abs(float(np.linalg.norm(d.embedding)) - 1) < 1e-5
    assert got.usage.prompt_tokens == got.usage.total_tokens > len(TEXTS)


def test_one_string_and_determinism(api: openai.OpenAI) -> None:
    one = api.embeddings.create(model=EMBED_MODEL, input="hello world", encoding_format="float")
    again = api.embeddings.create(model=EMBED_MODEL, input="hello world", encoding_format="float")
    assert len(one.data) == 1
    assert one.data[0].embedding == again.data[0].embedding  # the same request: the same bits


def test_base64_decodes_to_the_same_floats(net: LiveNetwork) -> None:
    as_floats = post(net, {"model": EMBED_MODEL, "input": TEXTS[1], "encoding_format": "float"})
    as_b64 = post(net, {"model": EMBED_MODEL, "input": TEXTS[1], "encoding_format": "base64"})
    assert as_floats.status_code == as_b64.status_code == 200
    assert as_floats.headers["x-gpunet-provider"] == net.nodes[0].peer_id
    CreateEmbeddingResponse.model_validate(as_floats.json())
    floats = as_floats.json()["data"][0]["embedding"]
    encoded = as_b64.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist()
    assert decoded == floats


def test_dimensions_equal_to_the_model_are_honoured(api: openai.OpenAI) -> None:
    got = api.embeddings.create(model=EMBED_MODEL, input="x y z", dimensions=256, user="u-1")
    assert len(got.data[0].embedding) == 256
    with pytest.raises(openai.BadRequestError, match="dimensions") as refused:
        api.embeddings.create(model=EMBED_MODEL, input="x", dimensions=128)
    assert refused.value.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [[1, 2, 3]]}, "input"),  # token arrays
        ({"input": [1, 2, 3]}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a"] * 129}, "input"),
        ({"input": {"text": "a"}}, "input"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "dimensions": "256"}, "dimensions"),
        ({"input": "a", "user": 5}, "user"),
        ({"input": "a", "model": ""}, "model"),
    ],
)
def test_bad_parameters_are_400_naming_them(
    net: LiveNetwork, body: dict[str, Any], param: str
) -> None:
    r = post(net, {"model": EMBED_MODEL, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_an_input_longer_than_the_context_is_context_length_exceeded(net: LiveNetwork) -> None:
    r = post(net, {"model": EMBED_MODEL, "input": ["short", "word " * 700]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_a_generation_model_serves_no_embeddings(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=f"model {TEXT_MODEL} does not serve embed"):
        api.embeddings.create(model=TEXT_MODEL, input="hello")


def test_an_embedding_model_does_not_generate(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        api.completions.create(model=EMBED_MODEL, prompt="hello", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        api.chat.completions.create(
            model=EMBED_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )


def test_an_unknown_model_is_404(api: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        api.embeddings.create(model="no-such-model", input="hello")


def test_the_text_model_still_generates(api: openai.OpenAI) -> None:
    done = api.completions.create(model=TEXT_MODEL, prompt="hello", max_tokens=4, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens == 4
