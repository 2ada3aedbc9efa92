"""The OpenAI gateway against a real small network, with the official `openai` package as client.

The network runs in-process on its own thread (`LiveNetwork`): two real nodes on 127.0.0.1
(DHT, Noise sessions, llama.cpp on tiny random-weight GGUFs) and the gateway (Starlette under
Hypercorn's trio worker) joined to them as a light client. One node serves `tiny-llama`; the
other serves `tiny-busy` with a queue of zero, so every request to it is refused as busy. The
tests are plain synchronous code, as an OpenAI user's program is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio

from inference.model_file import inspect_gguf
from p2p.api.app import serve_gateway
from p2p.client.network import open_client
from p2p.metrics import Metrics
from p2p.node.runtime import NodeConfig, NodeReady, run_node
from tests.p2p.test_metrics import sample_value

API_KEY = "test-key-123"
START_TIMEOUT_S = 60.0
QUEUE_TIMEOUT_S = 3.0  # how long requests wait while every provider is busy


class LiveNetwork:
    """Nodes + gateway in a trio run on a background thread, for synchronous tests."""

    def __init__(self, base: Path, tiny: Path, busy: Path, *, api_key: str | None) -> None:
        self.base, self.tiny, self.busy, self.api_key = base, tiny, busy, api_key
        self.metrics = Metrics()
        self.nodes: list[NodeReady] = []
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="live-network", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            raise AssertionError(f"the network did not start: {self._error!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    queue_timeout_s = QUEUE_TIMEOUT_S

    def node_configs(self) -> list[NodeConfig]:
        """The nodes to run; all but the first bootstrap from it. Here `tiny` on a, `busy` on b."""
        return [
            NodeConfig(
                data_dir=self.base / "a",
                models=(inspect_gguf(self.tiny),),
                dht_port=0,
                port=0,
                n_threads=1,
            ),
            NodeConfig(
                data_dir=self.base / "b",
                models=(inspect_gguf(self.busy),),
                dht_port=0,
                port=0,
                n_threads=1,
                max_requests=0,  # every request is refused as busy
            ),
        ]

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        first_config, *others = self.node_configs()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            first: NodeReady = await nursery.start(run_node, first_config)
            host, _, port = first.dht_address.rpartition(":")
            bootstrap = ((host, int(port)),)
            self.nodes = [first]
            for config in others:
                config = attrs.evolve(config, bootstrap=bootstrap)
                self.nodes.append(await nursery.start(run_node, config))
            async with open_client(bootstrap) as client, trio.open_nursery() as inner:
                self.url = await inner.start(
                    partial(
                        serve_gateway,
                        client,
                        "127.0.0.1",
                        0,
                        api_key=self.api_key,
                        metrics=self.metrics,
                        queue_timeout_s=self.queue_timeout_s,
                    )
                )
                self._ready.set()

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the network did not stop"
        if self._error is not None:
            raise self._error

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "none")
        kwargs.setdefault("max_retries", 0)  # a 503 must reach the test, not be retried
        kwargs.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.url + "/v1", **kwargs)

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text


def start_live_network(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_gguf: Path,
    make_tiny_gguf: Callable[..., Path],
    api_key: str | None,
) -> LiveNetwork:
    busy = make_tiny_gguf(tmp_path_factory.mktemp("busy") / "tiny-busy.gguf", seed=7)
    return LiveNetwork(tmp_path_factory.mktemp("net"), tiny_gguf, busy, api_key=api_key)


def live_network_fixture(api_key: str | None) -> Any:
    """A module's `net` fixture: one live network (nodes on the tiny model and a gateway, with
    *api_key*) shared by the module's tests, stopped after them."""

    @pytest.fixture(scope="module")
    def net(
        tmp_path_factory: pytest.TempPathFactory,
        tiny_gguf: Path,
        make_tiny_gguf: Callable[..., Path],
    ) -> Iterator[LiveNetwork]:
        network = start_live_network(tmp_path_factory, tiny_gguf, make_tiny_gguf, api_key)
        try:
            yield network
        finally:
            network.stop()

    return net


net = live_network_fixture(API_KEY)


@pytest.fixture
def api(net: LiveNetwork) -> openai.OpenAI:
    return net.openai()


def requests_counted(text: str, model: str, outcome: str) -> float:
    return sample_value(
        text, "gpunet_gateway_requests_total", f'model="{model}",outcome="{outcome}"'
    )


# --- models -----------------------------------------------------------------------------------


