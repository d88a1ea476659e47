"""T steps of one GRU layer, forward and backpropagation through time (NumPy backend).

The math is gru_cell.py's, step for step; the speed tricks are sequence.py's:

* the input product X_t W_x + b_x for all T steps is one matrix product before the loop, and dW_x,
  dx and dW_h are one product each after the backward loop (dW_h two with reset_after=False: its
  n block multiplies R ⊙ H_{t-1}, not H_{t-1});
* every per-step array is preallocated and written in place (`out=`);
* the two sigmoids of a step are one np.tanh call over the (N, 2H) [ r | z ] block:
  σ(a) = 0.5 * tanh(a / 2) + 0.5, so the r, z columns of W_x, W_h and the biases are pre-scaled by 1/2.

Time-major: x (T, N, D), states (N, H). An optional mask (T, N) of booleans marks the real steps:
where it is False the step leaves H unchanged (the output repeats the previous H), and the backward
lets dH pass straight through it.

gru_sequence_forward(x, h0, W_x, W_h, b_x, b_h, reset_after=True, mask=None) -> Y (T, N, H), h_T, cache
gru_sequence_backward(dY, dh_T, cache) -> dx, dh0, dW_x, dW_h, db_x, db_h
"""

from typing import NamedTuple, Optional

import numpy as np

from .gru_cell import gru_gate_blocks


def _rz_scale(H, dtype):
    """(3H,) vector [1/2 … 1/2 | 1 … 1]: σ(A) = 0.5 * tanh(0.5 * A) + 0.5 on the r, z blocks, n untouched."""
    scale = np.full(3 * H, 0.5, dtype=dtype)
    scale[2 * H:] = 1.0
    return scale


class GRUSequenceCache(NamedTuple):
    x: np.ndarray                # (T, N, D)
    W_x: np.ndarray              # (D, 3H)
    W_h: np.ndarray              # (H, 3H)
    Hs: np.ndarray               # (T+1, N, H)  H_0 .. H_T   (Hs[0] = h0)
    gates: np.ndarray            # (T, N, 3H)   [ R | Z | H_tilde ] of every step
    A_hn: Optional[np.ndarray]   # (T, N, H)    H_{t-1} W_h,n + b_h,n   (reset_after=True; else None)
    RH: Optional[np.ndarray]     # (T, N, H)    R ⊙ H_{t-1}             (reset_after=False; else None)
    reset_after: bool
    mask: Optional[np.ndarray]   # (T, N, 1) of 0/1 in the data dtype, or None


def gru_sequence_forward(x, h0, W_x, W_h, b_x, b_h, reset_after=True, mask=None):
    """x : (T, N, D), h0 : (N, H), W_x : (D, 3H), W_h : (H, 3H), b_x, b_h : (3H,), mask : (T, N) bool or None.

    returns Y : (T, N, H) (Y[t] = H_{t+1}, a view of the cache), h_T : (N, H), cache : GRUSequenceCache
    """
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    scale = _rz_scale(H, dtype)
    b_in = b_x if reset_after else b_x + b_h          # reset_after=False: both biases sit outside R
    gates = (x.reshape(T * N, D) @ (W_x * scale)).reshape(T, N, 3 * H)   # hoisted input product
    gates += b_in * scale
    Hs = np.empty((T + 1, N, H), dtype)
    Hs[0] = h0
    if reset_after:
        W_h_scaled, b_h_scaled = W_h * scale, b_h * scale          # (H, 3H), (3H,)
        A_h = np.empty((N, 3 * H), dtype)
        A_hn, RH = np.empty((T, N, H), dtype), None
    else:
        W_hrz_scaled = W_h[:, :2 * H] * 0.5                        # (H, 2H)
        W_hn = np.ascontiguousarray(W_h[:, 2 * H:])                # (H, H)
        A_hn, RH = None, np.empty((T, N, H), dtype)
    tmp = np.empty((N, H), dtype)
    keep = None if mask is None else ~mask.reshape(T, N, 1)
    for t in range(T):
        a = gates[t]                                    # (N, 3H), holds A_x = X_t W_x + b_x (r, z scaled)
        a_rz, a_n = a[:, :2 * H], a[:, 2 * H:]
        R, Z, H_tilde = gru_gate_blocks(a)
        if reset_after:
            np.matmul(Hs[t], W_h_scaled, out=A_h)       # A_h = H_prev W_h + b_h  (r, z scaled)
            A_h += b_h_scaled
            a_rz += A_h[:, :2 * H]
            np.tanh(a_rz, out=a_rz)                     # R = σ(A_x,r + A_h,r),  Z = σ(A_x,z + A_h,z)
            a_rz *= 0.5
            a_rz += 0.5
            A_hn[t] = A_h[:, 2 * H:]
            np.multiply(R, A_hn[t], out=tmp)            # H̃ = tanh(A_x,n + R ⊙ A_h,n)
            a_n += tmp
        else:
            a_rz += np.matmul(Hs[t], W_hrz_scaled)      # R, Z = σ(A_x,r|z + H_prev W_h,r|z)
            np.tanh(a_rz, out=a_rz)
            a_rz *= 0.5
            a_rz += 0.5
            np.multiply(R, Hs[t], out=RH[t])            # H̃ = tanh(A_x,n + (R ⊙ H_prev) W_h,n)   (b_h,n is in A_x,n)
            a_n += np.matmul(RH[t], W_hn)
        np.tanh(a_n, out=a_n)
        h = Hs[t + 1]
        np.subtract(Hs[t], H_tilde, out=h)              # H = Z⊙H_prev + (1−Z)⊙H̃ = H̃ + Z⊙(H_prev − H̃)
        h *= Z
        h += H_tilde
        if keep is not None:                            # masked rows keep H of the step before
            np.copyto(h, Hs[t], where=keep[t])
    m = None if mask is None else mask.reshape(T, N, 1).astype(dtype)
    cache = GRUSequenceCache(x, W_x, W_h, Hs, gates, A_hn, RH, bool(reset_after), m)
    return Hs[1:], Hs[T].copy(), cache


