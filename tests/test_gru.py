"""GRU: the reference cell, the sequence loop and the layer, against finite differences, each other,
PyTorch's nn.GRU and a transcription of Keras's GRUCell; layout, stateful and mask invariants; misuse.

Every bias, initial state and upstream gradient is drawn random and non-zero.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npylstm import (GRU, from_keras, from_torch, gru_sequence_backward, gru_sequence_forward, gru_step_backward,
                     gru_step_forward, to_keras, to_torch_state_dict)
from npylstm.gradcheck import numeric_gradient
from npylstm.gru import gru_param_names

FD_RTOL = 1e-4        # worst seen over ~2400 draws: 3e-6, truncation where weights ~3 make f''' ~w³ large
FD_FLOOR = 1e-4       # a tensor whose gradients all lie below this is held to ~1e-8 absolute (round-off ~1e-9)
SAME_MATH_RTOL = 1e-12  # cell vs sequence in float64: same math, different operation order
TORCH_F64_RTOL = 1e-10  # nn.GRU in float64: different summation order only
TORCH_F32_RTOL = 1e-4   # nn.GRU in float32: ~T·L roundings of 6e-8 amplified by the recurrence
TINY = np.finfo(np.float64).tiny


def rel_err(a, b, floor=TINY):
    """max|a − b| / max(max|a|, max|b|, floor) for one tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), floor))


def assert_close(name, got, want, rtol, floor=TINY):
    """Fail with the evidence: relative error, max |a − b| and where, the two values there, the tolerance."""
    err = rel_err(got, want, floor)
    if not err <= rtol:
        diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
        at = np.unravel_index(int(diff.argmax()), diff.shape)
        raise AssertionError(f"{name}: relative error {err:.3e} > {rtol:.1e}; max |a − b| = {diff.max():.3e} "
                             f"at {at}: got {np.asarray(got)[at]!r}, want {np.asarray(want)[at]!r}")


def random_gru(rng, D, H, L, reset_after, w_scale, **options):
    """A float64 GRU with normal(0, w_scale) weights (large w_scale saturates the gates) and normal biases."""
    gru = GRU(D, H, num_layers=L, dtype=np.float64, reset_after=reset_after, **options)
    for name, p in gru.params.items():
        scale = 1.0 if name.startswith("b_") else w_scale
        gru.params[name] = rng.normal(0.0, scale, p.shape)
    return gru


# ---------------------------------------------------------------------------------------------- cell

CELL_ARGS = ["x", "h_prev", "W_x", "W_h", "b_x", "b_h"]