def test_models_are_what_the_network_offers(net: LiveNetwork, api: openai.OpenAI) -> None:
    models = {m.id: m for m in api.models.list().data}
    assert set(models) == {"tiny-llama", "tiny-busy"}
    tiny = models["tiny-llama"].model_dump()
    assert tiny["sha256"] == net.nodes[0].models[0].sha256
    assert tiny["providers"] == 1
    assert tiny["object"] == "model"
    one = api.models.retrieve("tiny-llama").model_dump()
    assert one["sha256"] == tiny["sha256"]
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("no-such-model")


# --- completions --------------------------------------------------------------------------------

PROMPT = "The capital of France is"


def test_completion_whole_and_streamed_agree(api: openai.OpenAI) -> None:
    exact = {"reproducible": True}  # bit-identical text however the node batches or caches
    whole = api.completions.create(
        model="tiny-llama", prompt=PROMPT, max_tokens=12, temperature=0, extra_body=exact
    )
    assert whole.object == "text_completion"
    choice = whole.choices[0]
    assert choice.text and choice.finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12

    chunks = list(
        api.completions.create(
            model="tiny-llama",
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=exact,
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == choice.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


def test_stop_strings_cut_the_text(api: openai.OpenAI) -> None:
    full = api.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"pick another cut of {text!r}"
    for given in (stop, [stop, "\u2603never"]):
        cut = api.completions.create(
            model="tiny-llama", prompt=PROMPT, max_tokens=24, temperature=0, stop=given
        )
        assert cut.choices[0].text == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats(api: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = api.completions.create(
            model="tiny-llama", prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, seed=seed
        )
        return r.choices[0].text

    assert sample(42) == sample(42)


def test_a_repeated_prompt_is_served_from_the_nodes_prompt_cache(api: openai.OpenAI) -> None:
    prompt = "A prompt that only this test sends, to be repeated:"
    api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=4, temperature=0)
    again = api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=4, temperature=0)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_reproducible_extension_is_served(api: openai.OpenAI) -> None:
    def exact() -> str:
        r = api.completions.create(
            model="tiny-llama",
            prompt=PROMPT,
            max_tokens=16,
            temperature=0,
            extra_body={"reproducible": True},
        )
        return r.choices[0].text

    assert exact() == exact()


# --- chat ---------------------------------------------------------------------------------------


def test_chat_whole_and_streamed(api: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    whole = api.chat.completions.create(
        model="tiny-llama", messages=messages, max_tokens=10, temperature=0
    )
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens == 10
    # the node rendered both messages in a chat layout: more tokens than the question alone
    plain = api.completions.create(model="tiny-llama", prompt=messages[1]["content"], max_tokens=1)
    assert plain.usage is not None
    assert whole.usage.prompt_tokens > plain.usage.prompt_tokens + 4

    chunks = list(
        api.chat.completions.create(
            model="tiny-llama", messages=messages, max_tokens=10, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_accepts_text_content_parts(api: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    r = api.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=3)
    assert r.usage is not None and r.usage.completion_tokens == 3


# --- errors -------------------------------------------------------------------------------------


def test_bad_requests_are_400_with_the_parameter(net: LiveNetwork, api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        api.completions.create(model="tiny-llama", prompt=PROMPT, temperature=5)
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="tiny-llama", messages=[])
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="tiny-llama", prompt=PROMPT, stop=["a"] * 9)
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "tool", "content": "x"}],  # type: ignore[list-item]
        )
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "messages"
    raw = httpx.post(
        net.url + "/v1/completions",
        content=b"{not json",
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert raw.status_code == 400
    assert raw.json()["error"]["type"] == "invalid_request_error"


def test_prompt_longer_than_the_context_is_400(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        api.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=4000)
    assert "context" in info.value.message
    # A node maps its worker's PromptTooLong to `too_long` (OpenAI's context_length_exceeded);
    # nodes that still classify the worker's message text answer `bad_request` (code None).
    # Either way the caller gets a 400 that says why.
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] in ("context_length_exceeded", None)


