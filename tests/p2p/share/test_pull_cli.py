"""`gpunet pull` and `gpunet node --model NAME` from the command line, against live nodes run on a
background thread (the command runs its own trio loop)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from inference.sha256_cache import sha256_file
from p2p.cli.main import main
from p2p.cli.pull import models_or_pulled
from p2p.host_port import parse_host_port
from p2p.settings import resolve
from tests.p2p.share.live_share import LiveNode, Seeder, seeders

START_TIMEOUT_S = 60


class ThreadedSeeders:
    """`seeders` in a trio run on a thread of its own, until `stop`."""

    def __init__(self, base: Path, specs: Sequence[Seeder]) -> None:
        self.nodes: list[LiveNode] = []
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(base, specs), daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            raise AssertionError(f"the nodes did not start: {self._error!r}")

    def _run(self, base: Path, specs: Sequence[Seeder]) -> None:
        async def serve() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with seeders(base, specs) as nodes:
                self.nodes = nodes
                self._ready.set()
                await self._stop.wait()

        try:
            trio.run(serve)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    @property
    def bootstrap(self) -> str:
        return self.nodes[0].ready.dht_address

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._stop is not None and self._token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(START_TIMEOUT_S)


@pytest.fixture
def two_files_one_name(
    tiny_gguf: Path, tmp_path: Path, make_tiny_gguf: Callable[..., Path]
) -> Iterator[tuple[ThreadedSeeders, Path]]:
    """Two nodes serve the tiny model; a third serves another file under the same name."""
    other = make_tiny_gguf(tmp_path / "other" / "tiny-llama.gguf", seed=1)
    network = ThreadedSeeders(
        tmp_path / "nodes", [Seeder(tiny_gguf), Seeder(tiny_gguf), Seeder(other)]
    )
    try:
        yield network, other
    finally:
        network.stop()


def gpunet(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {"GPUNET_MODEL_CACHE": str(tmp_path / "cache")}
    result = CliRunner().invoke(main, [*args, "--data-dir", str(tmp_path / "me")], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_pull_by_name_takes_the_file_most_nodes_serve_and_names_the_other(
    two_files_one_name: tuple[ThreadedSeeders, Path], tiny_gguf: Path, tmp_path: Path
) -> None:
    network, other = two_files_one_name
    code, out, err = gpunet(tmp_path, "pull", "tiny-llama", "--bootstrap", network.bootstrap)
    assert code == 0, err
    path = tmp_path / "cache" / "tiny-llama.gguf"
    assert out.strip() == str(path)
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert f"gpunet pull {sha256_file(other)}" in err  # how to get the other one
    # by sha256, the other file; its name is taken by a different file, so it gets its own
    other_sha = sha256_file(other)
    code, out, err = gpunet(tmp_path, "pull", other_sha, "--bootstrap", network.bootstrap, "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["sha256"] == other_sha and body["fetched_bytes"] == other.stat().st_size
    assert Path(body["path"]).name == f"tiny-llama-{other_sha[:12]}.gguf"
    assert Path(body["path"]).read_bytes() == other.read_bytes()
    assert path.read_bytes() == tiny_gguf.read_bytes()  # never overwritten
    assert body["peers"][0]["chunks"] > 0


def test_pull_fails_in_one_line_when_nobody_serves_it(
    two_files_one_name: tuple[ThreadedSeeders, Path], tmp_path: Path
) -> None:
    network, _ = two_files_one_name
    code, out, err = gpunet(tmp_path, "pull", "no-such-model", "--bootstrap", network.bootstrap)
    assert code == 1
    assert err.startswith("gpunet: error: no node serves 'no-such-model'")
    assert "tiny-llama" in err and "Traceback" not in err
    assert out == ""


def test_pull_without_a_network_and_node_with_a_name_but_no_bootstrap_say_what_to_do(
    tmp_path: Path,
) -> None:
    code, _out, err = gpunet(tmp_path, "pull", "tiny-llama")
    assert code == 1 and "--bootstrap" in err and "Traceback" not in err
    code, _out, err = gpunet(tmp_path, "node", "--model", "tiny-llama", "--port", "0")
    assert code == 1
    assert "neither a file nor in the model cache" in err and "--bootstrap" in err
    code, _out, err = gpunet(tmp_path, "pull", "../evil")
    assert code == 1 and "not a model name or a sha256" in err


def test_node_model_by_name_is_pulled_into_the_cache_then_used_from_it(
    two_files_one_name: tuple[ThreadedSeeders, Path],
    tiny_gguf: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network, _ = two_files_one_name
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPUNET_MODEL_CACHE", str(cache))
    flags = {
        "data_dir": tmp_path / "me",
        "models": (Path("tiny-llama"), tiny_gguf),
        "bootstrap": (parse_host_port(network.bootstrap),),
    }
    settings = resolve("node", flags, {"GPUNET_MODEL_CACHE": str(cache)})
    paths = models_or_pulled(settings)
    assert paths == [cache / "tiny-llama.gguf", tiny_gguf]  # the order given, paths kept
    assert paths[0].read_bytes() == tiny_gguf.read_bytes()
    network.stop()  # from now on only the cache can answer
    assert models_or_pulled(settings) == paths


def test_pull_of_a_model_already_in_the_cache_needs_no_network(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    (tmp_path / "cache").mkdir()
    shutil.copy(tiny_gguf, tmp_path / "cache" / "tiny-llama.gguf")
    code, out, err = gpunet(tmp_path, "pull", "tiny-llama", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["already_present"] and body["fetched_bytes"] == 0
    assert body["path"] == str(tmp_path / "cache" / "tiny-llama.gguf")


def test_ctrl_c_stops_a_pull_that_the_next_pull_resumes(tiny_gguf: Path, tmp_path: Path) -> None:
    # one seeder at 2 MB/s (a peer gets half): the 6 MB pull takes ~6 s, Ctrl-C lands midway
    network = ThreadedSeeders(tmp_path / "nodes", [Seeder(tiny_gguf, share_rate=2)])
    try:
        env = dict(os.environ, GPUNET_MODEL_CACHE=str(tmp_path / "cache"))
        cmd = [sys.executable, "-m", "p2p", "pull", "tiny-llama", "-vv"]
        cmd += ["--bootstrap", network.bootstrap, "--data-dir", str(tmp_path / "me")]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        saved = 0
        for _ in range(10_000):  # the log, line by line, until a saved state names a chunk
            line = proc.stderr.readline()
            if not line:
                break
            if "state saved:" in line:
                saved = int(line.split("state saved:")[1].split()[0])
                if saved:
                    break
        assert saved > 0
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert "pull again to resume" in err
        code, out, err = gpunet(
            tmp_path, "pull", "tiny-llama", "--bootstrap", network.bootstrap, "--json"
        )
        assert code == 0, err
        body = json.loads(out)
        assert body["resumed_bytes"] >= saved * 512 * 1024
        assert Path(body["path"]).read_bytes() == tiny_gguf.read_bytes()
    finally:
        network.stop()
