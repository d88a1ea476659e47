"""The GPU backend: loads kernels/ through CuPy, runs the LSTM sequence forward/BPTT on CUDA arrays.

It implements the contract of sequence.py, so `LSTM(..., device="cuda")` is the same layer with another
backend (design.md §2: the GPU enters at a seam):

    sequence_forward(x, h0, c0, W_x, W_h, b, mask=None, kernel=None) -> Y, h_T, c_T, cache
    sequence_backward(dY, dh_T, dc_T, cache) -> dx, dh0, dc0, dW_x, dW_h, db
    step_forward(x, h_prev, c_prev, W_x, W_h, b, kernel=None) -> H, C, cache   (one cell step)
    step_backward(dH, dC, cache) -> dx, dh_prev, dc_prev, dW_x, dW_h, db

`kernel` picks a version (each file's header comment describes its versions): 1 fuses the pointwise part of
a step and leaves the products to cuBLAS, 2 does a whole step in one launch (kernels/lstm_kernels.cu), 3 does
the whole sequence in one cooperative launch each way (kernels/lstm_persistent.cu, npylstm/persistent.py;
sequences only, and only where persistent_plan says its slice of W_h fits on chip). None lets
choose_kernel pick by size: the one place the default lives.

What a sequence call launches on the GPU (kernels of kernels/, cuBLAS products, CuPy operations; the loops
make nothing else, and tests/test_launches.py counts every call through this code on the CPU):

    per time step    forward                 backward
    version 1        1 GEMM + 1 kernel       1 kernel + 1 GEMM        (A_h = H_prev W_h; dH_prev = dA W_hᵀ)
    version 2        1 kernel                1 kernel
    version 3        none: one cooperative launch for all T steps each way (persistent.forward / backward)

    once a call      forward: the hoisted input product X W_x (1 GEMM) and its bias (1 add); H_0, C_0 into
                     the state arrays (2 copies); h_T, c_T (2 copies); a mask to the device (1 copy).
                     backward: dW_x, dW_h, dX (3 GEMMs), db (1 sum); with a mask, version 1 also zeroes
                     its pass-through buffer (1 fill) and adds it to dh0 (1 add).

A GEMM is one cuBLAS call (which may itself run more than one kernel). A mask costs no launch per step:
the kernels read its row (0/1 in the data type) and keep the state of a masked row forward, pass its
gradients through backward. Every buffer is allocated once per call, before the loop (version 1's A_h is
one kept (N, 4H) buffer, written with out=); the loops only slice views and launch. A lone cell step:
version 1 forward 2 GEMMs + 1 add + 1 kernel, backward 1 kernel + 2 GEMMs (dH_prev, dX); version 2 one
kernel each way (it computes X W_x + b and dX itself); then dW_x, dW_h (2 GEMMs) and db (1 sum).

Kernels are looked up once per device, version and dtype (get_function caches them: a RawModule lookup
makes a new RawKernel and a driver call) and once per call in the launch code, never per step.

CuPy is imported only when a GPU function runs: a CPU-only install imports this module without it.
`require_cuda()` says what is missing (CuPy, a device or its driver, the NVRTC library) as a RuntimeError.

The loader reads kernels/ from a checkout (<repo>/kernels) or an installed wheel (npylstm/kernels/),
splices `#include "..."`d headers into the source with `#line` markers (CuPy's compile cache keys on the
source text only, so a header edit must change the source to rebuild), compiles float and double through
NVRTC with name_expressions (CuPy adds -ftz=true: float32 flushes denormals to zero; NPYLSTM_LINEINFO=1 adds
-lineinfo, so compute-sanitizer names the .cu line) and caches the module.
CuPy checks nothing about kernel arguments, so every public function validates dtype, contiguity and
shapes first, and sizes go to the kernels as np.int32: the kernels index with 32-bit int, and check_sizes
refuses (ValueError) sizes where an array one launch indexes would have 2^31 elements or more.
"""

import math
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from . import persistent

