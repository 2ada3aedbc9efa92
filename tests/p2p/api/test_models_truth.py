"""/v1/models tells the truth (issue #17): the context the nodes actually run (the least of the
providers' n_ctx), the chat format each model is rendered with — a template fallback shows, it
is not silent — and its capabilities, through the official `openai` client.

`ToolsNetwork` (also tests/p2p/api/test_tools.py's): two nodes on 127.0.0.1 and a gateway. Node
A serves `tiny-tools` (a tiny GGUF with a Qwen-style tools template) with a context of 480;
node B serves it too with 512, beside `tiny-plain` (no template) and `tiny-broken` (a template
that raises on every conversation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference.model_file import inspect_gguf
from p2p.node.runtime import NodeConfig
from tests.inference.test_chat_render import QWEN_TOOLS_TEMPLATE
from tests.p2p.api.test_gateway import LiveNetwork

BROKEN_TEMPLATE = "{{ raise_exception('this template refuses every conversation') }}"
CTX_A, CTX_B = 480, 512


class ToolsNetwork(LiveNetwork):
    """LiveNetwork's thread and client side, with the nodes described in the module docstring."""

    def __init__(self, base: Path, tools: Path, plain: Path, broken: Path) -> None:
        self.tools_model, self.plain_model, self.broken_model = tools, plain, broken
        super().__init__(base, tools, plain, api_key=None)

    def node_configs(self) -> list[NodeConfig]:
        common = {"dht_port": 0, "port": 0, "n_threads": 1, "benchmark": False}
        return [
            NodeConfig(
                data_dir=self.base / "a",
                models=(inspect_gguf(self.tools_model),),
                n_ctx=CTX_A,
                **common,  # type: ignore[arg-type]
            ),
            NodeConfig(
                data_dir=self.base / "b",
                models=tuple(
                    inspect_gguf(p) for p in (self.tools_model, self.plain_model, self.broken_model)
                ),
                n_ctx=CTX_B,
                **common,  # type: ignore[arg-type]
            ),
        ]


def tools_network_fixture() -> Callable[..., Iterator[ToolsNetwork]]:
    """A module's `net` fixture: one ToolsNetwork for the module's tests."""

    @pytest.fixture(scope="module")
    def net(
        tmp_path_factory: pytest.TempPathFactory, make_tiny_gguf: Callable[..., Path]
    ) -> Iterator[ToolsNetwork]:
        models = tmp_path_factory.mktemp("tool-models")
        network = ToolsNetwork(
            tmp_path_factory.mktemp("tools-net"),
            make_tiny_gguf(models / "tiny-tools.gguf", chat_template=QWEN_TOOLS_TEMPLATE),
            make_tiny_gguf(models / "tiny-plain.gguf", seed=3),
            make_tiny_gguf(models / "tiny-broken.gguf", seed=4, chat_template=BROKEN_TEMPLATE),
        )
        try:
            yield network
        finally:
            network.stop()

    return net


net = tools_network_fixture()


@pytest.fixture(scope="module")
def models(net: ToolsNetwork) -> dict[str, dict[str, object]]:
    """The /v1/models list as the `openai` client parsed it, by id (both nodes published their
    records before the network was ready)."""
    listed = {m.id: m.model_dump() for m in net.openai().models.list().data}
    assert set(listed) == {"tiny-tools", "tiny-plain", "tiny-broken"}
    return listed


def test_the_context_is_what_every_provider_runs(models: dict[str, dict[str, object]]) -> None:
    assert models["tiny-tools"]["context_length"] == min(CTX_A, CTX_B)
    assert models["tiny-tools"]["providers"] == 2
    assert models["tiny-plain"]["context_length"] == CTX_B


def test_chat_formats_and_capabilities_are_shown(models: dict[str, dict[str, object]]) -> None:
    assert models["tiny-tools"]["chat_format"] == "template"
    assert models["tiny-tools"]["capabilities"] == ["tools"]
    assert models["tiny-plain"]["chat_format"] == "generic"  # no template in the file
    assert models["tiny-plain"]["capabilities"] == []
    # a template that raises is not used, and the listing says so
    assert models["tiny-broken"]["chat_format"] == "generic"
    assert models["tiny-broken"]["capabilities"] == []


def test_one_model_by_id_has_the_same_fields(
    net: ToolsNetwork, models: dict[str, dict[str, object]]
) -> None:
    one = net.openai().models.retrieve("tiny-tools").model_dump()
    for key in ("context_length", "chat_format", "capabilities", "providers"):
        assert one[key] == models["tiny-tools"][key]
