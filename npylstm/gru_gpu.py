"""The GRU's GPU backend: kernels/gru_kernels.cu through CuPy, with gru_sequence.py's contract.

    gru_sequence_forward(x, h0, W_x, W_h, b_x, b_h, reset_after=True, mask=None, kernel=DEFAULT_KERNEL)
        -> Y (T, N, H), h_T (N, H), cache
    gru_sequence_backward(dY, dh_T, cache) -> dx, dh0, dW_x, dW_h, db_x, db_h

so `GRU(..., device="cuda")` is the same layer with another backend (design.md §2). Everything else is
gpu.py's, reused: the loader (kernels/ from a checkout or the wheel, headers spliced with #line markers,
NVRTC with name_expressions), require_cuda(), the argument checks, POISON, the NULL pointer convention.

Version 1 (the only one): the pointwise part of a step is fused, the products are cuBLAS calls made by
CuPy (the .cu file's header comment gives the launches of each reset_after variant). With
reset_after=False the product (R ⊙ H_{t−1}) W_h,n sits between two pointwise kernels.
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


def check_kernel(where, kernel):
    """The dispatcher's gate: `kernel` must be a known GRU kernel version."""
    if isinstance(kernel, (bool, np.bool_)) or kernel not in KERNEL_VERSIONS:
        raise ValueError(f"{where}: kernel must be one of {', '.join(map(str, KERNEL_VERSIONS))} for the GRU, "
                         f"got {kernel!r}")
    return int(kernel)


_modules = {}  # device id -> cupy.RawModule


def get_module():
    """The compiled GRU module for the current device (compiled once per process and device, then cached)."""
    cupy = gpu.require_cuda("npylstm.gru_gpu")
    device = cupy.cuda.runtime.getDevice()
    if device not in _modules:
        _modules[device] = cupy.RawModule(code=gpu.load_source(KERNEL_FILE), options=gpu.COMPILE_OPTIONS,
                                          name_expressions=NAME_EXPRESSIONS)
    return _modules[device]


def get_function(name, version, dtype):
    return get_module().get_function(f"npylstm::{name}{version}<{gpu.TYPE_NAMES[np.dtype(dtype)]}>")


def _launch(name, dtype, N, H, *args):
    """One version-1 pointwise kernel over the N·H elements (grid-stride, THREADS1 threads per block)."""
    get_function(name, 1, dtype)((max(1, math.ceil(N * H / THREADS1)),), (THREADS1,),
                                 (*(gpu.NULL if a is None else a for a in args), np.int32(N), np.int32(H)))


def _matmul(a, b, out):
    """out = a @ b (cuBLAS on CuPy arrays), written in place."""
    gpu._xp(a).matmul(a, b, out=out)


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
    mask: Optional[object]    # (T, N, 1) of 0/1 in the data dtype, or None
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
    if mask is not None:
        if mask.dtype != bool or tuple(mask.shape) != (T, N):
            raise ValueError(f"{where}: mask must be (T, N) = ({T}, {N}) booleans, got {mask.dtype} {tuple(mask.shape)}")
    return _forward(x, h0, W_x, W_h, b_x, b_h, bool(reset_after), mask, kernel)