STEP_VERSIONS = (1, 2)               # kernels/lstm_kernels.cu: a step per launch (also a lone cell step)
KERNEL_VERSIONS = STEP_VERSIONS + (persistent.VERSION,)   # 3: the whole sequence, kernels/lstm_persistent.cu
DEFAULT_KERNEL = None                # None: choose_kernel(N, H) picks a version for each call's sizes
KERNEL_FILE = "lstm_kernels.cu"
KERNEL_NAMES = ("lstm_forward_kernel", "lstm_backward_kernel")  # + version number
TYPE_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
NAME_EXPRESSIONS = tuple(f"npylstm::{name}{v}<{t}>"
                         for v in STEP_VERSIONS for name in KERNEL_NAMES for t in TYPE_NAMES.values())
COMPILE_OPTIONS = ("--std=c++17",)   # CuPy appends -ftz=true and -arch=sm_XX for the device
LINEINFO_ENV = "NPYLSTM_LINEINFO"    # "1": compile with -lineinfo (compute-sanitizer reports then name the line)
THREADS1, TJ, TN = 256, 32, 8        # launch shapes: the constants of the same names in lstm_kernels.cu
NUM_GATES = 4
INDEX_LIMIT = 2 ** 31                # the kernels index with int: an array one launch indexes has fewer elements
MAX_GRID_Y = 65535                   # CUDA's limit on gridDim.y: version 2's ceil(N / TN) row tiles
SMALL_STEP = 2 ** 22                 # N·H² up to which choose_kernel takes a step as launch-bound (estimated)
PERSISTENT_MAX_N = 64                # batch sizes up to which choose_kernel takes version 3 where it fits (estimated)
NULL = np.uint64(0)                  # a null pointer argument: CuPy turns None into 0xffffffff (cupy#9046)
POISON = False                       # tests set True: every output buffer starts as NaN, so an unwritten one shows


# ------------------------------------------------------------------------------------------------ checks
def check_kernel(where, kernel):
    """The version gate, the one place versions are checked: `kernel` must be a known version number, or
    None (choose_kernel picks one per call, by size). Returns it as an int, or None."""
    if kernel is None:
        return None
    if isinstance(kernel, (bool, np.bool_)) or kernel not in KERNEL_VERSIONS:
        raise ValueError(f"{where}: kernel must be one of {', '.join(map(str, KERNEL_VERSIONS))} "
                         f"(or None: chosen by size), got {kernel!r}")
    return int(kernel)


def choose_kernel(N, H, dtype=None, sequence=False):
    """The version a call runs when none is given (kernel=None): the one place the default lives.

    A whole sequence (sequence=True, with its dtype) runs version 3 where persistent.persistent_plan(N, H, dtype)
    fits and N <= PERSISTENT_MAX_N. Also reasoning, not a measurement: per SM and step, one grid barrier
    (~1.1 µs measured on an H100), the staged rows from L2, the product at one shared-memory wavefront per
    4 + R vector loads, and the gate math count to ~2-3.5 µs a forward step at N <= 8, H in {512, 1024}, and
    ~10-20 µs at N = 64, against cuDNN's 15-45 µs and a launch per step (>= 6 µs) for versions 1 and 2.
    Past N = 64 the rows are staged in more passes and cuBLAS's share of the work grows: left to 1 and 2
    until `npylstm bench --sequence` has timed them.

    Today's rule is reasoning, not a measurement: no GPU run has timed the versions yet. A step's product
    H_prev W_h is 4·N·H² multiply-adds. While that is small the step is bound by launches (~6 µs each from
    Python, measured on an H100, design.md §6), and version 2 makes one launch per step each way where
    version 1 makes two. When it is large, version 1's cuBLAS product should win over version 2's plain
    tiled FMA loop (no register blocking, bound by shared-memory loads; estimated at a sixth of cuBLAS's
    FP32 rate). With those estimates the two meet near N·H² = 2^22 (N ≈ 256 at H = 128, 16 at H = 512,
    4 at H = 1024). `npylstm bench --sequence` on a GPU times both versions: replace this rule by its
    measured table here.
    """
    if sequence and N <= PERSISTENT_MAX_N and persistent.persistent_plan(N, H, dtype).fits:
        return persistent.VERSION
    return 2 if N * H * H <= SMALL_STEP else 1


