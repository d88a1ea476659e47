"""PyTorch parity (outputs, final states, every gradient), the PyTorch / Keras weight round trips for the LSTM and
the GRU, and every refused interop input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, nonzero
from npylstm import GRU, LSTM, from_keras, from_torch, to_keras, to_torch_state_dict
from npylstm.lstm import param_names

torch = pytest.importorskip("torch")

F64_RTOL = 1e-10   # same float64 math, different summation order (PyTorch's GEMMs and fused gates)
F32_RTOL = 1e-4    # float32: ~1e-7 per rounding, amplified over T steps and wide weights
SAME_RTOL = 0.0    # a round trip copies weights: bit-identical


def torch_twin(lstm, rng, width):
    """An nn.LSTM with weights drawn `width` times wider than its default init, non-zero biases on both
    bias vectors (PyTorch has two; ours is their sum), and the npylstm LSTM loaded from it."""
    tdtype = torch.float64 if lstm.dtype == np.float64 else torch.float32
    ref = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers,
                        batch_first=lstm.batch_first, dtype=tdtype)
    k = width / np.sqrt(lstm.hidden_size)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.from_numpy(nonzero(rng, tuple(p.shape), k)))
    return ref, from_torch(ref)


@st.composite
def parity_cases(draw):
    return dict(T=draw(st.integers(1, 6)), N=draw(st.integers(1, 5)), D=draw(st.integers(1, 7)),
                H=draw(st.integers(1, 7)), L=draw(st.integers(1, 3)), batch_first=draw(st.booleans()),
                width=draw(st.floats(1.0, 4.0)), seed=draw(st.integers(0, 2**32 - 1)))


def run_both(T, N, D, H, L, batch_first, width, seed, dtype, unbatched=False):
    """Forward + backward of nn.LSTM and of from_torch(nn.LSTM) on the same draws; returns both dicts."""
    rng = np.random.default_rng(seed)
    ref, ours = torch_twin(LSTM(D, H, num_layers=L, batch_first=batch_first, dtype=dtype), rng, width)
    assert ours.dtype == dtype and ours.batch_first == batch_first
    x_shape = (T, D) if unbatched else ((N, T, D) if batch_first else (T, N, D))
    s_shape = (L, H) if unbatched else (L, N, H)
    x, h0, c0 = nonzero(rng, x_shape), nonzero(rng, s_shape), nonzero(rng, s_shape)
    dy = nonzero(rng, x_shape[:-1] + (H,))
    dh, dc = nonzero(rng, s_shape), nonzero(rng, s_shape)
    x, h0, c0, dy, dh, dc = (a.astype(dtype) for a in (x, h0, c0, dy, dh, dc))

    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    ty, (thn, tcn) = ref(tx, (th0, tc0))
    loss = (ty * torch.from_numpy(dy)).sum() + (thn * torch.from_numpy(dh)).sum() + (tcn * torch.from_numpy(dc)).sum()
    loss.backward()
    theirs = dict(y=ty, h_n=thn, c_n=tcn, dx=tx.grad, dh0=th0.grad, dc0=tc0.grad)
    theirs = {k: v.detach().numpy() for k, v in theirs.items()}
    for layer in range(L):
        n_x, n_h, n_b = param_names(layer)
        g = {n: p.grad.numpy() for n, p in ref.named_parameters()}
        theirs[n_x], theirs[n_h] = g[f"weight_ih_l{layer}"].T, g[f"weight_hh_l{layer}"].T
        theirs[n_b] = g[f"bias_ih_l{layer}"]                      # d loss / d b: the same for both biases
        rtol = F64_RTOL if dtype == np.float64 else F32_RTOL
        assert_close(g[f"bias_hh_l{layer}"], g[f"bias_ih_l{layer}"], rtol, "torch's two bias gradients")

    y, (h_n, c_n) = ours(x, (h0, c0))
    dx, (dh0, dc0) = ours.backward(dy, (dh, dc))
    mine = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **ours.grads)
    return mine, theirs


@settings(deadline=None, max_examples=40)
@given(case=parity_cases())
def test_matches_torch_float64(case):
    mine, theirs = run_both(**case, dtype=np.float64)
    assert set(mine) == set(theirs)
    for k in theirs:
        assert mine[k].dtype == np.float64, k
        assert_close(mine[k], theirs[k], F64_RTOL, k)


@settings(deadline=None, max_examples=15)
@given(case=parity_cases())
def test_matches_torch_float32(case):
    mine, theirs = run_both(**case, dtype=np.float32)
    for k in theirs:
        assert mine[k].dtype == np.float32, k
        assert_close(mine[k], theirs[k], F32_RTOL, k)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, F64_RTOL), (np.float32, F32_RTOL)])
@pytest.mark.parametrize("layers", [1, 3])
def test_unbatched_input_matches_torch(dtype, rtol, layers):
    """2-D input (T, D) with (L, H) states, as nn.LSTM takes it."""
    mine, theirs = run_both(T=5, N=1, D=3, H=4, L=layers, batch_first=False, width=2.0, seed=6,
                            dtype=dtype, unbatched=True)
    assert mine["y"].shape == (5, 4) and mine["h_n"].shape == (layers, 4) and mine["dx"].shape == (5, 3)
    for k in theirs:
        assert_close(mine[k], theirs[k], rtol, k)


@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_state_dict_round_trip(batch_first):
    """from_torch -> to_torch_state_dict -> a fresh nn.LSTM: same outputs as the original nn.LSTM."""
    rng = np.random.default_rng(12)
    ref, ours = torch_twin(LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=np.float64), rng, 2.0)
    sd = to_torch_state_dict(ours)
    assert set(sd) == set(ref.state_dict())
    fresh = torch.nn.LSTM(3, 5, num_layers=2, batch_first=batch_first, dtype=torch.float64)
    fresh.load_state_dict(sd, strict=True)
    x = torch.from_numpy(nonzero(rng, (4, 6, 3)))
    state = tuple(torch.from_numpy(nonzero(rng, (2, 4 if batch_first else 6, 5))) for _ in range(2))
    with torch.no_grad():
        y_ref, (h_ref, c_ref) = ref(x, state)
        y_new, (h_new, c_new) = fresh(x, state)
    for a, b, what in ((y_new, y_ref, "y"), (h_new, h_ref, "h_n"), (c_new, c_ref, "c_n")):
        assert_close(a.numpy(), b.numpy(), F64_RTOL, what)
    again = from_torch(sd)                                   # and back: identical parameters
    for k in ours.params:
        np.testing.assert_array_equal(again.params[k], ours.params[k], err_msg=k)
    assert ours.to_torch_state_dict().keys() == sd.keys()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keras_round_trip(dtype):
    rng = np.random.default_rng(13)
    D, H = 3, 4
    weights = [nonzero(rng, (D, 4 * H)).astype(dtype), nonzero(rng, (H, 4 * H)).astype(dtype),
               nonzero(rng, 4 * H).astype(dtype)]
    lstm = from_keras(weights)
    assert lstm.dtype == dtype and (lstm.input_size, lstm.hidden_size) == (D, H)
    back = to_keras(lstm)
    for a, b in zip(back, weights):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    assert not np.shares_memory(back[0], lstm.params["W_x_l0"])     # an export is a copy
    for a, b in zip(lstm.to_keras(), weights):
        np.testing.assert_array_equal(a, b)


def test_interop_refusals_name_the_problem():
    with pytest.raises(ValueError, match="from_torch: bidirectional"):
        from_torch(torch.nn.LSTM(2, 3, bidirectional=True))
    with pytest.raises(ValueError, match="from_torch: expected an nn.LSTM"):
        from_torch(42)
    with pytest.raises(ValueError, match="from_keras: expected \\[kernel, recurrent_kernel, bias\\] of one LSTM or GRU layer, got 2"):
        from_keras([np.ones((2, 8)), np.ones((2, 8))])
    with pytest.raises(ValueError, match="from_keras: bias has shape"):
        from_keras([np.ones((2, 8)), np.ones((2, 8)), np.ones(7)])
    with pytest.raises(ValueError, match="to_keras: a Keras LSTM layer holds one layer"):
        to_keras(LSTM(2, 3, num_layers=2))


# ------------------------------------------------------------------------ one from_torch for both cells
TORCH_CLASSES = {"LSTM": LSTM, "GRU": GRU}


def drawn_layer(cls, L, dtype, seed, batch_first=False, D=3, H=4):
    """An npylstm layer with drawn, non-zero weights and biases (wider than the default init)."""
    rng = np.random.default_rng(seed)
    layer = TORCH_CLASSES[cls](D, H, num_layers=L, dtype=dtype, seed=seed, batch_first=batch_first)
    layer.load_state_dict({k: nonzero(rng, v.shape, 2.0 / np.sqrt(H)) for k, v in layer.params.items()})
    return layer


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_to_torch_state_dict_loads_strictly_and_matches_torch_outputs_and_gradients(cls, L, batch_first):
    """npylstm -> to_torch_state_dict -> nn.LSTM / nn.GRU .load_state_dict(strict=True), float64: outputs,
    final states, dx, dstate and every parameter gradient agree to F64_RTOL."""
    ours = drawn_layer(cls, L, np.float64, seed=L, batch_first=batch_first)
    sd = ours.to_torch_state_dict()
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in sd.values())
    ref = getattr(torch.nn, cls)(3, 4, num_layers=L, batch_first=batch_first, dtype=torch.float64)
    assert list(sd) == list(ref.state_dict())                      # PyTorch's key order, too
    ref.load_state_dict(sd, strict=True)
    rng = np.random.default_rng(7)
    N, T = 2, 5
    x = nonzero(rng, (N, T, 3) if batch_first else (T, N, 3))
    states = [nonzero(rng, (L, N, 4)) for _ in ours.state_names]
    dy, dstates = nonzero(rng, x.shape[:-1] + (4,)), [nonzero(rng, (L, N, 4)) for _ in ours.state_names]
    pack = (lambda s: tuple(s) if len(s) > 1 else s[0])
    y, s_n = ours(x, pack(states))
    dx, ds0 = ours.backward(dy, pack(dstates))
    tx, *tstates = (torch.tensor(a, requires_grad=True) for a in (x, *states))
    ty, ts_n = ref(tx, pack(tstates))
    ts_n = list(ts_n) if isinstance(ts_n, tuple) else [ts_n]
    loss = (ty * torch.from_numpy(dy)).sum() + sum((a * torch.from_numpy(b)).sum() for a, b in zip(ts_n, dstates))
    loss.backward()
    s_n, ds0 = (list(s) if isinstance(s, tuple) else [s] for s in (s_n, ds0))
    pairs = [("y", y, ty), ("dx", dx, tx.grad)] + [(f"state_n[{i}]", a, b) for i, (a, b) in enumerate(zip(s_n, ts_n))] \
        + [(f"dstate0[{i}]", a, t.grad) for i, (a, t) in enumerate(zip(ds0, tstates))]
    for what, a, b in pairs:
        assert_close(a, b.detach().numpy(), F64_RTOL, what)
    g = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    for k in range(L):
        assert_close(ours.grads[f"W_x_l{k}"], g[f"weight_ih_l{k}"].T, F64_RTOL, f"W_x_l{k}")
        assert_close(ours.grads[f"W_h_l{k}"], g[f"weight_hh_l{k}"].T, F64_RTOL, f"W_h_l{k}")
        bias = [f"b_l{k}"] if cls == "LSTM" else [f"b_x_l{k}", f"b_h_l{k}"]
        for name, tname in zip(bias, ["bias_ih", "bias_hh"]):
            assert_close(ours.grads[name], g[f"{tname}_l{k}"], F64_RTOL, name)
    back = from_torch(ref)                                          # and back: bit-identical parameters
    assert type(back) is type(ours) and back.batch_first == batch_first
    for k, v in ours.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_torch_takes_a_prefixed_state_dict_and_keeps_the_dtype(dtype):
    module = torch.nn.GRU(3, 4, num_layers=2, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    gru = from_torch({f"rnn.{k}": v for k, v in module.state_dict().items()})
    assert isinstance(gru, GRU) and gru.dtype == dtype and gru.num_layers == 2
    np.testing.assert_array_equal(gru.params["b_h_l1"], module.bias_hh_l1.detach().numpy())


def test_from_torch_takes_the_options_that_agree_and_refuses_the_others():
    module = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    lstm = from_torch(module, hidden_size=4, num_layers=2, dtype=np.float64, stateful=True, seed=3, batch_first=False)
    assert (lstm.dtype, lstm.stateful, lstm.batch_first) == (np.float64, True, False)
    assert from_torch(module).batch_first is True                     # the module's, by default


def test_to_torch_state_dict_is_numpy_without_torch_and_npylstm_does_not_import_torch(monkeypatch):
    import subprocess
    import sys
    monkeypatch.setitem(sys.modules, "torch", None)                   # `import torch` raises ImportError
    sd = GRU(2, 3, seed=0).to_torch_state_dict()
    assert all(type(v) is np.ndarray for v in sd.values()) and list(sd)[0] == "weight_ih_l0"
    code = ("import sys, numpy as np, npylstm; l = npylstm.LSTM(2, 3); sd = {'weight_ih_l0': np.ones((12, 2)), "
            "'weight_hh_l0': np.ones((12, 4)), 'bias_ih_l0': np.ones(12), 'bias_hh_l0': np.ones(12)}; "
            "g = npylstm.from_torch(sd); l.state_dict(); assert type(g).__name__ == 'GRU'; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _lstm_sd(**changes):
    sd = dict(torch.nn.LSTM(3, 4, num_layers=2).state_dict())
    for k, v in changes.items():
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    return sd


class Container(torch.nn.Module):
    """A model holding an LSTM as `rnn` and a head: its state_dict has the head's keys too."""

    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.LSTM(3, 4), torch.nn.Linear(4, 1)


