"""p2p/settings.py: flags > environment > config.toml > defaults, and a bad file's one error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2p.settings import (
    CONFIG_FILENAME,
    DEFAULT_API_ADDRESS,
    SETTINGS,
    Origin,
    SettingsError,
    display,
    read_config_file,
    resolve,
    resolve_data_dir,
    settings_of,
)


def write_config(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIG_FILENAME
    path.write_text(text)
    return path


def node_settings(
    data_dir: Path, flags: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Any:
    return resolve("node", {"data_dir": data_dir, **(flags or {})}, env or {})


# One option of each kind: (key, its value in config.toml, in the environment, as a flag), the
# value each gives, and the default.
PRECEDENCE_CASES = [
    ("slots", "slots = 8", "16", 32, (8, 16, 32), "auto"),
    ("grace", "grace = 5", "2.5", 1.0, (5.0, 2.5, 1.0), 30.0),
    ("benchmark", "benchmark = false", "yes", False, (False, True, False), True),
    (
        "host",
        'host = "127.0.0.11"',
        "127.0.0.12",
        "127.0.0.13",
        ("127.0.0.11", "127.0.0.12", "127.0.0.13"),
        "127.0.0.1",
    ),
    ("gpu_layers", "gpu_layers = 12", "auto", "0", ("12", "auto", "0"), "auto"),
    (
        "api",
        'api = "127.0.0.1:9000"',
        ":9001",
        ("127.0.0.1", 9002),
        (("127.0.0.1", 9000), ("127.0.0.1", 9001), ("127.0.0.1", 9002)),
        None,
    ),
]


@pytest.mark.parametrize(
    ("key", "in_file", "in_env", "flag", "values", "default"),
    PRECEDENCE_CASES,
    ids=[c[0] for c in PRECEDENCE_CASES],
)
def test_flag_over_env_over_file_over_default(
    tmp_path: Path,
    key: str,
    in_file: str,
    in_env: str,
    flag: Any,
    values: tuple[Any, Any, Any],
    default: Any,
) -> None:
    env_name = f"GPUNET_{key.upper()}"
    assert node_settings(tmp_path)[key] == default
    assert node_settings(tmp_path).origin(key) == Origin("default")
    path = write_config(tmp_path, f"[node]\n{in_file}\n")
    from_file = node_settings(tmp_path)
    assert from_file[key] == values[0]
    assert from_file.origin(key) == Origin("file", str(path))
    from_env = node_settings(tmp_path, env={env_name: in_env})
    assert from_env[key] == values[1] and from_env.origin(key) == Origin("env", env_name)
    from_flag = node_settings(tmp_path, {key: flag}, {env_name: in_env})
    assert from_flag[key] == values[2] and from_flag.origin(key).source == "flag"


def test_shared_settings_sit_at_the_top_of_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "net.key"
    write_config(
        tmp_path,
        'bootstrap = ["192.0.2.1:8468", "[::1]:8468"]\nnetwork_key = "net.key"\n'
        "[gateway]\nqueue_timeout = 5\n",
    )
    gateway = resolve("gateway", {"data_dir": tmp_path}, {})
    assert gateway["bootstrap"] == (("192.0.2.1", 8468), ("::1", 8468))
    assert gateway["network_key"] == key_file  # relative to the data dir
    assert gateway["queue_timeout"] == 5.0
    assert gateway["api"] == DEFAULT_API_ADDRESS
    env = {"GPUNET_BOOTSTRAP": "192.0.2.9:1, 192.0.2.10:2"}
    assert resolve("ask", {"data_dir": tmp_path}, env)["bootstrap"] == (
        ("192.0.2.9", 1),
        ("192.0.2.10", 2),
    )


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    """The tests start nodes with GPUNET_BOOTSTRAP= to drop an inherited value."""
    write_config(tmp_path, 'bootstrap = "192.0.2.1:8468"\n')
    s = resolve("ask", {"data_dir": tmp_path}, {"GPUNET_BOOTSTRAP": ""})
    assert s["bootstrap"] == (("192.0.2.1", 8468),)
    assert s.origin("bootstrap").source == "file"


def test_data_dir_flag_over_env_over_default(tmp_path: Path) -> None:
    env = {"GPUNET_DATA_DIR": str(tmp_path / "env")}
    flag = Origin("flag", "--data-dir")
    assert resolve_data_dir(tmp_path / "flag", env) == (tmp_path / "flag", flag)
    assert resolve_data_dir(None, env) == (tmp_path / "env", Origin("env", "GPUNET_DATA_DIR"))
    path, origin = resolve_data_dir(None, {})
    assert origin == Origin("default") and path.name == "gpunet"


def test_the_config_file_is_read_from_the_data_dir_the_env_names(tmp_path: Path) -> None:
    write_config(tmp_path, "[node]\nslots = 2\n")
    s = resolve("node", {}, {"GPUNET_DATA_DIR": str(tmp_path)})
    assert s["slots"] == 2 and s.config_file == tmp_path / CONFIG_FILENAME


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nslotz = 4\n", "[node] 'slotz' (did you mean 'slots'?)"),
        ("colour = 1\n", "unknown key 'colour'"),
        ("[node]\nslots = 'x'\n", "[node] slots: expected an integer, got 'x'"),
        ("[node]\nslots = 99\n", "[node] slots: expected an integer from 1 to 64, got 99"),
        ("[node]\nbenchmark = 1\n", "[node] benchmark: expected true or false, got 1"),
        ("[node]\napi = 'nowhere'\n", "[node] api:"),
        ("bootstrap = ['1.2.3.4']\n", "bootstrap: '1.2.3.4' is not HOST:PORT"),
        ("slots = 4\n", "slots is a [node] setting: put it under [node]"),
        ("[gateway]\nbootstrap = []\n", "is a shared setting: put it at the top"),
        ("[nodes]\nslots = 4\n", "unknown table [nodes] (did you mean 'node'?)"),
        ("data_dir = '/x'\n", "data_dir cannot be set in config.toml"),
        ("key_passphrase = 'x'\n", "use GPUNET_KEY_PASSPHRASE"),
        ("[node\nslots = 4\n", "not valid TOML"),
        ("node = 4\n", "node must be a table"),
    ],
)
def test_a_bad_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        read_config_file(path)
    line = str(caught.value)
    assert line.startswith(f"{path}: ") and message in line and "\n" not in line
    with pytest.raises(SettingsError):  # whatever command runs
        resolve("ask", {"data_dir": tmp_path}, {})


def test_a_bad_variable_names_itself(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^GPUNET_SLOTS: expected an integer, got 'many'$"):
        node_settings(tmp_path, env={"GPUNET_SLOTS": "many"})
    with pytest.raises(SettingsError, match="GPUNET_SPECULATE: expected true or false"):
        node_settings(tmp_path, env={"GPUNET_SPECULATE": "maybe"})


def test_lists_and_paths_from_the_file(tmp_path: Path) -> None:
    write_config(tmp_path, '[node]\nmodels = ["a.gguf", "/abs/b"]\n')
    assert node_settings(tmp_path)["models"] == (tmp_path / "a.gguf", Path("/abs/b"))
    env = {"GPUNET_MODELS": "x.gguf,y.gguf"}
    assert node_settings(tmp_path, env=env)["models"] == (Path("x.gguf"), Path("y.gguf"))


def test_every_setting_has_a_variable_and_flag_settings_a_unique_flag() -> None:
    for command in ("node", "gateway", "ask", "peers"):
        flags = [s.flag_name for s in settings_of(command) if s.flag_name]
        assert len(flags) == len(set(flags)), command
    for s in SETTINGS:
        assert s.env == "GPUNET_" + s.key.upper()
        assert s.help and s.section in ("", "node", "gateway")


def test_every_node_and_gateway_option_can_live_in_the_file() -> None:
    for command in ("node", "gateway"):
        for s in settings_of(command):
            assert s.in_file or s.key == "data_dir", s.key


def test_secrets_are_not_displayed(tmp_path: Path) -> None:
    write_config(tmp_path, 'api_key = "s3cret"\n')
    s = resolve(None, {"data_dir": tmp_path}, {})
    assert s["api_key"] == "s3cret" and display(s.entry("api_key")) == "(hidden)"
    assert display(s.entry("node.threads")) == "(the physical cores)"
    assert s["gateway.api"] == DEFAULT_API_ADDRESS and s["node.api"] is None