def _forward(x, h0, W_x, W_h, b_x, b_h, reset_after, mask, kernel):
    xp, dtype = gpu._xp(x), x.dtype
    T, N, D = x.shape
    H = W_h.shape[0]
    Ax = (x.reshape(T * N, D) @ W_x).reshape(T, N, 3 * H)     # hoisted input product, one GEMM
    Ax += b_x if reset_after else b_x + b_h                    # reset_after=False: both biases sit outside R
    Hs = gpu._empty(xp, (T + 1, N, H), dtype)
    Hs[0] = h0
    gates = gpu._empty(xp, (T, N, 3 * H), dtype)
    keep = None if mask is None else ~xp.asarray(mask).reshape(T, N, 1)
    if reset_after:
        A_hn, RH = gpu._empty(xp, (T, N, H), dtype), None
        Ah = gpu._empty(xp, (N, 3 * H), dtype)
    else:
        A_hn, RH = None, gpu._empty(xp, (T, N, H), dtype)
        W_hrz, W_hn = xp.ascontiguousarray(W_h[:, :2 * H]), xp.ascontiguousarray(W_h[:, 2 * H:])  # (H, 2H), (H, H)
        Ah_rz, P = gpu._empty(xp, (N, 2 * H), dtype), gpu._empty(xp, (N, H), dtype)
    for t in range(T):
        if reset_after:
            _matmul(Hs[t], W_h, Ah)                                                   # A_h = H_prev W_h (+ b_h in the kernel)
            _launch("gru_forward_kernel", dtype, N, H, Ax[t], Ah, b_h, Hs[t], gates[t], A_hn[t], Hs[t + 1])
        else:
            _matmul(Hs[t], W_hrz, Ah_rz)                                              # H_prev W_h,rz
            _launch("gru_forward_rz_kernel", dtype, N, H, Ax[t], Ah_rz, Hs[t], gates[t], RH[t])
            _matmul(RH[t], W_hn, P)                                                   # (R ⊙ H_prev) W_h,n
            _launch("gru_forward_n_kernel", dtype, N, H, Ax[t], P, Hs[t], gates[t], Hs[t + 1])
        if keep is not None:                                    # masked rows keep H of the step before
            xp.copyto(Hs[t + 1], Hs[t], where=keep[t])
    m = None if mask is None else xp.asarray(mask).reshape(T, N, 1).astype(dtype)
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
        dA_x = gpu._empty(xp, (T, N, 3 * H), dtype)          # every step's [dA_r | dA_z | dA_n]
        dA_h = gpu._empty(xp, (T, N, 3 * H), dtype)          # every step's [dA_r | dA_z | dA_n ⊙ R]
    else:
        dA_rz = gpu._empty(xp, (T, N, 2 * H), dtype)         # every step's [dA_r | dA_z]
        dA_n = gpu._empty(xp, (T, N, H), dtype)
        W_hrz, W_hn = xp.ascontiguousarray(W_h[:, :2 * H]), xp.ascontiguousarray(W_h[:, 2 * H:])
        dRH = gpu._empty(xp, (N, H), dtype)
    # dH_t = dH (the products dA_h W_hᵀ of step t+1) + direct (dH_{t+1} ⊙ Z_{t+1}) + dY_t; direct starts empty
    dH = xp.array(dh_T, dtype=dtype)
    direct = gpu._empty(xp, (N, H), dtype)
    direct_in = None
    for t in range(T - 1, -1, -1):
        dh, dy = dH, dY[t]
        if m is not None:                                   # a masked step passes dH_t through untouched
            full = dh + dy if direct_in is None else dh + dy + direct_in
            through = full * (1 - m[t])
            dh, dy, direct_in = full * m[t], None, None
        if reset_after:
            _launch("gru_backward_kernel", dtype, N, H, dh, direct_in, dy, gates[t], A_hn[t], Hs[t],
                    dA_x[t], dA_h[t], direct)
            _matmul(dA_h[t], W_h.T, dH)                     # forward: A_h = H_prev W_h + b_h  ->  dH_prev += dA_h W_hᵀ
        else:
            _launch("gru_backward_n_kernel", dtype, N, H, dh, direct_in, dy, gates[t], Hs[t], dA_rz[t], dA_n[t],
                    direct)
            _matmul(dA_n[t], W_hn.T, dRH)                   # forward: A_n = ... + RH W_h,n  ->  dRH = dA_n W_h,nᵀ
            _launch("gru_backward_rz_kernel", dtype, N, H, dRH, gates[t], Hs[t], dA_rz[t], direct)
            _matmul(dA_rz[t], W_hrz.T, dH)                  # forward: A_rz = ... + H_prev W_h,rz  ->  dA_rz W_h,rzᵀ
        if m is not None:
            direct += through
        direct_in = direct
    dh0 = dH + direct
    Hs_prev = Hs[:T].reshape(T * N, H)
    if reset_after:
        # forward: A_x = X W_x + b_x, A_h = H_prev W_h + b_h, all steps at once  ->  one product each
        dA_x2, dA_h2 = dA_x.reshape(T * N, 3 * H), dA_h.reshape(T * N, 3 * H)
        dW_h = Hs_prev.T @ dA_h2
        db_h = dA_h2.sum(axis=0)
    else:
        # forward: A_rz = ... + H_prev W_h,rz, A_n = ... + RH W_h,n + b_h,n  ->  dW_h = [H_prevᵀ dA_rz | RHᵀ dA_n]
        dA_rz2, dA_n2 = dA_rz.reshape(T * N, 2 * H), dA_n.reshape(T * N, H)
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
