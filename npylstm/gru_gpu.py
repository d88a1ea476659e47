"""The GRU's GPU backend: kernels/gru_kernels.cu through CuPy, with gru_sequence.py's contract.

    gru_sequence_forward(x, h0, W_x, W_h, b_x, b_h, reset_after=True, mask=None, kernel=DEFAULT_KERNEL)
        -> Y (T, N, H), h_T (N, H), cache
    gru_sequence_backward(dY, dh_T, cache) -> dx, dh0, dW_x, dW_h, db_x, db_h

so `GRU(..., device="cuda")` is the same layer with another backend (design.md §2). Everything else is
gpu.py's, reused: the loader (kernels/ from a checkout or the wheel, headers spliced with #line markers,
NVRTC with name_expressions, the module and kernel caches), require_cuda(), the argument and size checks,
POISON, the NULL pointer convention, the mask rows.

Version 1 (the only one): the pointwise part of a step is fused, the products are cuBLAS calls made by
CuPy (the .cu file's header comment describes each kernel). What a call launches on the GPU (the loops make
nothing else; tests/test_launches.py counts every call through this code on the CPU):

    per time step        forward                          backward
    reset_after=True     1 GEMM + 1 kernel                1 kernel + 1 GEMM
    reset_after=False    2 GEMMs + 2 kernels              2 kernels + 2 GEMMs
                         (H_prev W_h,rz; (R ⊙ H_prev) W_h,n sits between the two kernels; backward likewise)

    once a call          forward: X W_x (1 GEMM) and its bias (1 add; reset_after=False: b_x + b_h first,
                         1 add more, and W_h,rz, W_h,n made contiguous, 2 copies); H_0 into the state array
                         and h_T out of it (2 copies); a mask to the device (1 copy).
                         backward: dh0 = products + direct part (1 add); reset_after=True: dW_x, dW_h, dX
                         (3 GEMMs), db_x, db_h (2 sums); reset_after=False: the W_h blocks (2 copies),
                         [dA_rz | dA_n] side by side (1 copy), dW_x, the two blocks of dW_h, dX (4 GEMMs) and
                         their concatenation (1 copy), db_x (1 sum), db_h = db_x (1 copy).

A mask costs no launch per step: the kernels read its row, keep H of a masked row forward and pass dH_t
through backward (as the direct part of dH_prev, which the next step's kernel adds). Every buffer is
allocated once per call; kernels are looked up once per call (and cached per device, version and dtype).
"""

import math
from typing import NamedTuple, Optional

import numpy as np

from . import gpu

KERNEL_VERSIONS = (1,)
DEFAULT_KERNEL = 1
KERNEL_FILE = "gru_kernels.cu"
KERNEL_NAMES = ("gru_forward_kernel", "gru_backward_kernel",             # reset_after=True
                "gru_forward_rz_kernel", "gru_forward_n_kernel",        # reset_after=False, forward halves
                "gru_backward_n_kernel", "gru_backward_rz_kernel")      # reset_after=False, backward halves
NAME_EXPRESSIONS = tuple(f"npylstm::{name}{v}<{t}>"
                         for v in KERNEL_VERSIONS for name in KERNEL_NAMES for t in gpu.TYPE_NAMES.values())
THREADS1 = 256  # launch shape: the constant of the same name in gru_kernels.cu
NUM_GATES = 3


def check_kernel(where, kernel):
    """The dispatcher's gate: `kernel` must be a known GRU kernel version."""
    if isinstance(kernel, (bool, np.bool_)) or kernel not in KERNEL_VERSIONS:
        raise ValueError(f"{where}: kernel must be one of {', '.join(map(str, KERNEL_VERSIONS))} for the GRU, "
                         f"got {kernel!r}")
    return int(kernel)


_modules = {}    # (device id, compile options) -> cupy.RawModule
_functions = {}  # (device id, compile options, full name) -> the module's kernel


def get_module():
    """The compiled GRU module for the current device (compiled once per process, device and options, then cached)."""
    return gpu.compiled_module("npylstm.gru_gpu", _modules, KERNEL_FILE, NAME_EXPRESSIONS)[1]


def get_function(name, version, dtype):
    """Kernel `name``version`<dtype> for the current device, looked up once and cached."""
    return gpu.compiled_function("npylstm.gru_gpu", _modules, _functions, KERNEL_FILE, NAME_EXPRESSIONS,
                                 f"npylstm::{name}{version}<{gpu.TYPE_NAMES[np.dtype(dtype)]}>")


def _matmul(a, b, out):
    """out = a @ b (cuBLAS on CuPy arrays), written in place."""
    gpu._xp(a).matmul(a, b, out=out)


