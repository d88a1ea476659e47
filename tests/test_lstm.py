"""The LSTM layer: every gradient vs finite differences, bad input, stateful contract, determinism."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, nonzero, padding_mask
from npylstm import LSTM
from npylstm.gradcheck import FD_FLOOR, numeric_gradient
from npylstm.lstm import param_names

FD_RTOL = 1e-6        # float64 central differences vs hand-derived BPTT (~1e-9 seen)
SAME_RTOL = 1e-12     # the same float64 arithmetic, regrouped (chunked calls, a row computed alone)
LAYER_GRADS = ["x", "h0", "c0", "W_x", "W_h", "b"]   # W_x, W_h, b: checked for every layer


@st.composite
def layer_cases(draw):
    return dict(T=draw(st.integers(1, 6)), N=draw(st.integers(1, 5)), D=draw(st.integers(1, 7)),
                H=draw(st.integers(1, 7)), L=draw(st.integers(1, 3)), scale=draw(st.floats(0.1, 10.0)),
                batch_first=draw(st.booleans()), mask=draw(st.sampled_from([None, "pre", "post"])),
                seed=draw(st.integers(0, 2**32 - 1)))


def layer_problem(T, N, D, H, L, scale, batch_first, mask, seed):
    """A float64 LSTM with drawn weights and non-zero biases; x, states, mask, upstream gradients in its layout."""
    rng = np.random.default_rng(seed)
    lstm = LSTM(D, H, num_layers=L, batch_first=batch_first, dtype=np.float64)
    for layer in range(L):
        fan_in = (D if layer == 0 else H) + H
        for name in param_names(layer):
            shape = lstm.params[name].shape
            lstm.params[name] = nonzero(rng, shape, scale / (2 if name.startswith("b") else np.sqrt(fan_in)))
    x = nonzero(rng, (N, T, D) if batch_first else (T, N, D))
    state = (nonzero(rng, (L, N, H)), nonzero(rng, (L, N, H)))
    m = padding_mask(rng, T, N, mask)
    if m is not None and batch_first:
        m = np.ascontiguousarray(m.T)
    dy = nonzero(rng, x.shape[:-1] + (H,))
    dstate = (nonzero(rng, (L, N, H)), nonzero(rng, (L, N, H)))
    return lstm, x, state, m, dy, dstate


@pytest.mark.parametrize("name", LAYER_GRADS)
@settings(deadline=None, max_examples=50)
@given(case=layer_cases())
def test_layer_gradients_match_finite_differences(name, case):
    lstm, x, (h0, c0), mask, dy, (dh, dc) = layer_problem(**case)
    inputs = dict(x=x, h0=h0, c0=c0, **lstm.params)     # the very arrays forward reads

    def loss():
        y, (h_n, c_n) = lstm(x, (h0, c0), mask)
        return float(np.sum(dy * y) + np.sum(dh * h_n) + np.sum(dc * c_n))

    lstm(x, (h0, c0), mask)
    dx, (dh0, dc0) = lstm.backward(dy, (dh, dc))
    analytic = dict(x=dx, h0=dh0, c0=dc0, **lstm.grads)
    keys = [name] if name in ("x", "h0", "c0") else [f"{name}_l{k}" for k in range(case["L"])]
    for key in keys:
        assert_close(analytic[key], numeric_gradient(loss, inputs[key]), FD_RTOL, f"d{key}", floor=FD_FLOOR)


def test_backward_accumulates_into_grads():
    lstm, x, state, mask, dy, dstate = layer_problem(4, 3, 2, 5, 2, 2.0, False, None, seed=0)
    lstm(x, state)
    lstm.backward(dy, dstate)
    once = {k: g.copy() for k, g in lstm.grads.items()}
    lstm.backward(dy, dstate)
    for k in once:
        assert_close(lstm.grads[k], 2 * once[k], SAME_RTOL, k)
    lstm.zero_grad()
    assert all(not g.any() for g in lstm.grads.values())


def test_reused_buffers_give_the_results_of_a_fresh_layer():
    """The layer keeps its buffers, constants and per-step views between calls (work): a call after
    others -- of the same length, another length, another batch size, with or without a mask -- equals
    the same call on a fresh layer, bit for bit; what earlier calls returned is not overwritten."""
    lstm, x, state, m, dy, dstate = layer_problem(5, 3, 2, 4, 2, 2.0, False, "pre", seed=4)

    def run(layer, T, n, masked):
        layer.zero_grad()
        s, ds = (tuple(a[:, :n] for a in pair) for pair in (state, dstate))
        y, (h_n, c_n) = layer(x[:T, :n], s, m[:T, :n] if masked else None)
        dx, (dh0, dc0) = layer.backward(dy[:T, :n], ds)
        return [y, h_n, c_n, dx, dh0, dc0] + [g.copy() for g in layer.grads.values()]

    first = run(lstm, 5, 3, True)
    kept = [a.copy() for a in first]
    # same call (everything reused), shorter, fewer rows, no mask, then back to the first
    for call in ((5, 3, True), (3, 3, True), (5, 2, True), (5, 3, False), (5, 3, True)):
        fresh = LSTM(2, 4, num_layers=2, dtype=np.float64)
        fresh.params = {k: v.copy() for k, v in lstm.params.items()}
        fresh.zero_grad()
        for a, b in zip(run(lstm, *call), run(fresh, *call)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)
    assert {"Z", "gates", "Cs", "tanh_C", "dA", "P", "dW", "forward_steps", "backward_steps"} <= set(lstm._work[0])


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_is_a_batch_of_one(batch_first):
    lstm, x, (h0, c0), _, dy, (dh, dc) = layer_problem(5, 1, 3, 4, 2, 2.0, batch_first, None, seed=2)
    y, (h_n, c_n) = lstm(x, (h0, c0))
    dx, (dh0, dc0) = lstm.backward(dy, (dh, dc))
    x2 = x[0] if batch_first else x[:, 0]                                  # (T, D)
    y2, (h2, c2) = lstm(x2, (h0[:, 0], c0[:, 0]))
    dx2, (dh02, dc02) = lstm.backward(dy[0] if batch_first else dy[:, 0], (dh[:, 0], dc[:, 0]))
    assert y2.shape == (5, 4) and h2.shape == (2, 4) and dx2.shape == (5, 3) and dh02.shape == (2, 4)
    assert_close(y2, y[0] if batch_first else y[:, 0], SAME_RTOL, "y")
    assert_close(dx2, dx[0] if batch_first else dx[:, 0], SAME_RTOL, "dx")
    for a, b, what in ((h2, h_n, "h_n"), (c2, c_n, "c_n"), (dh02, dh0, "dh0"), (dc02, dc0, "dc0")):
        assert_close(a, b[:, 0], SAME_RTOL, what)


# ---------------------------------------------------------------------- bad input
def _bad_forward_cases():
    """(what, call kwargs built from a 2-layer float64 LSTM with D=3, H=4, x (T=5, N=2, 3)) -> words in the message."""
    good_x = np.ones((5, 2, 3))
    good_h = np.ones((2, 2, 4))
    nan_x = good_x.copy(); nan_x[1, 1, 2] = np.nan
    inf_h = good_h.copy(); inf_h[0, 0, 0] = np.inf
    return {
        "rank 4 x": (dict(x=np.ones((5, 2, 3, 1))), ["x", "3 dimensions", "(5, 2, 3, 1)"]),
        "rank 1 x": (dict(x=np.ones(3)), ["x", "3 dimensions", "(3,)"]),
        "feature size": (dict(x=np.ones((5, 2, 7))), ["x", "7 features", "expected 3"]),
        "h0 shape": (dict(x=good_x, state=(np.ones((2, 3, 4)), good_h)), ["h0", "(2, 3, 4)", "(2, 2, 4)"]),
        "c0 shape": (dict(x=good_x, state=(good_h, np.ones((1, 2, 4)))), ["c0", "(1, 2, 4)", "(2, 2, 4)"]),
        "int x": (dict(x=np.ones((5, 2, 3), np.int64)), ["x", "float", "int64"]),
        "complex x": (dict(x=np.ones((5, 2, 3), np.complex128)), ["x", "float", "complex128"]),
        "int h0": (dict(x=good_x, state=(np.ones((2, 2, 4), np.int32), good_h)), ["h0", "float", "int32"]),
        "NaN in x": (dict(x=nan_x), ["x", "finite", "NaN"]),
        "inf in h0": (dict(x=good_x, state=(inf_h, good_h)), ["h0", "finite", "inf"]),
        "inf in c0": (dict(x=good_x, state=(good_h, inf_h)), ["c0", "finite", "inf"]),
        "state not a pair": (dict(x=good_x, state=good_h), ["state", "pair"]),
        "mask dtype": (dict(x=good_x, mask=np.ones((5, 2))), ["mask", "bool", "float64"]),
        "mask shape": (dict(x=good_x, mask=np.ones((2, 5), bool)), ["mask", "(2, 5)", "(5, 2)"]),
    }


def _snapshot(lstm):
    state = None if lstm.state is None else tuple(s.copy() for s in lstm.state)
    return ({k: v.copy() for k, v in lstm.params.items()}, {k: v.copy() for k, v in lstm.grads.items()}, state)


def _assert_unchanged(lstm, snap):
    params, grads, state = snap
    for k in params:
        np.testing.assert_array_equal(lstm.params[k], params[k], err_msg=k)
        np.testing.assert_array_equal(lstm.grads[k], grads[k], err_msg=k)
    if state is None:
        assert lstm.state is None
    else:
        for a, b in zip(lstm.state, state):
            np.testing.assert_array_equal(a, b)


def _primed_layer(stateful):
    """A 2-layer LSTM (D=3, H=4) after one forward/backward of a (5, 2, 3) batch, and that call's results."""
    rng = np.random.default_rng(1)
    lstm = LSTM(3, 4, num_layers=2, dtype=np.float64, seed=0, stateful=stateful)
    x = nonzero(rng, (5, 2, 3))
    y, _ = lstm(x)
    dy = nonzero(rng, y.shape)
    lstm.backward(dy)
    return lstm, dy


