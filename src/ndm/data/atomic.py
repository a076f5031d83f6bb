"""The one way ``ndm`` writes a file: aside, then renamed into place.

A file is written into a temporary file of the same folder (named ``.NAME.*`` with the
suffix :data:`TEMPORARY_SUFFIX`, so that a sweep of interrupted writes touches no file of
the user's), flushed and synced, given the permissions of a new file under the process's
umask (as ``open`` gives them, not ``mkstemp``'s 0600) and renamed onto its path. Readers
see the old file or the new one, never a partial one; a link at the path is replaced, not
followed; and a full disk is one ``OSError`` naming the file, with the old file kept.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".ndm-tmp"
#: Free bytes below which a failed write is taken for a full disk (a library writing
#: through its own buffers, as ``torch.save`` does, may not say ``ENOSPC`` itself).
FULL = 1 << 20


def creation_mode(base: int = 0o666) -> int:
    """``base`` less the process's umask: the mode ``open`` (``0o666``) or ``mkdir``
    (``0o777``) gives what it creates."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def _disk_full(error: BaseException, folder: Path) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < FULL
    except OSError:
        return False


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write the file ``path`` through ``write(file)``, aside and renamed into place; on a
    full disk raise ``OSError`` (``ENOSPC``) naming ``path``, which keeps its old content.
    No temporary file is left behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, creation_mode())
        os.replace(tmp, path)
    except BaseException as error:
        full = _disk_full(error, path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device to write {path}"
                + (" (the previous file is kept)" if path.exists() else ""),
            ) from error
        raise


def check_writable(folder: str | Path, purpose: str) -> None:
    """Raise ``OSError`` naming ``folder`` and ``purpose`` unless a file can be written in
    it now (by trying one, as a permission check alone cannot tell a read-only file system
    or a folder that is a file): a command checks where its outputs go before it computes
    them."""
    folder = Path(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        raise OSError(
            error.errno, f"cannot write {purpose} in {folder} ({error.strerror}); nothing computed"
        ) from error
    os.close(fd)
    os.unlink(tmp)
