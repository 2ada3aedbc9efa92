"""`gpunet service install|uninstall`: the systemd user unit, checked by systemd's own verifier.

`systemd-analyze verify` loads the unit as systemd would (unknown keys, bad values, an ExecStart
binary that does not exist); it is Debian's `systemd` package, which tools/run-tests.sh installs
when it runs as root. Nothing here starts a node or a service.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from p2p.cli.main import main
from p2p.cli.service import absolute_paths, systemd_quote, systemd_version, unit_text
from p2p.settings import SETTINGS

VERIFY_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def no_gpunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)


def gpunet(*args: str, config_home: Path | None = None) -> Result:
    env = {"XDG_CONFIG_HOME": str(config_home)} if config_home else None
    return CliRunner().invoke(main, list(args), env=env)


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpunet: error: "), result.stderr
    return lines[0]


def exec_start(unit: str) -> list[str]:
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("%%", "%").replace("$$", "$"))


def test_printed_unit_passes_systemd_analyze_verify(tiny_gguf: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze is not installed (Debian package systemd; run-tests.sh "
            "installs it as root)"
        )
    data = tmp_path / "data dir"  # a space: quoted in ExecStart
    result = gpunet(
        "service",
        "install",
        "--print",
        "--model",
        str(tiny_gguf),
        "--name",
        "rack 7 (50%)",
        "--data-dir",
        str(data),
        "--grace",
        "45",
        "--host",
        "0.0.0.0",
    )
    assert result.exit_code == 0, result.output
    unit = result.stdout
    path = tmp_path / "gpunet-node.service"
    path.write_text(unit)
    runtime = tmp_path / "runtime"  # the user manager's runtime dir, which a CI job lacks
    runtime.mkdir(mode=0o700)
    check = subprocess.run(
        [analyze, "--user", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert check.returncode == 0, check.stderr
    assert check.stderr.strip() == "", check.stderr  # no warning either (unknown key, ...)
    assert "Restart=on-failure" in unit and "WantedBy=default.target" in unit
    assert "KillSignal=SIGTERM" in unit
    assert "TimeoutStopSec=75" in unit  # above the node's grace (45 s)
    argv = exec_start(unit)
    assert argv[:4] == [os.path.abspath(sys.executable), "-m", "p2p", "node"]
    assert argv[4:] == [
        "--model", str(tiny_gguf), "--name", "rack 7 (50%)", "--data-dir", str(data),
        "--grace", "45", "--host", "0.0.0.0",
    ]  # fmt: skip
    # what the unit runs is this installation's node command
    helped = subprocess.run(
        [*argv[:4], "--help"], capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S
    )
    assert helped.returncode == 0 and "--name TEXT" in helped.stdout, helped.stderr


def test_the_unit_pins_the_data_dir_and_makes_paths_absolute(tiny_gguf: Path) -> None:
    result = gpunet("service", "install", "--print", "--model", str(tiny_gguf))
    assert result.exit_code == 0, result.output
    argv = exec_start(result.stdout)
    assert argv[argv.index("--data-dir") + 1].startswith("/")
    assert absolute_paths(
        ["--model", "m.gguf", "--log-file=logs/n.log", "--name", "m.gguf", "-v"], Path("/srv")
    ) == ["--model", "/srv/m.gguf", "--log-file=/srv/logs/n.log", "--name", "m.gguf", "-v"]


def test_install_writes_keeps_a_differing_unit_and_uninstall_removes(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    home = tmp_path / "config"
    unit = home / "systemd" / "user" / "gpunet-node.service"
    first = gpunet("service", "install", "--model", str(tiny_gguf), config_home=home)
    assert first.exit_code == 0, first.output
    assert "systemctl --user daemon-reload && systemctl --user enable --now gpunet-node" in (
        first.stdout
    )
    assert "loginctl enable-linger" in first.stdout
    assert "journalctl --user -u gpunet-node" in first.stdout
    written = unit.read_text()
    assert str(tiny_gguf) in written
    again = gpunet("service", "install", "--model", str(tiny_gguf), config_home=home)
    assert again.exit_code == 0 and "nothing changed" in again.stdout
    other = ("service", "install", "--model", str(tiny_gguf), "--name", "other")
    assert "--force" in error_line(gpunet(*other, config_home=home))
    assert unit.read_text() == written  # not overwritten
    assert gpunet(*other, "--force", config_home=home).exit_code == 0
    assert "--name other" in unit.read_text()
    # still enabled: the user is told to disable it first, and the file stays
    wants = unit.parent / "default.target.wants"
    wants.mkdir()
    (wants / unit.name).symlink_to(unit)
    assert "systemctl --user disable --now gpunet-node" in error_line(
        gpunet("service", "uninstall", config_home=home)
    )
    assert unit.exists()
    (wants / unit.name).unlink()
    gone = gpunet("service", "uninstall", config_home=home)
    assert gone.exit_code == 0 and "daemon-reload" in gone.stdout
    assert not unit.exists()


def test_bad_options_fail_before_anything_is_written(tiny_gguf: Path, tmp_path: Path) -> None:
    home = tmp_path / "config"
    model = ("--model", str(tiny_gguf))
    assert "no-such-flag" in error_line(
        gpunet("service", "install", *model, "--no-such-flag", config_home=home)
    )
    assert "config.toml" in error_line(
        gpunet("service", "install", *model, "--api-key", "s3cret", config_home=home)
    )  # a secret in ExecStart would be shown to every local user
    assert "--name" in error_line(
        gpunet("service", "install", *model, "--name", "tab\there", config_home=home)
    )
    assert "does not exist" in error_line(
        gpunet("service", "install", "--model", str(tmp_path / "gone.gguf"), config_home=home)
    )
    assert "not a unit name" in error_line(
        gpunet("service", "install", "--unit", "../x", *model, config_home=home)
    )
    assert not home.exists()


def test_systemd_quoting() -> None:
    assert systemd_quote("/usr/bin/python3") == "/usr/bin/python3"
    assert systemd_quote("50%") == '"50%%"'
    assert systemd_quote("$HOME") == '"$$HOME"'
    assert systemd_quote('a "b" \\c') == '"a \\"b\\" \\\\c"'


def test_restarts_back_off_where_systemd_knows_how() -> None:
    argv = ["/usr/bin/python3", "-m", "p2p", "node"]
    new = unit_text(argv, 30, Path("/d"), systemd=256)
    assert "RestartSteps=" in new and "RestartMaxDelaySec=" in new
    for old in (252, None):  # an older systemd would warn about keys it does not know
        assert "RestartSteps" not in unit_text(argv, 30, Path("/d"), systemd=old)
    version = systemd_version()
    assert version is None or version > 200