def cell_args(rng, N, D, H, w_scale=1.0):
    return {"x": rng.normal(size=(N, D)), "h_prev": rng.uniform(-1, 1, (N, H)),
            "W_x": rng.normal(0, w_scale, (D, 3 * H)), "W_h": rng.normal(0, w_scale, (H, 3 * H)),
            "b_x": rng.normal(size=3 * H), "b_h": rng.normal(size=3 * H)}


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("wrt", CELL_ARGS)
def test_cell_backward_matches_finite_differences(wrt, reset_after):
    rng = np.random.default_rng(7)
    args = cell_args(rng, N=3, D=4, H=5, w_scale=2.0)
    dH = rng.normal(size=(3, 5))

    def loss():
        H, _ = gru_step_forward(**args, reset_after=reset_after)
        return float((H * dH).sum())

    _, cache = gru_step_forward(**args, reset_after=reset_after)
    analytic = dict(zip(CELL_ARGS, gru_step_backward(dH, cache)))[wrt]
    assert_close(f"d{wrt}", analytic, numeric_gradient(loss, args[wrt]), FD_RTOL, FD_FLOOR)


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 4), T=st.integers(1, 5), D=st.integers(1, 6), H=st.integers(1, 6),
       reset_after=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_sequence_equals_chained_cells(N, T, D, H, reset_after, seed):
    """T = 1: the sequence is one cell step; T > 1: the sequence is the cells chained, forward and backward."""
    rng = np.random.default_rng(seed)
    a = cell_args(rng, N, D, H, w_scale=1.5)
    x = rng.normal(size=(T, N, D))
    dY, dh_T = rng.normal(size=(T, N, H)), rng.normal(size=(N, H))
    Y, h_T, cache = gru_sequence_forward(x, a["h_prev"], a["W_x"], a["W_h"], a["b_x"], a["b_h"], reset_after)
    h, caches = a["h_prev"], []
    for t in range(T):
        h, c = gru_step_forward(x[t], h, a["W_x"], a["W_h"], a["b_x"], a["b_h"], reset_after)
        assert_close(f"Y[{t}]", Y[t], h, SAME_MATH_RTOL)
        caches.append(c)
    assert_close("h_T", h_T, h, SAME_MATH_RTOL)

    got = gru_sequence_backward(dY, dh_T, cache)
    dh, dxs, sums = dh_T, [None] * T, [0.0] * 4
    for t in reversed(range(T)):
        dxs[t], dh, *dparams = gru_step_backward(dh + dY[t], caches[t])
        sums = [s + d for s, d in zip(sums, dparams)]
    for name, g, w in zip(["dx", "dh0", "dW_x", "dW_h", "db_x", "db_h"], got, [np.stack(dxs), dh, *sums]):
        assert_close(name, g, w, SAME_MATH_RTOL)


# ---------------------------------------------------------------------------------------------- layer vs FD

@pytest.mark.parametrize("reset_after", [True, False])
@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 4), T=st.integers(1, 5), D=st.integers(1, 6), H=st.integers(1, 6), L=st.integers(1, 3),
       w_scale=st.floats(0.3, 3.0), masked=st.booleans(), batch_first=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_layer_backward_matches_finite_differences(reset_after, N, T, D, H, L, w_scale, masked, batch_first, seed):
    """Every tensor of every layer: x, h0, W_x, W_h, b_x, b_h; saturating weights; optional padding mask."""
    rng = np.random.default_rng(seed)
    gru = random_gru(rng, D, H, L, reset_after, w_scale, batch_first=batch_first)
    x = rng.normal(size=(N, T, D) if batch_first else (T, N, D))
    h0 = rng.uniform(-1, 1, (L, N, H))
    dy = rng.normal(size=x.shape[:-1] + (H,))
    dh_n = rng.normal(size=(L, N, H))
    mask = rng.random(x.shape[:-1]) < 0.7 if masked else None

    def loss():
        y, h_n = gru(x, h0, mask)
        return float((y * dy).sum() + (h_n * dh_n).sum())

    gru(x, h0, mask)
    dx, dh0 = gru.backward(dy, dh_n)
    analytic = {"x": dx, "h0": dh0, **gru.grads}
    tensors = {"x": x, "h0": h0, **gru.params}
    assert sorted(tensors) == sorted(["x", "h0"] + [k for layer in range(L) for k in gru_param_names(layer)])
    for name, a in tensors.items():
        assert_close(f"d{name}", analytic[name], numeric_gradient(loss, a), FD_RTOL, FD_FLOOR)


# ---------------------------------------------------------------------------------------------- PyTorch

def torch_gru(D, H, L, batch_first, seed):
    torch.manual_seed(seed)
    return torch.nn.GRU(D, H, num_layers=L, batch_first=batch_first).double()