def resolve_kernel(where, kernel, N, H, dtype=None, sequence=False):
    """check_kernel, then None -> choose_kernel. Version 3 is refused (ValueError, with the plan's reason) for a
    lone step and where persistent_plan(N, H, dtype) does not fit."""
    kernel = check_kernel(where, kernel)
    if kernel is None:
        return choose_kernel(N, H, dtype, sequence=True) if sequence else choose_kernel(N, H)
    if kernel == persistent.VERSION:
        if not sequence:
            raise ValueError(f"{where}: kernel 3 runs whole sequences only (sequence_forward); a step takes "
                             f"{' or '.join(map(str, STEP_VERSIONS))}")
        plan = persistent.persistent_plan(N, H, dtype)
        if not plan.fits:
            raise ValueError(f"{where}: {plan.reason}")
    return kernel


def check_sizes(where, N, D, H, kernel, gates=NUM_GATES):
    """Refuse sizes the kernels cannot run: every size at least 1; every array one launch indexes -- a
    step's (N, gates·H) rows, W_h (H, gates·H), W_x (D, gates·H), a step's x (N, D) -- under 2^31 elements
    (32-bit int indices); version 2's row tiles within CUDA's grid limit. (Larger sizes would need 64-bit
    index arithmetic, which costs registers in every kernel; they are refused instead, clearly.)"""
    for name, v in (("N", N), ("D", D), ("H", H)):
        if v < 1:
            raise ValueError(f"{where}: {name} must be at least 1, got {v}")
    G = gates
    for what, count in ((f"a step's gates N·{G}H", N * G * H), (f"W_h H·{G}H", H * G * H),
                        (f"W_x D·{G}H", D * G * H), ("a step's x N·D", N * D)):
        if count >= INDEX_LIMIT:
            raise ValueError(f"{where}: {what} = {count} elements; the kernels index with 32-bit int and take "
                             f"arrays of fewer than 2^31 elements")
    if kernel == 2 and -(-N // TN) > MAX_GRID_Y:
        raise ValueError(f"{where}: kernel 2 takes N up to {MAX_GRID_Y * TN} ({MAX_GRID_Y} row tiles of {TN}), "
                         f"got N = {N}; use kernel=1")


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
    except Exception as e:  # no driver, a driver too old, or the driver finds no device
        raise RuntimeError(f"{where}: no usable CUDA device: {_device_error(cupy, e)}") from e
    if count < 1:
        raise RuntimeError(f"{where}: no usable CUDA device: the CUDA driver reports 0 devices")
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as e:
        raise RuntimeError(f"{where}: the NVRTC library is missing, so the kernels cannot be compiled ({e}); "
                           f"install it with: pip install 'nvidia-cuda-nvrtc>=13,<14' (or the CUDA toolkit)") from e
    _verified = cupy
    return cupy


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}"


def _device_error(cupy, error):
    """What getDeviceCount's error means. Without any NVIDIA driver the CUDA runtime says "driver version is
    insufficient"; the driver's own version (0 when there is none) tells that from a driver too old."""
    try:
        driver = cupy.cuda.runtime.driverGetVersion()
    except Exception:
        driver = None
    if driver == 0:
        return (f"no NVIDIA driver is loaded on this machine (no GPU, or its driver is not installed); "
                f"the CUDA runtime says: {error}")
    if driver and "insufficient" in str(error).lower():
        try:
            runtime = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
        except Exception:
            runtime = "?"
        return (f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, older than the CUDA {runtime} runtime "
                f"this CuPy uses: update the driver or install the CuPy for your CUDA ({error})")
    return f"CuPy is installed but the CUDA runtime says: {error}"


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


