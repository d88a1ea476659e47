"""T steps of one LSTM layer, forward and backpropagation through time (NumPy backend).

The math is cell.py's, step for step; this file is where the speed tricks live:

* the input product X_t W_x (+ b) for all T steps is one matrix product before the loop, and dW_x,
  dW_h, db and dx are one product each after the backward loop;
* every per-step array is preallocated and written in place (`out=`), so a step is a fixed, small
  number of NumPy calls;
* the three sigmoids and the tanh of a step are one np.tanh call over the whole (N, 4H) block:
  sigmoid(a) = 0.5 * tanh(a / 2) + 0.5, so the i, f, o columns of W_x, W_h and b are pre-scaled by
  1/2 and the tanh output is mapped back with one multiply-add (SCALE, SHIFT below).

Time-major: x (T, N, D), states (N, H). An optional mask (T, N) of booleans marks the real steps:
where it is False the step leaves (H, C) unchanged (the output repeats the previous H), and the
backward lets dH and dC pass straight through it.

sequence_forward(x, h0, c0, W_x, W_h, b, mask=None) -> Y (T, N, H), h_T, c_T, cache
sequence_backward(dY, dh_T, dc_T, cache) -> dx, dh0, dc0, dW_x, dW_h, db
"""

from typing import NamedTuple, Optional

import numpy as np

from .cell import gate_blocks


def _gate_vectors(H, dtype):
    """(4H,) vectors: SCALE = [1/2, 1/2, 1, 1/2] per gate block, SHIFT = [1/2, 1/2, 0, 1/2].

    gate = SCALE * tanh(SCALE * A) + SHIFT is sigmoid(A) on the i, f, o blocks and tanh(A) on g.
    """
    scale = np.full(4 * H, 0.5, dtype=dtype)
    scale[2 * H:3 * H] = 1.0
    shift = np.full(4 * H, 0.5, dtype=dtype)
    shift[2 * H:3 * H] = 0.0
    return scale, shift


class SequenceCache(NamedTuple):
    x: np.ndarray                 # (T, N, D)
    W_x: np.ndarray               # (D, 4H)
    W_h: np.ndarray               # (H, 4H)
    Hs: np.ndarray                # (T+1, N, H)  H_0 .. H_T   (Hs[0] = h0)
    Cs: np.ndarray                # (T+1, N, H)  C_0 .. C_T
    gates: np.ndarray             # (T, N, 4H)   [ I | F | C_tilde | O ] of every step
    tanh_C: np.ndarray            # (T, N, H)    tanh(C_t) of every step
    mask: Optional[np.ndarray]    # (T, N, 1) of 0/1 in the data dtype, or None


def sequence_forward(x, h0, c0, W_x, W_h, b, mask=None):
    """x : (T, N, D), h0, c0 : (N, H), W_x : (D, 4H), W_h : (H, 4H), b : (4H,), mask : (T, N) bool or None.

    returns Y : (T, N, H) (Y[t] = H_{t+1}, a view of the cache), h_T : (N, H), c_T : (N, H), cache
    """
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    scale, shift = _gate_vectors(H, dtype)
    W_h_scaled = W_h * scale                                             # (H, 4H)
    gates = (x.reshape(T * N, D) @ (W_x * scale)).reshape(T, N, 4 * H)   # hoisted input product
    gates += b * scale
    Hs = np.empty((T + 1, N, H), dtype)
    Cs = np.empty((T + 1, N, H), dtype)
    Hs[0] = h0
    Cs[0] = c0
    tanh_C = np.empty((T, N, H), dtype)
    IC = np.empty((N, H), dtype)
    m = None if mask is None else mask.reshape(T, N, 1).astype(dtype)
    keep = None if mask is None else ~mask.reshape(T, N, 1)
    for t in range(T):
        a = gates[t]                                    # (N, 4H), holds X_t W_x + b (scaled)
        a += np.matmul(Hs[t], W_h_scaled)               # A = X W_x + H_prev W_h + b  (scaled)
        np.tanh(a, out=a)
        a *= scale                                      # I, F, O = σ(A_i, A_f, A_o); C̃ = tanh(A_g)
        a += shift
        I, F, C_tilde, O = gate_blocks(a)
        c = Cs[t + 1]
        np.multiply(F, Cs[t], out=c)                    # C = F ⊙ C_prev + I ⊙ C̃
        np.multiply(I, C_tilde, out=IC)
        c += IC
        np.tanh(c, out=tanh_C[t])                       # H = O ⊙ tanh(C)
        np.multiply(O, tanh_C[t], out=Hs[t + 1])
        if keep is not None:                            # masked rows keep (H, C) of the step before
            np.copyto(Hs[t + 1], Hs[t], where=keep[t])
            np.copyto(Cs[t + 1], Cs[t], where=keep[t])
    cache = SequenceCache(x, W_x, W_h, Hs, Cs, gates, tanh_C, m)
    return Hs[1:], Hs[T].copy(), Cs[T].copy(), cache