@pytest.mark.parametrize("dtype, rtol", [(np.float64, TORCH_F64_RTOL), (np.float32, TORCH_F32_RTOL)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("L", [1, 2, 3])
def test_matches_torch_gru(L, batch_first, dtype, rtol):
    N, T, D, H = 3, 6, 4, 5
    rng = np.random.default_rng(L * 10 + batch_first)
    module = torch_gru(D, H, L, batch_first, seed=L)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    module = module.to(tdtype)
    gru = from_torch(module)
    assert isinstance(gru, GRU) and gru.dtype == dtype and gru.batch_first == batch_first and gru.num_layers == L
    x = rng.normal(size=(N, T, D) if batch_first else (T, N, D)).astype(dtype)
    h0 = rng.uniform(-1, 1, (L, N, H)).astype(dtype)
    dy = rng.normal(size=x.shape[:-1] + (H,)).astype(dtype)
    dh_n = rng.normal(size=(L, N, H)).astype(dtype)

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    yt, hnt = module(xt, h0t)
    ((yt * torch.tensor(dy)).sum() + (hnt * torch.tensor(dh_n)).sum()).backward()

    y, h_n = gru(x, h0)
    dx, dh0 = gru.backward(dy, dh_n)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close("y", y, yt.detach().numpy(), rtol)
    assert_close("h_n", h_n, hnt.detach().numpy(), rtol)
    assert_close("dx", dx, xt.grad.numpy(), rtol)
    assert_close("dh0", dh0, h0t.grad.numpy(), rtol)
    tgrads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    for layer in range(L):
        n_x, n_h, n_bx, n_bh = gru_param_names(layer)
        assert_close(n_x, gru.grads[n_x], tgrads[f"weight_ih_l{layer}"].T, rtol)
        assert_close(n_h, gru.grads[n_h], tgrads[f"weight_hh_l{layer}"].T, rtol)
        assert_close(n_bx, gru.grads[n_bx], tgrads[f"bias_ih_l{layer}"], rtol)
        assert_close(n_bh, gru.grads[n_bh], tgrads[f"bias_hh_l{layer}"], rtol)


def test_torch_state_dict_round_trip_and_load():
    gru = GRU(3, 4, num_layers=2, dtype=np.float64, seed=1)
    sd = gru.to_torch_state_dict()
    back = from_torch(sd)
    for k in gru.params:
        np.testing.assert_array_equal(back.params[k], gru.params[k])
    module = torch.nn.GRU(3, 4, num_layers=2).double()
    module.load_state_dict(sd, strict=True)
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    assert_close("y", gru(x)[0], module(torch.tensor(x))[0].detach().numpy(), TORCH_F64_RTOL)


def test_torch_gru_without_bias_is_refused_and_loads_with_explicit_zero_biases():
    module = torch.nn.GRU(2, 3, bias=False).double()
    with pytest.raises(ValueError, match="^from_torch: the module has bias=False"):
        from_torch(module)
    with pytest.raises(ValueError, match="^from_torch: missing key 'bias_ih_l0'.*bias=False"):
        from_torch(module.state_dict())
    sd = {**module.state_dict(), "bias_ih_l0": torch.zeros(9, dtype=torch.float64),
          "bias_hh_l0": torch.zeros(9, dtype=torch.float64)}
    gru = from_torch(sd)
    assert not any(gru.params[k].any() for k in ("b_x_l0", "b_h_l0"))
    x = np.random.default_rng(1).normal(size=(4, 2, 2))
    assert_close("y", gru(x)[0], module(torch.tensor(x))[0].detach().numpy(), TORCH_F64_RTOL)


# ---------------------------------------------------------------------------------------------- Keras

def keras_gru_reference(x, kernel, recurrent_kernel, bias, h0):
    """Keras 3 GRUCell.call (implementation 2, sigmoid/tanh), transcribed: blocks [ z | r | h ]; x (T, N, D)."""
    H = recurrent_kernel.shape[0]
    reset_after = bias.ndim == 2
    input_bias, recurrent_bias = (bias[0], bias[1]) if reset_after else (bias, None)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731  (moderate inputs here)
    h, ys = h0, []
    for x_t in x:
        matrix_x = x_t @ kernel + input_bias
        x_z, x_r, x_h = matrix_x[:, :H], matrix_x[:, H:2 * H], matrix_x[:, 2 * H:]
        if reset_after:
            matrix_inner = h @ recurrent_kernel + recurrent_bias
        else:
            matrix_inner = h @ recurrent_kernel[:, :2 * H]
        z = sig(x_z + matrix_inner[:, :H])
        r = sig(x_r + matrix_inner[:, H:2 * H])
        if reset_after:
            recurrent_h = r * matrix_inner[:, 2 * H:]
        else:
            recurrent_h = (r * h) @ recurrent_kernel[:, 2 * H:]
        hh = np.tanh(x_h + recurrent_h)
        h = z * h + (1 - z) * hh
        ys.append(h)
    return np.stack(ys)


def keras_weights(rng, D, H, reset_after):
    bias_shape = (2, 3 * H) if reset_after else (3 * H,)
    return [rng.normal(size=(D, 3 * H)), rng.normal(size=(H, 3 * H)), rng.normal(size=bias_shape)]


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_weights_compute_keras_gru(reset_after):
    rng = np.random.default_rng(3)
    weights = keras_weights(rng, D=3, H=4, reset_after=reset_after)
    gru = from_keras(weights, batch_first=False)
    assert isinstance(gru, GRU) and gru.reset_after == reset_after and gru.dtype == np.float64
    x, h0 = rng.normal(size=(6, 2, 3)), rng.uniform(-1, 1, (2, 4))
    y, _ = gru(x, h0[None])
    assert_close("y", y, keras_gru_reference(x, *weights, h0), SAME_MATH_RTOL)


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_layout_round_trip(reset_after):
    rng = np.random.default_rng(4)
    weights = keras_weights(rng, D=2, H=3, reset_after=reset_after)
    for got, want in zip(to_keras(from_keras(weights)), weights):
        np.testing.assert_array_equal(got, want)
    # and from ours: reset_after=False keeps only b_x + b_h, so compare what the layer computes
    gru = random_gru(rng, 2, 3, 1, reset_after, 1.0)
    again = from_keras(to_keras(gru), batch_first=gru.batch_first)
    x = rng.normal(size=(4, 2, 2))
    assert_close("y", again(x)[0], gru(x)[0], SAME_MATH_RTOL)
    kernel, recurrent, bias = to_keras(gru)
    assert kernel.shape == (2, 9) and recurrent.shape == (3, 9)
    assert bias.shape == ((2, 9) if reset_after else (9,))


# ---------------------------------------------------------------------------------------------- invariants

def test_batch_first_and_unbatched_are_layouts_of_the_same_computation():
    rng = np.random.default_rng(5)
    T, N, D, H, L = 4, 3, 2, 3, 2
    tm = random_gru(rng, D, H, L, True, 1.0)
    bf = GRU(D, H, num_layers=L, batch_first=True, dtype=np.float64)
    bf.params = {k: v.copy() for k, v in tm.params.items()}
    bf.zero_grad()
    x, h0, dy, dh_n = (rng.normal(size=s) for s in [(T, N, D), (L, N, H), (T, N, H), (L, N, H)])
    y, h_n = tm(x, h0)
    dx, dh0 = tm.backward(dy, dh_n)
    y_bf, h_n_bf = bf(x.swapaxes(0, 1), h0)
    dx_bf, dh0_bf = bf.backward(dy.swapaxes(0, 1), dh_n)
    assert_close("y", y_bf.swapaxes(0, 1), y, SAME_MATH_RTOL)
    assert_close("h_n", h_n_bf, h_n, SAME_MATH_RTOL)
    assert_close("dx", dx_bf.swapaxes(0, 1), dx, SAME_MATH_RTOL)
    assert_close("dh0", dh0_bf, dh0, SAME_MATH_RTOL)
    for k in tm.grads:
        assert_close(k, bf.grads[k], tm.grads[k], SAME_MATH_RTOL)
    # unbatched row 1 == batched row 1
    y1, h1 = tm(x[:, 1], h0[:, 1])
    dx1, dh01 = tm.backward(dy[:, 1], dh_n[:, 1])
    assert y1.shape == (T, H) and h1.shape == (L, H) and dx1.shape == (T, D) and dh01.shape == (L, H)
    assert_close("unbatched y", y1, y[:, 1], SAME_MATH_RTOL)
    assert_close("unbatched dx", dx1, dx[:, 1], SAME_MATH_RTOL)
    assert_close("unbatched dh0", dh01, dh0[:, 1], SAME_MATH_RTOL)


@pytest.mark.parametrize("reset_after", [True, False])
def test_mask_holds_the_state_like_a_shorter_sequence(reset_after):
    """Row n padded after lengths[n] steps ends in the state of its unpadded prefix; padded outputs repeat."""
    rng = np.random.default_rng(6)
    T, N, D, H, L = 5, 3, 2, 4, 2
    gru = random_gru(rng, D, H, L, reset_after, 1.5, batch_first=True)
    x, h0 = rng.normal(size=(N, T, D)), rng.uniform(-1, 1, (L, N, H))
    lengths = [5, 2, 1]
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]       # (N, T)
    y, h_n = gru(x, h0, mask)
    for n, ell in enumerate(lengths):
        y_n, h_n_n = gru(x[n, :ell], h0[:, n])
        assert_close(f"h_n row {n}", h_n[:, n], h_n_n, SAME_MATH_RTOL)
        assert_close(f"y row {n}", y[n, :ell], y_n, SAME_MATH_RTOL)
        for t in range(ell, T):
            np.testing.assert_array_equal(y[n, t], y[n, ell - 1])


def test_stateful_split_sequence_equals_whole_sequence():
    rng = np.random.default_rng(8)
    T, N, D, H, L = 6, 2, 3, 4, 2
    whole = random_gru(rng, D, H, L, True, 1.0)
    split = GRU(D, H, num_layers=L, dtype=np.float64, stateful=True)
    split.params = {k: v.copy() for k, v in whole.params.items()}
    x = rng.normal(size=(T, N, D))
    y, h_n = whole(x)
    y1, _ = split(x[:2])
    y2, h_n2 = split(x[2:])
    assert_close("y", np.concatenate([y1, y2]), y, SAME_MATH_RTOL)
    assert_close("h_n", h_n2, h_n, SAME_MATH_RTOL)
    np.testing.assert_array_equal(split.state, h_n2)
    # reset one row: only that row starts from zeros again
    rows = np.array([True, False])
    split.reset_states(rows)
    assert not split.state[:, 0].any() and split.state[:, 1].any()
    split.reset_states()
    assert split.state is None


def test_state_setter_continues_from_the_given_state():
    rng = np.random.default_rng(14)
    T, N, D, H, L = 4, 5, 2, 3, 2
    stateful = random_gru(rng, D, H, L, False, 1.0, stateful=True)
    plain = GRU(D, H, num_layers=L, dtype=np.float64, reset_after=False)
    plain.params = {k: v.copy() for k, v in stateful.params.items()}
    x, h = rng.normal(size=(T, N, D)), rng.uniform(-1, 1, (L, N, H))
    stateful.state = h
    y, h_n = stateful(x)
    y_ref, h_n_ref = plain(x, h)
    assert_close("y", y, y_ref, SAME_MATH_RTOL)
    np.testing.assert_array_equal(stateful.state, h_n)
    with pytest.raises(ValueError, match=r"^GRU\.state: h has shape \(2, 3\), expected \(2, \*, 3\)"):
        stateful.state = h[:, 0]
    with pytest.raises(ValueError, match=r"^GRU\.state: only a stateful layer carries a state; pass h0= "):
        plain.state = h
    np.testing.assert_array_equal(stateful.state, h_n)        # the rejected set changed nothing


def test_grads_accumulate_until_zero_grad():
    rng = np.random.default_rng(9)
    gru = random_gru(rng, 2, 3, 2, True, 1.0)
    x, dy = rng.normal(size=(4, 2, 2)), rng.normal(size=(4, 2, 3))
    gru(x)
    gru.backward(dy)
    once = {k: v.copy() for k, v in gru.grads.items()}
    gru(x)
    gru.backward(dy)
    for k in once:
        assert_close(k, gru.grads[k], 2 * once[k], SAME_MATH_RTOL)
    gru.zero_grad()
    assert not any(v.any() for v in gru.grads.values())


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_preactivations_raise_no_floating_point_warnings(reset_after, dtype):
    """|A| ~ 1e4: the gates saturate to exactly 0 or 1 without overflow; every output and gradient is finite."""
    rng = np.random.default_rng(10)
    gru = GRU(3, 4, num_layers=2, dtype=dtype, reset_after=reset_after)
    for k in gru.params:
        gru.params[k] = (rng.normal(0, 1e3, gru.params[k].shape)).astype(dtype)
    x = rng.normal(0, 10, size=(5, 2, 3)).astype(dtype)
    with np.errstate(all="raise"):
        y, h_n = gru(x)
        dx, dh0 = gru.backward(np.ones_like(y), np.ones_like(h_n))
    for a in (y, h_n, dx, dh0, *gru.grads.values()):
        assert np.isfinite(a).all()
    assert np.abs(y).max() <= 1.0


# ---------------------------------------------------------------------------------------------- misuse

def _layer(stateful=True):
    return GRU(3, 4, num_layers=2, dtype=np.float64, seed=11, stateful=stateful)


X = np.random.default_rng(12).normal(size=(5, 2, 3))
BAD_CALLS = {   # id: (call on a layer that has run forward(X), message it must start with)
    "x int": (lambda g: g(np.zeros((5, 2, 3), dtype=int)), "GRU.forward: x must be a real floating"),
    "x nan": (lambda g: g(np.full((5, 2, 3), np.nan)), "GRU.forward: x must be finite"),
    "x features": (lambda g: g(np.zeros((5, 2, 2))), "GRU.forward: x has 2 features, expected 3"),
    "x ndim": (lambda g: g(np.zeros((1, 5, 2, 3))), "GRU.forward: x must have 3 dimensions"),
    "x empty": (lambda g: g(np.zeros((0, 2, 3))), "GRU.forward: x has shape (0, 2, 3)"),
    "h0 shape": (lambda g: g(X, np.zeros((1, 2, 4))), "GRU.forward: h0 has shape (1, 2, 4), expected (2, 2, 4)"),
    "h0 pair": (lambda g: g(X, (np.zeros((2, 2, 4)),) * 2), "GRU.forward: h0 has shape (2, 2, 2, 4)"),
    "mask dtype": (lambda g: g(X, mask=np.ones((5, 2))), "GRU.forward: mask must be booleans"),
    "mask shape": (lambda g: g(X, mask=np.ones((2, 5), bool)), "GRU.forward: mask has shape (2, 5)"),
    "batch size": (lambda g: g(X[:, :1]), "GRU.forward: stateful layer was started with batch size 2, got 1"),
    "dy shape": (lambda g: g.backward(np.zeros((5, 2, 3))), "GRU.backward: dy has shape (5, 2, 3)"),
    "dy nan": (lambda g: g.backward(np.full((5, 2, 4), np.nan)), "GRU.backward: dy must be finite"),
    "dh_n shape": (lambda g: g.backward(np.zeros((5, 2, 4)), np.zeros((2, 4))), "GRU.backward: dh_n has shape"),
    "rows dtype": (lambda g: g.reset_states(np.array([1, 0])), "GRU.reset_states: rows must be booleans"),
    "rows shape": (lambda g: g.reset_states(np.array([True])), "GRU.reset_states: rows has shape (1,)"),
    "rows and batch_size": (lambda g: g.reset_states([True, True], batch_size=3), "GRU.reset_states: give rows"),
    "batch_size": (lambda g: g.reset_states(batch_size=0), "GRU.reset_states: batch_size must be a positive int"),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_rejected_call_names_the_argument_and_changes_nothing(bad):
    call, message = BAD_CALLS[bad]
    rng = np.random.default_rng(13)
    dy, dh_n = rng.normal(size=(5, 2, 4)), rng.normal(size=(2, 2, 4))
    victim, twin = _layer(), _layer()
    for g in (victim, twin):
        g(X)
    with pytest.raises(ValueError) as info:
        call(victim)
    assert str(info.value).startswith(message), str(info.value)
    # the victim goes on exactly as the twin that never saw the bad call
    for g in (victim, twin):
        g.backward(dy, dh_n)
    for k in twin.params:
        np.testing.assert_array_equal(victim.params[k], twin.params[k])
        np.testing.assert_array_equal(victim.grads[k], twin.grads[k])
    np.testing.assert_array_equal(victim.state, twin.state)
    np.testing.assert_array_equal(victim(X)[0], twin(X)[0])


@pytest.mark.parametrize("make, message", [
    (lambda: GRU(0, 4), "GRU: input_size must be a positive int, got 0"),
    (lambda: GRU(3, 4, num_layers=1.5), "GRU: num_layers must be a positive int"),
    (lambda: GRU(3, 4, dtype=np.int32), "GRU: dtype must be float32 or float64"),
    (lambda: GRU(3, 4, reset_after="yes"), "GRU: reset_after must be True or False"),
    (lambda: GRU(3, 4, device="gpu"), "GRU: device must be 'cpu', 'cuda' or 'cuda:N'"),
    (lambda: GRU(3, 4, device="cuda", kernel=2), "GRU: kernel must be one of 1 for the GRU, got 2"),
    (lambda: GRU(3, 4).to("cpu", kernel=1), "GRU.to: kernel selects a CUDA kernel version"),
    (lambda: GRU(3, 4).backward(np.zeros((5, 2, 4))), "GRU.backward: call forward first"),
    (lambda: from_torch(torch.nn.GRU(3, 4), hidden_size=5), "from_torch: hidden_size=5 contradicts the weights"),
    (lambda: from_torch(torch.nn.GRU(3, 4, bidirectional=True)), "from_torch: bidirectional"),
    (lambda: from_torch(torch.nn.GRU(3, 4), reset_after=False),
     "from_torch: reset_after=False contradicts the weights, which give reset_after=True"),
    (lambda: from_torch([1, 2]), "from_torch: expected an nn.LSTM, an nn.GRU or the state_dict of one, got list"),
    (lambda: to_torch_state_dict(GRU(3, 4, reset_after=False)), "to_torch_state_dict: nn.GRU has no"),
    (lambda: from_keras([np.zeros((3, 12)), np.zeros((4, 12))]), "from_keras: expected [kernel, "),
    (lambda: from_keras([np.zeros((3, 12)), np.zeros((4, 13)), np.zeros(12)]),
     "from_keras: recurrent_kernel has shape (4, 13), expected (H, 4H) for an LSTM or (H, 3H) for a GRU"),
    (lambda: from_keras([np.zeros((3, 9)), np.zeros((4, 12)), np.zeros(12)]),
     "from_keras: kernel has shape (3, 9), expected (D, 12)"),
    (lambda: from_keras([np.zeros((3, 12)), np.zeros((4, 12)), np.zeros((3, 12))]),
     "from_keras: bias has shape (3, 12)"),
    (lambda: from_keras([np.zeros((3, 12)), np.zeros((4, 12)), np.zeros(12)], reset_after=True),
     "from_keras: reset_after=True contradicts the weights, which give reset_after=False"),
    (lambda: to_keras(GRU(3, 4, num_layers=2)), "to_keras: a Keras GRU layer holds one layer"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_construction_and_interop_raise_clear_errors(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(message), str(info.value)