_modules = {}    # (device id, compile options) -> cupy.RawModule
_functions = {}  # (device id, compile options, full name) -> the module's kernel


def compile_options():
    """The loader's NVRTC options: COMPILE_OPTIONS, plus -lineinfo when NPYLSTM_LINEINFO=1."""
    return COMPILE_OPTIONS + (("-lineinfo",) if os.environ.get(LINEINFO_ENV) == "1" else ())


def compiled_module(where, modules, kernel_file, name_expressions):
    """The RawModule of kernels/`kernel_file` for the current device and compile options, made once and kept
    in `modules`; returns (key, module). gpu.py and gru_gpu.py each keep their own dicts."""
    cupy = require_cuda(where)
    key = (cupy.cuda.runtime.getDevice(), compile_options())
    if key not in modules:
        modules[key] = cupy.RawModule(code=load_source(kernel_file), options=key[1], name_expressions=name_expressions)
    return key, modules[key]


def compiled_function(where, modules, functions, kernel_file, name_expressions, full_name):
    """Kernel `full_name` ('npylstm::name<T>') of that module, looked up once and kept in `functions`
    (RawModule.get_function makes a new RawKernel and a driver lookup at every call)."""
    key, module = compiled_module(where, modules, kernel_file, name_expressions)
    f = functions.get(key + (full_name,))
    if f is None:
        f = functions[key + (full_name,)] = module.get_function(full_name)
    return f


def get_module():
    """The compiled module for the current device (compiled once per process, device and options, then cached)."""
    return compiled_module("npylstm.gpu", _modules, KERNEL_FILE, NAME_EXPRESSIONS)[1]


def get_function(name, version, dtype):
    """Kernel `name``version`<dtype> for the current device, looked up once and cached; the launch code
    asks once a call, never per step."""
    return compiled_function("npylstm.gpu", _modules, _functions, KERNEL_FILE, NAME_EXPRESSIONS,
                             f"npylstm::{name}{version}<{TYPE_NAMES[np.dtype(dtype)]}>")


# ------------------------------------------------------------------------------------------------ launches
# The seam between Python and the kernels. A dispatcher takes the version and what a call fixes (weights,
# batch size), looks the kernel up, computes the launch shape and allocates the version's own buffers once,
# and returns a step function that makes only that version's launches. A version that owns a whole
# sequence would get its own branch in _sequence_forward / _sequence_backward instead.
def _arg(a):
    """A kernel argument that may be null."""
    return NULL if a is None else a


def _blocks1(count):
    """Version 1's grid: one thread per element, THREADS1 a block."""
    return (max(1, math.ceil(count / THREADS1)),)


def forward_step(kernel, W_h, N, lone=None):
    """The forward dispatcher: a step of version `kernel` for batch size N and weights W_h (H, 4H).

    Returns step(Ax, mask, H_prev, C_prev, gates, C, tanh_C, H_out): Ax (N, 4H) = X W_x + b of the step,
    mask (N,) 0/1 in the data dtype or None, H_prev, C_prev (N, H); writes gates (N, 4H) and C, tanh_C,
    H_out (N, H), which must not alias H_prev, C_prev.
    lone : (x (N, D), W_x (D, 4H), b (4H,)) for a lone cell step, whose Ax is then None: version 1 forms
    X W_x + b with cuBLAS first, version 2 inside its kernel.
    """
    xp, dtype, Hn = _xp(W_h), W_h.dtype, W_h.shape[0]
    kernel = resolve_kernel("npylstm.gpu.forward_step", kernel, N, Hn)
    if kernel == 1:
        f, grid, sizes = get_function("lstm_forward_kernel", 1, dtype), _blocks1(N * Hn), (np.int32(N), np.int32(Hn))
        Ah = _empty(xp, (N, 4 * Hn), dtype)                 # A_h = H_prev W_h, rewritten every step
        Ax_lone = None if lone is None else _empty(xp, (N, 4 * Hn), dtype)

        def step(Ax, mask, H_prev, C_prev, gates, C, tanh_C, H_out):
            if lone is not None:
                x, W_x, b = lone
                Ax = Ax_lone
                xp.matmul(x, W_x, out=Ax)                   # A_x = X W_x + b
                xp.add(Ax, b, out=Ax)
            xp.matmul(H_prev, W_h, out=Ah)                  # cuBLAS
            f(grid, (THREADS1,), (Ax, Ah, _arg(mask), H_prev, C_prev, gates, C, tanh_C, H_out, *sizes))
        return step
    if kernel == 2:
        f = get_function("lstm_forward_kernel", 2, dtype)
        x, W_x, b = (NULL, NULL, NULL) if lone is None else lone
        D = 0 if lone is None else x.shape[1]
        grid, sizes = (math.ceil(Hn / TJ), math.ceil(N / TN)), (np.int32(N), np.int32(D), np.int32(Hn))

        def step(Ax, mask, H_prev, C_prev, gates, C, tanh_C, H_out):
            f(grid, (TJ, TN), (_arg(Ax), x, W_x, b, _arg(mask), H_prev, W_h, C_prev, gates, C, tanh_C, H_out, *sizes))
        return step
    raise AssertionError(f"version {kernel} passed check_kernel but has no forward branch")


def backward_step(kernel, W_h, N, masked=False, W_x=None):
    """The backward dispatcher: returns (step, finish) for version `kernel`, batch size N, weights W_h (H, 4H).

    step(dH, dY, dC, mask, gates, tanh_C, C_prev, dA, dC_prev, dH_prev, dx=None): dH_t = dH + dY (dY may be
    None); writes dA (N, 4H), dC_prev, dH_prev (N, H) and, with W_x (D, 4H) given (a lone step), dx (N, D).
    dH_prev, dC_prev must be other buffers than dH, dC: the caller ping-pongs. mask as in forward_step.
    finish(dH) -> dh0: the gradient on H_0 from the last step's dH_prev.
    masked : whether the steps come with a mask. Version 1 then keeps the passed-through part of dH_prev
    (dH_t on masked rows; the product dA W_hᵀ is 0 there) in a buffer of its own, which the next step's
    kernel adds to its dH, and finish adds the last one.
    """
    xp, dtype, Hn = _xp(W_h), W_h.dtype, W_h.shape[0]
    kernel = resolve_kernel("npylstm.gpu.backward_step", kernel, N, Hn)
    W_hT, W_xT = W_h.T, None if W_x is None else W_x.T
    if kernel == 1:
        f, grid, sizes = get_function("lstm_backward_kernel", 1, dtype), _blocks1(N * Hn), (np.int32(N), np.int32(Hn))
        direct = xp.zeros((N, Hn), dtype) if masked else None   # read, then rewritten, by every step

        def step(dH, dY, dC, mask, gates, tanh_C, C_prev, dA, dC_prev, dH_prev, dx=None):
            f(grid, (THREADS1,), (dH, _arg(direct), _arg(dY), dC, _arg(mask), gates, tanh_C, C_prev, dA, dC_prev,
                                  _arg(direct), *sizes))
            xp.matmul(dA, W_hT, out=dH_prev)                # forward: A = ... + H_prev W_h  ->  dH_prev = dA W_hᵀ
            if W_xT is not None:
                xp.matmul(dA, W_xT, out=dx)                 # forward: A = X W_x + ...  ->  dX = dA W_xᵀ

        def finish(dH):
            return dH if direct is None else dH + direct
        return step, finish
    if kernel == 2:
        f = get_function("lstm_backward_kernel", 2, dtype)
        D = 0 if W_x is None else W_x.shape[0]
        grid = (math.ceil(Hn / TJ) + math.ceil(D / TJ), math.ceil(N / TN))
        sizes = (np.int32(N), np.int32(D), np.int32(Hn))

        def step(dH, dY, dC, mask, gates, tanh_C, C_prev, dA, dC_prev, dH_prev, dx=None):
            f(grid, (TJ, TN), (dH, _arg(dY), dC, _arg(mask), gates, tanh_C, C_prev, W_h, _arg(W_x), dA, dC_prev,
                               dH_prev, _arg(dx), *sizes))
        return step, (lambda dH: dH)
    raise AssertionError(f"version {kernel} passed check_kernel but has no backward branch")


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
    W_x : (D, 4H), W_h : (H, 4H), b : (4H,) -> H, C : (N, H), cache. kernel : a version, or None (choose_kernel)."""
    where = "npylstm.gpu.step_forward"
    check_kernel(where, kernel)
    args = dict(x=x, h_prev=h_prev, c_prev=c_prev, W_x=W_x, W_h=W_h, b=b)
    _check_on_gpu(where, args)
    dtype = _check_arrays(where, args, dict(x=(None, None), h_prev=(None, None), c_prev=(None, None),
                                            W_x=(None, None), W_h=(None, None), b=(None,)))   # ranks first
    (N, D), Hn = x.shape, W_h.shape[0]
    _check_arrays(where, args, dict(x=(N, D), h_prev=(N, Hn), c_prev=(N, Hn), W_x=(D, 4 * Hn),
                                    W_h=(Hn, 4 * Hn), b=(4 * Hn,)))
    kernel = resolve_kernel(where, kernel, N, Hn)
    check_sizes(where, N, D, Hn, kernel)
    return _step_forward(x, h_prev, c_prev, W_x, W_h, b, kernel, dtype)


def _step_forward(x, h_prev, c_prev, W_x, W_h, b, kernel, dtype):
    xp = _xp(x)
    N, Hn = h_prev.shape
    gates, tanh_C = _empty(xp, (N, 4 * Hn), dtype), _empty(xp, (N, Hn), dtype)
    C, H = _empty(xp, (N, Hn), dtype), _empty(xp, (N, Hn), dtype)
    forward_step(kernel, W_h, N, lone=(x, W_x, b))(None, None, h_prev, c_prev, gates, C, tanh_C, H)
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
    step, _ = backward_step(kernel, W_h, N, W_x=W_x)
    step(dH, None, dC, None, gates, tanh_C, c_prev, dA, dc_prev, dh_prev, dx)
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
    mask: Optional[object]    # (T, N) of 0/1 in the data dtype (the kernels' mask rows), or None
    kernel: int


def check_mask(where, mask, T, N):
    """mask : None or (T, N) booleans, NumPy or CuPy."""
    if mask is not None and (getattr(mask, "dtype", None) != bool or tuple(mask.shape) != (T, N)):
        raise ValueError(f"{where}: mask must be (T, N) = ({T}, {N}) booleans, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")


def mask_rows(xp, mask, dtype):
    """The kernels' mask: (T, N) booleans -> (T, N) 0/1 of the data dtype on the device (one copy), or None."""
    return None if mask is None else xp.array(mask, dtype=dtype, order="C")


def sequence_forward(x, h0, c0, W_x, W_h, b, mask=None, kernel=DEFAULT_KERNEL):
    """sequence.sequence_forward on the GPU. x : (T, N, D), h0, c0 : (N, H), W_x : (D, 4H), W_h : (H, 4H),
    b : (4H,), mask : (T, N) booleans (NumPy or CuPy) or None -> Y (T, N, H), h_T, c_T, cache.
    kernel : a version, or None (choose_kernel(N, H))."""
    where = "npylstm.gpu.sequence_forward"
    check_kernel(where, kernel)
    args = dict(x=x, h0=h0, c0=c0, W_x=W_x, W_h=W_h, b=b)
    _check_on_gpu(where, args)
    _check_arrays(where, args, dict(x=(None, None, None), h0=(None, None), c0=(None, None),
                                    W_x=(None, None), W_h=(None, None), b=(None,)))           # ranks first
    (T, N, D), Hn = x.shape, W_h.shape[0]
    _check_arrays(where, args, dict(x=(T, N, D), h0=(N, Hn), c0=(N, Hn), W_x=(D, 4 * Hn), W_h=(Hn, 4 * Hn),
                                    b=(4 * Hn,)))
    if T < 1:
        raise ValueError(f"{where}: x has no time steps (T = 0)")
    check_mask(where, mask, T, N)
    kernel = resolve_kernel(where, kernel, N, Hn, x.dtype, sequence=True)
    check_sizes(where, N, D, Hn, kernel)
    return _sequence_forward(x, h0, c0, W_x, W_h, b, mask, kernel)


