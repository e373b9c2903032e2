"""Files keyvault writes for people: whole or not at all, never over another file, synced to the disk."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import StoreFullError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_new(path: Path, data: bytes | Iterable[bytes], *, mode: int = 0o644) -> None:
    """Create ``path`` whole or not at all: a synced temporary file beside it, linked into place.

    FileExistsError when ``path`` exists (it is never replaced); StoreFullError, with nothing left
    behind, when the disk is full; any other OSError as raised.
    """
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.unlink(missing_ok=True)  # (left by a process of the same id that was killed while writing)
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask: a public file is for others to read
            for chunk in [data] if isinstance(data, bytes) else data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(part, path)  # atomic, and refuses an existing file
        sync(path.absolute().parent)
    except OSError as exc:
        if exc.errno in _FULL:
            raise StoreFullError(f"no room on the disk to write {path}; nothing was left behind: free some space "
                                 "and try again") from None
        raise
    finally:
        part.unlink(missing_ok=True)


def sync(path: Path) -> None:
    """Flush a file or a directory (the names in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
