"""The local caller's identity: the effective OS user from the kernel, and API tokens read from private files."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from mlbox.errors import UsageError


def effective_os_user() -> str:
    """The name of this process's effective uid (the uid as text when it has no passwd entry).

    LOGNAME, USER, LNAME and USERNAME are deliberately ignored: any process can set them,
    so an OS user who can reach the box files could otherwise act as its admin. The kernel's
    effective uid is what file permissions are checked against, so it is the one identity
    the CLI, the TUI and the Python API can trust without a token.
    """
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The API token stored in `path`, which only its owner may read or write (mode 0600 or stricter)."""
    file = Path(path).expanduser()
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError as exc:
        raise UsageError(f"cannot read token file {file}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        # stat the open descriptor, not the path: what is checked is what is read
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"token file {file} is not a regular file")
        if mode & 0o077:
            raise UsageError(
                f"token file {file} is accessible by other users (mode {stat.S_IMODE(mode):04o})",
                hint=f"run `chmod 600 {file}`",
            )
        raw = fh.read(4096)
    token = raw.decode("utf-8", errors="replace").strip()
    if not token:
        raise UsageError(f"token file {file} is empty")
    return token
