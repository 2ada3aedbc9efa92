"""`gpunet config`, and the settings table's flags as every command gets them (p2p/cli/options.py).

Through click's CliRunner: nothing here starts a node or touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from p2p.cli.main import main
from p2p.cli.options import command_settings, setting_options
from p2p.settings import CONFIG_FILENAME, SETTINGS


@pytest.fixture(autouse=True)
def no_gpunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own GPUNET_* variables must not leak into these runs."""
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)


def gpunet(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpunet: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def write_config(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / CONFIG_FILENAME).write_text(text)
    return data_dir / CONFIG_FILENAME


def lines_by_name(output: str) -> dict[str, str]:
    """`ORIGIN  NAME = VALUE` lines by NAME."""
    out = {}
    for line in output.splitlines()[1:]:
        left, _, value = line.partition(" = ")
        origin, _, name = left.rstrip().rpartition("  ")
        out[name.strip()] = f"{origin.strip()} | {value}"
    return out


def test_config_shows_each_value_and_its_origin(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[node]\nslots = 8\n[gateway]\napi = '0.0.0.0:9000'\n")
    result = gpunet(
        "config", "--data-dir", str(tmp_path), env={"GPUNET_MAX_QUEUE": "3", "GPUNET_API_KEY": "k"}
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"# {path}"
    shown = lines_by_name(result.stdout)
    assert shown["data_dir"] == f"flag --data-dir | {tmp_path}"
    assert shown["node.slots"] == f"file {path} | 8"
    assert shown["node.max_queue"] == "env GPUNET_MAX_QUEUE | 3"
    assert shown["node.port"] == "default | 8469"
    assert shown["node.threads"] == "default | (the physical cores)"
    assert shown["gateway.api"] == f"file {path} | 0.0.0.0:9000"
    assert shown["api_key"] == "env GPUNET_API_KEY | (hidden)"
    assert {s.name for s in SETTINGS} == set(shown)


def test_config_json(tmp_path: Path) -> None:
    write_config(tmp_path, "bootstrap = ['192.0.2.1:8468']\n[node]\nbenchmark = false\n")
    result = gpunet("config", "--json", env={"GPUNET_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["config_file"] == str(tmp_path / CONFIG_FILENAME) and out["config_file_exists"]
    by_name = {s["name"]: s for s in out["settings"]}
    assert by_name["data_dir"]["origin"] == "env"
    assert by_name["data_dir"]["where"] == "GPUNET_DATA_DIR"
    assert by_name["bootstrap"]["value"] == ["192.0.2.1:8468"]
    assert by_name["node.benchmark"] == {
        "name": "node.benchmark",
        "value": False,
        "origin": "file",
        "where": str(tmp_path / CONFIG_FILENAME),
        "env": "GPUNET_BENCHMARK",
    }
    assert by_name["node.speculate"]["origin"] == "default"


def test_config_without_a_file_says_so(tmp_path: Path) -> None:
    result = gpunet("config", "--data-dir", str(tmp_path / "fresh"))
    assert result.exit_code == 0, result.output
    assert "not there" in result.stdout.splitlines()[0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[node]\nslotz = 4\n", "unknown key [node] 'slotz'"),
        ("[node]\nslots = 'x'\n", "slots: expected an integer, got 'x'"),
        ("[node\n", "not valid TOML"),
    ],
)
@pytest.mark.parametrize("command", [["config"], ["node"], ["gateway"], ["ask", "hi"], ["peers"]])
def test_a_bad_file_is_one_line_for_every_command(
    tmp_path: Path, text: str, fragment: str, command: list[str]
) -> None:
    path = write_config(tmp_path, text)
    line = one_error_line(gpunet(*command, "--data-dir", str(tmp_path)))
    assert f"{path}: " in line and fragment in line


def test_a_bad_variable_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(gpunet("node", "--data-dir", str(tmp_path), env={"GPUNET_PORT": "x"}))
    assert line == "gpunet: error: GPUNET_PORT: expected an integer, got 'x'"


# --- the generated options, through a command that prints what it got ------------------------


@click.command()
@setting_options("node")
def show_node_settings(**_flags: Any) -> None:
    s = command_settings("node")
    click.echo(json.dumps({e.setting.key: [str(e.origin), str(e.value)] for e in s.entries}))


def node_settings(*args: str, env: dict[str, str] | None = None) -> dict[str, list[str]]:
    result = CliRunner().invoke(show_node_settings, list(args), env=env)
    assert result.exit_code == 0, result.output
    shown: dict[str, list[str]] = json.loads(result.stdout)
    return shown


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[node]\nslots = 8\nspeculate = false\nhost = '127.0.0.11'\n")
    env = {"GPUNET_SLOTS": "16", "GPUNET_SPECULATE": "1"}
    got = node_settings("--data-dir", str(tmp_path), "--slots", "32", env=env)
    assert got["slots"] == ["flag --slots", "32"]
    assert got["speculate"] == ["env GPUNET_SPECULATE", "True"]
    assert got["host"] == [f"file {path}", "127.0.0.11"]
    assert got["port"] == ["default", "8469"]
    got = node_settings("--data-dir", str(tmp_path), "--no-speculate", "-vv", env=env)
    assert got["speculate"] == ["flag --speculate", "False"]
    assert got["verbose"] == ["flag -v", "2"]


def test_repeated_flags_and_addresses(tmp_path: Path) -> None:
    got = node_settings(
        "--data-dir",
        str(tmp_path),
        "--bootstrap",
        "192.0.2.1:1",
        "--bootstrap",
        "[::1]:2",
        "--model",
        "a.gguf",
        "--api",
        ":8470",
    )
    assert got["bootstrap"][1] == "(('192.0.2.1', 1), ('::1', 2))"
    assert got["models"][1] == "(PosixPath('a.gguf'),)"
    assert got["api"] == ["flag --api", "('127.0.0.1', 8470)"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bootstrap", "nowhere"], "'nowhere' is not HOST:PORT"),
        (["--bootstrap", "::1:8468"], "brackets"),
        (["--slots", "0"], "expected an integer from 1 to 64, got 0"),
        (["--gpu-layers", "most"], "expected a whole number or 'auto'"),
        (["--api", "host:99999"], "the port must be a number"),
    ],
)
def test_a_bad_flag_is_a_usage_error(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(show_node_settings, ["--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and fragment in result.stderr, result.output


def test_help_names_each_variable() -> None:
    result = gpunet("node", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for s in SETTINGS:
        if "node" in s.commands:
            assert s.env in text, s.env


def test_every_command_is_registered() -> None:
    result = gpunet("--help")
    assert result.exit_code == 0
    for name in ("node", "ask", "peers", "gateway", "identity", "config"):
        assert f"  {name}" in result.stdout


def test_peers_filters_need_a_model(tmp_path: Path) -> None:
    line = one_error_line(gpunet("peers", "--data-dir", str(tmp_path), "--gpu"))
    assert "add --model" in line
