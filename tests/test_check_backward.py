"""check_backward, assert_backward and check_layer on backward passes written here, the way a course or a
user writes them (not npylstm's): the right one passes, and each planted slip is reported on exactly the
tensor it corrupts."""

import functools

import numpy as np
import pytest

from npylstm import GRU, LSTM, Linear, Sequential, assert_backward, check_backward, check_layer, cross_entropy_loss
from npylstm.gradcheck import REL_TOL, format_table

from conftest import nonzero


def failing(rows):
    return {r.tensor for r in rows if not r.passed}


def assert_all_pass(rows):
    assert rows and all(r.passed for r in rows), format_table(rows)
    assert all(r.max_rel_error > 0 for r in rows), format_table(rows)   # a real comparison, not an identity


# ---------------------------------------------------------------- a CS231n-style LSTM step (gates i, f, o, g)
def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """CS231n's layout: returns next_h, next_c, cache; gate blocks [i | f | o | g]."""
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i, f, o, g = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 2 * H:3 * H]), np.tanh(a[:, 3 * H:])
    next_c = f * prev_c + i * g
    next_h = o * np.tanh(next_c)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c)


# one classic slip per input, each corrupting that input's gradient only (x and prev_h: D = H, so the
# mixed-up weights have the right shape)
SLIPS = {
    "x": "dx through Wh instead of Wx",
    "prev_h": "dprev_h with the upstream dnext_h added, as if H skipped the cell",
    "prev_c": "dprev_c multiplied by i instead of f",
    "Wx": "dWx averaged over the batch",
    "Wh": "dWh from prev_c instead of prev_h",
    "b": "db averaged over the batch",
}


def lstm_step_backward(dnext_h, dnext_c, cache, slip=None):
    """returns dx, dprev_h, dprev_c, dWx, dWh, db (CS231n's order); `slip` plants one of SLIPS."""
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c = cache
    N = x.shape[0]
    tc = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tc ** 2)
    da = np.hstack([dc * g * i * (1 - i), dc * prev_c * f * (1 - f), dnext_h * tc * o * (1 - o), dc * i * (1 - g ** 2)])
    dx = da @ (Wh if slip == "x" else Wx).T
    dprev_h = da @ Wh.T + (dnext_h if slip == "prev_h" else 0)
    dprev_c = dc * (i if slip == "prev_c" else f)
    dWx = x.T @ da / (N if slip == "Wx" else 1)
    dWh = (prev_c if slip == "Wh" else prev_h).T @ da
    db = da.sum(axis=0) / (N if slip == "b" else 1)
    return dx, dprev_h, dprev_c, dWx, dWh, db


def lstm_inputs(seed, N=3, H=3):
    rng = np.random.default_rng(seed)
    return dict(x=nonzero(rng, (N, H)), prev_h=nonzero(rng, (N, H)), prev_c=nonzero(rng, (N, H)),
                Wx=nonzero(rng, (H, 4 * H)), Wh=nonzero(rng, (H, 4 * H)), b=nonzero(rng, 4 * H))


def test_a_right_cs231n_lstm_step_passes_in_its_own_layout():
    rows = check_backward(lstm_step_forward, lstm_step_backward, lstm_inputs(0))
    assert [r.tensor for r in rows] == list(SLIPS)
    assert [r.level for r in rows] == ["backward"] * 6
    assert_all_pass(rows)


@pytest.mark.parametrize("tensor", list(SLIPS))
def test_each_slip_is_reported_on_exactly_the_tensor_it_corrupts(tensor):
    rows = check_backward(lstm_step_forward, functools.partial(lstm_step_backward, slip=tensor), lstm_inputs(1))
    assert failing(rows) == {tensor}, (SLIPS[tensor], format_table(rows))


def test_outputs_as_one_tuple_and_gradients_as_a_dict():
    def forward(**a):
        h, c, cache = lstm_step_forward(**a)
        return (h, c), cache

    def backward(dout, cache):
        return dict(zip(SLIPS, lstm_step_backward(*dout, cache)))

    assert_all_pass(check_backward(forward, backward, lstm_inputs(2)))


# ---------------------------------------------------------------- layer norm: one output, a dict back
def layernorm_forward(x, gamma, beta):
    mu = x.mean(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt(x.var(axis=1, keepdims=True) + 1e-5)
    xhat = (x - mu) * inv
    return xhat * gamma + beta, (xhat, inv, gamma)


def layernorm_backward(dout, cache, forget_mean_terms=False):
    xhat, inv, gamma = cache
    dxhat = dout * gamma
    if forget_mean_terms:          # the classic slip: dx as if mean and variance were constants
        dx = dxhat * inv
    else:
        dx = inv * (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return {"x": dx, "gamma": (dout * xhat).sum(axis=0), "beta": dout.sum(axis=0)}


def layernorm_inputs():
    rng = np.random.default_rng(3)
    return dict(x=rng.normal(size=(4, 5)), gamma=nonzero(rng, 5), beta=nonzero(rng, 5))


def test_layernorm_right_passes_and_the_slip_is_on_x_only():
    assert_all_pass(check_backward(layernorm_forward, layernorm_backward, layernorm_inputs()))
    wrong = functools.partial(layernorm_backward, forget_mean_terms=True)
    assert failing(check_backward(layernorm_forward, wrong, layernorm_inputs())) == {"x"}


def test_assert_backward_passes_quietly_and_fails_with_the_table_and_the_worst_entries():
    rows = assert_backward(layernorm_forward, layernorm_backward, layernorm_inputs())
    assert all(r.passed for r in rows)
    wrong = functools.partial(layernorm_backward, forget_mean_terms=True)
    with pytest.raises(AssertionError) as e:
        assert_backward(layernorm_forward, wrong, layernorm_inputs())
    msg = str(e.value)
    assert "max rel error" in msg and "2/3 tensors pass" in msg
    x_row = next(r for r in check_backward(layernorm_forward, wrong, layernorm_inputs()) if r.tensor == "x")
    (index, analytic, numeric) = x_row.worst[0]
    assert abs(analytic - numeric) == max(abs(a - n) for _, a, n in x_row.worst)
    assert f"at {list(index)}: analytic {analytic:.6g}, numeric {numeric:.6g}" in msg


def test_one_input_may_get_its_gradient_as_a_bare_array():
    def forward(x):
        return np.sin(x), x

    rows = check_backward(forward, lambda dout, x: dout * np.cos(x), {"x": np.linspace(-2, 2, 7)})
    assert_all_pass(rows)


def test_dout_is_drawn_non_zero_from_the_seed_and_inputs_are_copies():
    seen = []

    def backward(dout, cache):
        seen.append(dout.copy())
        return layernorm_backward(dout, cache)

    a = layernorm_inputs()
    a["x"] = a["x"].astype(np.float32)                  # checked in float64, on a copy
    before = {k: v.copy() for k, v in a.items()}
    r0 = check_backward(layernorm_forward, backward, a, seed=7)
    r1 = check_backward(layernorm_forward, backward, a, seed=7)
    check_backward(layernorm_forward, backward, a, seed=8)
    assert np.all(np.abs(seen[0]) >= 0.1) and seen[0].dtype == np.float64
    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2])
    assert r0 == r1
    for k in a:
        np.testing.assert_array_equal(a[k], before[k])
        assert a[k].dtype == before[k].dtype


def test_the_tolerance_decides_pass():
    rows = check_backward(layernorm_forward, layernorm_backward, layernorm_inputs())
    worst = max(r.max_rel_error for r in rows)
    tight = check_backward(layernorm_forward, layernorm_backward, layernorm_inputs(), tol=worst / 2)
    assert not all(r.passed for r in tight) and all(r.passed for r in rows)


@pytest.mark.parametrize("call, error, match", [
    (lambda: check_backward(layernorm_forward, layernorm_backward, [1.0]), TypeError, "inputs must be a non-empty dict"),
    (lambda: check_backward(layernorm_forward, layernorm_backward, {}), TypeError, "an empty dict"),
    (lambda: check_backward(layernorm_forward, layernorm_backward, dict(layernorm_inputs(), x=np.ones((4, 5), int))),
     ValueError, r"inputs\['x'\] must be a real floating array"),
    (lambda: check_backward(layernorm_forward, layernorm_backward, dict(layernorm_inputs(), x=np.full((4, 5), np.nan))),
     ValueError, r"inputs\['x'\] must be finite"),
    (lambda: check_backward(layernorm_forward, "nope", layernorm_inputs()), TypeError, "backward must be callable"),
    (lambda: check_backward(lambda **a: layernorm_forward(**a)[0], layernorm_backward, layernorm_inputs()),
     TypeError, r"forward must return \(out, cache\)"),
    (lambda: check_backward(layernorm_forward, lambda d, c: {"x": d, "gamma": d[0]}, layernorm_inputs()),
     ValueError, r"backward returned gradients for \['gamma', 'x'\], expected the keys of inputs"),
    (lambda: check_backward(layernorm_forward, lambda d, c: dict(layernorm_backward(d, c), beta=np.zeros(4)),
                            layernorm_inputs()),
     ValueError, r"gradient for 'beta' has shape \(4,\), expected \(5,\)"),
    (lambda: check_backward(lstm_step_forward, lambda dh, dc, c: lstm_step_backward(dh, dc, c)[:5], lstm_inputs(0)),
     ValueError, "backward returned 5 gradients, expected 6, one per input in order"),
    (lambda: check_backward(layernorm_forward, lambda d, c: dict(layernorm_backward(d, c), beta=None), layernorm_inputs()),
     TypeError, "gradient for 'beta' must be a float array, got None"),
    (lambda: check_backward(layernorm_forward, layernorm_backward, layernorm_inputs(), tol=0), ValueError, "tol must be"),
    (lambda: check_backward(layernorm_forward, layernorm_backward, layernorm_inputs(), eps=-1e-4), ValueError, "eps must"),
    (lambda: check_backward(layernorm_forward, layernorm_backward, layernorm_inputs(), seed=-1), ValueError, "seed must"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_forward_that_changes_its_inputs_or_its_mind_is_refused():
    def in_place(x, gamma, beta):
        x -= x.mean()
        return layernorm_forward(x, gamma, beta)

    with pytest.raises(ValueError, match=r"check_backward: forward changed \['x'\] in place"):
        check_backward(in_place, layernorm_backward, layernorm_inputs())
    rng = np.random.default_rng(0)

    def dropout(x, gamma, beta):
        out, cache = layernorm_forward(x, gamma, beta)
        return out * (rng.random(out.shape) > 0.5), cache

    with pytest.raises(ValueError, match="forward returned different outputs for the same inputs"):
        check_backward(dropout, layernorm_backward, layernorm_inputs())


# ---------------------------------------------------------------- check_layer: a user's own layer
class TanhDense:
    """A user's layer in npylstm's protocol: y = tanh(x W + b); `slip` forgets tanh' in one gradient."""

    def __init__(self, n_in, n_out, seed, slip=None):
        rng = np.random.default_rng(seed)
        self.params = {"W": nonzero(rng, (n_in, n_out)), "b": nonzero(rng, n_out)}
        self.slip = slip
        self.zero_grad()

    def zero_grad(self):
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x):
        self.x, self.y = x, np.tanh(x @ self.params["W"] + self.params["b"])
        return self.y

    def backward(self, dy):
        da = dy * (1 - self.y ** 2)
        self.grads["W"] += self.x.T @ (dy if self.slip == "W" else da)
        self.grads["b"] += (dy if self.slip == "b" else da).sum(axis=0)
        return (dy if self.slip == "x" else da) @ self.params["W"].T


class UserRNN:
    """A user's tanh RNN with a state: y, h_n = forward(x, h0); dx, dh0 = backward(dy, dh_n). x : (T, N, D)."""

    def __init__(self, D, H, seed):
        rng = np.random.default_rng(seed)
        self.params = {"Wx": nonzero(rng, (D, H)), "Wh": nonzero(rng, (H, H)), "b": nonzero(rng, H)}
        self.zero_grad()

    def zero_grad(self):
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def __call__(self, x, h0):
        hs = [h0]
        for x_t in x:
            hs.append(np.tanh(x_t @ self.params["Wx"] + hs[-1] @ self.params["Wh"] + self.params["b"]))
        self.x, self.hs = x, hs
        return np.stack(hs[1:]), hs[-1]

    def backward(self, dy, dh_n):
        dx, dh = np.zeros_like(self.x), dh_n.copy()
        for t in reversed(range(len(self.x))):
            da = (dh + dy[t]) * (1 - self.hs[t + 1] ** 2)
            self.grads["Wx"] += self.x[t].T @ da
            self.grads["Wh"] += self.hs[t].T @ da
            self.grads["b"] += da.sum(axis=0)
            dx[t], dh = da @ self.params["Wx"].T, da @ self.params["Wh"].T
        return dx, dh


def test_check_layer_on_a_users_layer_and_its_slips():
    x = np.random.default_rng(0).normal(size=(5, 4))
    rows = check_layer(TanhDense(4, 3, seed=1), x)
    assert [r.tensor for r in rows] == ["x", "W", "b"] and {r.level for r in rows} == {"TanhDense"}
    assert_all_pass(rows)
    for slip in ("x", "W", "b"):
        assert failing(check_layer(TanhDense(4, 3, seed=1, slip=slip), x)) == {slip}


def test_check_layer_on_a_users_recurrent_layer_with_a_state():
    rng = np.random.default_rng(2)
    rows = check_layer(UserRNN(2, 3, seed=3), rng.normal(size=(4, 2, 2)), state=nonzero(rng, (2, 3)))
    assert [r.tensor for r in rows] == ["x", "state", "Wx", "Wh", "b"]
    assert_all_pass(rows)


def test_check_layer_restores_the_parameters_and_grads_exactly():
    layer = TanhDense(4, 3, seed=1)
    for g in layer.grads.values():
        g[...] = 0.5
    params = {k: v.copy() for k, v in layer.params.items()}
    x = np.random.default_rng(0).normal(size=(5, 4))
    check_layer(layer, x)
    for k in params:
        np.testing.assert_array_equal(layer.params[k], params[k])
        np.testing.assert_array_equal(layer.grads[k], 0.5)
    np.testing.assert_array_equal(layer.x, x)            # left as after a forward on x, unperturbed
    np.testing.assert_array_equal(layer.y, np.tanh(x @ params["W"] + params["b"]))


def test_check_layer_refuses_a_layer_whose_output_changes_from_call_to_call():
    class Dropout(TanhDense):
        rng = np.random.default_rng(0)

        def forward(self, x):
            return super().forward(x) * (self.rng.random((x.shape[0], 3)) > 0.5)

    with pytest.raises(ValueError, match="check_layer: the layer returned different outputs for the same x"):
        check_layer(Dropout(4, 3, seed=1), np.ones((5, 4)))


# ---------------------------------------------------------------- check_layer: npylstm's layers
def lstm_layer(seed, **kw):
    rng = np.random.default_rng(seed)
    lstm = LSTM(2, 3, num_layers=2, dtype=np.float64, seed=seed, **kw)
    for k in lstm.params:
        lstm.params[k] = nonzero(rng, lstm.params[k].shape)
    return lstm, rng


def test_check_layer_on_an_lstm_with_its_state_and_a_mask():
    lstm, rng = lstm_layer(0, batch_first=True)
    state = (nonzero(rng, (2, 2, 3)), nonzero(rng, (2, 2, 3)))
    mask = np.array([[True, True, False], [True, False, False]])          # (N, T), batch_first
    rows = check_layer(lstm, nonzero(rng, (2, 3, 2)), state=state, mask=mask)
    assert [r.tensor for r in rows] == ["x", "h0", "c0"] + list(lstm.params)
    assert_all_pass(rows)


def test_check_layer_without_a_state_still_checks_h_n_and_c_n(monkeypatch):
    """No state given: the LSTM still returns (h_n, c_n) and its backward takes their gradients, so a
    backward that drops the gradient arriving on c_n is caught."""
    import npylstm.sequence as seq
    real = seq.sequence_backward
    monkeypatch.setattr(seq, "sequence_backward", lambda dY, dh, dc, cache, work=None: real(dY, dh, 0 * dc, cache, work))
    lstm, rng = lstm_layer(1)
    assert failing(check_layer(lstm, nonzero(rng, (3, 2, 2)))) == {"x"} | set(lstm.params)


@pytest.mark.parametrize("reset_after", [True, False])
def test_check_layer_on_a_gru(reset_after):
    rng = np.random.default_rng(4)
    gru = GRU(2, 3, num_layers=1, dtype=np.float64, reset_after=reset_after)
    for k in gru.params:
        gru.params[k] = nonzero(rng, gru.params[k].shape)
    rows = check_layer(gru, nonzero(rng, (3, 2, 2)), state=nonzero(rng, (1, 2, 3)), mask=np.array([[1, 1], [1, 0], [0, 0]], bool))
    assert [r.tensor for r in rows] == ["x", "h0", "W_x_l0", "W_h_l0", "b_x_l0", "b_h_l0"]
    assert_all_pass(rows)


def test_check_layer_on_linear_and_on_sequential_with_each_loss():
    rng = np.random.default_rng(5)
    assert_all_pass(check_layer(Linear(3, 2, dtype=np.float64, seed=0), nonzero(rng, (4, 2, 3))))
    model = Sequential([LSTM(2, 3, dtype=np.float64, seed=1, batch_first=True), GRU(3, 3, dtype=np.float64, seed=2),
                        Linear(3, 4, dtype=np.float64, seed=3)], return_sequences=True, seed=0)
    x = nonzero(rng, (2, 3, 2))
    soft = rng.uniform(0.1, 1.0, (2, 3, 4))                 # rows that do not sum to 1
    rows = check_layer(model, x, loss="cross_entropy", target=soft)
    assert len(rows) == 1 + len(model.params)
    assert_all_pass(rows)
    assert_all_pass(check_layer(model, x, loss="mse", target=soft, params=["2.W", "2.b"]))


@pytest.mark.parametrize("make, kwargs, error, match", [
    (lambda: LSTM(2, 3, dtype=np.float32), {}, ValueError, r"parameter 'W_x_l0' must be a C-contiguous float64.*float32"),
    (lambda: LSTM(2, 3, dtype=np.float64, stateful=True), {}, ValueError, "the layer is stateful"),
    (lambda: object(), {}, TypeError, "layer.backward must be callable"),
    (lambda: Linear(2, 3, dtype=np.float64), {"loss": "hinge"}, ValueError, "loss must be one of"),
    (lambda: Linear(2, 3, dtype=np.float64), {"loss": "mse"}, ValueError, "a loss needs a target"),
    (lambda: Linear(2, 3, dtype=np.float64), {"params": ["W", "V"]}, ValueError, r"params must be names in layer.params, got \[.V.\]"),
    (lambda: Linear(2, 3, dtype=np.float64), {"tol": float("nan")}, ValueError, "tol must be a positive number"),
])
def test_check_layer_refuses_what_it_cannot_check(make, kwargs, error, match):
    with pytest.raises(error, match="check_layer: " + match):
        check_layer(make(), np.ones((3, 2, 2)), **kwargs)


# ---------------------------------------------------------------- soft targets in the cross-entropy
@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy_with_soft_targets_not_summing_to_one_matches_finite_differences(masked):
    """Rows of the target that sum to 0.3 .. 2.7: the gradient is m (p Σ_c Y_c − Y) / rows, not m (p − Y) / rows."""
    rng = np.random.default_rng(6)
    target = rng.uniform(0.1, 0.9, (4, 3, 3))
    assert np.ptp(target.sum(axis=-1)) > 0.5
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], bool) if masked else None

    def forward(logits):
        loss, dlogits = cross_entropy_loss(logits, target, mask)
        return loss, dlogits

    rows = check_backward(forward, lambda dloss, dlogits: dloss * dlogits, {"logits": rng.normal(size=(4, 3, 3)) * 3})
    assert_all_pass(rows)
    assert rows[0].max_rel_error < REL_TOL
