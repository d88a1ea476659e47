"""Finite-difference check of every gradient, in float64: the cell, the sequence and the layer.

For a scalar loss of the outputs with random upstream gradients,

    loss = Σ dY ⊙ Y + Σ dh_T ⊙ h_T + Σ dc_T ⊙ c_T          (dY, dh_T, dc_T random, non-zero)

the gradient backward returns for a tensor P is compared, entry by entry, with the fourth-order central
difference (L(s) = loss(P + s e_k))

    dloss/dP[k] ≈ (L(−2ε) − 8 L(−ε) + 8 L(ε) − L(2ε)) / 12ε

and each tensor gets one number, its relative error

    max|analytic − numeric| / max(max|analytic|, max|numeric|, FD_FLOOR).

Biases, initial states and upstream gradients are all drawn random and non-zero (a zero bias hides a
backward that uses the wrong bias). `npylstm gradcheck` prints the table and exits 1 if a tensor fails.

    rows = check_gradients(layers=2, hidden=4, steps=5, batch=3, seed=0)   # [GradcheckRow, ...]
"""

from typing import NamedTuple

import numpy as np

from .cell import step_backward, step_forward
from .checks import check_positive_int
from .lstm import LSTM, param_names
from .sequence import sequence_backward, sequence_forward

FD_EPS = 1e-4     # step of the 4-point stencil: truncation O(ε⁴) ≈ 1e-16 f⁽⁵⁾, round-off ~1.5 ulp(loss)/ε ≈ 1e-11.
                  # (The 2-point stencil at ε = 1e-6 had round-off ulp(loss)/2ε ≈ 2e-10, above the 1e-10
                  # the floor below allows: hypothesis found such a case, T=2, N=1, D=3, H=1, L=3, seed 6.)
FD_FLOOR = 1e-4   # the round-off above (~1e-11) is 1e-7 of this: a tensor whose gradients all sit below
                  # it (fully saturated gates) is held to max|a − b| < REL_TOL * FD_FLOOR = 1e-10 instead
REL_TOL = 1e-6    # the pass mark; float64 BPTT agrees with these differences to ~1e-10 or better

LEVELS = ("cell", "sequence", "layer")


class GradcheckRow(NamedTuple):
    level: str          # "cell", "sequence" or "layer"
    tensor: str         # "x", "h0", "c0", "W_x", ... (the layer's: "W_x_l0", ...)
    shape: tuple
    max_rel_error: float
    passed: bool