def _sequence_forward(x, h0, c0, W_x, W_h, b, mask, kernel):
    xp, dtype = _xp(x), x.dtype
    T, N, D = x.shape
    Hn = W_h.shape[0]
    Ax = _empty(xp, (T, N, 4 * Hn), dtype)
    xp.matmul(x.reshape(T * N, D), W_x, out=Ax.reshape(T * N, 4 * Hn))   # hoisted input product, one GEMM
    xp.add(Ax, b, out=Ax)
    Hs, Cs = _empty(xp, (T + 1, N, Hn), dtype), _empty(xp, (T + 1, N, Hn), dtype)
    Hs[0] = h0
    Cs[0] = c0
    gates, tanh_C = _empty(xp, (T, N, 4 * Hn), dtype), _empty(xp, (T, N, Hn), dtype)
    m = mask_rows(xp, mask, dtype)
    if kernel == persistent.VERSION:                           # all T steps in one cooperative launch
        persistent.forward(persistent.persistent_plan(N, Hn, dtype), Ax, W_h, m, Hs, Cs, gates, tanh_C)
    else:
        masks = [None] * T if m is None else m
        step = forward_step(kernel, W_h, N)
        for t in range(T):
            step(Ax[t], masks[t], Hs[t], Cs[t], gates[t], Cs[t + 1], tanh_C[t], Hs[t + 1])
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
    if kernel == persistent.VERSION:                           # all T steps in one cooperative launch; dh, dc
        dh, dc = xp.array(dh_T, dtype=dtype), xp.array(dc_T, dtype=dtype)   # hold dh_T, dc_T in, dh0, dc0 out
        persistent.backward(persistent.persistent_plan(N, Hn, dtype), dY, W_h, m, Cs, gates, tanh_C, dA, dh, dc)
        finish = None
    else:
        dHs = (_empty(xp, (N, Hn), dtype), _empty(xp, (N, Hn), dtype))   # ping-pong: a step reads one, writes
        dCs = (_empty(xp, (N, Hn), dtype), _empty(xp, (N, Hn), dtype))   # the other; the first reads dh_T, dc_T
        masks = [None] * T if m is None else m
        step, finish = backward_step(kernel, W_h, N, masked=m is not None)
        dh, dc = dh_T, dc_T
        for i, t in enumerate(range(T - 1, -1, -1)):
            step(dh, dY[t], dc, masks[t], gates[t], tanh_C[t], Cs[t], dA[t], dCs[i % 2], dHs[i % 2])
            dh, dc = dHs[i % 2], dCs[i % 2]
    # forward: A = X W_x + H_prev W_h + b, all steps at once  ->  one product each
    dA2 = dA.reshape(T * N, 4 * Hn)
    dW_x = x.reshape(T * N, D).T @ dA2
    dW_h = Hs[:T].reshape(T * N, Hn).T @ dA2
    db = dA2.sum(axis=0)
    dx = (dA2 @ W_x.T).reshape(T, N, D)
    return dx, dh if finish is None else finish(dh), dc, dW_x, dW_h, db


class Backend(NamedTuple):
    """sequence.py's contract with the kernel version bound: what `LSTM(device="cuda")` calls.
    kernel None: choose_kernel(N, H) picks per call."""
    kernel: Optional[int] = DEFAULT_KERNEL

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
