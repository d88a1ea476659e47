"""Sequential end to end: finite-difference gradients of every parameter and the input (float64, masks,
stateful incoming state), learning, determinism, predict/evaluate/generate, construction misuse."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npylstm import LSTM, SGD, Adam, Linear, Sequential, mse_loss, one_hot

import model_helpers
from model_helpers import padding_mask

def build(rng, D, sizes, num_layers0, batch_firsts, head_out, return_sequences, stateful, dtype=np.float64):
    """An LSTM-only stack (model_helpers.build with every layer an LSTM)."""
    return model_helpers.build(rng, D, ["lstm"] * len(sizes), sizes, num_layers0, batch_firsts, head_out,
                               return_sequences, stateful, dtype)


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(1, 3),
       sizes=st.lists(st.integers(1, 3), min_size=1, max_size=2), num_layers0=st.integers(1, 2),
       batch_firsts=st.lists(st.booleans(), min_size=2, max_size=2), head=st.booleans(),
       return_sequences=st.booleans(), padding=st.sampled_from([None, "pre", "post"]),
       loss=st.sampled_from(["mse", "cross_entropy"]), stateful=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_model_gradients_match_finite_differences(N, T, D, sizes, num_layers0, batch_firsts, head,
                                                  return_sequences, padding, loss, stateful, seed):
    check_model_gradients(N, T, D, sizes, num_layers0, batch_firsts, head, return_sequences, padding, loss,
                          stateful, seed)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_masked_sequence_gradients_match_finite_differences(padding, return_sequences, loss):
    """Pre- and post-padding, every combination drawn for sure (hypothesis above may not reach them all)."""
    check_model_gradients(3, 5, 2, [3, 2], 2, [True, False], True, return_sequences, padding, loss, True, 11)


def check_model_gradients(N, T, D, sizes, num_layers0, batch_firsts, head, return_sequences, padding, loss,
                          stateful, seed):
    """model_helpers.check_model_gradients on an LSTM-only stack."""
    model_helpers.check_model_gradients(N, T, D, ["lstm"] * len(sizes), sizes, num_layers0, batch_firsts, head,
                                        return_sequences, padding, loss, stateful, seed)


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_padding_changes_nothing(padding, return_sequences):
    """Whatever sits under the mask: same outputs at real steps, same loss, same gradients."""
    rng = np.random.default_rng(7)
    model = build(rng, 2, [4, 3], 1, [True, False], 2, return_sequences, False)
    N, T = 4, 5
    x = rng.normal(size=(N, T, 2))
    mask = padding_mask(rng, N, T, padding)
    y = rng.normal(size=(N, T, 2) if return_sequences else (N, 2))
    loss_mask = mask if return_sequences else None
    results = []
    for trial in range(2):
        xt = x.copy()
        if trial:
            xt[~mask] = rng.normal(size=xt[~mask].shape) * 10
        out = model.forward(xt, mask)
        loss, dout = mse_loss(out, y, loss_mask)
        model.zero_grad()
        model.backward(dout)
        results.append((out[mask] if return_sequences else out, loss, {k: v.copy() for k, v in model.grads.items()}))
    (o1, l1, g1), (o2, l2, g2) = results
    np.testing.assert_array_equal(o1, o2)
    assert l1 == l2
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def test_post_padding_last_output_is_the_last_real_step():
    """return_sequences=False with post-padding: out[:, -1] is each row's last real step's output."""
    rng = np.random.default_rng(8)
    model = build(rng, 2, [3], 1, [True], 0, False, False)
    x = rng.normal(size=(3, 6, 2))
    lengths = np.array([2, 6, 4])
    mask = np.arange(6)[None, :] < lengths[:, None]
    out = model.predict(x, mask=mask)
    for n, L in enumerate(lengths):
        np.testing.assert_allclose(out[n], model.predict(x[n:n + 1, :L])[0], rtol=1e-12, atol=1e-14)


def test_learns_a_toy_task():
    """Sum of a short sequence: the loss drops at least 10x."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(256, 8, 1)).astype(np.float32)
    y = x.sum(axis=1)
    model = Sequential([LSTM(1, 16, batch_first=True, seed=1), Linear(16, 1, seed=2)], seed=3)
    model.compile("mse", Adam(lr=0.02))
    before = model.evaluate(x, y)["loss"]
    history = model.fit(x, y, epochs=30, batch_size=32, progress=False)
    after = model.evaluate(x, y)["loss"]
    assert len(history["loss"]) == 30
    assert after < before / 10, f"loss {before:.4g} -> {after:.4g}"


