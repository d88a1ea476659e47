"""The GPU backend: loads kernels/ through CuPy, runs the LSTM sequence forward/BPTT on CUDA arrays.

It implements the contract of sequence.py, so `LSTM(..., device="cuda")` is the same layer with another
backend (design.md §2: the GPU enters at a seam):

    sequence_forward(x, h0, c0, W_x, W_h, b, mask=None, kernel=DEFAULT_KERNEL) -> Y, h_T, c_T, cache
    sequence_backward(dY, dh_T, dc_T, cache) -> dx, dh0, dc0, dW_x, dW_h, db
    step_forward(x, h_prev, c_prev, W_x, W_h, b, kernel=DEFAULT_KERNEL) -> H, C, cache   (one cell step)
    step_backward(dH, dC, cache) -> dx, dh_prev, dc_prev, dW_x, dW_h, db

`kernel` picks a version of kernels/lstm_kernels.cu (its header comment describes each): 1 fuses the
pointwise part of a step and leaves the products to cuBLAS, 2 does a whole step in one launch.

CuPy is imported only when a GPU function runs: a CPU-only install imports this module without it.
`require_cuda()` says what is missing (CuPy, a device, the NVRTC library) as a RuntimeError.

The loader reads kernels/ from a checkout (<repo>/kernels) or an installed wheel (npylstm/kernels/),
splices `#include "..."`d headers into the source with `#line` markers (CuPy's compile cache keys on the
source text only, so a header edit must change the source to rebuild), compiles float and double through
NVRTC with name_expressions (CuPy adds -ftz=true: float32 flushes denormals to zero) and caches the module.
CuPy checks nothing about kernel arguments, so every public function validates dtype, contiguity and
shapes first, and sizes go to the kernels as np.int32.
"""

import math
import re
import sys
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

KERNEL_VERSIONS = (1, 2)
# Default without a measurement, by reasoning: a per-step Python loop is bound by launches (about 6 µs
# each from Python on an H100, design.md §6) at the sizes the seed experiments use (N ≤ 64, H ≤ 512);
# version 2 makes one launch per step each way where version 1 makes two. Version 2's in-kernel product
# is a plain tiled FMA loop, so for large N·H (N = 256, H = 1024) cuBLAS in version 1 should win:
# `npylstm bench` on a GPU decides; change this line when it has.
DEFAULT_KERNEL = 2
KERNEL_FILE = "lstm_kernels.cu"
KERNEL_NAMES = ("lstm_forward_kernel", "lstm_backward_kernel")  # + version number
TYPE_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
NAME_EXPRESSIONS = tuple(f"npylstm::{name}{v}<{t}>"
                         for v in KERNEL_VERSIONS for name in KERNEL_NAMES for t in TYPE_NAMES.values())
COMPILE_OPTIONS = ("--std=c++17",)   # CuPy appends -ftz=true and -arch=sm_XX for the device
THREADS1, TJ, TN = 256, 32, 8        # launch shapes: the constants of the same names in lstm_kernels.cu
NULL = np.uint64(0)                  # a null pointer argument: CuPy turns None into 0xffffffff (cupy#9046)
POISON = False                       # tests set True: every output buffer starts as NaN, so an unwritten one shows


# ------------------------------------------------------------------------------------------------ checks
def check_kernel(where, kernel):
    """The dispatcher's gate: `kernel` must be a known version number."""
    if isinstance(kernel, (bool, np.bool_)) or kernel not in KERNEL_VERSIONS:
        raise ValueError(f"{where}: kernel must be one of {', '.join(map(str, KERNEL_VERSIONS))}, got {kernel!r}")
    return int(kernel)


_verified = None  # the cupy module once require_cuda has passed (a per-call check costs driver calls)


