"""One GRU step in NumPy: the reference the GRU sequence loop is checked against.

The GRU beside the LSTM, in the same notation (row vectors; N batch, D input size, H hidden size).
No speed tricks here (they live in gru_sequence.py). Column blocks [ r | z | n ] (PyTorch's order):

    A_x = X W_x + b_x                 A_h = H_prev W_h + b_h          (N, 3H) each
    R   = σ(A_x,r + A_h,r)            Z   = σ(A_x,z + A_h,z)

    reset_after=True  (PyTorch, cuDNN, Keras default):  H̃ = tanh(A_x,n + R ⊙ A_h,n)
    reset_after=False (Cho et al. v3, d2l):             H̃ = tanh(A_x,n + (R ⊙ H_prev) W_h,n + b_h,n)

    H   = Z ⊙ H_prev + (1 − Z) ⊙ H̃

Z is the fraction of the old state kept. With reset_after=False only b_x + b_h matters (b_h,n sits
outside the reset), so a Keras reset_after=False layer has one bias; with reset_after=True b_h,n is
multiplied by R and the two biases are different parameters.
"""

from typing import NamedTuple, Optional

import numpy as np

from .cell import sigmoid

GRU_GATES = ("r", "z", "n")  # the one constant that fixes the column blocks of W_x, W_h, b_x, b_h


def gru_gate_blocks(A):
    """Split (..., 3H) into the three (..., H) blocks in GRU_GATES order (views, no copy)."""
    H = A.shape[-1] // 3
    return tuple(A[..., k * H:(k + 1) * H] for k in range(len(GRU_GATES)))


class GRUCellCache(NamedTuple):
    """What gru_step_backward needs from gru_step_forward."""
    x: np.ndarray                # (N, D)   input X_t
    h_prev: np.ndarray           # (N, H)   H_{t-1}
    W_x: np.ndarray              # (D, 3H)
    W_h: np.ndarray              # (H, 3H)
    R: np.ndarray                # (N, H)   reset gate
    Z: np.ndarray                # (N, H)   update gate
    H_tilde: np.ndarray          # (N, H)   candidate state
    A_hn: Optional[np.ndarray]   # (N, H)   H_prev W_h,n + b_h,n   (reset_after=True; else None)
    RH: Optional[np.ndarray]     # (N, H)   R ⊙ H_prev              (reset_after=False; else None)
    reset_after: bool


def gru_step_forward(x, h_prev, W_x, W_h, b_x, b_h, reset_after=True):
    """One GRU step.

    x : (N, D), h_prev : (N, H), W_x : (D, 3H), W_h : (H, 3H), b_x : (3H,), b_h : (3H,)
    returns H : (N, H), cache : GRUCellCache

        A_x = X W_x + b_x            A_h = H_prev W_h + b_h      (only the r, z blocks of A_h if not reset_after)
        R = σ(A_x,r + A_h,r)         Z = σ(A_x,z + A_h,z)
        H̃ = tanh(A_x,n + R ⊙ A_h,n)                       reset_after=True
        H̃ = tanh(A_x,n + (R ⊙ H_prev) W_h,n + b_h,n)        reset_after=False
        H = Z ⊙ H_prev + (1 − Z) ⊙ H̃
    """
    W_hr, W_hz, W_hn = gru_gate_blocks(W_h)
    b_hr, b_hz, b_hn = gru_gate_blocks(b_h)
    A_xr, A_xz, A_xn = gru_gate_blocks(x @ W_x + b_x)             # (N, H) each
    R = sigmoid(A_xr + h_prev @ W_hr + b_hr)
    Z = sigmoid(A_xz + h_prev @ W_hz + b_hz)
    if reset_after:
        A_hn, RH = h_prev @ W_hn + b_hn, None
        H_tilde = np.tanh(A_xn + R * A_hn)
    else:
        A_hn, RH = None, R * h_prev
        H_tilde = np.tanh(A_xn + RH @ W_hn + b_hn)
    H = Z * h_prev + (1.0 - Z) * H_tilde
    return H, GRUCellCache(x, h_prev, W_x, W_h, R, Z, H_tilde, A_hn, RH, bool(reset_after))