def gru_sequence_backward(dY, dh_T, cache):
    """BPTT. dY : (T, N, H) gradient on every output, dh_T : (N, H) gradient on the final state.

    returns dx (T, N, D), dh0 (N, H), dW_x (D, 3H), dW_h (H, 3H), db_x (3H,), db_h (3H,)
    """
    x, W_x, W_h, Hs, gates, A_hn, RH, reset_after, m = cache
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    dA_x = np.empty((T, N, 3 * H), dtype)              # every step's dA_x = [dA_r | dA_z | dA_n]
    if reset_after:
        dA_h = np.empty((T, N, 3 * H), dtype)          # every step's dA_h = [dA_r | dA_z | dA_n ⊙ R]
        W_hT = np.ascontiguousarray(W_h.T)             # (3H, H)
    else:
        W_hrzT = np.ascontiguousarray(W_h[:, :2 * H].T)   # (2H, H)
        W_hnT = np.ascontiguousarray(W_h[:, 2 * H:].T)    # (H, H)
        dRH = np.empty((N, H), dtype)
    dH = np.array(dh_T, dtype=dtype)                   # carried back through time
    tmp = np.empty((N, H), dtype)
    fac = np.empty((N, 2 * H), dtype)
    for t in range(T - 1, -1, -1):
        dH += dY[t]                                     # dH_t = dY_t + dH coming back from t+1
        if m is not None:                               # a masked step passes dH through untouched
            dH_through = dH * (1 - m[t])
            dH *= m[t]
        g = gates[t]
        R, Z, H_tilde = gru_gate_blocks(g)
        d = dA_x[t]
        dA_r, dA_z, dA_n = gru_gate_blocks(d)
        # forward: H = Z*H_prev + (1-Z)*H_tilde  ->  dZ = dH*(H_prev - H_tilde), dH_tilde = dH*(1-Z), dH_prev = dH*Z
        np.subtract(Hs[t], H_tilde, out=dA_z)
        dA_z *= dH                                      # dZ (dA_z after the sigmoid step below)
        np.subtract(1, Z, out=dA_n)
        dA_n *= dH                                      # dH_tilde
        # forward: H_tilde = tanh(A_n)            ->  dA_n = dH_tilde * (1 - H_tilde²)
        np.multiply(H_tilde, H_tilde, out=tmp)
        np.subtract(1, tmp, out=tmp)
        dA_n *= tmp
        if reset_after:
            # forward: A_n = A_x,n + R*A_h,n       ->  dR = dA_n*A_h,n, dA_h,n = dA_n*R
            np.multiply(dA_n, A_hn[t], out=dA_r)
            np.multiply(dA_n, R, out=gru_gate_blocks(dA_h[t])[2])
        else:
            # forward: A_n = A_x,n + RH W_h,n      ->  dRH = dA_n W_h,nᵀ;   RH = R*H_prev  ->  dR = dRH*H_prev
            np.matmul(dA_n, W_hnT, out=dRH)
            np.multiply(dRH, Hs[t], out=dA_r)
        # forward: R = σ(A_r), Z = σ(A_z)         ->  dA_r|z = dR|Z * σ(1-σ)
        g_rz, d_rz = g[:, :2 * H], d[:, :2 * H]
        np.multiply(g_rz, g_rz, out=fac)
        np.subtract(g_rz, fac, out=fac)
        d_rz *= fac
        # forward: A_h = H_prev W_h + b_h; H = Z*H_prev + ...  ->  dH_prev = dH*Z + dA_h W_hᵀ (+ dRH*R before)
        np.multiply(dH, Z, out=tmp)
        if reset_after:
            dA_h[t][:, :2 * H] = d_rz
            np.matmul(dA_h[t], W_hT, out=dH)
        else:
            np.matmul(d_rz, W_hrzT, out=dH)
            dRH *= R                                    # forward: RH = R*H_prev  ->  dH_prev += dRH*R
            dH += dRH
        dH += tmp
        if m is not None:
            dH += dH_through
    # forward: A_x = X W_x + b_x, all steps at once  ->  one product each
    dA_x2 = dA_x.reshape(T * N, 3 * H)
    Hs_prev = Hs[:T].reshape(T * N, H)
    dW_x = x.reshape(T * N, D).T @ dA_x2
    db_x = dA_x2.sum(axis=0)
    dx = (dA_x2 @ W_x.T).reshape(T, N, D)
    if reset_after:
        # forward: A_h = H_prev W_h + b_h, all steps  ->  dW_h = Σ_t H_prevᵀ dA_h, db_h = Σ dA_h
        dA_h2 = dA_h.reshape(T * N, 3 * H)
        dW_h = Hs_prev.T @ dA_h2
        db_h = dA_h2.sum(axis=0)
    else:
        # forward: A_r|z = … + H_prev W_h,r|z; A_n = … + RH W_h,n + b_h,n  ->  dW_h = [H_prevᵀ dA_rz | RHᵀ dA_n]
        dW_h = np.concatenate([Hs_prev.T @ dA_x2[:, :2 * H], RH.reshape(T * N, H).T @ dA_x2[:, 2 * H:]], axis=1)
        db_h = db_x.copy()                              # b_h enters exactly where b_x does
    return dx, dH, dW_x, dW_h, db_x, db_h