def require_cuda(where="npylstm"):
    """Return the cupy module if CUDA is usable here; else raise RuntimeError saying what is missing."""
    global _verified
    if _verified is not None and sys.modules.get("cupy") is _verified:
        return _verified
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(f"{where}: CUDA needs CuPy, which is not installed ({e}); "
                           f"install it with: pip install 'npylstm[cuda13]' (or cupy-cuda12x for CUDA 12)") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, or the driver finds no device
        raise RuntimeError(f"{where}: no usable CUDA device: CuPy is installed but the CUDA runtime says: {e}") from e
    if count < 1:
        raise RuntimeError(f"{where}: no usable CUDA device: the CUDA driver reports 0 devices")
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as e:
        raise RuntimeError(f"{where}: the NVRTC library is missing, so the kernels cannot be compiled ({e}); "
                           f"install it with: pip install 'nvidia-cuda-nvrtc>=13,<14' (or the CUDA toolkit)") from e
    _verified = cupy
    return cupy


def _check_arrays(where, arrays, shapes):
    """Validate at the boundary: one float dtype for all, C-contiguous, the given shapes (None = any size).

    arrays and shapes are dicts keyed by argument name; None arrays are skipped (optional arguments).
    """
    dtype = None
    for name, a in arrays.items():
        if a is None:
            continue
        if not hasattr(a, "dtype") or a.dtype not in TYPE_NAMES:
            raise ValueError(f"{where}: {name} must be a float32 or float64 array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)}")
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            raise ValueError(f"{where}: {name} has dtype {a.dtype}, expected {dtype} like the other arguments")
        if not a.flags.c_contiguous:
            raise ValueError(f"{where}: {name} must be C-contiguous (the kernels index it as a dense row-major array)")
        want = shapes[name]
        if a.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, a.shape)):
            shown = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
            raise ValueError(f"{where}: {name} has shape {tuple(a.shape)}, expected {shown}")
    return dtype


def _check_on_gpu(where, arrays):
    cupy = require_cuda(where)
    for name, a in arrays.items():
        if a is not None and not isinstance(a, cupy.ndarray):
            raise ValueError(f"{where}: {name} must be a CuPy array on the GPU, got {type(a).__name__}")


def _xp(a):
    """numpy or cupy, whichever `a` belongs to (the sequence loop is written once for both; see tests)."""
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy.get_array_module(a)


def _empty(xp, shape, dtype):
    return xp.full(shape, np.nan, dtype) if POISON else xp.empty(shape, dtype)


# ------------------------------------------------------------------------------------------------ loader
def kernel_dir():
    """kernels/ of an installed wheel (npylstm/kernels/) or of a checkout (<repo>/kernels)."""
    here = Path(__file__).resolve().parent
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / KERNEL_FILE).is_file():
            return d
    raise FileNotFoundError(f"npylstm.gpu: {KERNEL_FILE} not found in {here / 'kernels'} nor {here.parent / 'kernels'}")


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
_PRAGMA_ONCE = re.compile(r'^\s*#\s*pragma\s+once\b')


def load_source(name=KERNEL_FILE, directory=None, _seen=None):
    """The text of kernels/`name` with every `#include "..."` replaced by the header's text.

    Each file starts with `#line 1 "<file>"` and the line after a spliced header resumes with
    `#line <n> "<file>"`, so compiler messages name the real file and line. A header is spliced once
    (they are `#pragma once`).
    """
    directory = Path(directory) if directory is not None else kernel_dir()
    seen = set() if _seen is None else _seen
    seen.add(name)
    out = [f'#line 1 "{name}"']
    for number, line in enumerate((directory / name).read_text().splitlines(), start=1):
        if _PRAGMA_ONCE.match(line):
            out.append("// #pragma once: the loader splices each header once")  # one line for one: numbers hold
            continue
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
            continue
        if m.group(1) not in seen:
            out.append(load_source(m.group(1), directory, seen))
        out.append(f'#line {number + 1} "{name}"')
    return "\n".join(out)


_modules = {}  # device id -> cupy.RawModule


