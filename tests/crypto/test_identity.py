"""Identity: peer ids, domain-separated signatures and the key file."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.identity import (
    Identity,
    KeyFileError,
    dht_node_id,
    is_encrypted_key_file,
    load_identity,
    load_or_create_identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    public_key_pem,
    save_identity,
    signing_input,
    verify_signature,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_same_seed_same_key_in_both_libraries() -> None:
    seed = bytes(range(32))
    identity = Identity.from_seed(seed)
    other = Ed25519PrivateKey.from_private_bytes(seed)
    assert identity.public_key == other.public_key().public_bytes_raw()
    assert identity.sign("d", b"m") == other.sign(signing_input("d", b"m"))
    assert identity == Identity.from_seed(seed)
    assert "seed" not in repr(identity) and identity.peer_id in repr(identity)


def test_peer_id_round_trip() -> None:
    identity = Identity.generate()
    peer_id = identity.peer_id
    assert len(peer_id) == 52 and peer_id == peer_id.lower() and "=" not in peer_id
    assert peer_id == peer_id_from_public_key(identity.public_key)
    assert public_key_from_peer_id(peer_id) == identity.public_key
    assert dht_node_id(identity.public_key) == hashlib.sha1(identity.public_key).digest()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a" * 51,
        "a" * 53,
        "A" * 52,  # only the lower-case spelling is a peer id
        "1" * 52,  # 0, 1, 8, 9 are not base32
        "a" * 51 + "b",  # non-zero unused trailing bits: not canonical
    ],
)
def test_bad_peer_id(bad: str) -> None:
    with pytest.raises(ValueError, match="peer id"):
        public_key_from_peer_id(bad)


def test_signatures_are_domain_separated() -> None:
    identity = Identity.generate()
    signature = identity.sign("domain-a", b"message")
    assert len(signature) == 64
    assert verify_signature(identity.public_key, "domain-a", b"message", signature)
    assert not verify_signature(identity.public_key, "domain-b", b"message", signature)
    assert not verify_signature(identity.public_key, "domain-a", b"messagE", signature)
    assert not verify_signature(Identity.generate().public_key, "domain-a", b"message", signature)
    # "ab" + "\0c" must not collide with "a" + "b\0c": the domain is NUL-terminated.
    assert signing_input("ab", b"c") != signing_input("a", b"b\x00c")


@pytest.mark.parametrize(
    ("public_key", "domain", "signature"),
    [
        (b"short", "d", bytes(64)),
        (bytes(32), "d", bytes(63)),
        (bytes(32), "d", bytes(64)),
        (b"\xff" * 32, "d", bytes(64)),
        (bytes(32), "", bytes(64)),
        (bytes(32), "nul\x00", bytes(64)),
        (bytes(32), "é", bytes(64)),
        ("not bytes", "d", bytes(64)),
        (None, "d", None),
    ],
)
def test_verify_never_raises(public_key: bytes, domain: str, signature: bytes) -> None:
    assert verify_signature(public_key, domain, b"m", signature) is False


@pytest.mark.parametrize("domain", ["", "nul\x00", "é"])
def test_sign_refuses_bad_domain(domain: str) -> None:
    with pytest.raises(ValueError):
        Identity.generate().sign(domain, b"m")


def test_key_file_created_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "node.key"
    identity = load_or_create_identity(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert load_identity(path).peer_id == identity.peer_id
    assert load_or_create_identity(path) == identity
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temp file left


def test_save_replaces_and_keeps_0600(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_identity(Identity.generate(), path)
    second = Identity.generate()
    save_identity(second, path)
    assert _mode(path) == 0o600
    assert load_identity(path) == second


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_mode_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    save_identity(Identity.generate(), path)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_identity(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message and "\n" not in message
    with pytest.raises(KeyFileError):
        load_or_create_identity(path)


def test_passphrase_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    identity = load_or_create_identity(path, b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert is_encrypted_key_file(path)
    assert load_identity(path, b"correct horse") == identity
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_identity(path, b"wrong")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        load_identity(path)
    plain = tmp_path / "plain.key"
    save_identity(identity, plain)
    assert not is_encrypted_key_file(plain)
    with pytest.raises(KeyFileError, match="not encrypted"):
        load_identity(plain, b"correct horse")
    with pytest.raises(ValueError):
        save_identity(identity, plain, b"")


def _write_0600(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def test_bad_key_files(tmp_path: Path) -> None:
    cases = {
        "not-pem": b"hello, I am not a key\n",
        "bad-pem": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "ecdsa": generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "binary": os.urandom(200),
    }
    for name, data in cases.items():
        path = tmp_path / name
        _write_0600(path, data)
        with pytest.raises(KeyFileError) as info:
            load_identity(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name
    with pytest.raises(KeyFileError, match="does not exist"):
        load_identity(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_identity(tmp_path)  # a directory


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
@pytest.mark.parametrize("passphrase", [None, b"secret"])
def test_openssl_reads_key_file(tmp_path: Path, passphrase: bytes | None) -> None:
    path = tmp_path / "node.key"
    identity = Identity.generate()
    save_identity(identity, path, passphrase)
    command = ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"]
    if passphrase is not None:
        command += ["-passin", "pass:" + passphrase.decode()]
    der = subprocess.run(command, check=True, capture_output=True).stdout
    assert der.endswith(identity.public_key)  # SubjectPublicKeyInfo ends with the raw key


def test_public_key_pem_is_what_openssl_and_cryptography_read() -> None:
    identity = Identity.generate()
    pem = public_key_pem(identity.public_key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    loaded = serialization.load_pem_public_key(pem)
    assert (
        loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        == identity.public_key
    )
    with pytest.raises(ValueError):
        public_key_pem(b"short")
