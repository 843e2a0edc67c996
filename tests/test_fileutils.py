"""Atomic writes: the whole file or the old one, never half of it, and no temporary file left behind."""

from __future__ import annotations

import pytest

from stamcli.errors import StamError
from stamcli.fileutils import atomic_path, temporary_name, write_atomic


def test_write_atomic_creates_folders_replaces_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "a" / "b" / "report.json"
    assert write_atomic(path, b"first") == path and path.read_bytes() == b"first"
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_write_atomic_errors_are_one_line_and_keep_the_old_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(StamError, match=r"^cannot write preview .*file.txt/x.png: (File exists|Not a directory)$"):
        write_atomic(blocker / "x.png", b"png", what="preview ")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(StamError, match=r"^cannot write .*folder.png: Is a directory$"):
        write_atomic(folder, b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.png"]


def test_atomic_path_renames_on_success_and_removes_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_path(target) as tmp:
            assert tmp == temporary_name(target) and tmp.parent == tmp_path and tmp.name.startswith(".")
            tmp.write_bytes(b"half")
            raise RuntimeError("half-way")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with atomic_path(tmp_path / "new" / "model.safetensors") as tmp:
        tmp.write_bytes(b"new")
        assert not (tmp_path / "new" / "model.safetensors").exists()  # not before the block ends
    assert (tmp_path / "new" / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["model.safetensors"]