# ------------------------------------------------------------------------------------------------ launches
# The dispatchers, as in gpu.py: the kernels looked up, the launch shape fixed and the version's own buffers
# allocated once a call; the returned step makes only the version's launches.
def forward_step(kernel, reset_after, W_h, b_h, N):
    """Returns step(Ax, mask, H_prev, gates, A_hn, RH, H_out) of version `kernel` for batch size N, W_h (H, 3H),
    b_h (3H,): Ax (N, 3H) = X W_x + b_x of the step (reset_after=False: + b_h), mask (N,) 0/1 or None, H_prev
    (N, H); writes gates (N, 3H), H_out (N, H) (must not alias H_prev) and A_hn (N, H) (reset_after=True) or
    RH (N, H) (reset_after=False); the other one is None."""
    kernel = check_kernel("npylstm.gru_gpu.forward_step", kernel)
    xp, dtype, H = gpu._xp(W_h), W_h.dtype, W_h.shape[0]
    grid, block, sizes = (max(1, math.ceil(N * H / THREADS1)),), (THREADS1,), (np.int32(N), np.int32(H))
    if kernel == 1 and reset_after:
        f = get_function("gru_forward_kernel", 1, dtype)
        Ah = gpu._empty(xp, (N, 3 * H), dtype)

        def step(Ax, mask, H_prev, gates, A_hn, RH, H_out):
            _matmul(H_prev, W_h, Ah)                                         # A_h = H_prev W_h (+ b_h in the kernel)
            f(grid, block, (Ax, Ah, b_h, gpu._arg(mask), H_prev, gates, A_hn, H_out, *sizes))
        return step
    if kernel == 1:
        f_rz, f_n = get_function("gru_forward_rz_kernel", 1, dtype), get_function("gru_forward_n_kernel", 1, dtype)
        W_hrz, W_hn = xp.ascontiguousarray(W_h[:, :2 * H]), xp.ascontiguousarray(W_h[:, 2 * H:])  # (H, 2H), (H, H)
        Ah_rz, P = gpu._empty(xp, (N, 2 * H), dtype), gpu._empty(xp, (N, H), dtype)

        def step(Ax, mask, H_prev, gates, A_hn, RH, H_out):
            _matmul(H_prev, W_hrz, Ah_rz)                                    # H_prev W_h,rz
            f_rz(grid, block, (Ax, Ah_rz, H_prev, gates, RH, *sizes))
            _matmul(RH, W_hn, P)                                             # (R ⊙ H_prev) W_h,n
            f_n(grid, block, (Ax, P, gpu._arg(mask), H_prev, gates, H_out, *sizes))
        return step
    raise AssertionError(f"version {kernel} passed check_kernel but has no forward branch")


def backward_step(kernel, reset_after, W_h, N):
    """Returns step(dH, direct_in, dY, mask, gates, A_hn, H_prev, dA_a, dA_b, direct, dH_prev) of version
    `kernel`: dH_t = dH + direct_in + dY (direct_in, dY may be None); writes dA_a, dA_b -- dA_x, dA_h (N, 3H)
    (reset_after=True) or dA_rz (N, 2H), dA_n (N, H) (reset_after=False) --, the direct part of dH_prev into
    direct (may be direct_in itself) and the products' part into dH_prev (may be dH: read before written)."""
    kernel = check_kernel("npylstm.gru_gpu.backward_step", kernel)
    xp, dtype, H = gpu._xp(W_h), W_h.dtype, W_h.shape[0]
    grid, block, sizes = (max(1, math.ceil(N * H / THREADS1)),), (THREADS1,), (np.int32(N), np.int32(H))
    arg = gpu._arg
    if kernel == 1 and reset_after:
        f, W_hT = get_function("gru_backward_kernel", 1, dtype), W_h.T

        def step(dH, direct_in, dY, mask, gates, A_hn, H_prev, dA_x, dA_h, direct, dH_prev):
            f(grid, block, (dH, arg(direct_in), arg(dY), arg(mask), gates, A_hn, H_prev, dA_x, dA_h, direct, *sizes))
            _matmul(dA_h, W_hT, dH_prev)                 # forward: A_h = H_prev W_h + b_h  ->  dH_prev += dA_h W_hᵀ
        return step
    if kernel == 1:
        f_n, f_rz = get_function("gru_backward_n_kernel", 1, dtype), get_function("gru_backward_rz_kernel", 1, dtype)
        W_hrzT, W_hnT = xp.ascontiguousarray(W_h[:, :2 * H]).T, xp.ascontiguousarray(W_h[:, 2 * H:]).T
        dRH = gpu._empty(xp, (N, H), dtype)

        def step(dH, direct_in, dY, mask, gates, A_hn, H_prev, dA_rz, dA_n, direct, dH_prev):
            f_n(grid, block, (dH, arg(direct_in), arg(dY), arg(mask), gates, H_prev, dA_rz, dA_n, direct, *sizes))
            _matmul(dA_n, W_hnT, dRH)                    # forward: A_n = ... + RH W_h,n  ->  dRH = dA_n W_h,nᵀ
            f_rz(grid, block, (dRH, arg(mask), gates, H_prev, dA_rz, direct, *sizes))
            _matmul(dA_rz, W_hrzT, dH_prev)              # forward: A_rz = ... + H_prev W_h,rz  ->  dA_rz W_h,rzᵀ
        return step
    raise AssertionError(f"version {kernel} passed check_kernel but has no backward branch")