def get_module():
    """The compiled module for the current device (compiled once per process and device, then cached)."""
    cupy = require_cuda("npylstm.gpu")
    device = cupy.cuda.runtime.getDevice()
    if device not in _modules:
        _modules[device] = cupy.RawModule(code=load_source(), options=COMPILE_OPTIONS,
                                          name_expressions=NAME_EXPRESSIONS)
    return _modules[device]


def get_function(name, version, dtype):
    return get_module().get_function(f"npylstm::{name}{version}<{TYPE_NAMES[np.dtype(dtype)]}>")


# ------------------------------------------------------------------------------------------------ launches
# The seam between Python and the kernels: each takes validated, contiguous CuPy arrays and fills the
# outputs it is given. Arguments the kernel may take as null are Optional.
def launch_forward(kernel, Ax, x, W_x, b, H_prev, W_h, C_prev, gates, C, tanh_C, H):
    """The dispatcher: one forward step of kernel version `kernel` into gates (N, 4H), C, tanh_C, H (N, H).

    Ax (N, 4H) = X W_x + b when the input product was hoisted (a sequence); else None and x (N, D),
    W_x (D, 4H), b (4H,) are given (a lone cell step).
    """
    check_kernel("npylstm.gpu.launch_forward", kernel)
    N, Hn = C.shape
    if kernel == 1:
        if Ax is None:
            Ax = x @ W_x
            Ax += b
        Ah = H_prev @ W_h                                         # cuBLAS
        get_function("lstm_forward_kernel", 1, C.dtype)(
            (max(1, math.ceil(N * Hn / THREADS1)),), (THREADS1,),
            (Ax, Ah, C_prev, gates, C, tanh_C, H, np.int32(N), np.int32(Hn)))
    elif kernel == 2:
        inputs, D = ((NULL, x, W_x, b), x.shape[1]) if Ax is None else ((Ax, NULL, NULL, NULL), 0)
        get_function("lstm_forward_kernel", 2, C.dtype)(
            (math.ceil(Hn / TJ), math.ceil(N / TN)), (TJ, TN),
            (*inputs, H_prev, W_h, C_prev, gates, C, tanh_C, H, np.int32(N), np.int32(D), np.int32(Hn)))


def launch_backward(kernel, dH, dY, dC, gates, tanh_C, C_prev, W_h, W_x, dA, dC_prev, dH_prev, dx):
    """The dispatcher: one backward step into dA (N, 4H), dC_prev, dH_prev (N, H) and, when W_x is given, dx (N, D).

    dH_t = dH + dY (dY may be None). dH_prev, dC_prev must be other buffers than dH, dC.
    """
    check_kernel("npylstm.gpu.launch_backward", kernel)
    N, Hn = dC.shape
    if kernel == 1:
        get_function("lstm_backward_kernel", 1, dC.dtype)(
            (max(1, math.ceil(N * Hn / THREADS1)),), (THREADS1,),
            (dH, NULL if dY is None else dY, dC, gates, tanh_C, C_prev, dA, dC_prev, np.int32(N), np.int32(Hn)))
        _xp(dA).matmul(dA, W_h.T, out=dH_prev)                    # dH_prev = dA W_hᵀ (cuBLAS)
        if W_x is not None:
            _xp(dA).matmul(dA, W_x.T, out=dx)                     # dX = dA W_xᵀ
    elif kernel == 2:
        D = 0 if W_x is None else W_x.shape[0]
        tiles = math.ceil(Hn / TJ) + math.ceil(D / TJ)
        get_function("lstm_backward_kernel", 2, dC.dtype)(
            (tiles, math.ceil(N / TN)), (TJ, TN),
            (dH, NULL if dY is None else dY, dC, gates, tanh_C, C_prev, W_h, NULL if W_x is None else W_x,
             dA, dC_prev, dH_prev, NULL if dx is None else dx, np.int32(N), np.int32(D), np.int32(Hn)))


