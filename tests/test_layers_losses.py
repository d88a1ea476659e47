"""Linear, mse_loss and cross_entropy_loss: hand-written backward against central finite differences (float64)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npylstm import Linear, cross_entropy_loss, mse_loss
from npylstm.gradcheck import numeric_gradient

from model_helpers import FD_ATOL, FD_RTOL, rel_err


def assert_close(name, analytic, numeric, rtol=FD_RTOL, atol=FD_ATOL):
    err, where = rel_err(analytic, numeric)
    abs_err = float(np.abs(np.asarray(analytic) - numeric).max(initial=0.0))
    assert err <= rtol or abs_err <= atol, (
        f"{name}: relative error {err:.3g} > {rtol:g} and max abs error {abs_err:.3g} > {atol:g}; worst at "
        f"{where}: analytic {np.asarray(analytic)[where]!r}, numeric {np.asarray(numeric)[where]!r}")


# ---------------------------------------------------------------- Linear
@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 4), T=st.one_of(st.none(), st.integers(1, 3)), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_linear_backward_matches_finite_differences(N, T, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    lin = Linear(n_in, n_out, dtype=np.float64, seed=seed)
    lin.params["b"][:] = rng.normal(size=n_out)          # non-zero bias, drawn
    lead = (N,) if T is None else (N, T)
    x = rng.normal(size=lead + (n_in,))
    G = rng.normal(size=lead + (n_out,))                 # upstream gradient, drawn

    def f():
        return float((lin.forward(x) * G).sum())

    lin.forward(x)
    lin.zero_grad()
    dx = lin.backward(G)
    assert dx.shape == x.shape
    for name, arr, analytic in (("x", x, dx), ("W", lin.params["W"], lin.grads["W"]),
                                ("b", lin.params["b"], lin.grads["b"])):
        assert_close(name, analytic, numeric_gradient(f, arr))


def test_linear_backward_accumulates_and_zero_grad_clears():
    rng = np.random.default_rng(0)
    lin = Linear(3, 2, dtype=np.float64, seed=1)
    x, G = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    lin.forward(x)
    lin.backward(G)
    once = {k: v.copy() for k, v in lin.grads.items()}
    lin.backward(G)
    for k in once:
        np.testing.assert_allclose(lin.grads[k], 2 * once[k], rtol=1e-12)
    lin.zero_grad()
    assert all(not v.any() for v in lin.grads.values())


@pytest.mark.parametrize("bad, match", [
    (lambda: Linear(0, 2), "in_features"),
    (lambda: Linear(2, 2, dtype=np.int32), "dtype"),
    (lambda: Linear(2, 2).forward(np.ones((3, 5), np.float32)), "5 features, expected 2"),
    (lambda: Linear(2, 2).forward(np.ones((3, 2), np.int64)), "real floating"),
    (lambda: Linear(2, 2).forward(np.array([[np.nan, 0.0]])), "finite"),
    (lambda: Linear(2, 2).backward(np.ones((1, 2), np.float32)), "call forward first"),
])
def test_linear_misuse(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


# ---------------------------------------------------------------- losses
def _draw_mask(rng, shape):
    mask = rng.random(shape) < 0.7
    mask.flat[0] = True                                   # at least one element counts
    return mask


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), masked=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_mse_backward_matches_finite_differences(shape, masked, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    P, Y = rng.normal(size=shape), rng.normal(size=shape)
    mask = _draw_mask(rng, shape[:max(1, len(shape) - 1)]) if masked else None
    loss, dP = mse_loss(P, Y, mask)
    m = 1.0 if mask is None else mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))
    expected = ((P - Y) ** 2 * m).sum() / (np.broadcast_to(m, shape).sum())   # mean over unmasked elements
    assert loss == pytest.approx(expected, rel=1e-12)
    assert_close("y_pred", dP, numeric_gradient(lambda: mse_loss(P, Y, mask)[0], P))


@settings(max_examples=20, deadline=None)
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), C=st.integers(1, 5),
       int_targets=st.booleans(), masked=st.booleans(), scale=st.sampled_from([1.0, 6.0]),
       seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_backward_matches_finite_differences(lead, C, int_targets, masked, scale, seed):
    rng = np.random.default_rng(seed)
    lead = tuple(lead)
    Z = rng.normal(size=lead + (C,)) * scale
    ids = rng.integers(0, C, size=lead)
    target = ids if int_targets else np.eye(C)[ids]
    mask = _draw_mask(rng, lead) if masked else None
    loss, dZ = cross_entropy_loss(Z, target, mask)
    # reference: the textbook formula, in float64 without the max shift (fine for |Z| ≤ ~100)
    logp = Z - np.log(np.exp(Z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[..., None], -1)[..., 0]
    expected = nll[mask].mean() if mask is not None else nll.mean()
    assert loss == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert_close("logits", dZ, numeric_gradient(lambda: cross_entropy_loss(Z, target, mask)[0], Z))


def test_cross_entropy_is_stable_for_huge_logits():
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is exact enough
        loss, dZ = cross_entropy_loss(Z, np.array([1, 2]))
    assert np.isfinite(loss) and np.isfinite(dZ).all()
    assert loss == pytest.approx((2e4 + np.log(3.0)) / 2, rel=1e-5)  # row 0: -log p_1 = 2e4; row 1: log 3


def test_int_and_one_hot_targets_agree():
    rng = np.random.default_rng(3)
    Z, ids = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5)
    a, da = cross_entropy_loss(Z, ids)
    b, db = cross_entropy_loss(Z, np.eye(4)[ids])
    assert a == pytest.approx(b, rel=1e-12)
    np.testing.assert_allclose(da, db, rtol=1e-12)


@pytest.mark.parametrize("loss_fn", [mse_loss, cross_entropy_loss])
def test_masked_elements_get_no_loss_and_no_gradient(loss_fn):
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(3, 4, 2))
    target = rng.normal(size=Z.shape) if loss_fn is mse_loss else rng.integers(0, 2, size=(3, 4))
    mask = rng.random((3, 4)) < 0.5
    mask[0, 0] = True
    loss, dZ = loss_fn(Z, target, mask)
    assert not dZ[~mask].any()
    Z2 = Z.copy()
    Z2[~mask] = rng.normal(size=Z2[~mask].shape) * 100    # whatever sits under the mask does not matter
    assert loss_fn(Z2, target, mask)[0] == loss


@pytest.mark.parametrize("bad, match", [
    (lambda: mse_loss(np.ones((2, 3)), np.ones((2, 4))), "y_true has shape"),
    (lambda: mse_loss(np.ones((2, 3)), np.ones((2, 3)), np.ones((3,), bool)), "mask has shape"),
    (lambda: mse_loss(np.ones((2, 3)), np.ones((2, 3)), np.ones((2,))), "booleans"),
    (lambda: mse_loss(np.ones((2, 3)), np.full((2, 3), np.nan)), "finite"),
    (lambda: cross_entropy_loss(np.ones((2, 3)), np.array([0, 3])), r"\[0, 3\)"),
    (lambda: cross_entropy_loss(np.ones((2, 3)), np.array([0, 1, 2])), "integer target has shape"),
    (lambda: cross_entropy_loss(np.ones((2, 3)), np.ones((2, 4))), "one-hot target has shape"),
    (lambda: cross_entropy_loss(np.ones((2, 3)), np.array([True, False])), "dtype bool"),
])
def test_loss_misuse(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
