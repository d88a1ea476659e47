"""The stateful contract: chunks = one call, per-row reset, truncated BPTT, epoch resets, and misuse
refused with a clear error that leaves weights, optimizer state and carried state unchanged."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npylstm import LSTM, SGD, Adam, Linear, Sequential, mse_loss, stream_batches
from npylstm.gradcheck import numeric_gradient

from model_helpers import EXACT_RTOL, FD_ATOL, FD_RTOL, assert_chunks_give_one_call, rel_err


def make_model(stateful=True, seed=0, dtype=np.float64, batch_firsts=(True, False), D=2, out=2):
    rng = np.random.default_rng(seed)
    layers = [LSTM(D, 4, batch_first=batch_firsts[0], dtype=dtype, seed=int(rng.integers(2**31)), stateful=stateful),
              LSTM(4, 3, num_layers=2, batch_first=batch_firsts[1], dtype=dtype, seed=int(rng.integers(2**31)),
                   stateful=stateful),
              Linear(3, out, dtype=dtype, seed=int(rng.integers(2**31)))]
    return Sequential(layers, return_sequences=True, stateful=stateful, seed=seed)


def random_states(model, N, rng):
    return [(rng.normal(size=(l.num_layers, N, l.hidden_size)), rng.normal(size=(l.num_layers, N, l.hidden_size)))
            for l in model.lstms]


# ---------------------------------------------------------------- equivalences
@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 4), T=st.integers(2, 12), cuts=st.lists(st.integers(1, 11), max_size=4),
       batch_firsts=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
def test_chunks_give_the_outputs_of_one_call(N, T, cuts, batch_firsts, seed):
    model = make_model(batch_firsts=batch_firsts, seed=seed % 1000)
    assert_chunks_give_one_call(model, np.random.default_rng(seed).normal(size=(N, T, 2)), cuts)


def test_per_sample_reset_equals_running_that_row_from_zeros():
    rng = np.random.default_rng(1)
    model = make_model()
    x1, x2 = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 4, 2))
    whole = model.predict(np.concatenate([x1, x2], axis=1))       # every row continuing
    model.reset_states()
    fresh = model.predict(x2)                                      # every row from zeros
    model.reset_states()
    model.predict(x1)
    rows = np.array([False, True, False])
    model.reset_states(rows)
    got = model.predict(x2)
    np.testing.assert_allclose(got[1], fresh[1], rtol=EXACT_RTOL, atol=1e-14)       # reset row: from zeros
    np.testing.assert_allclose(got[~rows], whole[~rows, 5:], rtol=EXACT_RTOL, atol=1e-14)   # the others: continuing
    assert not np.allclose(got[0], fresh[0])                       # (the carried state did matter)


def test_tbptt_gradients_hold_the_incoming_state_constant():
    """Gradients of chunk 2 = its finite differences with the state carried from chunk 1 frozen."""
    rng = np.random.default_rng(2)
    model = make_model()
    x1, x2 = rng.normal(size=(2, 4, 2)), rng.normal(size=(2, 3, 2))
    y2 = rng.normal(size=(2, 3, 2))
    model.predict(x1)
    carried = model.states
    assert all(np.abs(h).max() > 0 for h, _ in carried)

    def f():
        model.states = carried
        return mse_loss(model.forward(x2), y2)[0]

    model.states = carried
    _, dout = mse_loss(model.forward(x2), y2)
    model.zero_grad()
    dx = model.backward(dout)
    grads = {k: v.copy() for k, v in model.grads.items()}
    for name, analytic, arr in [("x2", dx, x2)] + [(k, grads[k], p) for k, p in model.params.items()]:
        g = numeric_gradient(f, arr)
        diff = np.abs(analytic - g).max()
        rel, _ = rel_err(analytic, g)
        assert rel <= FD_RTOL or diff <= FD_ATOL, f"{name}: relative error {rel:.3g}, abs {diff:.3g}"


def test_tbptt_stops_at_the_call_boundary():
    """Chunk 2's gradient does not depend on how chunk 1's state was reached, only on its value."""
    rng = np.random.default_rng(3)
    model = make_model()
    x2, y2 = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 3, 2))
    results = []
    for x1 in (rng.normal(size=(2, 6, 2)), None):
        model.reset_states()
        if x1 is not None:
            model.predict(x1)
            carried = model.states
        else:
            model.states = carried                               # same state, reached without chunk 1
        _, dout = mse_loss(model.forward(x2), y2)
        model.zero_grad()
        model.backward(dout)
        results.append({k: v.copy() for k, v in model.grads.items()})
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)


# ---------------------------------------------------------------- fit
def _stream(N=4, steps=5, S=203, seed=0):
    series = np.sin(np.arange(S) * 0.3) + 0.1 * np.random.default_rng(seed).normal(size=S)
    x, y, dropped = stream_batches(np.stack([series, np.cos(np.arange(S) * 0.3)], axis=1), N, steps)
    return x, y


def test_fit_resets_the_state_at_each_epoch_start_and_runs_batches_in_order():
    x, y = _stream()
    a, b = make_model(), make_model()
    for m in (a, b):
        m.compile("mse", SGD(lr=0.05, momentum=0.9))
    b.states = random_states(b, 4, np.random.default_rng(0))      # garbage left from earlier use
    a.fit(x, y, epochs=2, batch_size=4, shuffle=False, progress=False)
    b.fit(x, y, epochs=2, batch_size=4, shuffle=False, progress=False)
    # the same, written out: reset, then batch k = rows [4k, 4k + 4) in order
    c = make_model()
    c.compile("mse", SGD(lr=0.05, momentum=0.9))
    for epoch in range(2):
        c.reset_states()
        for k in range(0, len(x), 4):
            c.train_on_batch(x[k:k + 4], y[k:k + 4])
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)
        np.testing.assert_array_equal(a.params[key], c.params[key], err_msg=key)


def test_reset_states_with_batch_size_relocks():
    x, y = _stream()
    model = make_model()
    model.compile("mse")
    model.fit(x, y, epochs=1, batch_size=4, shuffle=False, progress=False)
    model.reset_states(batch_size=2)
    assert model.batch_size == 2 and model.states is None
    model.fit(x, y, epochs=1, batch_size=2, shuffle=False, progress=False)
    assert model.batch_size == 2


def test_stateful_generate_uses_and_updates_the_carried_state():
    rng = np.random.default_rng(6)
    model = make_model()
    model.reset_states(batch_size=1)
    seed = rng.normal(size=(4, 2))
    model.predict(rng.normal(size=(1, 3, 2)))                      # some carried state
    carried = model.states
    a = model.generate(seed, 3)
    after = model.states
    model.states = carried
    b = model.generate(seed, 3)
    np.testing.assert_array_equal(a, b)
    model.reset_states()
    assert not np.allclose(model.generate(seed, 3), a)           # the carried state was used
    assert not np.allclose(after[0][0], carried[0][0])           # and updated


def test_stateful_validation_starts_from_zeros_and_keeps_the_training_state():
    x, y = _stream()
    a, b = make_model(), make_model()
    for m in (a, b):
        m.compile("mse", Adam(lr=0.01))
    xv, yv = x[:8], y[:8]
    h = a.fit(x, y, epochs=1, batch_size=4, shuffle=False, validation_data=(xv, yv), progress=False)
    b.fit(x, y, epochs=1, batch_size=4, shuffle=False, progress=False)
    for (ha, ca), (hb, cb) in zip(a.states, b.states):               # validation did not disturb the carried state
        assert np.array_equal(ha, hb) and np.array_equal(ca, cb)
    b.reset_states()
    assert h["val_loss"][0] == b.evaluate(xv, yv)["loss"]


def test_lstm_state_setter():
    layer = LSTM(2, 3, num_layers=2, stateful=True, dtype=np.float64, seed=3)
    rng = np.random.default_rng(0)
    h, c = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    layer.state = (h, c)
    x = rng.normal(size=(4, 5, 2))
    y, _ = layer(x)
    y0, _ = LSTM(2, 3, num_layers=2, dtype=np.float64, seed=3)(x, (h, c))
    np.testing.assert_array_equal(y, y0)                           # the set state is where the call starts
    with pytest.raises(ValueError, match="batch size cannot change"):
        layer(rng.normal(size=(4, 6, 2)))                          # and it locked the batch size to 5
    with pytest.raises(ValueError, match=r"h has shape \(2, 5, 4\), expected \(2, \*, 3\)"):
        layer.state = (np.zeros((2, 5, 4)), np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="only a stateful layer"):
        LSTM(2, 3).state = (h, c)
    layer.state = None
    assert layer.state is None


# ---------------------------------------------------------------- misuse leaves the model unchanged
def _snapshot(model):
    return ({k: v.copy() for k, v in model.params.items()}, model.optimizer.state_dict(), model.states,
            model.batch_size, model.epochs_trained)


def _assert_same(s1, s2):
    p1, o1, st1, b1, e1 = s1
    p2, o2, st2, b2, e2 = s2
    for k in p1:
        assert np.array_equal(p1[k], p2[k]), f"weights {k} changed"
    assert o1["t"] == o2["t"]
    for buf in o1["buffers"]:
        for k in o1["buffers"][buf]:
            assert np.array_equal(o1["buffers"][buf][k], o2["buffers"][buf][k]), f"optimizer {buf}[{k}] changed"
    assert (st1 is None) == (st2 is None)
    for (h1, c1), (h2, c2) in zip(st1 or [], st2 or []):
        assert np.array_equal(h1, h2) and np.array_equal(c1, c2), "carried state changed"
    assert (b1, e1) == (b2, e2)


def _nan(a):
    a = a.copy()
    a.flat[7] = np.nan
    return a


MISUSE = [
    ("fit: batch size changed", lambda m, x, y: m.fit(x, y, batch_size=2, shuffle=False), "batch size 4, got batches of 2"),
    ("fit: shuffle with stateful", lambda m, x, y: m.fit(x, y, batch_size=4), "shuffle=True is refused"),
    ("fit: last partial batch", lambda m, x, y: m.fit(x[:10], y[:10], batch_size=4, shuffle=False), "last one would have 2 rows"),
    ("fit: x and y lengths", lambda m, x, y: m.fit(x, y[:-4], batch_size=4, shuffle=False), "x has 40 rows but y has 36 rows"),
    ("fit: integer x", lambda m, x, y: m.fit(x.astype(int), y, batch_size=4, shuffle=False), "x must be a real floating"),
    ("fit: integer y for mse", lambda m, x, y: m.fit(x, y.astype(int), batch_size=4, shuffle=False), "y must be a real floating"),
    ("fit: boolean y", lambda m, x, y: m.fit(x, y > 0, batch_size=4, shuffle=False), "y must be a real floating"),
    ("fit: NaN in x", lambda m, x, y: m.fit(_nan(x), y, batch_size=4, shuffle=False), "x must be finite"),
    ("fit: NaN in y", lambda m, x, y: m.fit(x, _nan(y), batch_size=4, shuffle=False), "y must be finite"),
    ("fit: NaN in validation", lambda m, x, y: m.fit(x, y, batch_size=4, shuffle=False, validation_data=(_nan(x), y)), r"validation_data\[0\] must be finite"),
    ("fit: mask not bool", lambda m, x, y: m.fit(x, y, batch_size=4, shuffle=False, mask=np.ones(x.shape[:2])), "mask must be booleans"),
    ("fit: wrong y shape", lambda m, x, y: m.fit(x, y[:, -1], batch_size=4, shuffle=False), "return_sequences"),
    ("fit: epochs", lambda m, x, y: m.fit(x, y, epochs=0, batch_size=4, shuffle=False), "epochs must be a positive int"),
    ("predict: batch size changed", lambda m, x, y: m.predict(x, batch_size=12), "batch size 4, got batches of 12"),
    ("forward: batch size changed", lambda m, x, y: m.forward(x[:3]), "batch size 4, got batches of 3"),
    ("evaluate: partial batch", lambda m, x, y: m.evaluate(x[:6], y[:6]), "not a whole number of batches"),
    ("reset_states: rows shape", lambda m, x, y: m.reset_states(np.ones(3, bool)), r"expected \(4,\)"),
    ("reset_states: rows dtype", lambda m, x, y: m.reset_states(np.ones(4)), "rows must be booleans"),
    ("generate: batch size 4", lambda m, x, y: m.generate(x[0], 3), "reset_states\\(batch_size=1\\)"),
    ("train_on_batch: batch size", lambda m, x, y: m.train_on_batch(x[:8], y[:8]), "batch size 4, got batches of 8"),
]


@pytest.mark.parametrize("name, call, match", MISUSE, ids=[m[0] for m in MISUSE])
def test_misuse_is_refused_and_changes_nothing(name, call, match):
    x, y = _stream()
    model = make_model()
    model.compile("mse", Adam(lr=0.01))
    model.fit(x, y, epochs=1, batch_size=4, shuffle=False, progress=False)
    model.predict(x[:4])                                           # a non-zero carried state
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        call(model, x, y)
    _assert_same(before, _snapshot(model))


def test_a_stateful_lstm_layer_refuses_a_changed_batch_size_too():
    layer = LSTM(2, 3, stateful=True, batch_first=True)
    layer(np.ones((4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="batch size cannot change"):
        layer(np.ones((3, 2, 2), np.float32))
