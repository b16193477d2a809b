"""The data directory and its files: created owner-only, checked before anything else starts."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class DataDirError(Exception):
    """The data directory cannot be used; the message is one line."""


def ensure_data_dir(path: Path) -> None:
    """Create ``path`` (0700) if missing; check it is a writable directory."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirError(f"data_dir {path} exists and is not a directory") from None
    except OSError as exc:
        raise DataDirError(f"cannot create data_dir {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise DataDirError(f"data_dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data_dir {path} is not writable by this user")


def create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only, before SQLite opens it, so that it never exists with
    wider permissions (SQLite gives its -wal and -shm files the database file's permissions). An existing file
    is narrowed to 0600."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
        return
    except OSError as exc:
        raise DataDirError(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)
