"""The one atomic-write helper: no temporary left behind, the old content kept on failure, and
the cleanup of temporaries that only a dead process could have finished."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bigtrain import _io
from bigtrain._io import (
    atomic_write_bytes,
    atomic_write_text,
    host_tag,
    remove_stale_temporaries,
    replace_folder,
    temp_dir_beside,
)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_atomic_write_leaves_only_the_file(tmp_path):
    atomic_write_text(tmp_path / "a.json", "old")
    atomic_write_bytes(tmp_path / "a.json", b"new")
    assert (tmp_path / "a.json").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("where", ["write", "replace"])
def test_failed_atomic_write_keeps_the_old_content_and_no_temporary(tmp_path, monkeypatch, where):
    target = tmp_path / "a.json"
    target.write_text("old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if where == "replace":
        monkeypatch.setattr(_io.os, "replace", fail)
    else:
        monkeypatch.setattr(_io.os, "fsync", fail)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_no_overwrite_refuses_an_existing_file(tmp_path):
    target = tmp_path / "recipe.yaml"
    atomic_write_text(target, "first", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "second", overwrite=False)
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["recipe.yaml"]


def test_temporaries_name_host_and_process(tmp_path, monkeypatch):
    pattern = rf"\.out\.tmp-{host_tag()}-{os.getpid()}-[0-9a-f]{{8}}"
    assert re.fullmatch(pattern, temp_dir_beside(tmp_path / "out").name)
    seen = []
    real = _io.os.replace
    monkeypatch.setattr(_io.os, "replace", lambda a, b: (seen.append(a), real(a, b)))
    atomic_write_text(tmp_path / "out", "x")
    assert re.fullmatch(pattern, os.path.basename(seen[0]))


def test_replace_folder_swaps_a_whole_folder(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "old.txt").write_text("old")
    tmp = temp_dir_beside(tmp_path / "best")
    (tmp / "new.txt").write_text("new")
    replace_folder(tmp, tmp_path / "best")
    assert os.listdir(tmp_path) == ["best"]
    assert os.listdir(tmp_path / "best") == ["new.txt"]


def test_stale_cleanup_removes_only_what_no_running_process_owns(tmp_path, dead_pid):
    host = host_tag()
    names = {
        "dead": f".step-0000002.tmp-{host}-{dead_pid}-abcd1234",
        "dead_file": f".summary.json.tmp-{host}-{dead_pid}-abcd1234",
        "live": f".step-0000004.tmp-{host}-{os.getpid()}-abcd1234",
        "foreign_fresh": f".step-0000006.tmp-00000000-{dead_pid}-abcd1234",
        "foreign_old": f".step-0000008.tmp-00000000-{dead_pid}-abcd1234",
        "unparseable_old": ".config.yaml.tmp-12345",
        "swapped_out": f".best.old-{host}-{dead_pid}-abcd1234",
    }
    (tmp_path / "best").mkdir()  # the swap finished: the old folder is garbage
    for key, name in names.items():
        if key.endswith("file") or key.startswith("unparseable"):
            (tmp_path / name).write_text("x")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"\0")
    long_ago = os.path.getmtime(tmp_path) - 2 * _io.STALE_AFTER_S
    for key in ("foreign_old", "unparseable_old"):
        p = tmp_path / names[key]
        for q in [p, *(p.iterdir() if p.is_dir() else [])]:
            os.utime(q, (long_ago, long_ago))
    removed = remove_stale_temporaries(tmp_path)
    gone = {k for k, n in names.items() if not (tmp_path / n).exists()}
    assert gone == {"dead", "dead_file", "foreign_old", "unparseable_old", "swapped_out"}
    assert sorted(p.name for p in removed) == sorted(names[k] for k in gone)


def test_a_folder_swapped_out_by_a_crash_is_moved_back(tmp_path, dead_pid):
    old = tmp_path / f".best.old-{host_tag()}-{dead_pid}-abcd1234"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"weights")
    assert remove_stale_temporaries(tmp_path) == []
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"weights"
    assert os.listdir(tmp_path) == ["best"]


def test_stale_cleanup_can_be_limited_to_some_destinations(tmp_path, dead_pid):
    mine = tmp_path / f".out.tmp-{host_tag()}-{dead_pid}-abcd1234"
    theirs = tmp_path / f".other.tmp-{host_tag()}-{dead_pid}-abcd1234"
    mine.mkdir()
    theirs.mkdir()
    assert remove_stale_temporaries(tmp_path, names="out") == [mine]
    assert theirs.exists()
    assert remove_stale_temporaries(tmp_path, names=re.compile("oth.*")) == [theirs]
