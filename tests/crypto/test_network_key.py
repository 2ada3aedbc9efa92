"""Network keys: the file, its permissions, and what is derived from the key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.network_key import (
    NETWORK_ID_LEN,
    NETWORK_KEY_LEN,
    encode_network_key,
    handshake_prologue,
    load_network_key,
    network_id,
    parse_network_key,
    write_network_key,
)
from crypto.secret_file import KeyFileError

KEY = bytes(range(32))


def test_write_then_load(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "net.key"
    key = write_network_key(path)
    assert len(key) == NETWORK_KEY_LEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_network_key(path) == key
    text = path.read_text()
    assert key.hex() in text and text.startswith("#") and text.endswith("\n")
    assert write_network_key(tmp_path / "other.key") != key  # random each time


def test_refuses_to_overwrite_without_replace(tmp_path: Path) -> None:
    path = tmp_path / "net.key"
    first = write_network_key(path)
    with pytest.raises(KeyFileError, match="already exists"):
        write_network_key(path)
    assert load_network_key(path) == first
    assert write_network_key(path, KEY, replace=True) == KEY
    assert load_network_key(path) == KEY


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_loose_permissions_refused_like_ssh(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "net.key"
    write_network_key(path, KEY)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_network_key(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message and "\n" not in message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"# only a comment\n",
        b"zz" * 32 + b"\n",
        KEY.hex()[:-1].encode(),
        KEY.hex().encode() + b"\n" + KEY.hex().encode(),
        b"\xff\xfe" * 40,
        os.urandom(32),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "net.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        load_network_key(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_big_and_odd_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_network_key(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_network_key(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):  # and no hang
        load_network_key(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"#" * 10_000)
    big.chmod(0o600)
    with pytest.raises(KeyFileError, match="too big"):
        load_network_key(big)


def test_parse_accepts_comments_blank_lines_and_upper_case() -> None:
    data = b"\n# a comment\n  \n" + KEY.hex().upper().encode() + b"\r\n"
    assert parse_network_key(data) == KEY
    assert parse_network_key(encode_network_key(KEY)) == KEY


def test_network_id_is_hkdf_with_a_fixed_info() -> None:
    expected = HKDF(
        algorithm=hashes.SHA256(), length=16, salt=None, info=b"gpunet/1 network-id"
    ).derive(KEY)
    assert network_id(KEY) == expected and len(expected) == NETWORK_ID_LEN
    assert network_id(KEY) != network_id(bytes(32))
    with pytest.raises(ValueError):
        network_id(bytes(31))


def test_prologue() -> None:
    assert handshake_prologue(b"base", None) == b"base"
    private = handshake_prologue(b"base", KEY)
    assert private.startswith(b"base\x00") and len(private) == 4 + 1 + 32
    assert network_id(KEY) not in private  # the public id and the secret are unrelated
    assert handshake_prologue(b"base", bytes(32)) != private