# ------------------------------------------------------------------------------------------------ one step
class GPUCellCache(NamedTuple):
    x: object          # (N, D)
    h_prev: object     # (N, H)
    c_prev: object     # (N, H)
    W_x: object        # (D, 4H)
    W_h: object        # (H, 4H)
    gates: object      # (N, 4H)  [ I | F | C_tilde | O ]
    tanh_C: object     # (N, H)
    kernel: int


def step_forward(x, h_prev, c_prev, W_x, W_h, b, kernel=DEFAULT_KERNEL):
    """One LSTM step on the GPU; cell.step_forward's contract. x : (N, D), h_prev, c_prev : (N, H),
    W_x : (D, 4H), W_h : (H, 4H), b : (4H,) -> H, C : (N, H), cache."""
    where = "npylstm.gpu.step_forward"
    kernel = check_kernel(where, kernel)
    args = dict(x=x, h_prev=h_prev, c_prev=c_prev, W_x=W_x, W_h=W_h, b=b)
    _check_on_gpu(where, args)
    dtype = _check_arrays(where, args, dict(x=(None, None), h_prev=(None, None), c_prev=(None, None),
                                            W_x=(None, None), W_h=(None, None), b=(None,)))   # ranks first
    (N, D), Hn = x.shape, W_h.shape[0]
    _check_arrays(where, args, dict(x=(N, D), h_prev=(N, Hn), c_prev=(N, Hn), W_x=(D, 4 * Hn),
                                    W_h=(Hn, 4 * Hn), b=(4 * Hn,)))
    return _step_forward(x, h_prev, c_prev, W_x, W_h, b, kernel, dtype)


def _step_forward(x, h_prev, c_prev, W_x, W_h, b, kernel, dtype):
    xp = _xp(x)
    N, Hn = h_prev.shape
    gates, tanh_C = _empty(xp, (N, 4 * Hn), dtype), _empty(xp, (N, Hn), dtype)
    C, H = _empty(xp, (N, Hn), dtype), _empty(xp, (N, Hn), dtype)
    launch_forward(kernel, None, x, W_x, b, h_prev, W_h, c_prev, gates, C, tanh_C, H)
    return H, C, GPUCellCache(x, h_prev, c_prev, W_x, W_h, gates, tanh_C, kernel)


def step_backward(dH, dC, cache):
    """Backward of step_forward: dH, dC : (N, H) -> dx (N, D), dh_prev, dc_prev (N, H), dW_x, dW_h, db."""
    where = "npylstm.gpu.step_backward"
    if not isinstance(cache, GPUCellCache):
        raise ValueError(f"{where}: cache must be the GPUCellCache from npylstm.gpu.step_forward, got {type(cache).__name__}")
    _check_on_gpu(where, dict(dH=dH, dC=dC))
    N, Hn = cache.h_prev.shape
    _check_arrays(where, dict(dH=dH, dC=dC, gates=cache.gates), dict(dH=(N, Hn), dC=(N, Hn), gates=(N, 4 * Hn)))
    return _step_backward(dH, dC, cache)


def _step_backward(dH, dC, cache):
    x, h_prev, c_prev, W_x, W_h, gates, tanh_C, kernel = cache
    xp, dtype = _xp(dH), dH.dtype
    N, Hn = h_prev.shape
    dA = _empty(xp, (N, 4 * Hn), dtype)
    dh_prev, dc_prev, dx = _empty(xp, (N, Hn), dtype), _empty(xp, (N, Hn), dtype), _empty(xp, x.shape, dtype)
    launch_backward(kernel, dH, None, dC, gates, tanh_C, c_prev, W_h, W_x, dA, dc_prev, dh_prev, dx)
    # forward: A = X W_x + H_prev W_h + b  ->  dW_x = Xᵀ dA, dW_h = H_prevᵀ dA, db = Σ_n dA
    return dx, dh_prev, dc_prev, x.T @ dA, h_prev.T @ dA, dA.sum(axis=0)