TORCH_REFUSALS = [
    (lambda: from_torch(_lstm_sd(bias_hh_l0=None)), "missing key 'bias_hh_l0'"),
    (lambda: from_torch(_lstm_sd(bias_ih_l0=None)), "missing key 'bias_ih_l0'"),
    (lambda: from_torch(_lstm_sd(weight_hh_l1=None)), "missing key 'weight_hh_l1'"),
    (lambda: from_torch(_lstm_sd(weight_ih_l2=torch.zeros(16, 4))), "missing key 'weight_hh_l2'"),
    (lambda: from_torch(_lstm_sd(extra=torch.zeros(1))), "unexpected key 'extra'"),
    (lambda: from_torch(_lstm_sd(weight_ih_l01=torch.zeros(1))), "unexpected key 'weight_ih_l01'"),
    (lambda: from_torch(Container()), "unexpected key 'fc.weight'"),
    (lambda: from_torch({**_lstm_sd(), **{f"b.{k}": v for k, v in _lstm_sd().items()}}),
     r"the state_dict holds several recurrent modules \(key prefixes \['', 'b.'\]\)"),
    (lambda: from_torch({"weight": torch.zeros(2)}), "missing key 'weight_ih_l0'"),
    (lambda: from_torch({0: torch.zeros(2)}), "state_dict keys must be strings, got 0"),
    (lambda: from_torch(_lstm_sd(weight_hh_l1=torch.zeros(16, 5))), r"'weight_hh_l1' has shape \(16, 5\), expected \(16, 4\)"),
    (lambda: from_torch(_lstm_sd(bias_ih_l1=torch.zeros(12))), r"'bias_ih_l1' has shape \(12,\), expected \(16,\)"),
    (lambda: from_torch(_lstm_sd(weight_hh_l0=torch.zeros(20, 4))), r"'weight_hh_l0' has shape \(20, 4\), expected \(4H, H\)"),
    (lambda: from_torch(_lstm_sd(weight_ih_l0=torch.zeros(16, 3, dtype=torch.int64))), "'weight_ih_l0' has dtype int64"),
    (lambda: from_torch(torch.nn.LSTM(3, 4, proj_size=2)), "proj_size=2 is not supported"),
    (lambda: from_torch(torch.nn.LSTM(3, 4, proj_size=2).state_dict()), "proj_size is not supported .key 'weight_hr_l0'"),
    (lambda: from_torch(torch.nn.LSTM(3, 4, bidirectional=True)), "bidirectional modules are not supported"),
    (lambda: from_torch(torch.nn.GRU(3, 4, bidirectional=True).state_dict()), "bidirectional .*'weight_ih_l0_reverse'"),
    (lambda: from_torch(torch.nn.LSTM(3, 4, bias=False)), "the module has bias=False"),
    (lambda: from_torch(torch.nn.LSTM(3, 4, bias=False).state_dict()), "missing key 'bias_ih_l0'.*bias=False"),
    (lambda: from_torch(torch.nn.RNN(3, 4)), "nn.RNN .mode 'RNN_TANH'. is not supported"),
    (lambda: from_torch(torch.nn.RNN(3, 4).state_dict()), r"'weight_hh_l0' has shape \(4, 4\).*nn.RNN"),
    (lambda: from_torch(torch.nn.LSTM(3, 4), hidden_size=5),
     r"hidden_size=5 contradicts the weights, which give hidden_size=4 \(an nn.LSTM: weight_hh_l0 has shape \(16, 4\)\)"),
    (lambda: from_torch(torch.nn.LSTM(3, 4), input_size=4), "input_size=4 contradicts the weights"),
    (lambda: from_torch(torch.nn.GRU(3, 4, num_layers=2), num_layers=1), "num_layers=1 contradicts the weights"),
    (lambda: from_torch(torch.nn.LSTM(3, 4), reset_after=True), "reset_after is not an option of the LSTM"),
    (lambda: from_torch(torch.nn.GRU(3, 4), forget_bias=1.0), "forget_bias is not an option of the GRU"),
    (lambda: from_torch(torch.nn.LSTM(3, 4), dtype=np.int32), "LSTM: dtype must be float32 or float64, got int32"),
    (lambda: from_torch(torch.nn.GRU(3, 4), seed=-1), "GRU: seed must be a non-negative int or None"),
    (lambda: from_torch(42), "expected an nn.LSTM, an nn.GRU or the state_dict of one, got int"),
]


