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


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_a_new_file_gets_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    path = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    with open(tmp_path / "plain.bin", "wb") as f:              # what a plain open() gives, for comparison
        f.write(b"x")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~mask)
    assert os.stat(path).st_mode & 0o777 == os.stat(tmp_path / "plain.bin").st_mode & 0o777


def test_an_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and oct(os.stat(path).st_mode & 0o777) == oct(0o640)


def test_umask_is_read_without_proc_too(tmp_path, umask, monkeypatch):
    """Where /proc/self/status is missing, the umask is read by setting and restoring it."""
    import npylstm.files as files
    umask(0o027)

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("no /proc here")

    monkeypatch.setattr(files, "open", no_proc, raising=False)
    assert files.current_umask() == 0o027
    monkeypatch.undo()
    assert files.current_umask() == 0o027 and os.umask(0o027) == 0o027     # left as it was


def test_a_missing_folder_is_reported_with_the_target_path(tmp_path):
    target = tmp_path / "missing" / "model.npz"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(target, lambda f: f.write(b"x"))
    assert info.value.filename == str(target) and str(target) in str(info.value)
    assert ".tmp" not in str(info.value)


def test_a_checkpoint_is_readable_by_others_under_umask_022(tmp_path, umask):
    """End to end: Sequential.save goes through atomic_write."""
    from npylstm import LSTM, Sequential
    umask(0o022)
    path = tmp_path / "m.npz"
    Sequential([LSTM(2, 3, seed=0)], seed=0).save(path)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
