"""`gpunet identity`: the node's key file and private-network keys.

    gpunet identity [--json]                 peer id, key file, whether it is encrypted
    gpunet identity new [--force] [--passphrase]
    gpunet identity export --public [--json]
    gpunet identity passphrase [--remove]    add, change or remove the key file's passphrase
    gpunet identity network-key new FILE [--force]
    gpunet identity network-key show FILE    the network id (safe to compare between machines)

Passphrase rules, one place for every command and for the node (``load_node_identity``):
GPUNET_KEY_PASSPHRASE, when set and non-empty, is the passphrase (for services, where nobody is
at a terminal); otherwise an encrypted key file is unlocked by prompting when stdin is a
terminal, and is an error when it is not. A key file that group or others can read is refused
with the chmod that fixes it, as ssh does.

The group is registered by p2p/cli/main.py. The data dir is the flag's (on this command or on the
group), else GPUNET_DATA_DIR, else the user data dir (p2p/settings.py); errors print as every
command's do (p2p/cli/common.py's ``fail``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from crypto.identity import (
    Identity,
    KeyFileError,
    WrongPassphrase,
    is_encrypted_key_file,
    load_identity,
    load_or_create_identity,
    public_key_pem,
    save_identity,
)
from crypto.network_key import load_network_key, network_id, write_network_key
from p2p.cli.common import fail
from p2p.cli.options import data_dir_option, given_data_dir
from p2p.settings import SettingsError, resolve_data_dir, setting

IDENTITY_FILE = "identity.pem"
PASSPHRASE_ENV = setting("key_passphrase").env  # GPUNET_KEY_PASSPHRASE
_PROMPT_ATTEMPTS = 3  # like ssh


def identity_path(data_dir: Path) -> Path:
    return data_dir / IDENTITY_FILE


def passphrase_from_env() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode("utf-8") if value else None


def _interactive() -> bool:
    return sys.stdin.isatty()


def _prompt_passphrase(text: str, *, confirm: bool) -> bytes:
    value = click.prompt(
        text, hide_input=True, confirmation_prompt=confirm, default="", show_default=False
    )
    return str(value).encode("utf-8")


def load_node_identity(
    path: Path, *, create: bool = True, interactive: bool | None = None
) -> Identity:
    """Load the identity key at *path* with the passphrase rules of this module.

    - GPUNET_KEY_PASSPHRASE set and non-empty: it is the passphrase. A key file created here is
      encrypted with it; an existing unencrypted one is an error (the operator asked for
      encryption: ``gpunet identity passphrase`` adds it).
    - Otherwise an encrypted key file is unlocked at a prompt (3 attempts) when *interactive*
      (default: stdin is a terminal), and is an error when not.
    - A missing file is created (unencrypted unless the variable is set) when *create*.

    Raises KeyFileError with a one-line message. Call it before trio.run(): the prompt blocks.
    """
    path = Path(path)
    env = passphrase_from_env()
    if create and not path.exists():
        return load_or_create_identity(path, env)
    if env is not None:
        if not is_encrypted_key_file(path):
            raise KeyFileError(
                f"key file {path} is not encrypted, but {PASSPHRASE_ENV} is set; unset it, "
                f"or encrypt the key with: gpunet identity passphrase"
            )
        return load_identity(path, env)
    if not is_encrypted_key_file(path):
        return load_identity(path)
    if not (_interactive() if interactive is None else interactive):
        raise KeyFileError(
            f"key file {path} is encrypted; set {PASSPHRASE_ENV} or run from a terminal"
        )
    error: WrongPassphrase | None = None
    for _ in range(_PROMPT_ATTEMPTS):
        passphrase = _prompt_passphrase(f"Passphrase for {path}", confirm=False)
        if not passphrase:
            raise KeyFileError(f"key file {path} is encrypted; no passphrase given")
        try:
            return load_identity(path, passphrase)
        except WrongPassphrase as exc:
            error = exc
            click.echo("Wrong passphrase.", err=True)
    assert error is not None
    raise error


def _data_dir(given: Path | None) -> Path:
    try:
        flag = given or given_data_dir(click.get_current_context())
        return resolve_data_dir(flag, os.environ)[0]
    except SettingsError as exc:
        fail(str(exc))


def _new_passphrase(ask: bool) -> bytes | None:
    """The passphrase for a new key file: GPUNET_KEY_PASSPHRASE when set (a node started with it
    must be able to open the file); otherwise prompted twice when asked for; otherwise none."""
    env = passphrase_from_env()
    if env is not None:
        return env
    if not ask:
        return None
    if not _interactive():
        fail(f"--passphrase needs a terminal to prompt on, or {PASSPHRASE_ENV}")
    passphrase = _prompt_passphrase("New passphrase", confirm=True)
    if not passphrase:
        fail("empty passphrase; leave out --passphrase for an unencrypted key file")
    return passphrase


def _show(ident: Identity, path: Path, as_json: bool) -> None:
    encrypted = is_encrypted_key_file(path)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "peer_id": ident.peer_id,
                    "key_file": str(path),
                    "public_key": ident.public_key.hex(),
                    "encrypted": encrypted,
                }
            )
        )
    else:
        click.echo(
            f"peer id:  {ident.peer_id}\nkey file: {path}"
            + (" (passphrase-encrypted)" if encrypted else "")
        )


@click.group("identity", invoke_without_command=True)
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def identity_group(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """Show this machine's peer id and key file (created on first use, mode 0600).

    The subcommands create, export and protect the identity key, and make network keys for
    private networks.
    """
    if ctx.invoked_subcommand is not None:
        return
    path = identity_path(_data_dir(data_dir))
    try:
        ident = load_node_identity(path)
        _show(ident, path, as_json)
    except KeyFileError as exc:
        fail(str(exc))


@identity_group.command("new")
@data_dir_option
@click.option("--force", is_flag=True, help="Replace an existing key: its identity is lost.")
@click.option(
    "--passphrase",
    "with_passphrase",
    is_flag=True,
    help=f"Encrypt the key file with a prompted passphrase ({PASSPHRASE_ENV}, when set, is "
    "used with or without this flag).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def new_identity(data_dir: Path | None, force: bool, with_passphrase: bool, as_json: bool) -> None:
    """Create a new identity key."""
    path = identity_path(_data_dir(data_dir))
    if path.exists() and not force:
        fail(
            f"key file {path} already exists; pass --force to replace it "
            f"(the peer id it holds is lost for good)"
        )
    passphrase = _new_passphrase(with_passphrase)
    ident = Identity.generate()
    try:
        save_identity(ident, path, passphrase)
        _show(ident, path, as_json)
    except (KeyFileError, OSError) as exc:
        fail(str(exc))


@identity_group.command("export")
@data_dir_option
@click.option("--public", "public", is_flag=True, help="Export the public key (required).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print peer id and public key (hex and PEM) as JSON."
)
def export_identity(data_dir: Path | None, public: bool, as_json: bool) -> None:
    """Print the public key as PEM (SubjectPublicKeyInfo, readable by openssl).

    Only the public key is exported; to move an identity to another machine, copy the key file
    itself (mode 0600).
    """
    if not public:
        fail("only the public key is exported: pass --public")
    path = identity_path(_data_dir(data_dir))
    try:
        ident = load_node_identity(path, create=False)
    except KeyFileError as exc:
        fail(str(exc))
    pem = public_key_pem(ident.public_key).decode("ascii")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "peer_id": ident.peer_id,
                    "public_key": ident.public_key.hex(),
                    "public_key_pem": pem,
                }
            )
        )
    else:
        click.echo(pem, nl=False)


@identity_group.command("passphrase")
@data_dir_option
@click.option("--remove", is_flag=True, help="Store the key unencrypted.")
def change_passphrase(data_dir: Path | None, remove: bool) -> None:
    """Add, change or remove the key file's passphrase (the identity stays the same).

    The current passphrase is taken like everywhere else (GPUNET_KEY_PASSPHRASE or a prompt);
    the new one is always prompted, so this command needs a terminal unless --remove.
    """
    path = identity_path(_data_dir(data_dir))
    try:
        ident = load_node_identity(path, create=False)
    except KeyFileError as exc:
        fail(str(exc))
    if remove:
        new: bytes | None = None
    else:
        if not _interactive():
            fail("a new passphrase is prompted for: run from a terminal")
        new = _prompt_passphrase("New passphrase", confirm=True)
        if not new:
            fail("empty passphrase; use --remove to store the key unencrypted")
    try:
        save_identity(ident, path, new)
    except (KeyFileError, OSError) as exc:
        fail(str(exc))
    click.echo(f"key file {path} is now {'unencrypted' if new is None else 'encrypted'}")


@identity_group.group("network-key")
def network_key_group() -> None:
    """Keys of private networks: machines holding the same key form a network of their own."""


@network_key_group.command("new")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing file: its network is lost.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def new_network_key(file: Path, force: bool, as_json: bool) -> None:
    """Write a new random network key to FILE (mode 0600).

    Copy FILE to every machine of the private network and start each node and client with
    --network-key FILE (or GPUNET_NETWORK_KEY=FILE).
    """
    try:
        key = write_network_key(file, replace=force)
    except KeyFileError as exc:
        fail(f"{exc}{'' if force else ' (pass --force to replace it)'}")
    _show_network(file, key, as_json)


@network_key_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def show_network_key(file: Path, as_json: bool) -> None:
    """Print the network id of the key in FILE (public: compare it between machines)."""
    try:
        key = load_network_key(file)
    except KeyFileError as exc:
        fail(str(exc))
    _show_network(file, key, as_json)


def _show_network(file: Path, key: bytes, as_json: bool) -> None:
    ident = network_id(key).hex()
    if as_json:
        click.echo(json.dumps({"network_key_file": str(file), "network_id": ident}))
    else:
        click.echo(f"network key file: {file}\nnetwork id:       {ident}")
