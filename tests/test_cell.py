"""The reference cell: step_backward against central differences; overflow-safe activations."""

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from conftest import assert_close, nonzero
from npylstm.cell import GATES, gate_blocks, sigmoid, step_backward, step_forward
from npylstm.gradcheck import FD_FLOOR, numeric_gradient

FD_RTOL = 1e-6        # float64 central differences (4-point, eps 1e-4) agree with the hand-derived backward to ~1e-11
EXACT_RTOL = 1e-13    # two float64 formulas of the same function, a few roundings apart
CELL_ARGS = ["x", "h_prev", "c_prev", "W_x", "W_h", "b"]
SATURATED = 8.0       # |A| beyond this: σ'(A) < 3.4e-4, the gate is saturated


@st.composite
def cell_cases(draw):
    """N in [1,5], D and H in [1,7], a weight scale up to 10 (reaches saturated gates), a seed for the arrays."""
    return dict(N=draw(st.integers(1, 5)), D=draw(st.integers(1, 7)), H=draw(st.integers(1, 7)),
                scale=draw(st.floats(0.1, 10.0)), seed=draw(st.integers(0, 2**32 - 1)))


def cell_problem(N, D, H, scale, seed):
    """Arrays for one step (biases, states, upstream gradients all random non-zero), float64."""
    rng = np.random.default_rng(seed)
    k = scale / np.sqrt(D + H)
    args = dict(x=nonzero(rng, (N, D)), h_prev=nonzero(rng, (N, H)), c_prev=nonzero(rng, (N, H)),
                W_x=nonzero(rng, (D, 4 * H), k), W_h=nonzero(rng, (H, 4 * H), k), b=nonzero(rng, 4 * H, scale / 2))
    return args, nonzero(rng, (N, H)), nonzero(rng, (N, H))


def preactivation(args):
    return args["x"] @ args["W_x"] + args["h_prev"] @ args["W_h"] + args["b"]


def test_strategy_reaches_saturated_gates():
    case = find(cell_cases(), lambda c: np.abs(preactivation(cell_problem(**c)[0])).max() > SATURATED)
    assert np.abs(preactivation(cell_problem(**case)[0])).max() > SATURATED


@pytest.mark.parametrize("name", CELL_ARGS)
@settings(deadline=None, max_examples=60)
@given(case=cell_cases())
def test_step_backward_matches_finite_differences(name, case):
    args, dH, dC = cell_problem(**case)

    def loss():
        h, c, _ = step_forward(**args)
        return float(np.sum(dH * h) + np.sum(dC * c))

    _, _, cache = step_forward(**args)
    analytic = dict(zip(CELL_ARGS, step_backward(dH, dC, cache)))[name]
    assert_close(analytic, numeric_gradient(loss, args[name]), FD_RTOL, f"d{name}", floor=FD_FLOOR)


def test_step_forward_is_the_equations():
    """The gate columns are i, f, g, o and sigmoid is 1 / (1 + exp(-A)) (moderate A, so exp is safe)."""
    args, _, _ = cell_problem(3, 4, 5, 2.0, seed=1)
    A = preactivation(args)
    A_i, A_f, A_g, A_o = np.split(A, 4, axis=1)
    logistic = lambda a: 1.0 / (1.0 + np.exp(-a))
    C = logistic(A_f) * args["c_prev"] + logistic(A_i) * np.tanh(A_g)
    H = logistic(A_o) * np.tanh(C)
    h, c, cache = step_forward(**args)
    assert GATES == ("i", "f", "g", "o")
    assert_close(c, C, EXACT_RTOL, "C")
    assert_close(h, H, EXACT_RTOL, "H")
    assert_close(cache.I, logistic(A_i), EXACT_RTOL, "I")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0, "mixed"])
def test_activations_overflow_safe(dtype, sign):
    """Pre-activations up to ±1e4: no warning, nothing inf or NaN, forward and backward."""
    rng = np.random.default_rng(7)
    N, D, H = 3, 2, 4
    x = rng.uniform(0.5, 1.0, (N, D)).astype(dtype)
    signs = rng.choice([-1.0, 1.0], (D, 4 * H)) if sign == "mixed" else sign
    W_x = (np.full((D, 4 * H), 1e4 / D) * signs).astype(dtype)
    b = np.zeros(4 * H, dtype)
    h_prev, c_prev = nonzero(rng, (N, H)).astype(dtype), nonzero(rng, (N, H)).astype(dtype)
    W_h = nonzero(rng, (H, 4 * H)).astype(dtype)
    assert np.abs(x @ W_x).max() > 5e3
    with np.errstate(all="raise"):
        assert np.all(np.isfinite(sigmoid(np.array([-1e4, -1e3, 0, 1e3, 1e4], dtype))))
        h, c, cache = step_forward(x, h_prev, c_prev, W_x, W_h, b)
        grads = step_backward(nonzero(rng, (N, H)).astype(dtype), nonzero(rng, (N, H)).astype(dtype), cache)
    for name, a in zip(["h", "c"] + CELL_ARGS, (h, c) + grads):
        assert a.dtype == dtype, name
        assert np.all(np.isfinite(a)), name
    assert np.all(np.abs(h) <= 1)


def test_gate_blocks_are_views_in_gate_order():
    A = np.arange(2 * 12.0).reshape(2, 12)
    blocks = gate_blocks(A)
    assert len(blocks) == len(GATES)
    for k, blk in enumerate(blocks):
        assert np.shares_memory(blk, A)
        np.testing.assert_array_equal(blk, A[:, 3 * k:3 * (k + 1)])