def test_learns_next_letter_with_cross_entropy():
    """Alphabet-style: one-hot letter -> next letter; accuracy reaches 100 %."""
    C = 8
    ids = np.arange(C - 1)
    x = one_hot(ids, C)[:, None, :]                          # (N, 1, C)
    model = Sequential([LSTM(C, 16, batch_first=True, seed=1), Linear(16, C, seed=2)], seed=3)
    model.compile("cross_entropy", Adam(lr=0.05))
    history = model.fit(x, ids + 1, epochs=60, batch_size=7, progress=False)
    assert history["accuracy"][-1] == 1.0 and history["loss"][-1] < history["loss"][0] / 10
    res = model.evaluate(x, ids + 1)
    assert res["accuracy"] == 1.0
    assert np.array_equal(model.predict(x).argmax(-1), ids + 1)


@pytest.mark.parametrize("stateful", [False, True])
def test_same_seed_same_result_bit_for_bit(stateful):
    def run():
        rng = np.random.default_rng(5)
        xs = rng.normal(size=(16, 4, 2)).astype(np.float32)
        ys = rng.normal(size=(16, 4, 1)).astype(np.float32)
        model = Sequential([LSTM(2, 5, seed=1, stateful=stateful), Linear(5, 1, seed=2)], return_sequences=True,
                           stateful=stateful, seed=9)
        model.compile("mse", Adam(lr=0.01), clip_norm=1.0)
        h = model.fit(xs, ys, epochs=3, batch_size=4, shuffle=not stateful, progress=False)
        return h, model.params
    (h1, p1), (h2, p2) = run(), run()
    assert h1 == h2
    for k in p1:
        assert np.array_equal(p1[k], p2[k]), k


def test_shuffle_differs_by_seed_and_epoch():
    """The seed matters (so the bit-for-bit test above is not vacuous)."""
    rng = np.random.default_rng(5)
    xs, ys = rng.normal(size=(16, 3, 2)), rng.normal(size=(16, 1))
    finals = []
    for seed in (1, 2):
        model = Sequential([LSTM(2, 3, dtype=np.float64, seed=1), Linear(3, 1, dtype=np.float64, seed=2)], seed=seed)
        model.compile("mse", SGD(lr=0.1))
        model.fit(xs, ys, epochs=2, batch_size=4, progress=False)
        finals.append(model.params["1.W"].copy())
    assert not np.array_equal(*finals)


def test_predict_and_evaluate_agree_with_the_loss():
    rng = np.random.default_rng(2)
    model = build(rng, 2, [3], 1, [False], 1, True, False)
    model.compile("mse")
    x, y = rng.normal(size=(6, 4, 2)), rng.normal(size=(6, 4, 1))
    mask = padding_mask(rng, 6, 4, "post")
    whole = model.predict(x, mask=mask)
    np.testing.assert_allclose(model.predict(x, batch_size=4, mask=mask), whole, rtol=1e-12)
    expected = mse_loss(whole, y, mask)[0]
    assert model.evaluate(x, y, batch_size=4, mask=mask)["loss"] == pytest.approx(expected, rel=1e-12)


