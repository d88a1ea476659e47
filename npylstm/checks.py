"""Argument checks for the public API: validate at the boundary, once, with the argument's name.

Every message starts with the function's name, names the argument, says what was expected and what
came: `LSTM.forward: x has 3 features, expected 4`. Inner functions trust their inputs.

Also here: the parameter checks every layer shares (state dicts in, parameters replaced by hand) and
the conversion of foreign arrays (torch tensors, CuPy arrays, lists) to NumPy without importing torch.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NamedTuple

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


def check_bool(where, name, v):
    """True or False (NumPy's bool too); 1, 'yes' and None are refused: a flag is never guessed."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{where}: {name} must be True or False, got {v!r}")
    return bool(v)


def check_seed(where, name, v):
    """None (fresh entropy) or a non-negative int: what np.random.default_rng takes as one number."""
    if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0):
        raise ValueError(f"{where}: {name} must be a non-negative int or None, got {v!r}")
    return None if v is None else int(v)


def check_real(where, name, v):
    """A finite real number (int or float, not bool, not a string), as a float."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be a finite number, got {v!r}")
    return float(v)


def check_device(where, device):
    """'cpu', 'cuda' or 'cuda:N' -> ('cpu' | 'cuda', N or None). The index is checked where CUDA is (Recurrent.to)."""
    if device in ("cpu", "cuda"):
        return device, None
    m = re.fullmatch(r"cuda:(\d+)", device) if isinstance(device, str) else None
    if m is None:
        raise ValueError(f"{where}: device must be 'cpu', 'cuda' or 'cuda:N' (N: the CUDA device index), "
                         f"got {device!r}")
    return "cuda", int(m.group(1))


# ---------------------------------------------------------------------------------------- parameters
class IncompatibleKeys(NamedTuple):
    """What load_state_dict(..., strict=False) did not match (PyTorch's name and fields)."""
    missing_keys: list
    unexpected_keys: list


def to_numpy(v: Any) -> np.ndarray:
    """A torch tensor (any device, bfloat16 as float32), a CuPy array, a NumPy array or a nested list ->
    ndarray, without importing torch (no copy when `v` is already an ndarray)."""
    if hasattr(v, "detach"):                        # torch.Tensor
        v = v.detach().cpu()
        try:
            return v.numpy()
        except TypeError:                           # bfloat16 has no NumPy dtype; float32 holds it exactly
            return v.float().numpy()
    if hasattr(v, "__cuda_array_interface__") and hasattr(v, "get"):
        return v.get()
    return np.asarray(v)


def load_params(where: str, params: Mapping[str, Any], state_dict: Any, strict: bool = True) -> IncompatibleKeys:
    """Copy state_dict's arrays into `params` in place, after checking all of them; nothing changes on refusal.

    Keys: with strict, a missing or an unexpected key is refused (naming it); without, the matching keys
    load and the others come back in the IncompatibleKeys. Values: NumPy arrays, torch tensors, CuPy
    arrays or lists, each of the parameter's shape. A float value of another precision is cast to the
    parameter's dtype (float64 -> float32 rounds to nearest); integer, boolean and complex values are
    refused, as are NaN and inf.
    """
    if not (hasattr(state_dict, "keys") and hasattr(state_dict, "__getitem__")):
        raise ValueError(f"{where}: state_dict must be a mapping of parameter names to arrays, "
                         f"got {type(state_dict).__name__}")
    strict = check_bool(where, "strict", strict)
    missing = [k for k in params if k not in state_dict]
    unexpected = [k for k in state_dict.keys() if k not in params]
    if strict and missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else "")
                         + f"; expected the keys {list(params)}")
    if strict and unexpected:
        raise ValueError(f"{where}: unexpected key {unexpected[0]!r}"
                         + (f" (and {unexpected[1:]})" if unexpected[1:] else "")
                         + f"; expected the keys {list(params)}")
    values = {}
    for k, target in params.items():
        if k not in state_dict:
            continue
        try:
            v = to_numpy(state_dict[k])
        except Exception as e:  # an object NumPy cannot read
            raise ValueError(f"{where}: {k!r} is not an array ({type(e).__name__}: {e})") from None
        if v.dtype.kind != "f":
            raise ValueError(f"{where}: {k!r} has dtype {v.dtype}, expected a float array "
                             f"(float32 or float64; integer, boolean and complex values are refused)")
        if tuple(v.shape) != tuple(target.shape):
            raise ValueError(f"{where}: {k!r} has shape {tuple(v.shape)}, expected {tuple(target.shape)}")
        if v.size and not np.isfinite(v).all():
            raise ValueError(f"{where}: {k!r} must be finite, got {int((~np.isfinite(v)).sum())} NaN or inf value(s)")
        values[k] = v.astype(target.dtype, copy=False)
    for k, v in values.items():                     # everything is valid: from here on the call changes state
        target = params[k]
        target[...] = v if isinstance(target, np.ndarray) else _xp(target).asarray(v)
    return IncompatibleKeys(missing, unexpected)


def check_params(where, params, shapes, dtype, array_type):
    """Refuse a parameter that was replaced (params[k] = ...) by one of another shape, dtype or device.

    shapes: the key -> shape the layer was built with; array_type: numpy.ndarray, or cupy.ndarray on
    the GPU (where the kernels also need C-contiguous arrays).
    """
    if params.keys() != shapes.keys():
        lost = [k for k in shapes if k not in params]
        extra = [k for k in params if k not in shapes]
        raise ValueError(f"{where}: params " + (f"lacks {lost}" if lost else f"has unknown keys {extra}")
                         + f"; the layer's parameters are {list(shapes)}")
    for k, shape in shapes.items():
        v = params[k]
        hint = "(assign with load_state_dict, which checks and casts, or in place: params[k][...] = value)"
        if not isinstance(v, array_type):
            raise ValueError(f"{where}: params[{k!r}] is a {type(v).__module__}.{type(v).__name__}, expected a "
                             f"{array_type.__module__}.{array_type.__name__} on the layer's device {hint}")
        if v.dtype != dtype:
            raise ValueError(f"{where}: params[{k!r}] has dtype {v.dtype}, expected {dtype} {hint}")
        if tuple(v.shape) != tuple(shape):
            raise ValueError(f"{where}: params[{k!r}] has shape {tuple(v.shape)}, expected {tuple(shape)} {hint}")
        if array_type is not np.ndarray and not v.flags.c_contiguous:
            raise ValueError(f"{where}: params[{k!r}] must be C-contiguous on the GPU {hint}")


def _xp(a):
    """The array module of `a`: numpy, or cupy for a GPU array (imported only then)."""
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy
