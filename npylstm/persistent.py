"""Kernel version 3: the LSTM sequence in one cooperative launch per direction (kernels/lstm_persistent.cu).

Each block of a grid sized by the device (SM count x resident blocks per SM) owns U = ceil(H / blocks)
hidden units and keeps its slice of W_h in shared memory for the whole sequence; the blocks meet once a
step at a grid-wide barrier. npylstm/gpu.py calls it for `kernel=3` (and for kernel=None where
choose_kernel picks it); this module plans the launch and makes it:

    persistent_plan(N, H, dtype) -> Plan   (plan.fits, or plan.reason why the size cannot run here)
    forward(plan, Ax, W_h, mask, Hs, Cs, gates, tanh_C)        Ax (T, N, 4H) = X W_x + b, hoisted
    backward(plan, dY, W_h, mask, Cs, gates, tanh_C, dA, dH, dC)

Shared memory of a block, in elements of the data type (V = 16 bytes / itemsize, R rows staged per pass,
S = threads / C slices of the reduction):

    forward   C = 4U columns, K = H:    (C + R) ceil(K / V) V + R C S
    backward  C = U columns,  K = 4H:   (C + R) ceil(K / V) V + R C S

A size fits when both directions fit in the device's opt-in shared memory per block with R = 1; R then
grows to min(N, 8) rounded up to a power of two while it still fits (more rows reuse each weight loaded
from shared memory more often). A size that does not fit never launches: the caller falls back to
version 1 or 2, or, for kernel=3, raises ValueError with plan.reason.
"""

import glob
import math
import os
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

VERSION = 3
KERNEL_VERSIONS = (VERSION,)
KERNEL_FILE = "lstm_persistent.cu"
KERNEL_NAMES = ("lstm_forward_kernel", "lstm_backward_kernel")   # + "3"
TYPE_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
NAME_EXPRESSIONS = tuple(f"npylstm::{name}{VERSION}<{t}>" for name in KERNEL_NAMES for t in TYPE_NAMES.values())
VEC_BYTES3 = 16        # the constants of the same names in lstm_persistent.cu
MAX_ROWS3 = 8
MAX_THREADS3 = 256
NUM_GATES = 4
# Resident blocks per SM the grid uses, at most: one block per SM keeps the whole SM's shared memory for
# one slice and stages each step's rows once per SM. A design choice a GPU measurement must confirm.
BLOCKS_PER_SM = 1
# Tests set a Limits here (a small emulated device); None: the current CUDA device's attributes.
LIMITS = None


class Limits(NamedTuple):
    """What a plan needs of a device. blocks_per_sm: resident blocks per SM, or None to ask CUDA's
    occupancy API for the compiled kernel at the planned block size and shared memory."""
    sms: int                        # streaming multiprocessors
    shared_optin: int               # shared memory a block may have, in bytes, with the opt-in attribute
    cooperative: bool = True        # whether the device takes cooperative launches
    blocks_per_sm: Optional[int] = None
    max_threads: int = MAX_THREADS3


class Shape(NamedTuple):
    """One direction's launch: threads = columns x slices per block, rows R staged per pass, shared bytes."""
    threads: int
    rows: int
    shared: int


class Plan(NamedTuple):
    fits: bool
    reason: str            # why it does not fit ('' when it does)
    N: int
    H: int
    dtype: np.dtype
    blocks: int = 0        # ceil(H / units)
    units: int = 0         # U, hidden units per block
    forward: Optional[Shape] = None
    backward: Optional[Shape] = None


# ------------------------------------------------------------------------------------------------ plan
def _shape(columns, K, N, itemsize, limits):
    """Shape of a block multiplying staged rows (·, K) by a slice (K, columns), or None if even R = 1
    is over the device's shared memory. R grows with N while it fits (see the module docstring)."""
    V = VEC_BYTES3 // itemsize
    Kv = math.ceil(K / V) * V
    threads = columns * max(1, limits.max_threads // columns)

    def shared(R):
        return ((columns + R) * Kv + R * threads) * itemsize

    R = 1
    while R < min(N, MAX_ROWS3) and shared(2 * R) <= limits.shared_optin:
        R *= 2
    return Shape(threads, R, shared(R)) if shared(R) <= limits.shared_optin else None


def _shapes(N, H, units, itemsize, limits):
    return (_shape(NUM_GATES * units, H, N, itemsize, limits),    # forward: the 4U columns of W_h, K = H
            _shape(units, NUM_GATES * H, N, itemsize, limits))    # backward: U columns of W_hᵀ, K = 4H


def plan_for(N, H, dtype, limits, occupancy=None):
    """The plan on a device described by `limits`. occupancy(direction, shape) -> resident blocks per SM
    (CUDA's occupancy API) is asked when limits.blocks_per_sm is None."""
    dtype = np.dtype(dtype)
    refuse = lambda why: Plan(False, f"kernel 3 cannot run N = {N}, H = {H}, {dtype.name}: {why}", N, H, dtype)
    if dtype not in TYPE_NAMES:
        return refuse("it takes float32 or float64")
    if N < 1 or H < 1:
        return refuse("N and H must be at least 1")
    if not limits.cooperative:
        return refuse("this device does not take cooperative launches")
    units = math.ceil(H / limits.sms)                      # one block per SM first
    if NUM_GATES * units > limits.max_threads:
        return refuse(f"a block would own {units} hidden units, {NUM_GATES * units} columns of W_h, over "
                      f"{limits.max_threads} threads a block")
    shapes = _shapes(N, H, units, dtype.itemsize, limits)
    if None in shapes:
        need = max(_shape(c, k, 1, dtype.itemsize, limits._replace(shared_optin=1 << 62)).shared
                   for c, k in ((NUM_GATES * units, H), (units, NUM_GATES * H)))
        return refuse(f"the slice of W_h of {units} hidden units per block ({limits.sms} blocks) needs {need} bytes "
                      f"of shared memory, over the {limits.shared_optin} bytes a block can have on this device "
                      f"(W_h is {NUM_GATES * H * H * dtype.itemsize} bytes; the grid holds "
                      f"{limits.sms * limits.shared_optin})")
    per_sm = limits.blocks_per_sm
    if per_sm is None:
        per_sm = min(occupancy(d, s) for d, s in zip(("forward", "backward"), shapes))
    if per_sm < 1:
        return refuse("the occupancy API fits no block of this shape on an SM")
    blocks_max = limits.sms * min(per_sm, BLOCKS_PER_SM)   # resident at once: a cooperative launch needs all
    units = math.ceil(H / blocks_max)
    forward_shape, backward_shape = _shapes(N, H, units, dtype.itemsize, limits)   # smaller slices still fit
    return Plan(True, "", N, H, dtype, math.ceil(H / units), units, forward_shape, backward_shape)


_plans = {}   # (device, N, H, dtype) -> Plan


def persistent_plan(N, H, dtype):
    """How kernel 3 would run N rows of H hidden units in `dtype` on the current device (or on LIMITS),
    or why it cannot (plan.fits False, plan.reason). Needs CuPy and a device unless LIMITS is set."""
    if LIMITS is not None:
        return plan_for(N, H, dtype, LIMITS)
    cupy = _cupy()
    device = cupy.cuda.runtime.getDevice()
    key = (device, N, H, np.dtype(dtype))
    if key not in _plans:
        _plans[key] = _device_plan(cupy, device, N, H, dtype)
    return _plans[key]


_unavailable = {}   # device -> why kernel 3 cannot run there at all (asked once, not at every new size)


def _device_plan(cupy, device, N, H, dtype):
    if device in _unavailable:
        return Plan(False, _unavailable[device], N, H, np.dtype(dtype))
    try:
        rt = cupy.cuda.runtime
        limits = Limits(sms=rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, device),
                        shared_optin=rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                        cooperative=bool(rt.deviceGetAttribute(rt.cudaDevAttrCooperativeLaunch, device)))
        functions = {d: get_function(d, dtype) for d in ("forward", "backward")}
    except Exception as e:   # e.g. NVRTC without cooperative_groups.h (no CUDA headers on this machine)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _unavailable[device] = (f"kernel 3 cannot run here: the device query or the module's compilation failed "
                                f"({type(e).__name__}: {first})")
        return Plan(False, _unavailable[device], N, H, np.dtype(dtype))

    def occupancy(direction, shape):
        f = functions[direction]
        _allow_shared(f, shape.shared)
        return cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(f.kernel.ptr, shape.threads, shape.shared)
    return plan_for(N, H, dtype, limits, occupancy)


# ------------------------------------------------------------------------------------------------ loader
_modules = {}     # (device, options) -> RawModule
_functions = {}   # (device, options, name) -> RawKernel


def _cupy():
    from . import gpu
    return gpu.require_cuda("npylstm.persistent")


def cooperative_include():
    """("-I<dir>", ...) for a CUDA include directory holding cooperative_groups.h (and its cccl/ directory,
    whose cuda/std headers it includes, when the toolkit has one), or () if none is found.

    NVRTC has no built-in copy of it; CuPy adds the include directory of the CUDA it finds, which for a
    pip-installed NVRTC wheel holds only nvrtc.h. Looked for in $CUDA_PATH, $CUDA_HOME, nvcc's toolkit,
    /usr/local/cuda*, and the nvidia-* wheels."""
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    roots += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    try:
        import nvidia
        roots += [str(p) for base in nvidia.__path__ for p in sorted(Path(base).glob("*"))]
    except ImportError:
        pass
    for root in filter(None, roots):
        include = Path(root) / "include"
        if (include / "cooperative_groups.h").is_file():
            return (f"-I{include}",) + ((f"-I{include / 'cccl'}",) if (include / "cccl").is_dir() else ())
    return ()


def source():
    """The loader's spliced text of kernels/lstm_persistent.cu (what NVRTC compiles)."""
    from . import gpu
    return gpu.load_source(KERNEL_FILE)


def _options():
    """The loader's NVRTC options (with -lineinfo when asked: gpu.compile_options) and cooperative_include()."""
    from . import gpu
    return gpu.compile_options() + cooperative_include()


def get_function(direction, dtype):
    """lstm_{direction}_kernel3<T>, from a module of its own: CuPy launches every kernel of a module made
    with enable_cooperative_groups=True through cuLaunchCooperativeKernel. Compiled once per device."""
    cupy = _cupy()
    options = _options()
    key = (cupy.cuda.runtime.getDevice(), options)
    if key not in _modules:
        _modules[key] = cupy.RawModule(code=source(), options=options,
                                       name_expressions=NAME_EXPRESSIONS, enable_cooperative_groups=True)
    name = f"npylstm::lstm_{direction}_kernel{VERSION}<{TYPE_NAMES[np.dtype(dtype)]}>"
    if key + (name,) not in _functions:
        _functions[key + (name,)] = _modules[key].get_function(name)
    return _functions[key + (name,)]


def _allow_shared(f, shared):
    """Raise the kernel's dynamic shared memory limit to `shared` bytes when it is lower (over 48 KB needs it)."""
    if f.max_dynamic_shared_size_bytes < shared:
        f.max_dynamic_shared_size_bytes = shared


def _launch(direction, plan, shape, args, dtype):
    f = get_function(direction, dtype)
    _allow_shared(f, shape.shared)
    sizes = (np.int32(plan.N), np.int32(plan.H), np.int32(plan.units), np.int32(shape.rows))
    f((plan.blocks,), (shape.threads,), (*args, *sizes), shared_mem=shape.shared)


# ------------------------------------------------------------------------------------------------ launches
def forward(plan, Ax, W_h, mask, Hs, Cs, gates, tanh_C):
    """All T steps forward in one launch. Ax (T, N, 4H) = X W_x + b; W_h (H, 4H); mask (T, N) 0/1 in the data
    dtype, or None; Hs, Cs (T+1, N, H) with H_0, C_0 in row 0: fills H_1..H_T, C_1..C_T, gates (T, N, 4H),
    tanh_C (T, N, H). Arrays validated and contiguous (npylstm.gpu checks them)."""
    from .gpu import NULL
    steps = np.int32(Ax.shape[0])
    _launch("forward", plan, plan.forward,
            (Ax, W_h, NULL if mask is None else mask, Hs, Cs, gates, tanh_C, steps), Ax.dtype)


def backward(plan, dY, W_h, mask, Cs, gates, tanh_C, dA, dH, dC):
    """All T steps of BPTT in one launch: writes dA (T, N, 4H); dH, dC (N, H) hold dh_T, dc_T on entry and
    dh0, dc0 on return. dY (T, N, H); the rest as forward wrote them."""
    from .gpu import NULL
    steps = np.int32(dY.shape[0])
    _launch("backward", plan, plan.backward,
            (dY, W_h, NULL if mask is None else mask, Cs, gates, tanh_C, dA, dH, dC, steps), dY.dtype)