def test_y_of_shape_n_is_accepted_for_one_output():
    rng = np.random.default_rng(1)
    model = build(rng, 1, [3], 1, [True], 1, False, False)
    model.compile("mse")
    x, y = rng.normal(size=(5, 3, 1)), rng.normal(size=5)
    assert model.evaluate(x, y)["loss"] == pytest.approx(model.evaluate(x, y[:, None])["loss"])


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_generate_equals_rerunning_the_whole_sequence(return_sequences, loss):
    """Carrying (h, c) step by step gives what a fresh run over seed + predictions so far would
    (cross_entropy: the one-hot of the most likely class is what is fed back)."""
    rng = np.random.default_rng(4)
    C = 4
    model = build(rng, C, [5, 3], 2, [True, False], C, return_sequences, False)
    model.compile(loss)
    seed = rng.normal(size=(3, C))
    preds = model.generate(seed, 6)
    assert preds.shape == (6, C)
    seq = seed
    for k in range(6):
        out = model.predict(seq[None])
        expected = out[0, -1] if return_sequences else out[0]
        if loss == "cross_entropy":
            expected = one_hot(np.array(expected.argmax()), C, dtype=np.float64)
        np.testing.assert_allclose(preds[k], expected, rtol=1e-10, atol=1e-12)
        seq = np.concatenate([seq, preds[k][None]], axis=0)