def rel_error(a, b, floor=FD_FLOOR):
    """max|a − b| / max(max|a|, max|b|, floor): one number per tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), floor)
    return float(np.abs(a - b).max()) / scale


def numeric_gradient(loss, a, eps=FD_EPS):
    """Fourth-order central differences of the scalar `loss()` with respect to the array `a` (which loss
    reads; any layout whose flat view is a view, e.g. C-contiguous).

    `a` is perturbed in place one entry at a time and restored exactly (the saved value is written
    back), so the caller's arrays are unchanged afterwards.
    """
    grad = np.empty(a.shape, np.float64)
    flat, g = a.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, a):
        raise ValueError("numeric_gradient: a must be contiguous (it is perturbed in place through a flat view)")
    for k in range(flat.size):
        saved = flat[k]
        L = []
        for step in (-2 * eps, -eps, eps, 2 * eps):
            flat[k] = saved + step
            L.append(loss())
        flat[k] = saved
        g[k] = (L[0] - 8 * L[1] + 8 * L[2] - L[3]) / (12 * eps)
    return grad


def compare(level, analytic, arrays, loss, tol=REL_TOL, eps=FD_EPS):
    """One GradcheckRow per name in `analytic` (a dict name -> gradient); arrays[name] is what loss reads."""
    rows = []
    for name, grad in analytic.items():
        numeric = numeric_gradient(loss, arrays[name], eps)
        err = rel_error(grad, numeric)
        rows.append(GradcheckRow(level, name, tuple(grad.shape), err, bool(err < tol)))
    return rows


def _draw(rng, shape, scale=1.0):
    """Random, non-zero, float64: scale * U(±[0.1, 1]) -- no entry is near zero."""
    return scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def _weights(rng, D, H, weight_scale):
    """W_x (D, 4H), W_h (H, 4H), b (4H,): weights U(±weight_scale/√(D+H)), bias non-zero."""
    k = weight_scale / np.sqrt(D + H)
    return _draw(rng, (D, 4 * H), k), _draw(rng, (H, 4 * H), k), _draw(rng, 4 * H, weight_scale * 0.5)


def check_cell(rng, N, D, H, weight_scale=1.0, tol=REL_TOL):
    """step_forward / step_backward against central differences: x, h_prev, c_prev, W_x, W_h, b."""
    W_x, W_h, b = _weights(rng, D, H, weight_scale)
    a = dict(x=_draw(rng, (N, D)), h_prev=_draw(rng, (N, H)), c_prev=_draw(rng, (N, H)), W_x=W_x, W_h=W_h, b=b)
    dH, dC = _draw(rng, (N, H)), _draw(rng, (N, H))

    def loss():
        h, c, _ = step_forward(a["x"], a["h_prev"], a["c_prev"], a["W_x"], a["W_h"], a["b"])
        return float(np.sum(dH * h) + np.sum(dC * c))

    _, _, cache = step_forward(a["x"], a["h_prev"], a["c_prev"], a["W_x"], a["W_h"], a["b"])
    grads = step_backward(dH, dC, cache)
    return compare("cell", dict(zip(a, grads)), a, loss, tol)


def check_sequence(rng, T, N, D, H, weight_scale=1.0, mask=None, tol=REL_TOL):
    """sequence_forward / sequence_backward against central differences: x, h0, c0, W_x, W_h, b."""
    W_x, W_h, b = _weights(rng, D, H, weight_scale)
    a = dict(x=_draw(rng, (T, N, D)), h0=_draw(rng, (N, H)), c0=_draw(rng, (N, H)), W_x=W_x, W_h=W_h, b=b)
    dY, dh, dc = _draw(rng, (T, N, H)), _draw(rng, (N, H)), _draw(rng, (N, H))

    def forward():
        return sequence_forward(a["x"], a["h0"], a["c0"], a["W_x"], a["W_h"], a["b"], mask)

    def loss():
        Y, h_T, c_T, _ = forward()
        return float(np.sum(dY * Y) + np.sum(dh * h_T) + np.sum(dc * c_T))

    cache = forward()[3]
    grads = sequence_backward(dY, dh, dc, cache)
    return compare("sequence", dict(zip(a, grads)), a, loss, tol)


def check_layer(rng, T, N, D, H, layers, weight_scale=1.0, batch_first=False, mask=None, tol=REL_TOL):
    """LSTM.forward / LSTM.backward against central differences: x, h0, c0 and every layer's W_x, W_h, b.

    mask, if given, is in the layer's layout ((T, N), or (N, T) with batch_first).
    """
    lstm = LSTM(D, H, num_layers=layers, batch_first=batch_first, dtype=np.float64)
    for layer in range(layers):
        for name, w in zip(param_names(layer), _weights(rng, D if layer == 0 else H, H, weight_scale)):
            lstm.params[name] = w
    x = _draw(rng, (N, T, D) if batch_first else (T, N, D))
    a = dict(x=x, h0=_draw(rng, (layers, N, H)), c0=_draw(rng, (layers, N, H)), **lstm.params)
    dy = _draw(rng, x.shape[:-1] + (H,))
    dh, dc = _draw(rng, (layers, N, H)), _draw(rng, (layers, N, H))

    def loss():
        y, (h_n, c_n) = lstm(a["x"], (a["h0"], a["c0"]), mask)
        return float(np.sum(dy * y) + np.sum(dh * h_n) + np.sum(dc * c_n))

    lstm(a["x"], (a["h0"], a["c0"]), mask)
    lstm.zero_grad()
    dx, (dh0, dc0) = lstm.backward(dy, (dh, dc))
    analytic = dict(x=dx, h0=dh0, c0=dc0, **lstm.grads)
    return compare("layer", analytic, a, loss, tol)


def check_gradients(layers=2, hidden=4, steps=5, batch=3, input_size=3, seed=0, weight_scale=2.0, tol=REL_TOL):
    """Check every gradient of the cell, the sequence and an L-layer LSTM; returns a list of GradcheckRow.

    weight_scale widens the weights (U(±scale/√(D+H))) so that some gates run saturated.
    """
    where = "check_gradients"
    for name, v in (("layers", layers), ("hidden", hidden), ("steps", steps), ("batch", batch),
                    ("input_size", input_size)):
        check_positive_int(where, name, v)
    if not (np.isfinite(weight_scale) and weight_scale > 0):
        raise ValueError(f"{where}: weight_scale must be a positive number, got {weight_scale!r}")
    rng = np.random.default_rng(seed)
    T, N, D, H = steps, batch, input_size, hidden
    return (check_cell(rng, N, D, H, weight_scale, tol=tol)
            + check_sequence(rng, T, N, D, H, weight_scale, tol=tol)
            + check_layer(rng, T, N, D, H, layers, weight_scale, tol=tol))


def format_table(rows, tol=REL_TOL):
    """The fixed-width table `npylstm gradcheck` prints."""
    lines = [f"{'level':<9} {'tensor':<8} {'shape':<14} {'max rel error':>13}  result",
             f"{'-' * 9} {'-' * 8} {'-' * 14} {'-' * 13}  ------"]
    for r in rows:
        shape = str(tuple(r.shape))
        lines.append(f"{r.level:<9} {r.tensor:<8} {shape:<14} {r.max_rel_error:>13.2e}  {'pass' if r.passed else 'FAIL'}")
    failed = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - failed}/{len(rows)} tensors pass (tolerance {tol:.0e}, 4-point central differences, "
                 f"eps {FD_EPS:.0e}, float64)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI: npylstm gradcheck
def add_arguments(parser):
    parser.add_argument("--layers", type=int, default=2, help="stacked LSTM layers (default 2)")
    parser.add_argument("--hidden", type=int, default=4, help="hidden size H (default 4)")
    parser.add_argument("--steps", type=int, default=5, help="time steps T (default 5)")
    parser.add_argument("--batch", type=int, default=3, help="batch size N (default 3)")
    parser.add_argument("--input-size", type=int, default=3, help="input size D (default 3)")
    parser.add_argument("--scale", type=float, default=2.0,
                        help="weight scale: weights U(±scale/sqrt(D+H)); larger saturates gates (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args):
    try:
        rows = check_gradients(layers=args.layers, hidden=args.hidden, steps=args.steps, batch=args.batch,
                         input_size=args.input_size, seed=args.seed, weight_scale=args.scale)
    except ValueError as e:
        print(f"npylstm gradcheck: {e}")
        return 2
    print(f"gradient check: layers={args.layers} hidden={args.hidden} steps={args.steps} batch={args.batch} "
          f"input_size={args.input_size} scale={args.scale} seed={args.seed}")
    print(format_table(rows))
    return 0 if all(r.passed for r in rows) else 1
