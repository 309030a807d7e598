"""Files that are never half-written: the one atomic-write helper and its relatives.

Every file bigtrain writes for a user (configs, summaries, checkpoints, predictions, prepared
data) goes through a temporary sibling that is fsynced and renamed into place, so a crash or a
full disk leaves either the old file or the new one, never a mix. Temporary names carry the
writer's pid, so stale ones (from a killed process) can be told apart from live ones.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

_TMP_PID = re.compile(r"\.tmp-(\d+)")


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a fsynced temporary sibling and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty folder next to ``path`` named ``.<name>.tmp-<pid>-<random>``."""
    path = Path(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing a folder already there.

    The old folder is renamed aside first (a directory cannot be renamed onto a non-empty one),
    so at every moment ``path`` is either the complete old folder or the complete new one.
    """
    if path.exists():
        trash = path.parent / f".{path.name}.old-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.*.tmp-<pid>*`` and ``.*.old-<pid>`` entries of ``folder`` whose process is gone.

    Returns what was removed. Entries of live processes (a concurrent writer) are kept.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not entry.name.startswith("."):
            continue
        m = _TMP_PID.search(entry.name) or re.search(r"\.old-(\d+)$", entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def describe_os_error(e: OSError) -> str:
    """A short reason for a failed write: 'the disk is full', 'read-only file system', ..."""
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or str(e)