def test_unknown_model_is_404(api: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        api.completions.create(model="no-such-model", prompt=PROMPT)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"
    assert "tiny-llama" in info.value.message  # says what the network offers
    with pytest.raises(openai.NotFoundError):  # streaming: the status still tells
        list(api.completions.create(model="no-such-model", prompt=PROMPT, stream=True))


def test_all_providers_busy_is_503(net: LiveNetwork, api: openai.OpenAI) -> None:
    for stream in (False, True):
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            r = api.completions.create(model="tiny-busy", prompt=PROMPT, stream=stream)
            if stream:
                list(r)  # type: ignore[call-overload]
        assert info.value.status_code == 503
        assert info.value.response.headers["retry-after"] == "1"
        assert time.monotonic() - started >= QUEUE_TIMEOUT_S  # it waited for a free slot first
    text = net.metrics_text()
    assert requests_counted(text, "tiny-busy", "busy") >= 2


def test_wrong_or_missing_api_key_is_401(net: LiveNetwork) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        net.openai(api_key="wrong-key").completions.create(model="tiny-llama", prompt=PROMPT)
    assert info.value.status_code == 401
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        net.openai(api_key="wrong-key").models.list()
    assert httpx.post(net.url + "/v1/chat/completions", json={}).status_code == 401  # no key
    assert httpx.get(net.url + "/v1/models", headers={"authorization": API_KEY}).status_code == 401
    # the dashboard, its JSON and the metrics show public data and stay open
    for path in ("/", "/api/network", "/metrics"):
        assert httpx.get(net.url + path).status_code == 200


def test_unknown_route_is_an_openai_error(net: LiveNetwork) -> None:
    r = httpx.get(net.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


# --- disconnects and metrics --------------------------------------------------------------------


def test_client_disconnect_cancels_the_generation(net: LiveNetwork) -> None:
    before = requests_counted(net.metrics_text(), "tiny-llama", "cancelled")
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 480, "stream": True}
    headers = {"authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", net.url + "/v1/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    # the connection is closed now; the gateway must notice and stop
    deadline = time.monotonic() + 10
    while True:
        text = net.metrics_text()
        cancelled = requests_counted(text, "tiny-llama", "cancelled")
        if cancelled == before + 1 and sample_value(text, "gpunet_gateway_active_sessions") == 0:
            break
        assert time.monotonic() < deadline, "the gateway did not cancel the generation"
        time.sleep(0.05)


def test_metrics_count_requests_tokens_and_latency(net: LiveNetwork, api: openai.OpenAI) -> None:
    api.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=5, temperature=0)
    r = httpx.get(net.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert requests_counted(text, "tiny-llama", "ok") >= 1
    assert sample_value(text, "gpunet_gateway_tokens_generated_total", 'model="tiny-llama"') >= 5
    ttft = sample_value(
        text, "gpunet_gateway_time_to_first_token_seconds_count", 'model="tiny-llama"'
    )
    assert ttft >= 1
    itl = sample_value(
        text, "gpunet_gateway_inter_token_latency_seconds_count", 'model="tiny-llama"'
    )
    assert itl >= 4
    assert sample_value(text, "gpunet_dht_routing_table_size") >= 1
    assert "gpunet_gateway_active_sessions 0.0" in text
    for series in ("gpunet_dht_lookup_seconds", "gpunet_dht_records_refused"):
        assert f"# TYPE {series}" in text
    assert "python_gc" not in text  # our own registry, not the process-wide default


def test_concurrent_requests_share_one_client(net: LiveNetwork) -> None:
    """More streams than a node admits from one peer at once (4): the rest wait at the gateway
    for a free slot instead of failing."""
    api = net.openai(timeout=120)
    results: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            r = api.completions.create(
                model="tiny-llama", prompt=PROMPT, max_tokens=100, temperature=0
            )
            assert r.usage is not None and r.choices[0].text
            results.append(r.usage.completion_tokens)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(results) == 8
    # every stream ran to its length; the texts may differ in the last digits of the logits, as
    # batched decoding is not batch-invariant (identical text is what `reproducible` is for)
    assert results == [100] * 8


# --- the command ------------------------------------------------------------------------------


def test_gateway_command_serves_and_stops_on_ctrl_c(net: LiveNetwork, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    code = (
        "from p2p.cli.gateway import gateway_command; gateway_command(prog_name='gpunet gateway')"
    )
    boot = net.nodes[0].dht_address
    env = dict(os.environ, GPUNET_DATA_DIR=str(tmp_path), GPUNET_BOOTSTRAP="")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--bootstrap", boot, "--api", "127.0.0.1:0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("event") == "ready", proc.stderr.read() if proc.stderr else ""
        models = openai.OpenAI(base_url=ready["api"], api_key="none").models.list()
        assert {m.id for m in models.data} == {"tiny-llama", "tiny-busy"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and "gateway stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
