"""Write files so that readers see the old file or the whole new one, never half.

A temporary file is created private (mode 0600, :func:`tempfile.mkstemp`); before it takes the
target's name it gets the mode a plain ``open()`` would have given it under the process umask
(0666 masked), so that results are as readable as any other file the user writes: a group, a
colleague or a PACS upload account can read them. Stores that hold patient data for the node
alone (the spool, the warm-start cache) pass ``private=True`` and keep 0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Temporary files are ``.<target name>.<random>.tmp[suffix]``: a leading dot and this, before any suffix.
TEMPORARY_SUFFIX = ".tmp"


def process_umask() -> int:
    """The process's file mode creation mask, read without changing it (``/proc/self/status`` on
    Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path, suffix: str = "", private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over ``target``.

    ``suffix`` keeps the extension that format writers look at (``.nii.gz``). The file ends with
    mode ``0666 & ~umask``, or 0600 where ``private``.
    On error the temporary file is removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=f"{TEMPORARY_SUFFIX}{suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            if not private:
                os.fchmod(handle.fileno(), 0o666 & ~process_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_directory(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX needs the directory synced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
