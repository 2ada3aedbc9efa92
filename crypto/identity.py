"""A node's long-term Ed25519 identity: peer ids, domain-separated signatures, the key file.

Signing goes through PyNaCl; the key file goes through `cryptography` because it writes standard
PKCS#8 PEM (readable by ``openssl pkey``) with optional passphrase encryption. The same 32-byte
seed gives byte-identical keys in both libraries, so the seed is what crosses between them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from crypto.secret_file import KeyFileError, read_secret_file, write_secret_file

__all__ = [
    "PEER_ID_LEN",
    "PUBLIC_KEY_LEN",
    "SEED_LEN",
    "SIGNATURE_LEN",
    "Identity",
    "KeyFileError",
    "dht_node_id",
    "is_encrypted_key_file",
    "load_identity",
    "load_or_create_identity",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "public_key_pem",
    "save_identity",
    "signing_input",
    "verify_signature",
]

SEED_LEN = 32
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
PEER_ID_LEN = 52  # base32 of 32 bytes without the 4 padding characters
_SIG_PREFIX = b"gpunet-sig/1\x00"
_PEER_ID_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
# A PEM Ed25519 key, encrypted or not, is well under 1 KiB; anything far bigger is not a key file.
_MAX_KEY_FILE = 64 * 1024


def signing_input(domain: str, message: bytes) -> bytes:
    """The bytes actually signed: a version tag, then the domain, so that a signature made for
    one purpose (say a DHT record) can never be replayed as another (say a handshake)."""
    if not domain or not domain.isascii() or "\x00" in domain:
        raise ValueError("signature domain must be non-empty ASCII without NUL")
    return _SIG_PREFIX + domain.encode("ascii") + b"\x00" + message


@attrs.frozen
class Identity:
    """An Ed25519 signing key. The repr shows the peer id only, never key material."""

    _signing_key: SigningKey = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
            raise ValueError(f"Ed25519 seed must be {SEED_LEN} bytes")
        return cls(SigningKey(seed))

    @property
    def seed(self) -> bytes:
        seed: bytes = self._signing_key.encode()
        return seed

    @property
    def public_key(self) -> bytes:
        public: bytes = self._signing_key.verify_key.encode()
        return public

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, domain: str, message: bytes) -> bytes:
        signature: bytes = self._signing_key.sign(signing_input(domain, message)).signature
        return signature

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!r})"


def verify_signature(public_key: bytes, domain: str, message: bytes, signature: bytes) -> bool:
    """True only for a valid signature; any malformed input (lengths, types, domain) is False
    rather than an exception, because all of it may come from the network."""
    try:
        if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
            return False
        VerifyKey(bytes(public_key)).verify(signing_input(domain, message), bytes(signature))
    except BadSignatureError:
        return False
    except Exception:  # wrong types, a bad domain, libsodium refusing a point: all just False
        return False
    return True


def peer_id_from_public_key(public_key: bytes) -> str:
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"Ed25519 public key must be {PUBLIC_KEY_LEN} bytes")
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of peer_id_from_public_key; only the canonical (lower-case) spelling is accepted
    so that one key has exactly one peer id string."""
    if not isinstance(peer_id, str) or len(peer_id) != PEER_ID_LEN:
        raise ValueError(f"peer id must be {PEER_ID_LEN} lower-case base32 characters: {peer_id!r}")
    if not set(peer_id) <= _PEER_ID_ALPHABET:
        raise ValueError(f"peer id has characters outside lower-case base32: {peer_id!r}")
    try:
        public_key = base64.b32decode(peer_id.upper() + "====")
    except binascii.Error as exc:
        raise ValueError(f"peer id is not valid base32: {peer_id!r}") from exc
    if peer_id_from_public_key(public_key) != peer_id:  # unused trailing bits must be zero
        raise ValueError(f"peer id is not in canonical form: {peer_id!r}")
    return public_key


def dht_node_id(public_key: bytes) -> bytes:
    """The 160-bit Kademlia node id: SHA-1 of the Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"Ed25519 public key must be {PUBLIC_KEY_LEN} bytes")
    return hashlib.sha1(public_key).digest()


def _pem(identity: Identity, passphrase: bytes | None) -> bytes:
    if passphrase is not None and not passphrase:
        raise ValueError("passphrase must not be empty; pass None for an unencrypted key file")
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    return Ed25519PrivateKey.from_private_bytes(identity.seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def save_identity(identity: Identity, path: Path, passphrase: bytes | None = None) -> None:
    """Write the key as PKCS#8 PEM, encrypted when a passphrase is given; replaces the file."""
    write_secret_file(Path(path), _pem(identity, passphrase), replace=True)


def public_key_pem(public_key: bytes) -> bytes:
    """The public key as a PEM SubjectPublicKeyInfo (what ``openssl pkey -pubout`` prints)."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"Ed25519 public key must be {PUBLIC_KEY_LEN} bytes")
    return Ed25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_key_file(path: Path) -> bytes:
    return read_secret_file(path, what="key file", max_size=_MAX_KEY_FILE)


def _is_encrypted(data: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data


class WrongPassphrase(KeyFileError):
    """The key file is encrypted and the passphrase given does not open it."""


def _parse_key_file(path: Path, data: bytes, passphrase: bytes | None) -> Identity:
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"key file {path} is not a PEM file")
    encrypted = _is_encrypted(data)
    if encrypted and passphrase is None:
        raise KeyFileError(f"key file {path} is encrypted; a passphrase is needed")
    if not encrypted and passphrase is not None:
        raise KeyFileError(f"key file {path} is not encrypted, but a passphrase was given")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if encrypted:
            raise WrongPassphrase(f"cannot decrypt key file {path}: wrong passphrase") from exc
        raise KeyFileError(f"key file {path} does not hold a valid private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return Identity.from_seed(key.private_bytes_raw())


def is_encrypted_key_file(path: Path) -> bool:
    """Whether the key file is passphrase-encrypted (same permission checks as loading)."""
    return _is_encrypted(_read_key_file(Path(path)))


def load_identity(path: Path, passphrase: bytes | None = None) -> Identity:
    path = Path(path)
    return _parse_key_file(path, _read_key_file(path), passphrase)


def load_or_create_identity(path: Path, passphrase: bytes | None = None) -> Identity:
    """Load the key file, or create it with a new identity when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        identity = Identity.generate()
        try:
            write_secret_file(path, _pem(identity, passphrase), replace=False)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError as exc:
            raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
        else:
            return identity
    return load_identity(path, passphrase)