# ------------------------------------------------------------------------------------------------ sequence
class GPUSequenceCache(NamedTuple):
    x: object                 # (T, N, D)
    W_x: object               # (D, 4H)
    W_h: object               # (H, 4H)
    Hs: object                # (T+1, N, H)  H_0 .. H_T
    Cs: object                # (T+1, N, H)  C_0 .. C_T
    gates: object             # (T, N, 4H)   [ I | F | C_tilde | O ] of every step
    tanh_C: object            # (T, N, H)
    mask: Optional[object]    # (T, N, 1) of 0/1 in the data dtype, or None
    kernel: int


def sequence_forward(x, h0, c0, W_x, W_h, b, mask=None, kernel=DEFAULT_KERNEL):
    """sequence.sequence_forward on the GPU. x : (T, N, D), h0, c0 : (N, H), W_x : (D, 4H), W_h : (H, 4H),
    b : (4H,), mask : (T, N) booleans (NumPy or CuPy) or None -> Y (T, N, H), h_T, c_T, cache."""
    where = "npylstm.gpu.sequence_forward"
    kernel = check_kernel(where, kernel)
    args = dict(x=x, h0=h0, c0=c0, W_x=W_x, W_h=W_h, b=b)
    _check_on_gpu(where, args)
    _check_arrays(where, args, dict(x=(None, None, None), h0=(None, None), c0=(None, None),
                                    W_x=(None, None), W_h=(None, None), b=(None,)))           # ranks first
    (T, N, D), Hn = x.shape, W_h.shape[0]
    _check_arrays(where, args, dict(x=(T, N, D), h0=(N, Hn), c0=(N, Hn), W_x=(D, 4 * Hn), W_h=(Hn, 4 * Hn),
                                    b=(4 * Hn,)))
    if mask is not None:
        if mask.dtype != bool or tuple(mask.shape) != (T, N):
            raise ValueError(f"{where}: mask must be (T, N) = ({T}, {N}) booleans, got {mask.dtype} {tuple(mask.shape)}")
    return _sequence_forward(x, h0, c0, W_x, W_h, b, mask, kernel)


def _sequence_forward(x, h0, c0, W_x, W_h, b, mask, kernel):
    xp, dtype = _xp(x), x.dtype
    T, N, D = x.shape
    Hn = W_h.shape[0]
    Ax = (x.reshape(T * N, D) @ W_x).reshape(T, N, 4 * Hn)     # hoisted input product, one GEMM
    Ax += b
    Hs, Cs = _empty(xp, (T + 1, N, Hn), dtype), _empty(xp, (T + 1, N, Hn), dtype)
    Hs[0] = h0
    Cs[0] = c0
    gates, tanh_C = _empty(xp, (T, N, 4 * Hn), dtype), _empty(xp, (T, N, Hn), dtype)
    m = keep = None
    if mask is not None:
        mask = xp.asarray(mask).reshape(T, N, 1)
        m, keep = mask.astype(dtype), ~mask
    for t in range(T):
        launch_forward(kernel, Ax[t], None, None, None, Hs[t], W_h, Cs[t], gates[t], Cs[t + 1], tanh_C[t], Hs[t + 1])
        if keep is not None:                                    # masked rows keep (H, C) of the step before
            xp.copyto(Hs[t + 1], Hs[t], where=keep[t])
            xp.copyto(Cs[t + 1], Cs[t], where=keep[t])
    cache = GPUSequenceCache(x, W_x, W_h, Hs, Cs, gates, tanh_C, m, kernel)
    return Hs[1:], Hs[T].copy(), Cs[T].copy(), cache