def _assert_refused(call, kwargs, prefix, words):
    """call(**kwargs) raises ValueError whose message starts with prefix and contains every word."""
    with pytest.raises(ValueError) as err:
        call(**kwargs)
    msg = str(err.value)
    assert msg.startswith(prefix), msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


@pytest.mark.parametrize("stateful", [False, True])
@pytest.mark.parametrize("case", sorted(_bad_forward_cases()))
def test_bad_forward_input_is_refused_and_changes_nothing(case, stateful):
    kwargs, words = _bad_forward_cases()[case]
    lstm, dy = _primed_layer(stateful)
    snap = _snapshot(lstm)
    dx_before, dstate_before = lstm.backward(dy)       # the cache backward uses, before the bad call
    lstm.grads = snap[1]
    _assert_refused(lstm.forward, kwargs, "LSTM.forward: ", words)
    _assert_unchanged(lstm, snap)
    snap = _snapshot(lstm)
    dx_after, dstate_after = lstm.backward(dy)           # still differentiates the last good call
    np.testing.assert_array_equal(dx_after, dx_before)
    for a, b in zip(dstate_after, dstate_before):
        np.testing.assert_array_equal(a, b)


def _bad_backward_cases():
    dy = np.ones((5, 2, 4))
    return {
        "dy shape": (dict(dy=np.ones((5, 2, 3))), ["dy", "(5, 2, 3)", "(5, 2, 4)"]),
        "dy int": (dict(dy=np.ones((5, 2, 4), int)), ["dy", "float", "int64"]),
        "dy NaN": (dict(dy=np.full((5, 2, 4), np.nan)), ["dy", "finite", "NaN"]),
        "dh_n shape": (dict(dy=dy, dstate=(np.ones((2, 4)), np.ones((2, 2, 4)))), ["dh_n", "(2, 4)", "(2, 2, 4)"]),
        "dc_n inf": (dict(dy=dy, dstate=(np.ones((2, 2, 4)), np.full((2, 2, 4), np.inf))), ["dc_n", "finite"]),
    }


@pytest.mark.parametrize("case", sorted(_bad_backward_cases()))
def test_bad_backward_input_is_refused_and_changes_nothing(case):
    kwargs, words = _bad_backward_cases()[case]
    lstm, _ = _primed_layer(stateful=True)
    snap = _snapshot(lstm)
    _assert_refused(lstm.backward, kwargs, "LSTM.backward: ", words)
    _assert_unchanged(lstm, snap)


def test_backward_before_forward_is_refused():
    with pytest.raises(ValueError, match="LSTM.backward: call forward first"):
        LSTM(3, 4).backward(np.ones((5, 2, 4), np.float32))


@pytest.mark.parametrize("kwargs, words", [
    (dict(input_size=0, hidden_size=4), ["input_size", "positive int", "0"]),
    (dict(input_size=3, hidden_size=2.5), ["hidden_size", "positive int", "2.5"]),
    (dict(input_size=3, hidden_size=4, num_layers=True), ["num_layers", "positive int"]),
    (dict(input_size=3, hidden_size=4, dtype=np.int32), ["dtype", "float32 or float64", "int32"]),
    (dict(input_size=3, hidden_size=4, forget_bias=np.nan), ["forget_bias", "finite"]),
])
def test_bad_constructor_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        LSTM(**kwargs)
    msg = str(err.value)
    assert msg.startswith("LSTM: "), msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


# ---------------------------------------------------------------------- stateful
def _stateful_pair(batch_first, seed=4):
    """A stateful float64 LSTM and a stateless twin with the same weights."""
    a = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=seed, stateful=True)
    b = LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64, seed=seed)
    return a, b


@pytest.mark.parametrize("batch_first", [False, True])
def test_stateful_chunks_equal_one_call(batch_first):
    rng = np.random.default_rng(8)
    stateful, plain = _stateful_pair(batch_first)
    x = nonzero(rng, (4, 9, 3) if batch_first else (9, 4, 3))
    y, (h_n, c_n) = plain(x)
    t_axis = 1 if batch_first else 0
    chunks = [stateful(part)[0] for part in np.split(x, [2, 3, 7], axis=t_axis)]
    assert_close(np.concatenate(chunks, axis=t_axis), y, SAME_RTOL, "y")
    assert_close(stateful.state[0], h_n, SAME_RTOL, "h")
    assert_close(stateful.state[1], c_n, SAME_RTOL, "c")


def test_stateful_backward_returns_gradient_of_the_carried_state():
    """Truncated BPTT: backward of the 2nd chunk == backward of a stateless call started from the carried state."""
    rng = np.random.default_rng(9)
    stateful, plain = _stateful_pair(False)
    x1, x2 = nonzero(rng, (3, 4, 3)), nonzero(rng, (5, 4, 3))
    stateful(x1)
    carried = tuple(s.copy() for s in stateful.state)
    y, _ = stateful(x2)
    y_ref, _ = plain(x2, carried)
    assert_close(y, y_ref, SAME_RTOL, "y")
    dy = nonzero(rng, y.shape)
    dx, (dh0, dc0) = stateful.backward(dy)
    dx_ref, (dh0_ref, dc0_ref) = plain.backward(dy)
    for a, b, what in ((dx, dx_ref, "dx"), (dh0, dh0_ref, "dh0"), (dc0, dc0_ref, "dc0")):
        assert_close(a, b, SAME_RTOL, what)
    assert np.abs(dh0).max() > 0


def test_reset_states_rows_restarts_those_rows_from_zeros():
    rng = np.random.default_rng(10)
    stateful, plain = _stateful_pair(False)
    x1, x2 = nonzero(rng, (4, 5, 3)), nonzero(rng, (6, 5, 3))
    stateful(x1)
    before = tuple(s.copy() for s in stateful.state)
    rows = np.array([True, False, True, False, False])
    stateful.reset_states(rows)
    y, _ = stateful(x2)
    y_fresh, _ = plain(x2)                               # every row from zeros
    y_carry, _ = plain(x2, before)                       # every row from the carried state
    assert_close(y[:, rows], y_fresh[:, rows], SAME_RTOL, "reset rows")
    assert_close(y[:, ~rows], y_carry[:, ~rows], SAME_RTOL, "kept rows")
    stateful.reset_states()
    assert stateful.state is None
    assert_close(stateful(x2)[0], y_fresh, SAME_RTOL, "after reset_states()")


def test_stateful_refuses_a_changed_batch_size_and_says_why():
    stateful, _ = _stateful_pair(False)
    stateful(np.ones((2, 4, 3)))
    snap = _snapshot(stateful)
    with pytest.raises(ValueError) as err:
        stateful(np.ones((2, 3, 3)))
    msg = str(err.value)
    assert msg.startswith("LSTM.forward: ")
    for w in ("batch size 4", "got 3", "continues", "reset_states(batch_size=3)"):
        assert w in msg, f"{w!r} not in {msg!r}"
    _assert_unchanged(stateful, snap)
    with pytest.raises(ValueError, match="LSTM.reset_states: rows has shape"):
        stateful.reset_states(np.ones(3, bool))
    stateful.reset_states(batch_size=3)
    y, (h, _) = stateful(np.ones((2, 3, 3)))
    assert h.shape == (2, 3, 5)


# ---------------------------------------------------------------------- determinism
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_seed_same_params(dtype):
    a = LSTM(3, 6, num_layers=3, dtype=dtype, seed=123, forget_bias=1.0)
    b = LSTM(3, 6, num_layers=3, dtype=dtype, seed=123, forget_bias=1.0)
    c = LSTM(3, 6, num_layers=3, dtype=dtype, seed=124, forget_bias=1.0)
    assert list(a.params) == [n for k in range(3) for n in param_names(k)]
    for k in a.params:
        assert a.params[k].dtype == dtype
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
        assert not np.array_equal(a.params[k], c.params[k]), k
    H = 6
    assert np.all(a.params["b_l0"][H:2 * H] >= 1.0 - 1 / np.sqrt(H))   # forget_bias lands in the F block
