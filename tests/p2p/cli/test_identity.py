"""`gpunet identity ...` and the passphrase rules of load_node_identity."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization

from crypto.identity import (
    Identity,
    KeyFileError,
    is_encrypted_key_file,
    load_identity,
    save_identity,
)
from crypto.network_key import load_network_key, network_id
from p2p.cli import identity as cli_identity
from p2p.cli.identity import PASSPHRASE_ENV, identity_group, load_node_identity


@pytest.fixture(autouse=True)
def no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    yield


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(identity_group, list(args), input=input, env=env)


def assert_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpunet: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_show_creates_on_first_use_and_is_stable(tmp_path: Path) -> None:
    first = run("--data-dir", str(tmp_path), "--json")
    assert first.exit_code == 0, first.output
    shown = json.loads(first.stdout)
    key_file = tmp_path / "identity.pem"
    assert shown["key_file"] == str(key_file) and shown["encrypted"] is False
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert shown["peer_id"] == load_identity(key_file).peer_id
    again = run("--data-dir", str(tmp_path))
    assert again.exit_code == 0
    assert shown["peer_id"] in again.stdout and str(key_file) in again.stdout


def test_new_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    created = run("new", "--data-dir", str(tmp_path), "--json")
    assert created.exit_code == 0, created.output
    peer_id = json.loads(created.stdout)["peer_id"]
    refused = run("new", "--data-dir", str(tmp_path))
    assert_error(refused, "already exists", "--force")
    assert load_identity(tmp_path / "identity.pem").peer_id == peer_id
    replaced = run("--data-dir", str(tmp_path), "new", "--force", "--json")  # group-level option
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.stdout)["peer_id"] != peer_id


@pytest.mark.parametrize("flag", [["--passphrase"], []])
def test_new_with_passphrase_from_env_then_needs_it(tmp_path: Path, flag: list[str]) -> None:
    env = {PASSPHRASE_ENV: "correct horse"}
    created = run("new", "--data-dir", str(tmp_path), *flag, env=env)
    assert created.exit_code == 0, created.output
    key_file = tmp_path / "identity.pem"
    assert is_encrypted_key_file(key_file)  # the variable applies with or without the flag
    assert run("--data-dir", str(tmp_path), env=env).exit_code == 0
    assert_error(run("--data-dir", str(tmp_path)), "encrypted", PASSPHRASE_ENV)
    assert_error(
        run("--data-dir", str(tmp_path), env={PASSPHRASE_ENV: "wrong"}), "wrong passphrase"
    )


def test_new_with_passphrase_prompted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_error(run("new", "--data-dir", str(tmp_path), "--passphrase"), "terminal")
    monkeypatch.setattr(cli_identity, "_interactive", lambda: True)
    created = run("new", "--data-dir", str(tmp_path), "--passphrase", input="pw\npw\n")
    assert created.exit_code == 0, created.output
    assert load_identity(tmp_path / "identity.pem", b"pw")
    shown = run("--data-dir", str(tmp_path), input="pw\n")
    assert shown.exit_code == 0 and "passphrase-encrypted" in shown.stdout


def test_export_public(tmp_path: Path) -> None:
    identity = Identity.generate()
    save_identity(identity, tmp_path / "identity.pem")
    exported = run("export", "--public", "--data-dir", str(tmp_path))
    assert exported.exit_code == 0, exported.output
    key = serialization.load_pem_public_key(exported.stdout.encode())
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == identity.public_key
    as_json = json.loads(run("export", "--public", "--json", "--data-dir", str(tmp_path)).stdout)
    assert as_json["peer_id"] == identity.peer_id
    assert as_json["public_key"] == identity.public_key.hex()
    assert_error(run("export", "--data-dir", str(tmp_path)), "--public")
    assert_error(run("export", "--public", "--data-dir", str(tmp_path / "none")), "does not exist")


def test_loose_key_file_refused_with_the_fix(tmp_path: Path) -> None:
    key_file = tmp_path / "identity.pem"
    save_identity(Identity.generate(), key_file)
    key_file.chmod(0o644)
    assert_error(run("--data-dir", str(tmp_path)), f"chmod 600 {key_file}", "0644")


def test_passphrase_add_and_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = Identity.generate()
    key_file = tmp_path / "identity.pem"
    save_identity(identity, key_file)
    assert_error(run("passphrase", "--data-dir", str(tmp_path)), "terminal")
    monkeypatch.setattr(cli_identity, "_interactive", lambda: True)
    added = run("passphrase", "--data-dir", str(tmp_path), input="s3cret\ns3cret\n")
    assert added.exit_code == 0, added.output
    assert load_identity(key_file, b"s3cret") == identity
    removed = run(
        "passphrase", "--remove", "--data-dir", str(tmp_path), env={PASSPHRASE_ENV: "s3cret"}
    )
    assert removed.exit_code == 0, removed.output
    assert load_identity(key_file) == identity


def test_network_key_new_and_show(tmp_path: Path) -> None:
    path = tmp_path / "net.key"
    created = run("network-key", "new", str(path), "--json")
    assert created.exit_code == 0, created.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_network_key(path)
    assert json.loads(created.stdout)["network_id"] == network_id(key).hex()
    assert_error(run("network-key", "new", str(path)), "already exists", "--force")
    assert load_network_key(path) == key
    assert run("network-key", "new", str(path), "--force").exit_code == 0
    assert load_network_key(path) != key
    shown = run("network-key", "show", str(path))
    assert network_id(load_network_key(path)).hex() in shown.stdout
    path.chmod(0o640)
    assert_error(run("network-key", "show", str(path)), "chmod 600")


# --- load_node_identity ------------------------------------------------------------------------


def test_load_node_identity_creates_plain_or_encrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = load_node_identity(tmp_path / "a" / "identity.pem")
    assert load_node_identity(tmp_path / "a" / "identity.pem") == plain
    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    encrypted = load_node_identity(tmp_path / "b" / "identity.pem")
    assert is_encrypted_key_file(tmp_path / "b" / "identity.pem")
    assert load_node_identity(tmp_path / "b" / "identity.pem") == encrypted
    with pytest.raises(KeyFileError, match="not encrypted, but GPUNET_KEY_PASSPHRASE"):
        load_node_identity(tmp_path / "a" / "identity.pem")
    with pytest.raises(KeyFileError, match="does not exist"):
        load_node_identity(tmp_path / "c" / "identity.pem", create=False)


def test_load_node_identity_prompts_three_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "identity.pem"
    identity = Identity.generate()
    save_identity(identity, path, b"right")
    with pytest.raises(KeyFileError, match="encrypted; set GPUNET_KEY_PASSPHRASE"):
        load_node_identity(path, interactive=False)
    answers = iter([b"wrong", b"right"])
    monkeypatch.setattr(cli_identity, "_prompt_passphrase", lambda *a, **k: next(answers))
    assert load_node_identity(path, interactive=True) == identity
    answers = iter([b"a", b"b", b"c", b"right"])
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_node_identity(path, interactive=True)
    assert next(answers) == b"right"  # gave up after three