def sequence_backward(dY, dh_T, dc_T, cache):
    """sequence.sequence_backward on the GPU: dY (T, N, H), dh_T, dc_T (N, H)
    -> dx (T, N, D), dh0, dc0 (N, H), dW_x (D, 4H), dW_h (H, 4H), db (4H,)."""
    where = "npylstm.gpu.sequence_backward"
    if not isinstance(cache, GPUSequenceCache):
        raise ValueError(f"{where}: cache must be the GPUSequenceCache from npylstm.gpu.sequence_forward, "
                         f"got {type(cache).__name__}")
    _check_on_gpu(where, dict(dY=dY, dh_T=dh_T, dc_T=dc_T))
    T, N, Hn = cache.tanh_C.shape
    _check_arrays(where, dict(dY=dY, dh_T=dh_T, dc_T=dc_T, x=cache.x),
                  dict(dY=(T, N, Hn), dh_T=(N, Hn), dc_T=(N, Hn), x=(T, N, None)))
    return _sequence_backward(dY, dh_T, dc_T, cache)


def _sequence_backward(dY, dh_T, dc_T, cache):
    x, W_x, W_h, Hs, Cs, gates, tanh_C, m, kernel = cache
    xp, dtype = _xp(dY), dY.dtype
    T, N, D = x.shape
    Hn = W_h.shape[0]
    dA = _empty(xp, (T, N, 4 * Hn), dtype)                      # every step's dA, for the products after the loop
    dH = [xp.array(dh_T, dtype=dtype), _empty(xp, (N, Hn), dtype)]   # ping-pong: a step reads one, writes the other
    dC = [xp.array(dc_T, dtype=dtype), _empty(xp, (N, Hn), dtype)]
    cur = 0
    for t in range(T - 1, -1, -1):
        dh, dc, dy = dH[cur], dC[cur], dY[t]
        if m is not None:                                      # a masked step passes dH, dC through untouched
            dh = dh + dy                                       # dH_t = dY_t + dH coming back from t+1
            dh_through, dc_through = dh * (1 - m[t]), dc * (1 - m[t])
            dh, dc, dy = dh * m[t], dc * m[t], None
        launch_backward(kernel, dh, dy, dc, gates[t], tanh_C[t], Cs[t], W_h, None, dA[t], dC[1 - cur], dH[1 - cur], None)
        if m is not None:
            dH[1 - cur] += dh_through
            dC[1 - cur] += dc_through
        cur = 1 - cur
    # forward: A = X W_x + H_prev W_h + b, all steps at once  ->  one product each
    dA2 = dA.reshape(T * N, 4 * Hn)
    dW_x = x.reshape(T * N, D).T @ dA2
    dW_h = Hs[:T].reshape(T * N, Hn).T @ dA2
    db = dA2.sum(axis=0)
    dx = (dA2 @ W_x.T).reshape(T, N, D)
    return dx, dH[cur], dC[cur], dW_x, dW_h, db


class Backend(NamedTuple):
    """sequence.py's contract with the kernel version bound: what `LSTM(device="cuda")` calls."""
    kernel: int = DEFAULT_KERNEL

    # work: unused here; CuPy's memory pool already hands the same device buffers back call after call
    def sequence_forward(self, x, h0, c0, W_x, W_h, b, mask=None, work=None):
        return sequence_forward(x, h0, c0, W_x, W_h, b, mask, kernel=self.kernel)

    def sequence_backward(self, dY, dh_T, dc_T, cache, work=None):
        return sequence_backward(dY, dh_T, dc_T, cache)


# ------------------------------------------------------------------------------------------------ devices
DEVICES = ("cpu", "cuda")


def check_device(where, device):
    if device not in DEVICES:
        raise ValueError(f"{where}: device must be 'cpu' or 'cuda', got {device!r}")
    return device


def to_device(a, device):
    """`a` (NumPy or CuPy) as an array on `device` ('cpu': NumPy, 'cuda': CuPy); no copy when already there."""
    if device == "cpu":
        return a.get() if hasattr(a, "__cuda_array_interface__") else a
    return require_cuda("npylstm.gpu.to_device").asarray(a)
