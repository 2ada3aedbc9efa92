"""How a model's slot count was chosen, said once: `--slots N` as given, auto without the
self-benchmark, auto measured (the knee and its curve); carried by the served model into
`gpunet status`'s state and table, control characters and all made harmless."""

from __future__ import annotations

from pathlib import Path

from inference.batching import BatchingWorker
from inference.model_file import inspect_gguf
from p2p.cli.status import render_state
from p2p.node.auto_slots import SlotChoice, slots_for
from p2p.node.control import model_state
from p2p.node.models import load_models
from p2p.node.runtime import NodeConfig


async def choice_of(tmp_path: Path, gguf: Path, slots: int | str, benchmark: bool) -> SlotChoice:
    info = inspect_gguf(gguf)
    config = NodeConfig(data_dir=tmp_path, models=(info,), slots=slots, n_ctx=256, n_threads=2)
    lines: list[str] = []
    choice = await slots_for(
        config, info, n_ctx=256, n_threads=2, gpus=(), benchmark=benchmark,
        on_progress=lines.append,
    )  # fmt: skip
    said = choice.how.removeprefix("auto: ")
    assert sum(said in line for line in lines) == 1, lines  # said once, as progress
    return choice


async def test_an_explicit_count_and_auto_without_the_benchmark_say_so(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    assert await choice_of(tmp_path, tiny_gguf, 6, True) == SlotChoice(6, "--slots 6")
    unmeasured = await choice_of(tmp_path, tiny_gguf, "auto", False)
    assert unmeasured == SlotChoice(4, "auto without --benchmark: 4 slots")


async def test_auto_measured_names_the_knee_and_the_curve(tmp_path: Path, tiny_gguf: Path) -> None:
    choice = await choice_of(tmp_path, tiny_gguf, "auto", True)
    assert choice.costs is not None
    assert choice.how.startswith(f"auto: {choice.slots} slot")
    assert "aggregate decode" in choice.how and "tok/s at 1/2" in choice.how


async def test_the_served_model_carries_it_into_status(tmp_path: Path, tiny_gguf: Path) -> None:
    config = NodeConfig(
        data_dir=tmp_path, models=(inspect_gguf(tiny_gguf),), slots=3, n_ctx=256, n_threads=2
    )
    served = await load_models(config, benchmark=False)
    try:
        assert isinstance(served[0].worker, BatchingWorker) and served[0].worker.slots == 3
        state = model_state(served[0])
    finally:
        await served[0].worker.aclose()
    assert state["slots_how"] == "--slots 3"
    lines = render_state({"models": [state]})
    assert "  slots:      tiny-llama: --slots 3" in lines


def test_the_status_table_makes_a_hostile_reason_harmless() -> None:
    state = {"models": [{"name": "m\x1b[2J", "slots_how": "auto: \x1b]0;owned\x07" + "x" * 999}]}
    line = next(s for s in render_state(state) if s.startswith("  slots:"))
    assert "\x1b" not in line and "\x07" not in line and len(line) < 400
    assert render_state({"models": [{"name": "m"}]}) == render_state({"models": [{"name": "m"}]})
    assert not any(s.startswith("  slots:") for s in render_state({"models": [{"name": "m"}]}))