def gru_step_backward(dH, cache):
    """Backward of gru_step_forward, derived by hand.

    dH : (N, H) gradient on H_t (from the output and from step t+1)
    returns dx (N, D), dh_prev (N, H), dW_x (D, 3H), dW_h (H, 3H), db_x (3H,), db_h (3H,)
    """
    x, h_prev, W_x, W_h, R, Z, H_tilde, A_hn, RH, reset_after = cache
    W_hr, W_hz, W_hn = gru_gate_blocks(W_h)
    # forward: H = Z*H_prev + (1-Z)*H_tilde  ->  dZ = dH*(H_prev - H_tilde), dH_tilde = dH*(1-Z), dH_prev = dH*Z
    dZ = dH * (h_prev - H_tilde)
    dH_tilde = dH * (1.0 - Z)
    dh_prev = dH * Z
    # forward: H_tilde = tanh(A_n)           ->  dA_n = dH_tilde * (1 - H_tilde²)   (A_n: the tanh's argument)
    dA_n = dH_tilde * (1.0 - H_tilde ** 2)
    if reset_after:
        # forward: A_n = A_x,n + R*A_h,n      ->  dA_x,n = dA_n, dR = dA_n*A_h,n, dA_h,n = dA_n*R
        dR = dA_n * A_hn
        dA_hn = dA_n * R
        # forward: A_h,n = H_prev W_h,n + b_h,n  ->  dW_h,n = H_prevᵀ dA_h,n, db_h,n = Σ dA_h,n,
        #                                             dH_prev += dA_h,n W_h,nᵀ
        dW_hn = h_prev.T @ dA_hn
        db_hn = dA_hn.sum(axis=0)
        dh_prev += dA_hn @ W_hn.T
    else:
        # forward: A_n = A_x,n + RH W_h,n + b_h,n  ->  dRH = dA_n W_h,nᵀ, dW_h,n = RHᵀ dA_n, db_h,n = Σ_n dA_n
        dRH = dA_n @ W_hn.T
        dW_hn = RH.T @ dA_n
        db_hn = dA_n.sum(axis=0)
        # forward: RH = R*H_prev              ->  dR = dRH*H_prev, dH_prev += dRH*R
        dR = dRH * h_prev
        dh_prev += dRH * R
    # forward: R = σ(A_r), Z = σ(A_z)        ->  dA_r = dR*R(1-R), dA_z = dZ*Z(1-Z)
    dA_r = dR * R * (1.0 - R)
    dA_z = dZ * Z * (1.0 - Z)
    # forward: A_r = A_x,r + H_prev W_h,r + b_h,r (same for z)  ->  dW_h,r = H_prevᵀ dA_r, db_h,r = Σ dA_r,
    #                                                               dH_prev += dA_r W_h,rᵀ
    dW_h = np.concatenate([h_prev.T @ dA_r, h_prev.T @ dA_z, dW_hn], axis=-1)      # (H, 3H)
    db_h = np.concatenate([dA_r.sum(axis=0), dA_z.sum(axis=0), db_hn])             # (3H,)
    dh_prev += dA_r @ W_hr.T + dA_z @ W_hz.T
    # forward: A_x = X W_x + b_x             ->  dW_x = Xᵀ dA_x, db_x = Σ_n dA_x, dX = dA_x W_xᵀ
    dA_x = np.concatenate([dA_r, dA_z, dA_n], axis=-1)                             # (N, 3H), GRU_GATES order
    dW_x = x.T @ dA_x
    db_x = dA_x.sum(axis=0)
    dx = dA_x @ W_x.T
    return dx, dh_prev, dW_x, dW_h, db_x, db_h
