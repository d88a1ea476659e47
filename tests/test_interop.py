"""PyTorch parity (outputs, final states, every gradient) and the PyTorch / Keras weight round trips."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, nonzero
from npylstm import LSTM, from_keras, from_torch, to_keras, to_torch_state_dict
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