def test_progress_bar_shows_the_loss(capsys):
    rng = np.random.default_rng(0)
    model = build(rng, 1, [2], 1, [True], 1, False, False)
    model.compile("mse")
    model.fit(rng.normal(size=(8, 3, 1)), rng.normal(size=(8, 1)), epochs=2, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "epoch 2" in err


def test_progress_is_plain_without_tqdm(capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)             # import tqdm.auto now raises ImportError
    rng = np.random.default_rng(0)
    model = build(rng, 1, [2], 1, [True], 1, False, False)
    model.compile("mse")
    h = model.fit(rng.normal(size=(8, 3, 1)), rng.normal(size=(8, 1)), epochs=2, batch_size=4, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"epoch {e + 1} ({e + 1}/2): loss={h['loss'][e]:.4g}" for e in range(2)]


def test_history_has_validation_and_accuracy_keys():
    rng = np.random.default_rng(0)
    model = build(rng, 3, [4], 1, [True], 3, False, False)
    model.compile("cross_entropy", Adam(lr=0.01))
    x, y = rng.normal(size=(8, 2, 3)), rng.integers(0, 3, size=8)
    h = model.fit(x, y, epochs=2, batch_size=4, validation_data=(x, y), progress=False)
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy"} and all(len(v) == 2 for v in h.values())
    assert h["val_loss"][-1] == pytest.approx(model.evaluate(x, y)["loss"], rel=1e-6)


@pytest.mark.parametrize("bad, match", [
    (lambda: Sequential([]), "non-empty"),
    (lambda: Sequential([Linear(2, 2)]), "must be an LSTM"),
    (lambda: Sequential([LSTM(2, 3), Linear(3, 2), LSTM(2, 2)]), "only the last layer"),
    (lambda: Sequential([LSTM(2, 3), LSTM(4, 2)]), "takes 4 features, but the layer before gives 3"),
    (lambda: Sequential([LSTM(2, 3), Linear(3, 1, dtype=np.float64)]), "one dtype"),
    (lambda: Sequential([LSTM(2, 3), "relu"]), "expected LSTM, GRU or Linear"),
    (lambda: Sequential([LSTM(2, 3)]).compile(loss="mae"), "loss must be one of"),
    (lambda: Sequential([LSTM(2, 3)]).compile(clip_norm=0), "clip_norm"),
    (lambda: Sequential([LSTM(2, 3)]).fit(np.ones((2, 2, 2)), np.ones((2, 3))), "call compile"),
    (lambda: Sequential([LSTM(2, 3)]).generate(np.ones((2, 2)), 3), "output size == input size"),
    (lambda: Sequential([LSTM(2, 3)]).predict(np.ones((2, 2))), r"batch-first \(N, T, D\)"),
    (lambda: Sequential([LSTM(2, 3)]).predict(np.ones((2, 2, 5))), "5 features, expected 2"),
    (lambda: Sequential([LSTM(2, 3)]).backward(np.ones((2, 3))), "call forward first"),
])
def test_model_misuse(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_num_parameters_and_layers():
    model = Sequential([LSTM(2, 3), LSTM(3, 4), Linear(4, 1)])
    assert model.num_parameters() == (2 * 12 + 3 * 12 + 12) + (3 * 16 + 4 * 16 + 16) + (4 + 1)
    assert len(model.layers) == 3 and model.output_size == 1


TORCH_RTOL = 1e-9   # float64 on both sides, same formulas; only the order of floating-point operations differs


@pytest.mark.parametrize("return_sequences", [False, True])
def test_training_matches_pytorch(return_sequences):
    """Three Adam steps with gradient clipping on an LSTM stack + Linear head: same losses and weights as torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    N, T, D, H1, H2, O = 6, 5, 3, 4, 3, 2
    x = rng.normal(size=(N, T, D))
    y = rng.normal(size=(N, T, O) if return_sequences else (N, O))
    torch.manual_seed(0)
    t_lstm = torch.nn.LSTM(D, H1, num_layers=1, batch_first=True, dtype=torch.float64)
    t_lstm2 = torch.nn.LSTM(H1, H2, num_layers=2, batch_first=False, dtype=torch.float64)
    t_head = torch.nn.Linear(H2, O, dtype=torch.float64)
    for m in (t_lstm, t_lstm2):
        for name, p in m.named_parameters():
            if name.startswith("bias_hh"):                      # our one bias b = bias_ih + bias_hh: freeze bias_hh at 0
                torch.nn.init.zeros_(p)
                p.requires_grad_(False)
    from npylstm import from_torch
    ours = Sequential([from_torch(t_lstm, dtype=np.float64), from_torch(t_lstm2, dtype=np.float64),
                       Linear(H2, O, dtype=np.float64)], return_sequences=return_sequences, seed=0)
    ours.layers[2].params["W"][...] = t_head.weight.detach().numpy().T
    ours.layers[2].params["b"][...] = t_head.bias.detach().numpy()
    ours.compile("mse", Adam(lr=0.05), clip_norm=0.5)
    history = ours.fit(x, y, epochs=1, batch_size=2, shuffle=False, progress=False)

    params = [p for m in (t_lstm, t_lstm2, t_head) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.05)
    losses = []
    for s in range(0, N, 2):
        xb, yb = torch.tensor(x[s:s + 2]), torch.tensor(y[s:s + 2])
        h, _ = t_lstm(xb)
        h, _ = t_lstm2(h.transpose(0, 1))
        h = h.transpose(0, 1)
        out = t_head(h if return_sequences else h[:, -1])
        loss = torch.nn.functional.mse_loss(out, yb)
        opt.zero_grad()
        loss.backward()
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))      # clip by global norm, as ours (torch's
        if norm > 0.5:                                                   # clip_grad_norm_ adds 1e-6 to the norm)
            for p in params:
                p.grad *= 0.5 / norm
        opt.step()
        losses.append(loss.item())
    assert history["loss"][0] == pytest.approx(np.mean(losses), rel=TORCH_RTOL)
    expected = {**{f"0.{k}": v for k, v in from_torch(t_lstm, dtype=np.float64).params.items()},
                **{f"1.{k}": v for k, v in from_torch(t_lstm2, dtype=np.float64).params.items()},
                "2.W": t_head.weight.detach().numpy().T, "2.b": t_head.bias.detach().numpy()}
    for k, v in ours.params.items():
        np.testing.assert_allclose(v, expected[k], rtol=TORCH_RTOL, atol=1e-12, err_msg=k)