@pytest.mark.parametrize("make, match", TORCH_REFUSALS, ids=lambda v: v if isinstance(v, str) else "")
def test_every_refused_torch_input_is_a_value_error_naming_the_key(make, match):
    with pytest.raises(ValueError, match=r"^from_torch: " + match):
        make()


# ------------------------------------------------------------------------ one from_keras for both cells
def _keras_class(name):
    """A small stand-in for a Keras 3 layer class: get_weights(), get_config(), the class name."""
    def init(self, weights, **config):
        self._weights, self._config = [np.asarray(w) for w in weights], config

    return type(name, (), {"__init__": init, "get_weights": lambda self: list(self._weights),
                           "get_config": lambda self: dict(self._config)})


KerasLSTM, KerasGRU, Dense = _keras_class("LSTM"), _keras_class("GRU"), _keras_class("Dense")


def keras_lstm_reference(x, kernel, recurrent_kernel, bias, h0, c0):
    """Keras 3 LSTMCell.call (sigmoid/tanh), transcribed: blocks [ i | f | c | o ]; x (N, T, D)."""
    H = recurrent_kernel.shape[0]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731  (moderate inputs here)
    h, c, ys = h0, c0, []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys, axis=1)


KERAS_RTOL = 1e-12  # float64, the same products and gates in another order


