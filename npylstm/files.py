"""Atomic file writes: a crash never leaves a half-written file in place of a good one."""

import os
import tempfile


def atomic_write(path, write):
    """Call write(f) on a binary temp file in path's directory, fsync it, then os.replace it over path.

    On any failure (an exception, KeyboardInterrupt) the temp file is removed and `path` is untouched.
    Returns path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
