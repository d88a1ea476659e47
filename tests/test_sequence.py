"""The sequence (T steps, BPTT): finite differences, T = 1 == one cell step, split == whole, mask, overflow."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, nonzero, padding_mask
from npylstm.cell import step_backward, step_forward
from npylstm.gradcheck import FD_FLOOR, numeric_gradient
from npylstm.sequence import sequence_backward, sequence_forward

FD_RTOL = 1e-6        # float64 central differences vs hand-derived BPTT (~1e-9 seen)
SAME_RTOL = 1e-12     # the same float64 arithmetic regrouped (fused gate tanh, hoisted GEMMs)
F32_RTOL = 1e-4       # float32 run vs float64 run of the same problem (T <= 6 steps of rounding)
SEQ_ARGS = ["x", "h0", "c0", "W_x", "W_h", "b"]


@st.composite
def sequence_cases(draw, masks=(None, "pre", "post")):
    return dict(T=draw(st.integers(1, 6)), N=draw(st.integers(1, 5)), D=draw(st.integers(1, 7)),
                H=draw(st.integers(1, 7)), scale=draw(st.floats(0.1, 10.0)),
                mask=draw(st.sampled_from(masks)), seed=draw(st.integers(0, 2**32 - 1)),
                fold=draw(st.booleans()))      # both ways of taking the input product (by size, H <= 7: never folded)


def sequence_problem(T, N, D, H, scale, mask, seed, dtype=np.float64, fold=None):
    """Arguments of sequence_forward (all random non-zero) and upstream gradients (dY, dh_T, dc_T)."""
    rng = np.random.default_rng(seed)
    k = scale / np.sqrt(D + H)
    args = dict(x=nonzero(rng, (T, N, D)), h0=nonzero(rng, (N, H)), c0=nonzero(rng, (N, H)),
                W_x=nonzero(rng, (D, 4 * H), k), W_h=nonzero(rng, (H, 4 * H), k), b=nonzero(rng, 4 * H, scale / 2))
    args = {n: a.astype(dtype) for n, a in args.items()}
    args["fold"] = fold
    up = tuple(a.astype(dtype) for a in (nonzero(rng, (T, N, H)), nonzero(rng, (N, H)), nonzero(rng, (N, H))))
    return args, padding_mask(rng, T, N, mask), up


@pytest.mark.parametrize("name", SEQ_ARGS)
@settings(deadline=None, max_examples=60)
@given(case=sequence_cases())
def test_sequence_backward_matches_finite_differences(name, case):
    args, mask, (dY, dh, dc) = sequence_problem(**case)

    def loss():
        Y, h_T, c_T, _ = sequence_forward(**args, mask=mask)
        return float(np.sum(dY * Y) + np.sum(dh * h_T) + np.sum(dc * c_T))

    cache = sequence_forward(**args, mask=mask)[3]
    analytic = dict(zip(SEQ_ARGS, sequence_backward(dY, dh, dc, cache)))[name]
    assert_close(analytic, numeric_gradient(loss, args[name]), FD_RTOL, f"d{name}", floor=FD_FLOOR)


@settings(deadline=None, max_examples=30)
@given(case=sequence_cases(masks=(None,)))
def test_one_step_sequence_is_one_cell_step(case):
    case["T"] = 1
    args, _, (dY, dh, dc) = sequence_problem(**case)
    Y, h_T, c_T, cache = sequence_forward(**args)
    h, c, cell_cache = step_forward(args["x"][0], args["h0"], args["c0"], args["W_x"], args["W_h"], args["b"])
    assert_close(Y[0], h, SAME_RTOL, "Y")
    assert_close(h_T, h, SAME_RTOL, "h_T")
    assert_close(c_T, c, SAME_RTOL, "c_T")
    seq_grads = sequence_backward(dY, dh, dc, cache)
    cell_grads = step_backward(dY[0] + dh, dc, cell_cache)
    for name, g_seq, g_cell in zip(SEQ_ARGS, seq_grads, cell_grads):
        assert_close(g_seq, g_cell[None] if name == "x" else g_cell, SAME_RTOL, f"d{name}")


@settings(deadline=None, max_examples=30)
@given(case=sequence_cases(), split=st.integers(0, 4))
def test_split_sequence_equals_whole(case, split):
    """Two calls carrying (h, c) == one call, forward; backward: dh0, dc0 of the 2nd half are dstate of the 1st."""
    case["T"] = T = max(case["T"], 2)
    s = 1 + split % (T - 1)                          # first call: steps [0, s), second: [s, T), both non-empty
    args, mask, (dY, dh, dc) = sequence_problem(**case)
    x, W = args["x"], (args["W_x"], args["W_h"], args["b"])
    m1, m2 = (None, None) if mask is None else (mask[:s], mask[s:])
    Y, h_T, c_T, cache = sequence_forward(**args, mask=mask)
    Y1, h1, c1, cache1 = sequence_forward(x[:s], args["h0"], args["c0"], *W, mask=m1)
    Y2, h2, c2, cache2 = sequence_forward(x[s:], h1, c1, *W, mask=m2)
    assert_close(np.concatenate([Y1, Y2]), Y, SAME_RTOL, "Y")
    assert_close(h2, h_T, SAME_RTOL, "h_T")
    assert_close(c2, c_T, SAME_RTOL, "c_T")

    whole = sequence_backward(dY, dh, dc, cache)
    dx2, dh1, dc1, *dW2 = sequence_backward(dY[s:], dh, dc, cache2)
    dx1, dh0, dc0, *dW1 = sequence_backward(dY[:s], dh1, dc1, cache1)
    parts = (np.concatenate([dx1, dx2]), dh0, dc0) + tuple(u + v for u, v in zip(dW1, dW2))
    for name, g_whole, g_parts in zip(SEQ_ARGS, whole, parts):
        assert_close(g_parts, g_whole, SAME_RTOL, f"d{name}")


@settings(deadline=None, max_examples=30)
@given(case=sequence_cases(masks=("pre", "post")))
def test_masked_steps_leave_the_state_unchanged(case):
    """Where mask is False: H_t = H_{t-1}, C_t = C_{t-1}; a row's result == running only its real steps."""
    args, mask, _ = sequence_problem(**case)
    Y, h_T, c_T, cache = sequence_forward(**args, mask=mask)
    Hs = np.concatenate([args["h0"][None], Y])                  # (T+1, N, H)
    Cs = cache.Cs
    off = ~mask
    np.testing.assert_array_equal(Hs[1:][off], Hs[:-1][off])
    np.testing.assert_array_equal(Cs[1:][off], Cs[:-1][off])
    W = (args["W_x"], args["W_h"], args["b"])
    for n in range(case["N"]):
        real = mask[:, n]
        h, c = args["h0"][n:n + 1], args["c0"][n:n + 1]
        if real.any():
            _, h, c, _ = sequence_forward(args["x"][real, n:n + 1], h, c, *W)
        assert_close(h_T[n:n + 1], h, SAME_RTOL, f"h_T row {n}")
        assert_close(c_T[n:n + 1], c, SAME_RTOL, f"c_T row {n}")


