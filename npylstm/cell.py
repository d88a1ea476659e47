"""One LSTM step in NumPy: the reference every other implementation is checked against.

This file is the README's equations, line for line. Row-vector convention; N batch, D input size,
H hidden size. No speed tricks live here (they live in sequence.py and kernels/).

    A    = X W_x + H_prev W_h + b          (N, 4H), column blocks [ i | f | g | o ]
    I    = sigmoid(A_i)   F = sigmoid(A_f)   C_tilde = tanh(A_g)   O = sigmoid(A_o)
    C    = F * C_prev + I * C_tilde
    H    = O * tanh(C)
"""

from typing import NamedTuple

import numpy as np

GATES = ("i", "f", "g", "o")  # the one constant that fixes the column blocks of A, W_x, W_h and b


def gate_blocks(A):
    """Split (..., 4H) into the four (..., H) gate blocks in GATES order (views, no copy)."""
    H = A.shape[-1] // 4
    return tuple(A[..., k * H:(k + 1) * H] for k in range(len(GATES)))


def sigmoid(A):
    """sigmoid(A) = 1 / (1 + exp(-A)), written as 0.5 * (1 + tanh(A / 2)).

    The two are equal; the tanh form never overflows or underflows (exp(1e4) would), so it raises
    nothing under np.errstate(all="raise") for any finite A, float32 or float64.
    """
    return 0.5 * (1.0 + np.tanh(0.5 * A))


class CellCache(NamedTuple):
    """What step_backward needs from step_forward."""
    x: np.ndarray        # (N, D)   input X_t
    h_prev: np.ndarray   # (N, H)   H_{t-1}
    c_prev: np.ndarray   # (N, H)   C_{t-1}
    W_x: np.ndarray      # (D, 4H)
    W_h: np.ndarray      # (H, 4H)
    I: np.ndarray        # (N, H)   input gate
    F: np.ndarray        # (N, H)   forget gate
    C_tilde: np.ndarray  # (N, H)   candidate cell
    O: np.ndarray        # (N, H)   output gate
    tanh_C: np.ndarray   # (N, H)   tanh(C_t)


def step_forward(x, h_prev, c_prev, W_x, W_h, b):
    """One LSTM step.

    x : (N, D), h_prev : (N, H), c_prev : (N, H), W_x : (D, 4H), W_h : (H, 4H), b : (4H,)
    returns H : (N, H), C : (N, H), cache : CellCache

        A = X W_x + H_prev W_h + b
        I = σ(A_i)  F = σ(A_f)  C̃ = tanh(A_g)  O = σ(A_o)
        C = F ⊙ C_prev + I ⊙ C̃
        H = O ⊙ tanh(C)
    """
    A = x @ W_x + h_prev @ W_h + b  # (N, 4H)
    A_i, A_f, A_g, A_o = gate_blocks(A)
    I = sigmoid(A_i)
    F = sigmoid(A_f)
    C_tilde = np.tanh(A_g)
    O = sigmoid(A_o)
    C = F * c_prev + I * C_tilde
    tanh_C = np.tanh(C)
    H = O * tanh_C
    return H, C, CellCache(x, h_prev, c_prev, W_x, W_h, I, F, C_tilde, O, tanh_C)


def step_backward(dH, dC, cache):
    """Backward of step_forward, derived by hand.

    dH : (N, H) gradient on H_t (from the output and from step t+1)
    dC : (N, H) gradient on C_t coming back from step t+1 (zeros at the last step)
    returns dx (N, D), dh_prev (N, H), dc_prev (N, H), dW_x (D, 4H), dW_h (H, 4H), db (4H,)
    """
    x, h_prev, c_prev, W_x, W_h, I, F, C_tilde, O, tanh_C = cache
    # forward: H = O * tanh(C)              ->  dO = dH * tanh(C),  dC += dH * O * (1 - tanh²(C))
    dO = dH * tanh_C
    dC = dC + dH * O * (1.0 - tanh_C ** 2)
    # forward: C = F*C_prev + I*C_tilde     ->  dI = dC*C_tilde, dF = dC*C_prev, dC_tilde = dC*I, dC_prev = dC*F
    dI = dC * C_tilde
    dF = dC * c_prev
    dC_tilde = dC * I
    dc_prev = dC * F
    # forward: I, F, O = σ(A_i, A_f, A_o)   ->  dA = d(gate) * gate * (1 - gate)
    dA_i = dI * I * (1.0 - I)
    dA_f = dF * F * (1.0 - F)
    dA_o = dO * O * (1.0 - O)
    # forward: C_tilde = tanh(A_g)          ->  dA_g = dC_tilde * (1 - C_tilde²)
    dA_g = dC_tilde * (1.0 - C_tilde ** 2)
    dA = np.concatenate([dA_i, dA_f, dA_g, dA_o], axis=-1)  # (N, 4H), GATES order
    # forward: A = X W_x + H_prev W_h + b   ->  dW_x = Xᵀ dA, dW_h = H_prevᵀ dA, db = Σ_n dA, dX = dA W_xᵀ, dH_prev = dA W_hᵀ
    dW_x = x.T @ dA
    dW_h = h_prev.T @ dA
    db = dA.sum(axis=0)
    dx = dA @ W_x.T
    dh_prev = dA @ W_h.T
    return dx, dh_prev, dc_prev, dW_x, dW_h, db