# ------------------------------------------------------------------------------------------------ forward
class GRUGPUSequenceCache(NamedTuple):
    x: object                 # (T, N, D)
    W_x: object               # (D, 3H)
    W_h: object               # (H, 3H)
    Hs: object                # (T+1, N, H)  H_0 .. H_T
    gates: object             # (T, N, 3H)   [ R | Z | H_tilde ] of every step
    A_hn: Optional[object]    # (T, N, H)    H_{t-1} W_h,n + b_h,n   (reset_after=True; else None)
    RH: Optional[object]      # (T, N, H)    R ⊙ H_{t-1}             (reset_after=False; else None)
    reset_after: bool
    mask: Optional[object]    # (T, N) of 0/1 in the data dtype (the kernels' mask rows), or None
    kernel: int


def gru_sequence_forward(x, h0, W_x, W_h, b_x, b_h, reset_after=True, mask=None, kernel=DEFAULT_KERNEL):
    """gru_sequence.gru_sequence_forward on the GPU. x : (T, N, D), h0 : (N, H), W_x : (D, 3H), W_h : (H, 3H),
    b_x, b_h : (3H,), mask : (T, N) booleans (NumPy or CuPy) or None -> Y (T, N, H), h_T (N, H), cache."""
    where = "npylstm.gru_gpu.gru_sequence_forward"
    kernel = check_kernel(where, kernel)
    if not isinstance(reset_after, (bool, np.bool_)):
        raise ValueError(f"{where}: reset_after must be True or False, got {reset_after!r}")
    args = dict(x=x, h0=h0, W_x=W_x, W_h=W_h, b_x=b_x, b_h=b_h)
    gpu._check_on_gpu(where, args)
    gpu._check_arrays(where, args, dict(x=(None, None, None), h0=(None, None), W_x=(None, None),
                                        W_h=(None, None), b_x=(None,), b_h=(None,)))          # ranks first
    (T, N, D), H = x.shape, W_h.shape[0]
    gpu._check_arrays(where, args, dict(x=(T, N, D), h0=(N, H), W_x=(D, 3 * H), W_h=(H, 3 * H),
                                        b_x=(3 * H,), b_h=(3 * H,)))
    if T < 1:
        raise ValueError(f"{where}: x has no time steps (T = 0)")
    gpu.check_mask(where, mask, T, N)
    gpu.check_sizes(where, N, D, H, kernel, gates=NUM_GATES)
    return _forward(x, h0, W_x, W_h, b_x, b_h, bool(reset_after), mask, kernel)


def _forward(x, h0, W_x, W_h, b_x, b_h, reset_after, mask, kernel):
    xp, dtype = gpu._xp(x), x.dtype
    T, N, D = x.shape
    H = W_h.shape[0]
    Ax = gpu._empty(xp, (T, N, 3 * H), dtype)
    _matmul(x.reshape(T * N, D), W_x, Ax.reshape(T * N, 3 * H))   # hoisted input product, one GEMM
    xp.add(Ax, b_x if reset_after else b_x + b_h, out=Ax)          # reset_after=False: both biases sit outside R
    Hs = gpu._empty(xp, (T + 1, N, H), dtype)
    Hs[0] = h0
    gates = gpu._empty(xp, (T, N, 3 * H), dtype)
    A_hn = gpu._empty(xp, (T, N, H), dtype) if reset_after else None
    RH = None if reset_after else gpu._empty(xp, (T, N, H), dtype)
    m = gpu.mask_rows(xp, mask, dtype)
    masks, A_hns, RHs = ([None] * T if a is None else a for a in (m, A_hn, RH))
    step = forward_step(kernel, reset_after, W_h, b_h, N)
    for t in range(T):
        step(Ax[t], masks[t], Hs[t], gates[t], A_hns[t], RHs[t], Hs[t + 1])
    cache = GRUGPUSequenceCache(x, W_x, W_h, Hs, gates, A_hn, RH, reset_after, m, kernel)
    return Hs[1:], Hs[T].copy(), cache


