"""Files that hold secrets (the identity key, a network key): written 0600, refused when loose.

One place for the rules both key files follow, so they cannot drift apart:

- written to a fresh 0600 temp file in the same directory, fsynced, then moved into place, so the
  secret is never visible with looser permissions nor half-written;
- refused on read when group or others have any access, like ssh does with private keys, with a
  message that says how to fix it;
- size-bounded on read, so pointing the option at a big file is an error, not a memory spike.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class KeyFileError(Exception):
    """A key file cannot be used; str(e) is a one-line message shown to the user as is."""


def write_secret_file(path: Path, data: bytes, *, replace: bool) -> None:
    """Write *data* to *path* with mode 0600 (parents created 0700).

    With replace=False an existing file wins (FileExistsError), which makes concurrent first
    starts agree on one key.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # in case the umask is unusual
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_secret_file(path: Path, *, what: str, max_size: int) -> bytes:
    """Read a secret file, refusing it when group or others have any access.

    *what* names the file in messages ("key file", "network key file"). Every failure is a
    KeyFileError with one line that names the path.
    """
    try:
        # O_NONBLOCK: a FIFO given by mistake must not hang the program; no effect on files.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise KeyFileError(f"cannot read {what} {path}: not a regular file")
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"permissions {mode:04o} for {what} {path} are too open "
                f"(group or others have access); fix it with: chmod 600 {path}"
            )
        data = os.read(fd, max_size + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > max_size:
        raise KeyFileError(f"{what} {path} is too big to be a {what}")
    return data
