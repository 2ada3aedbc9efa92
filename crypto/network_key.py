"""Private networks: the 32-byte pre-shared network key, its file, and what is derived from it.

A private gpunet network is the set of machines that hold the same network key. The key does
three things, each through its own derivation so that no derived value reveals another:

- it is the Noise psk of every session (Noise_XXpsk3, see crypto/noise.py), so the transport
  keys depend on it;
- it makes the handshake prologue secret (``handshake_prologue``), so a responder can tell an
  outsider from a member at message 1 and close without answering: an outsider learns that a
  TCP port is open, nothing else (not even the node's identity key, which XXpsk3 alone would
  reveal in message 2, because psk3 mixes the key in only at message 3);
- its ``network_id`` namespaces DHT keys and is covered by record signatures, so records of one
  network are never accepted in another. The network id is not secret (it travels in records);
  knowing it does not help to find the key (HKDF is one-way).

The file is one line of 64 lower-case hex characters (comment lines starting with "#" and blank
lines are allowed), mode 0600: easy to copy between machines over ssh, refused when group or
others can read it. Hex rather than base64 so that a copy that lost a character is an error,
not a different key.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.noise import PSKLEN
from crypto.secret_file import KeyFileError, read_secret_file, write_secret_file

NETWORK_KEY_LEN = PSKLEN  # 32 bytes
# 128 bits: DHT key strings carry it in hex; two networks colliding by chance needs ~2**64 keys.
NETWORK_ID_LEN = 16
_NETWORK_ID_INFO = b"gpunet/1 network-id"
_PROLOGUE_INFO = b"gpunet/1 noise-prologue"
_PROLOGUE_SECRET_LEN = 32
_MAX_FILE = 4096  # a key line plus a few comment lines
_HEADER = (
    "# gpunet network key (private network). Keep it secret: anyone holding it can join.\n"
    "# Copy this file, mode 0600, to every machine of the network.\n"
)


def _check_key(psk: bytes) -> None:
    if not isinstance(psk, bytes) or len(psk) != NETWORK_KEY_LEN:
        raise ValueError(f"a network key is {NETWORK_KEY_LEN} bytes")


def _hkdf(psk: bytes, info: bytes, length: int) -> bytes:
    _check_key(psk)
    # No salt: the key is already uniformly random, so HKDF-Expand alone would do; HKDF with
    # the default (zero) salt is the textbook call and costs nothing here.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(psk)


def generate_network_key() -> bytes:
    return os.urandom(NETWORK_KEY_LEN)


def network_id(psk: bytes) -> bytes:
    """The public name of the network of *psk*: HKDF-SHA256(psk, info "gpunet/1 network-id"),
    16 bytes. Use ``.hex()`` in DHT key strings and records."""
    return _hkdf(psk, _NETWORK_ID_INFO, NETWORK_ID_LEN)


def handshake_prologue(base: bytes, psk: bytes | None) -> bytes:
    """The Noise prologue: *base* for the public network; for a private one, *base* followed
    by a secret derived from the key (HKDF info "gpunet/1 noise-prologue", 32 bytes).

    In XXpsk3 message 1 carries an AEAD tag over the empty payload whose associated data is
    the handshake hash, which includes the prologue: with a secret prologue, only a member can
    produce a message 1 that the responder accepts."""
    if psk is None:
        return base
    return base + b"\x00" + _hkdf(psk, _PROLOGUE_INFO, _PROLOGUE_SECRET_LEN)


def encode_network_key(psk: bytes) -> bytes:
    """The file contents for *psk*: two comment lines, then the key in hex."""
    _check_key(psk)
    return (_HEADER + psk.hex() + "\n").encode("ascii")


def parse_network_key(data: bytes, *, source: str = "network key") -> bytes:
    """Inverse of encode_network_key; raises KeyFileError naming *source*."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{source} is not a gpunet network key (not text)") from exc
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) != 1:
        raise KeyFileError(
            f"{source} is not a gpunet network key (expected one line of "
            f"{2 * NETWORK_KEY_LEN} hex characters, found {len(lines)} lines)"
        )
    line = lines[0].lower()
    if len(line) != 2 * NETWORK_KEY_LEN or not set(line) <= set(string.hexdigits.lower()):
        raise KeyFileError(
            f"{source} is not a gpunet network key (expected {2 * NETWORK_KEY_LEN} hex "
            f"characters, found {len(line)} characters)"
        )
    return bytes.fromhex(line)


def write_network_key(path: Path, psk: bytes | None = None, *, replace: bool = False) -> bytes:
    """Write *psk* (a new random key when None) to *path*, mode 0600; returns the key.

    Refuses to replace an existing file unless replace=True: losing a network key cuts the
    machine off its network. Raises KeyFileError with one line.
    """
    path = Path(path)
    psk = generate_network_key() if psk is None else psk
    try:
        write_secret_file(path, encode_network_key(psk), replace=replace)
    except FileExistsError as exc:
        raise KeyFileError(f"network key file {path} already exists; not replacing it") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot write network key file {path}: {exc.strerror}") from exc
    return psk


def load_network_key(path: Path) -> bytes:
    """Read a network key file (refused unless only its owner can access it)."""
    path = Path(path)
    data = read_secret_file(path, what="network key file", max_size=_MAX_FILE)
    return parse_network_key(data, source=f"network key file {path}")