# ------------------------------------------------------------------------------------------------ backward
def gru_sequence_backward(dY, dh_T, cache):
    """gru_sequence.gru_sequence_backward on the GPU: dY (T, N, H), dh_T (N, H)
    -> dx (T, N, D), dh0 (N, H), dW_x (D, 3H), dW_h (H, 3H), db_x (3H,), db_h (3H,)."""
    where = "npylstm.gru_gpu.gru_sequence_backward"
    if not isinstance(cache, GRUGPUSequenceCache):
        raise ValueError(f"{where}: cache must be the GRUGPUSequenceCache from npylstm.gru_gpu.gru_sequence_forward, "
                         f"got {type(cache).__name__}")
    gpu._check_on_gpu(where, dict(dY=dY, dh_T=dh_T))
    T, N, D = cache.x.shape
    H = cache.W_h.shape[0]
    gpu._check_arrays(where, dict(dY=dY, dh_T=dh_T, x=cache.x), dict(dY=(T, N, H), dh_T=(N, H), x=(T, N, D)))
    return _backward(dY, dh_T, cache)


def _backward(dY, dh_T, cache):
    x, W_x, W_h, Hs, gates, A_hn, RH, reset_after, m, kernel = cache
    xp, dtype = gpu._xp(dY), dY.dtype
    T, N, D = x.shape
    H = W_h.shape[0]
    if reset_after:
        dA_a = gpu._empty(xp, (T, N, 3 * H), dtype)          # dA_x: every step's [dA_r | dA_z | dA_n]
        dA_b = gpu._empty(xp, (T, N, 3 * H), dtype)          # dA_h: every step's [dA_r | dA_z | dA_n ⊙ R]
    else:
        dA_a = gpu._empty(xp, (T, N, 2 * H), dtype)          # dA_rz: every step's [dA_r | dA_z]
        dA_b = gpu._empty(xp, (T, N, H), dtype)              # dA_n
    # dH_t = dH (the products of step t+1) + direct (dH_{t+1} ⊙ Z_{t+1}, or dH_{t+1} on a masked row) + dY_t;
    # the first step reads dh_T and no direct part
    dH, direct = gpu._empty(xp, (N, H), dtype), gpu._empty(xp, (N, H), dtype)
    masks, A_hns = ([None] * T if a is None else a for a in (m, A_hn))
    step = backward_step(kernel, reset_after, W_h, N)
    dh, direct_in = dh_T, None
    for t in range(T - 1, -1, -1):
        step(dh, direct_in, dY[t], masks[t], gates[t], A_hns[t], Hs[t], dA_a[t], dA_b[t], direct, dH)
        dh, direct_in = dH, direct
    dh0 = dH + direct
    Hs_prev = Hs[:T].reshape(T * N, H)
    if reset_after:
        # forward: A_x = X W_x + b_x, A_h = H_prev W_h + b_h, all steps at once  ->  one product each
        dA_x2, dA_h2 = dA_a.reshape(T * N, 3 * H), dA_b.reshape(T * N, 3 * H)
        dW_h = Hs_prev.T @ dA_h2
        db_h = dA_h2.sum(axis=0)
    else:
        # forward: A_rz = ... + H_prev W_h,rz, A_n = ... + RH W_h,n + b_h,n  ->  dW_h = [H_prevᵀ dA_rz | RHᵀ dA_n]
        dA_rz2, dA_n2 = dA_a.reshape(T * N, 2 * H), dA_b.reshape(T * N, H)
        dW_h = xp.concatenate([Hs_prev.T @ dA_rz2, RH.reshape(T * N, H).T @ dA_n2], axis=1)
        dA_x2 = xp.concatenate([dA_rz2, dA_n2], axis=1)
    dW_x = x.reshape(T * N, D).T @ dA_x2
    db_x = dA_x2.sum(axis=0)
    if not reset_after:
        db_h = db_x.copy()                                  # b_h enters exactly where b_x does
    dx = (dA_x2 @ W_x.T).reshape(T, N, D)
    return dx, dh0, dW_x, dW_h, db_x, db_h


class Backend(NamedTuple):
    """gru_sequence.py's contract with the kernel version bound: what `GRU(device="cuda")` calls."""
    kernel: int = DEFAULT_KERNEL

    def gru_sequence_forward(self, x, h0, W_x, W_h, b_x, b_h, reset_after=True, mask=None):
        return gru_sequence_forward(x, h0, W_x, W_h, b_x, b_h, reset_after, mask, kernel=self.kernel)

    def gru_sequence_backward(self, dY, dh_T, cache):
        return gru_sequence_backward(dY, dh_T, cache)
