"""Atomic writes: the old file survives a failed write, and no temporary file is left behind."""

from __future__ import annotations

import os
import stat

import pytest

from compofa_bench.fileio import atomic_path, atomic_write_json, atomic_write_text


def test_replaces_content_with_usual_mode(tmp_path):
    target = tmp_path / "sub" / "table.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.json"]


def test_failure_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_explicit_mode_and_durable(tmp_path):
    target = tmp_path / "adbkey"
    with atomic_path(target, mode=0o600, durable=True) as tmp:
        tmp.write_bytes(b"secret")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == b"secret"


def test_private_file_is_never_readable_by_others_and_replaced_atomically(tmp_path):
    target = tmp_path / "adbkey"
    target.write_bytes(b"old key")
    target.chmod(0o644)
    old_inode = target.stat().st_ino
    with atomic_path(target, mode=0o600) as tmp:
        # While the data is written: a private temporary file, and the old file untouched.
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
        tmp.write_bytes(b"new key")
        assert target.read_bytes() == b"old key"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == b"new key"
    assert target.stat().st_ino != old_inode  # a rename over the old file, not a rewrite of it
    assert [p.name for p in tmp_path.iterdir()] == ["adbkey"]