def test_from_keras_takes_a_layer_batch_first_like_keras():
    rng = np.random.default_rng(0)
    D, H = 3, 4
    weights = [nonzero(rng, (D, 4 * H)), nonzero(rng, (H, 4 * H)), nonzero(rng, 4 * H)]
    layer = KerasLSTM(weights, units=H, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                      go_backwards=False, stateful=False, dropout=0.1)
    lstm = from_keras(layer)
    assert isinstance(lstm, LSTM) and lstm.batch_first and lstm.dtype == np.float64
    x = rng.normal(size=(2, 5, D))                                  # (N, T, D), as Keras takes it
    h0, c0 = rng.normal(size=(2, H)), rng.normal(size=(2, H))
    y, _ = lstm(x, (h0[None], c0[None]))
    assert_close(y, keras_lstm_reference(x, *weights, h0, c0), KERAS_RTOL, "y")
    for a, b in zip(to_keras(lstm), weights):
        np.testing.assert_array_equal(a, b)
    assert from_keras(KerasLSTM(weights, units=H, stateful=True)).stateful      # the layer's stateful


@pytest.mark.parametrize("reset_after", [True, False])
def test_from_keras_takes_a_gru_layer(reset_after):
    rng = np.random.default_rng(1)
    bias = nonzero(rng, (2, 12) if reset_after else (12,))
    weights = [nonzero(rng, (3, 12)), nonzero(rng, (4, 12)), bias]
    gru = from_keras(KerasGRU(weights, units=4, reset_after=reset_after))
    same = from_keras(weights)
    assert isinstance(gru, GRU) and gru.reset_after is reset_after
    for k in gru.params:
        np.testing.assert_array_equal(gru.params[k], same.params[k])