def sequence_backward(dY, dh_T, dc_T, cache):
    """BPTT. dY : (T, N, H) gradient on every output, dh_T, dc_T : (N, H) gradients on the final state.

    returns dx (T, N, D), dh0 (N, H), dc0 (N, H), dW_x (D, 4H), dW_h (H, 4H), db (4H,)
    """
    x, W_x, W_h, Hs, Cs, gates, tanh_C, m = cache
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    W_hT = np.ascontiguousarray(W_h.T)                  # (4H, H)
    dA = np.empty((T, N, 4 * H), dtype)                 # every step's dA, for the products after the loop
    dH = np.array(dh_T, dtype=dtype)                    # carried back through time
    dC = np.array(dc_T, dtype=dtype)
    tmp = np.empty((N, H), dtype)
    fac = np.empty((N, 4 * H), dtype)
    for t in range(T - 1, -1, -1):
        dH += dY[t]                                     # dH_t = dY_t + dH coming back from t+1
        if m is not None:                               # a masked step passes dH, dC through untouched
            dH_through, dC_through = dH * (1 - m[t]), dC * (1 - m[t])
            dH *= m[t]
            dC *= m[t]
        I, F, C_tilde, O = gate_blocks(gates[t])
        d = dA[t]
        dI, dF, dC_tilde, dO = gate_blocks(d)
        # forward: H = O * tanh(C)           ->  dO = dH * tanh(C),  dC += dH * O * (1 - tanh²(C))
        np.multiply(dH, tanh_C[t], out=dO)
        np.multiply(tanh_C[t], tanh_C[t], out=tmp)
        np.subtract(1, tmp, out=tmp)
        tmp *= O
        tmp *= dH
        dC += tmp
        # forward: C = F*C_prev + I*C_tilde  ->  dI = dC*C_tilde, dF = dC*C_prev, dC_tilde = dC*I, dC_prev = dC*F
        np.multiply(dC, C_tilde, out=dI)
        np.multiply(dC, Cs[t], out=dF)
        np.multiply(dC, I, out=dC_tilde)
        dC *= F
        # forward: I,F,O = σ(A), C̃ = tanh(A) ->  dA = d(gate) * [I(1-I), F(1-F), 1-C̃², O(1-O)]
        np.multiply(gates[t], gates[t], out=fac)        # gate²
        np.subtract(1, gate_blocks(fac)[2], out=tmp)    # 1 - C̃²            (tmp is free again)
        np.subtract(gates[t], fac, out=fac)             # gate - gate² = σ(1-σ) on i, f, o
        gate_blocks(fac)[2][...] = tmp
        d *= fac
        # forward: A = X W_x + H_prev W_h + b  ->  dH_prev = dA W_hᵀ
        np.matmul(d, W_hT, out=dH)
        if m is not None:
            dH += dH_through
            dC += dC_through
    # forward: A = X W_x + H_prev W_h + b, all steps at once  ->  one product each
    dA2 = dA.reshape(T * N, 4 * H)
    dW_x = x.reshape(T * N, D).T @ dA2
    dW_h = Hs[:T].reshape(T * N, H).T @ dA2
    db = dA2.sum(axis=0)
    dx = (dA2 @ W_x.T).reshape(T, N, D)
    return dx, dH, dC, dW_x, dW_h, db
