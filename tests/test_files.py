"""npylstm.files.atomic_write: the file appears whole or not at all."""

import os

import pytest

from npylstm.files import atomic_write


def test_writes_the_bytes_and_leaves_no_temp_file(tmp_path):
    path = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"new"))
    assert open(path, "rb").read() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("fail_in", ["write", "replace"])
def test_a_failure_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch, fail_in):
    path = tmp_path / "a.bin"
    path.write_bytes(b"good")

    def write(f):
        f.write(b"half")
        if fail_in == "write":
            raise KeyboardInterrupt

    if fail_in == "replace":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises((KeyboardInterrupt, OSError)):
        atomic_write(path, write)
    monkeypatch.undo()
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
