"""Files and folders that are never half-written: the one atomic-write helper and its relatives.

Every file bigtrain writes for a user (configs, summaries, checkpoints, predictions, prepared
data, reports, plots) goes through a temporary sibling that is fsynced and renamed into place, so
a crash or a full disk leaves either the old file or the new one, never a mix.

Temporaries (files and folders) are named ``.<name>.tmp-<host>-<pid>-<random>``, and a folder
swapped out by :func:`replace_folder` is ``.<name>.old-<host>-<pid>-<random>``: ``<host>`` is
:func:`host_tag` and ``<pid>`` the writer's process id. :func:`remove_stale_temporaries` removes
them once the writer is gone (``os.kill(pid, 0)``), so a concurrent writer keeps its temporary.
Entries of another machine (a shared file system) or of an older naming (unparseable) are
removed only when nothing in them changed for ``STALE_AFTER_S``.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

STALE_AFTER_S = 24 * 3600

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<rest>.+)")
_OWNER = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[a-z0-9_]+")


def host_tag() -> str:
    """8 hex digits naming this machine (a hostname may hold characters a file name should not)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _sibling(path: Path, kind: str) -> Path:
    """A fresh name ``.<name>.<kind>-<host>-<pid>-<random>`` beside ``path`` (not created)."""
    return path.with_name(f".{path.name}.{kind}-{host_tag()}-{os.getpid()}-{os.urandom(4).hex()}")


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


def _create_temp_file(path: Path) -> tuple[int, Path]:
    # 0o666 less the umask, like open(path, "w"): a written file is an ordinary file
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = _sibling(path, "tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` via a fsynced temporary sibling renamed into place.

    With ``overwrite=False`` a file already at ``path`` (even one that appeared meanwhile) is
    never replaced: FileExistsError is raised instead.
    """
    path = Path(path)
    fd, tmp = _create_temp_file(path)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _link_new(tmp: Path, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless ``path`` exists (a hard link fails
    then); file systems without hard links fall back to a check and a rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def temp_dir_beside(path: str | Path) -> Path:
    """A new empty folder next to ``path`` named ``.<name>.tmp-<host>-<pid>-<random>``."""
    path = Path(path)
    for _ in range(100):
        tmp = _sibling(path, "tmp")
        try:
            tmp.mkdir(0o777)  # less the umask: the result is an ordinary folder
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing a folder already there.

    The old folder is renamed aside first (a directory cannot be renamed onto a non-empty one),
    so at every moment ``path`` is either the complete old folder or the complete new one, or,
    after a crash between the two renames, the old one waits under its ``.old-`` name, which
    :func:`remove_stale_temporaries` moves back.
    """
    if path.exists():
        trash = _sibling(path, "old")
        os.replace(path, trash)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 checks without signalling)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to another user
        return True
    return True


def _last_change(entry: Path) -> float:
    """Newest modification time of ``entry`` and, for a folder, of what is directly in it."""
    try:
        times = [entry.lstat().st_mtime]
        if entry.is_dir() and not entry.is_symlink():
            times += [p.lstat().st_mtime for p in entry.iterdir()]
    except OSError:  # removed meanwhile
        return time.time()
    return max(times)


def _is_stale(entry: Path, rest: str) -> bool:
    owner = _OWNER.fullmatch(rest)
    if owner is not None and owner["host"] == host_tag():
        return not pid_alive(int(owner["pid"]))
    return time.time() - _last_change(entry) > STALE_AFTER_S


def remove_stale_temporaries(
    folder: str | Path, *, names: str | re.Pattern[str] | None = None
) -> list[Path]:
    """Delete the temporaries in ``folder`` that no running process will finish.

    A ``.<name>.tmp-*`` or ``.<name>.old-*`` entry of this machine goes when its process is gone;
    one of another machine, or whose name does not say its process, when it has not changed
    for ``STALE_AFTER_S``. A stale ``.old-`` folder whose ``<name>`` is missing (a crash between
    :func:`replace_folder`'s two renames) is moved back to ``<name>`` instead of deleted.
    ``names`` (a name, or a pattern the whole name must match) limits the cleanup to the
    temporaries of those destinations, for folders that are not bigtrain's own.

    Returns the entries removed (not those moved back).
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        m = _TEMPORARY.fullmatch(entry.name)
        if m is None:
            continue
        if names is not None and not (
            m["name"] == names if isinstance(names, str) else names.fullmatch(m["name"])
        ):
            continue
        if not _is_stale(entry, m["rest"]):
            continue
        is_dir = entry.is_dir() and not entry.is_symlink()
        dest = folder / m["name"]
        if m["kind"] == "old" and is_dir and not os.path.lexists(dest):
            try:
                os.replace(entry, dest)
                continue
            except OSError:
                pass
        if is_dir:
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # not ours to remove after all: leave it
                continue
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


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: non-finite floats become None (nested lists/dicts too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def meminfo(field: str) -> int | None:
    """A ``/proc/meminfo`` figure in bytes (``"MemAvailable"``, ``"MemTotal"``), or None where
    the file does not exist (not Linux) or lacks the field."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