def test_the_recurrent_kernel_decides_the_cell():
    """kernel (D, 12) is an LSTM with H = 3 or a GRU with H = 4: recurrent_kernel (3, 12) or (4, 12) says which."""
    lstm = from_keras([np.ones((2, 12)), np.ones((3, 12)), np.ones(12)])
    gru = from_keras([np.ones((2, 12)), np.ones((4, 12)), np.ones((2, 12))])
    assert (type(lstm), lstm.hidden_size) == (LSTM, 3) and (type(gru), gru.hidden_size) == (GRU, 4)


W_LSTM = [np.ones((2, 12)), np.ones((3, 12)), np.ones(12)]
W_GRU = [np.ones((2, 12)), np.ones((4, 12)), np.ones((2, 12))]
KERAS_REFUSALS = [
    (lambda: from_keras(KerasLSTM(W_LSTM + W_LSTM)), "expected .* got 6 arrays; a model's get_weights"),
    (lambda: from_keras(W_LSTM[:2]), "expected .* got 2 arrays; a layer with use_bias=False has no bias"),
    (lambda: from_keras(Dense([np.ones((2, 3)), np.ones(3)])), "expected a Keras LSTM or GRU layer .*, got a Dense"),
    (lambda: from_keras(type("Sequential", (), {"get_weights": lambda s: [], "layers": []})()),
     "expected a Keras LSTM or GRU layer .*, got a Sequential: pass one of its recurrent layers"),
    (lambda: from_keras(KerasGRU(W_LSTM)), r"the layer is a GRU but its recurrent_kernel has shape \(3, 12\) = \(H, 4H\)"),
    (lambda: from_keras(KerasLSTM(W_LSTM, units=4)), "the config's units=4 contradicts the weights"),
    (lambda: from_keras(KerasLSTM(W_LSTM, activation="relu")), "activation='relu' is not supported"),
    (lambda: from_keras(KerasLSTM(W_LSTM, recurrent_activation="hard_sigmoid")),
     "recurrent_activation='hard_sigmoid' is not supported"),
    (lambda: from_keras(KerasLSTM(W_LSTM, use_bias=False)), "use_bias=False is not supported"),
    (lambda: from_keras(KerasLSTM(W_LSTM, go_backwards=True)), "go_backwards=True is not supported"),
    (lambda: from_keras(KerasGRU(W_GRU, reset_after=False)), r"the config's reset_after=False contradicts the bias shape \(2, 12\)"),
    (lambda: from_keras([np.ones((2, 12), np.int32), *W_LSTM[1:]]), "kernel has dtype int32"),
    (lambda: from_keras([W_LSTM[0], np.ones((3, 12)), np.ones(9)]), r"bias has shape \(9,\), expected \(12,\)"),
    (lambda: from_keras(W_LSTM, hidden_size=5), "hidden_size=5 contradicts the weights, which give hidden_size=3"),
    (lambda: from_keras(W_LSTM, units=3), "units is not an option of the LSTM"),
    (lambda: from_keras("weights"), "expected a Keras LSTM or GRU layer or its get_weights.. list"),
]


@pytest.mark.parametrize("make, match", KERAS_REFUSALS, ids=lambda v: v if isinstance(v, str) else "")
def test_every_refused_keras_input_is_a_value_error_naming_the_key(make, match):
    with pytest.raises(ValueError, match="^from_keras: " + match):
        make()