@pytest.mark.parametrize("mask", [None, "post"])
def test_folded_input_product_equals_hoisted(mask):
    """D small next to H: [X_t | 1] rides in each step's product (fold picked by size); same as hoisting it."""
    args, m, up = sequence_problem(5, 3, 1, 12, 3.0, mask, seed=8)
    del args["fold"]
    folded, hoisted = sequence_forward(**args, mask=m), sequence_forward(**args, mask=m, fold=False)
    for u, v, what in zip(hoisted[:3], folded[:3], ("Y", "h_T", "c_T")):
        assert_close(v, u, SAME_RTOL, what)
    for u, v, name in zip(sequence_backward(*up, hoisted[3]), sequence_backward(*up, folded[3]), SEQ_ARGS):
        assert_close(v, u, SAME_RTOL, f"d{name}")


@pytest.mark.parametrize("mask", [None, "pre"])
def test_each_row_alone_gives_that_rows_results(mask):
    """Rows of a batch are independent: row n run alone (N = 1) gives row n's outputs and gradients,
    and the rows' weight gradients add up to the batch's."""
    args, m, (dY, dh, dc) = sequence_problem(5, 3, 4, 6, 3.0, mask, seed=5)
    Y, h_T, c_T, cache = sequence_forward(**args, mask=m)
    dx, dh0, dc0, *dW = sequence_backward(dY, dh, dc, cache)
    dW_rows = [np.zeros_like(w) for w in dW]
    for n in range(3):
        one = dict(args, x=args["x"][:, n:n + 1], h0=args["h0"][n:n + 1], c0=args["c0"][n:n + 1])
        Y1, h1, c1, cache1 = sequence_forward(**one, mask=None if m is None else m[:, n:n + 1])
        dx1, dh01, dc01, *dW1 = sequence_backward(dY[:, n:n + 1], dh[n:n + 1], dc[n:n + 1], cache1)
        for u, v, what in zip((Y, h_T, c_T, dx, dh0, dc0), (Y1, h1, c1, dx1, dh01, dc01),
                              ("Y", "h_T", "c_T", "dx", "dh0", "dc0")):
            assert_close(v, u[:, n:n + 1] if u.ndim == 3 else u[n:n + 1], SAME_RTOL, f"{what} row {n}")
        for acc, w in zip(dW_rows, dW1):
            acc += w
    for u, v, name in zip(dW, dW_rows, SEQ_ARGS[3:]):
        assert_close(v, u, SAME_RTOL, f"d{name}")


