"""Argument checks for the public API: validate at the boundary, once, with the argument's name.

Every message starts with the function's name, names the argument, says what was expected and what
came: `LSTM.forward: x has 3 features, expected 4`. Inner functions trust their inputs.
"""

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def as_float_array(where, name, a, dtype=None):
    """`a` as an ndarray of a real floating dtype (cast to `dtype` when given), finite everywhere.

    Integer, boolean, complex and object arrays are refused, not silently cast: they are almost
    always a mistake (token ids fed as features, a complex FFT, ...).
    """
    a = np.asarray(a) if not hasattr(a, "__cuda_array_interface__") else a
    kind = a.dtype.kind
    if kind != "f":
        raise ValueError(f"{where}: {name} must be a real floating array (float32 or float64), got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    if a.size and not bool(_xp(a).isfinite(a).all()):
        bad = int((~_xp(a).isfinite(a)).sum())
        raise ValueError(f"{where}: {name} must be finite, got {bad} NaN or inf value(s)")
    return a


def check_shape(where, name, a, expected):
    """Raise unless a.shape matches `expected` (a tuple; None matches any size)."""
    ok = a.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, a.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{where}: {name} has shape {tuple(a.shape)}, expected {want}")


def check_dtype(where, dtype):
    """The dtype of a layer: float32 or float64, returned as np.dtype."""
    dt = np.dtype(dtype)
    if dt.type not in FLOAT_DTYPES:
        raise ValueError(f"{where}: dtype must be float32 or float64, got {dt}")
    return dt


def check_positive_int(where, name, v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")
    return int(v)


def _xp(a):
    """The array module of `a`: numpy, or cupy for a GPU array (imported only then)."""
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy
