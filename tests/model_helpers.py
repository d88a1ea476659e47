"""Helpers shared by the Sequential tests (LSTM, GRU and mixed stacks): builders, drawn states, the
end-to-end finite-difference check, checkpoint helpers."""

import numpy as np

from npylstm import GRU, LSTM, Linear, Sequential, cross_entropy_loss, mse_loss, stream_batches
from npylstm.gradcheck import numeric_gradient

FD_RTOL = 1e-6     # relative error per tensor, hand-written backward vs central differences, float64
FD_ATOL = 1e-9     # ... or absolute: a gradient vanishing through a stack of tiny layers (or a saturated
                   # softmax) sits near the differences' rounding noise, ~1.5 ulp(loss) / 1e-4 ≈ 1e-11 · |loss|
EXACT_RTOL = 1e-12  # float64: chunked and whole runs do the same operations; only BLAS blocking may differ


def assert_chunks_give_one_call(model, x, cuts):
    """A stateful model fed x (N, T, D) in chunks cut at `cuts` gives the outputs of one call."""
    T = x.shape[1]
    whole = model.predict(x)
    model.reset_states()
    bounds = [0] + sorted({c for c in cuts if c < T}) + [T]
    parts = [model.predict(x[:, a:b]) for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=EXACT_RTOL, atol=1e-14)


def rel_err(a, b):
    """max|a - b| / max(max|a|, max|b|, tiny), and where the worst pair is."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), np.finfo(np.float64).tiny)
    where = np.unravel_index(int(d.argmax()), d.shape) if d.size else ()
    return float(d.max(initial=0.0) / scale), where


def padding_mask(rng, N, T, padding):
    """(N, T) bool: each row has a drawn length in [1, T], its real steps at the end (pre) or start (post)."""
    lengths = rng.integers(1, T + 1, size=N)
    t = np.arange(T)[None, :]
    return t >= T - lengths[:, None] if padding == "pre" else t < lengths[:, None]


def make_layer(spec, n_in, H, rng, num_layers=1, batch_first=True, dtype=np.float64, stateful=False):
    seed = int(rng.integers(2**31))
    if spec == "lstm":
        return LSTM(n_in, H, num_layers=num_layers, batch_first=batch_first, dtype=dtype, seed=seed,
                    forget_bias=1.0, stateful=stateful)
    return GRU(n_in, H, num_layers=num_layers, batch_first=batch_first, dtype=dtype, seed=seed,
               reset_after=spec[1], stateful=stateful)


def build(rng, D, specs, sizes, num_layers0, batch_firsts, head_out, return_sequences, stateful, dtype=np.float64):
    layers, n_in = [], D
    for k, (spec, H, bf) in enumerate(zip(specs, sizes, batch_firsts)):
        layers.append(make_layer(spec, n_in, H, rng, num_layers0 if k == 0 else 1, bf, dtype, stateful))
        n_in = H
    if head_out:
        layers.append(Linear(n_in, head_out, dtype=dtype, seed=int(rng.integers(2**31))))
    return Sequential(layers, return_sequences=return_sequences, stateful=stateful, seed=0)


def random_states(model, N, rng):
    """A drawn, non-zero state per recurrent layer in its own form: (h, c) for an LSTM, h for a GRU."""
    states = []
    for layer in model.rnns:
        st_ = tuple(rng.normal(size=(layer.num_layers, N, layer.hidden_size)) for _ in layer.state_names)
        states.append(st_[0] if len(st_) == 1 else st_)
    return states


def check_model_gradients(N, T, D, specs, sizes, num_layers0, batch_firsts, head, return_sequences, padding, loss,
                          stateful, seed):
    """Every parameter of every layer and the input x against central differences of the loss."""
    rng = np.random.default_rng(seed)
    model = build(rng, D, specs, sizes, num_layers0, batch_firsts, 3 if head else 0, return_sequences, stateful)
    x = rng.normal(size=(N, T, D))
    mask = None if padding is None else padding_mask(rng, N, T, padding)
    out_shape = (N, T, model.output_size) if return_sequences else (N, model.output_size)
    loss_mask = mask if return_sequences else None
    y = rng.normal(size=out_shape) if loss == "mse" else rng.integers(0, model.output_size, size=out_shape[:-1])
    loss_fn = mse_loss if loss == "mse" else cross_entropy_loss
    states0 = random_states(model, N, rng) if stateful else None   # held constant (truncated BPTT)

    def f():
        if stateful:
            model.states = states0
        return loss_fn(model.forward(x, mask), y, loss_mask)[0]

    if stateful:
        model.states = states0
    out = model.forward(x, mask)
    _, dout = loss_fn(out, y, loss_mask)
    model.zero_grad()
    dx = model.backward(dout)
    grads = {k: v.copy() for k, v in model.grads.items()}
    checks = [("x", dx, x)] + [(k, grads[k], p) for k, p in model.params.items()]
    for name, analytic, arr in checks:
        numeric = numeric_gradient(f, arr)
        err, where = rel_err(analytic, numeric)
        abs_err = float(np.abs(analytic - numeric).max())
        assert err <= FD_RTOL or abs_err <= FD_ATOL, (
            f"{name}: relative error {err:.3g} > {FD_RTOL:g} and max abs error {abs_err:.3g} > {FD_ATOL:g}; "
            f"worst at {where}: analytic {analytic[where]!r}, numeric {numeric[where]!r}")
    if mask is not None:
        assert not dx[~mask].any(), "padding steps must get no gradient"


def stream(N=3, steps=4):
    t = np.arange(200) * 0.2
    return stream_batches(np.stack([np.sin(t), np.cos(t)], axis=1).astype(np.float32), N, steps)[:2]


def assert_same_params(a, b):
    pa, pb = a.params, b.params
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]), k
