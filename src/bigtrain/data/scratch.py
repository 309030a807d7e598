"""Temp folders written beside their destination and renamed into place, and the cleanup of the
ones a killed process left behind.

A temp folder is named ``.<dest>.tmp-<host>-<pid>-<random>``: a later run on the same machine
removes it once process ``pid`` is gone (``os.kill(pid, 0)``), so a prepare that is still running
keeps its folder. Folders of another machine (a shared file system) or of an older bigtrain
(``.<dest>.tmp-<random>``) are removed when nothing in them changed for ``STALE_AFTER_S``.
``.<dest>.old-<random>`` folders (a replaced result, deleted right after the swap) always go.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

STALE_AFTER_S = 24 * 3600

_LEFTOVER = re.compile(
    r"\.(?P<name>.+)\.(?:(?P<old>old-)|tmp-(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-)?)[a-z0-9_]+"
)


def host_tag() -> str:
    """8 hex digits naming this machine (a hostname may hold characters a file name should not)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def make_temp_dir(dest: Path) -> Path:
    """Create an empty private folder beside ``dest`` that names this process."""
    prefix = f".{dest.name}.tmp-{host_tag()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))


def remove_stale_temp_dirs(folder: Path, name: str | re.Pattern[str]) -> list[Path]:
    """Remove the leftover temp folders in ``folder`` of destinations called ``name`` (a name, or
    a pattern the whole name must match); returns the folders removed."""
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        m = _LEFTOVER.fullmatch(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue
        ours = m["name"] == name if isinstance(name, str) else name.fullmatch(m["name"])
        if ours and _is_stale(entry, m):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _is_stale(entry: Path, m: re.Match[str]) -> bool:
    if m["old"]:
        return True
    if m["pid"] is not None and m["host"] == host_tag():
        return not pid_alive(int(m["pid"]))
    return time.time() - _last_change(entry) > STALE_AFTER_S


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


def _last_change(folder: Path) -> float:
    """Newest modification time of the folder and the files directly in it."""
    try:
        times = [folder.stat().st_mtime]
        times += [p.stat().st_mtime for p in folder.iterdir()]
    except OSError:  # removed meanwhile
        return time.time()
    return max(times)
