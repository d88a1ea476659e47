"""Atomic file writes: a crash never leaves a half-written file in place of a good one.

Every file npylstm writes (checkpoints, JSON, PNG, benchmark output) goes through `atomic_write`. The
file ends up with the permissions a plain `open(path, "w")` would give it: an existing file keeps its
mode, a new one gets 0o666 minus the process umask (0o644 under the usual umask 022).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from typing import IO, Any, Callable

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in /proc/self/status (kernel 4.7 and later). Elsewhere the only way is
    os.umask(0) then os.umask(old): a moment in which another thread's new file would get mode 0o666,
    so that pair runs under a lock (it cannot guard threads that call os.umask themselves).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        old = os.umask(0o077)       # a strict value for the instant before it is restored
        os.umask(old)
    return old


def _mode_for(path: str) -> int:
    """The permission bits open(path, "w") would leave: the existing file's, else 0o666 & ~umask."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0o666 & ~current_umask()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> str:
    """Call write(f) on a binary temp file in path's directory, fsync it, then os.replace it over path.

    The file gets the mode a plain open() would give (see the module docstring). On any failure (an
    exception, KeyboardInterrupt) the temp file is removed and `path` is untouched; an OSError from
    creating, syncing or moving the file names `path`, not the temp file. Returns path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            try:
                f.flush()
                os.fchmod(f.fileno(), _mode_for(path))      # mkstemp made it 0o600
                os.fsync(f.fileno())
            except OSError as e:
                raise _naming(e, path) from None
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _naming(e, path) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _naming(e: OSError, path: str) -> OSError:
    """The same kind of OSError, about `path` (the file the caller asked for) instead of the temp file."""
    return OSError(e.errno, e.strerror, path)      # OSError picks the subclass (FileNotFoundError, ...) from errno


def write_json(path: str | os.PathLike, obj: Any) -> str:
    """`obj` (dicts, lists, numbers, strings, NumPy scalars and arrays) as indented JSON, written atomically."""
    def default(o):
        if hasattr(o, "tolist"):            # NumPy scalars and arrays (numpy itself is not imported here)
            return o.tolist()
        raise TypeError(f"write_json: cannot serialise {type(o).__name__}")
    data = (json.dumps(obj, indent=2, default=default) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))