def test_all_true_mask_equals_no_mask():
    args, _, (dY, dh, dc) = sequence_problem(5, 3, 4, 6, 3.0, None, seed=3)
    ones = np.ones((5, 3), bool)
    a = sequence_forward(**args)
    b = sequence_forward(**args, mask=ones)
    for u, v, what in zip(a[:3], b[:3], ("Y", "h_T", "c_T")):
        assert_close(v, u, SAME_RTOL, what)
    for u, v, name in zip(sequence_backward(dY, dh, dc, a[3]), sequence_backward(dY, dh, dc, b[3]), SEQ_ARGS):
        assert_close(v, u, SAME_RTOL, f"d{name}")


@pytest.mark.parametrize("mask", [None, "pre"])
def test_float32_tracks_float64(mask):
    case = dict(T=6, N=4, D=5, H=7, scale=3.0, mask=mask, seed=11)
    a64, m, up64 = sequence_problem(**case)
    a32, _, up32 = sequence_problem(**case, dtype=np.float32)
    out64, out32 = sequence_forward(**a64, mask=m), sequence_forward(**a32, mask=m)
    for u, v, what in zip(out64[:3], out32[:3], ("Y", "h_T", "c_T")):
        assert v.dtype == np.float32
        assert_close(v, u, F32_RTOL, what)
    for u, v, name in zip(sequence_backward(*up64, out64[3]), sequence_backward(*up32, out32[3]), SEQ_ARGS):
        assert v.dtype == np.float32, name
        assert_close(v, u, F32_RTOL, f"d{name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask", [None, "post"])
def test_activations_overflow_safe(dtype, mask):
    """Pre-activations up to ±1e4, every gate saturated both ways: no warning, nothing inf or NaN."""
    rng = np.random.default_rng(5)
    T, N, D, H = 4, 3, 2, 5
    x = rng.uniform(0.5, 1.0, (T, N, D)).astype(dtype)
    W_x = (rng.choice([-1.0, 1.0], (D, 4 * H)) * 1e4 / D).astype(dtype)
    W_h = (rng.choice([-1.0, 1.0], (H, 4 * H)) * 10.0).astype(dtype)
    b = nonzero(rng, 4 * H).astype(dtype)
    h0, c0 = nonzero(rng, (N, H)).astype(dtype), nonzero(rng, (N, H)).astype(dtype)
    m = padding_mask(rng, T, N, mask)
    assert np.abs(x.reshape(-1, D) @ W_x).max() > 5e3
    with np.errstate(all="raise"):
        Y, h_T, c_T, cache = sequence_forward(x, h0, c0, W_x, W_h, b, mask=m)
        grads = sequence_backward(nonzero(rng, (T, N, H)).astype(dtype), nonzero(rng, (N, H)).astype(dtype),
                                  nonzero(rng, (N, H)).astype(dtype), cache)
    for name, a in zip(["Y", "h_T", "c_T"] + SEQ_ARGS, (Y, h_T, c_T) + grads):
        assert a.dtype == dtype, name
        assert np.all(np.isfinite(a)), name


@pytest.mark.parametrize("mask", [None, "pre", "post"])
@pytest.mark.parametrize("chunk_steps", [0.5, 1, 2, 4])
def test_backward_factor_chunks_do_not_change_the_result(monkeypatch, mask, chunk_steps):
    """The backward computes its per-step factors a chunk of steps at a time; any chunking gives the same bits.
    A budget smaller than one step (a large batch: N·5H·itemsize over CHUNK_BYTES) still runs one step a chunk."""
    import npylstm.sequence as seq
    T, N, D, H = 7, 3, 2, 4
    args, m, up = sequence_problem(T, N, D, H, 4.0, mask, seed=21)
    cache = sequence_forward(**args, mask=m)[3]
    whole = sequence_backward(*up, cache)                     # default: all 7 steps in one chunk
    monkeypatch.setattr(seq, "CHUNK_BYTES", int(chunk_steps * N * 5 * H * 8))
    chunked = sequence_backward(*up, cache)
    for name, a, b in zip(SEQ_ARGS, whole, chunked):
        np.testing.assert_array_equal(b, a, err_msg=f"d{name}")
