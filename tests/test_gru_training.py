"""The GRU in training: Sequential with GRU layers (alone and mixed with LSTM layers) end to end.

Finite-difference gradients of a whole model (float64, masks, stateful incoming state); stateful
chunks = one call, per-row reset, generate; checkpoints (config records the cell and reset_after,
identical predictions, carried state, bit-exact resume, refusals); `npylstm sine --cell gru` and
`npylstm alphabet --cell gru` quick runs learn what the LSTM runs learn.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npylstm import GRU, LSTM, SGD, Adam, Linear, Sequential, load, stream_batches
from npylstm import cli
from npylstm.checkpoint import _digest
from npylstm.experiments import alphabet, common, gate_activations

from model_helpers import EXACT_RTOL, assert_chunks_give_one_call, assert_same_params, build, check_model_gradients, stream
STATEFUL_SEEDS = (1, 2, 3)

# a layer spec: "lstm", or ("gru", reset_after)
CELL_SPECS = ["lstm", ("gru", True), ("gru", False)]


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(1, 3),
       specs=st.lists(st.sampled_from(CELL_SPECS), min_size=1, max_size=2),
       sizes=st.lists(st.integers(1, 3), min_size=2, max_size=2), num_layers0=st.integers(1, 2),
       batch_firsts=st.lists(st.booleans(), min_size=2, max_size=2), head=st.booleans(),
       return_sequences=st.booleans(), padding=st.sampled_from([None, "pre", "post"]),
       loss=st.sampled_from(["mse", "cross_entropy"]), stateful=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gru_model_gradients_match_finite_differences(N, T, D, specs, sizes, num_layers0, batch_firsts, head,
                                                      return_sequences, padding, loss, stateful, seed):
    check_model_gradients(N, T, D, specs, sizes, num_layers0, batch_firsts, head, return_sequences, padding, loss,
                          stateful, seed)


@pytest.mark.parametrize("specs", [[("gru", True), ("gru", False)], ["lstm", ("gru", True)], [("gru", False), "lstm"]],
                         ids=["gru+gru", "lstm+gru", "gru+lstm"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_gru_and_mixed_stacks_gradients_match_finite_differences(specs, return_sequences):
    """All-GRU and mixed stacks for sure (hypothesis may not draw them), stateful, masked, two-layer first RNN."""
    check_model_gradients(3, 4, 2, specs, [3, 2], 2, [True, False], True, return_sequences, "post", "mse", True, 5)


# ---------------------------------------------------------------- stateful, generate
def stateful_model(specs=(("gru", True), "lstm"), seed=0, batch_firsts=(True, False)):
    rng = np.random.default_rng(seed)
    return build(rng, 2, list(specs), [4, 3], 2, list(batch_firsts), 2, True, True)


@settings(max_examples=10, deadline=None)
@given(N=st.integers(1, 4), T=st.integers(2, 10), cuts=st.lists(st.integers(1, 9), max_size=3),
       specs=st.tuples(st.sampled_from(CELL_SPECS), st.sampled_from(CELL_SPECS)),
       batch_firsts=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**31 - 1))
def test_stateful_chunks_give_the_outputs_of_one_call(N, T, cuts, specs, batch_firsts, seed):
    model = stateful_model(specs, seed % 1000, batch_firsts)
    assert_chunks_give_one_call(model, np.random.default_rng(seed).normal(size=(N, T, 2)), cuts)


def test_states_take_each_layers_own_form_and_per_row_reset_works():
    rng = np.random.default_rng(1)
    model = stateful_model()
    x1, x2 = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 4, 2))
    whole = model.predict(np.concatenate([x1, x2], axis=1))
    model.reset_states()
    fresh = model.predict(x2)
    model.reset_states()
    model.predict(x1)
    states = model.states
    assert isinstance(states[0], np.ndarray) and states[0].shape == (2, 3, 4)        # GRU: h
    assert isinstance(states[1], tuple) and [s.shape for s in states[1]] == [(1, 3, 3)] * 2  # LSTM: (h, c)
    rows = np.array([False, True, False])
    model.reset_states(rows)
    got = model.predict(x2)
    np.testing.assert_allclose(got[1], fresh[1], rtol=EXACT_RTOL, atol=1e-14)
    np.testing.assert_allclose(got[~rows], whole[~rows, 5:], rtol=EXACT_RTOL, atol=1e-14)
    assert not np.allclose(got[0], fresh[0])
    # set back the state taken after x1: continues as the whole run did
    model.states = states
    np.testing.assert_allclose(model.predict(x2), whole[:, 5:], rtol=EXACT_RTOL, atol=1e-14)


def test_states_setter_refuses_a_wrong_form_and_changes_nothing():
    rng = np.random.default_rng(2)
    model = stateful_model()
    model.predict(rng.normal(size=(3, 2, 2)))
    before = model.states
    bad = [before[1], before[0]]          # LSTM (h, c) given to the GRU, h to the LSTM
    with pytest.raises(ValueError, match="Sequential.states|GRU.state|LSTM.state"):
        model.states = bad
    after = model.states
    np.testing.assert_array_equal(after[0], before[0])
    for a, b in zip(after[1], before[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("specs", [[("gru", True)], [("gru", False), "lstm"]], ids=["gru", "gru+lstm"])
def test_generate_equals_rerunning_the_whole_sequence(specs):
    """Carrying each layer's state step by step gives what a fresh run over seed + predictions would."""
    rng = np.random.default_rng(4)
    C = 3
    model = build(rng, C, specs, [5, 4], 2, [True, False], C, False, False)
    model.compile("mse")
    seed = rng.normal(size=(3, C))
    preds = model.generate(seed, 5)
    seq = seed
    for k in range(5):
        np.testing.assert_allclose(preds[k], model.predict(seq[None])[0], rtol=1e-10, atol=1e-12)
        seq = np.concatenate([seq, preds[k][None]], axis=0)


def test_stateful_gru_model_learns_a_stream():
    """TBPTT through fit: a stateful GRU model lowers the loss on a stream of a sine and a cosine."""
    t = np.arange(400) * 0.15
    x, y = stream_batches(np.stack([np.sin(t), np.cos(t)], axis=1).astype(np.float32), 4, 10)[:2]
    model = Sequential([GRU(2, 8, batch_first=True, seed=1, stateful=True), Linear(8, 2, seed=2)],
                       return_sequences=True, seed=0).compile("mse", Adam(lr=0.02))
    h = model.fit(x, y, epochs=15, batch_size=4, shuffle=False, progress=False)
    assert h["loss"][-1] < 0.2 * h["loss"][0], f"loss {h['loss'][0]:.4g} -> {h['loss'][-1]:.4g}"


# ---------------------------------------------------------------- checkpoints
def ckpt_model(stateful=False, return_sequences=False, seed=0, dtype=np.float32):
    layers = [GRU(2, 5, batch_first=True, dtype=dtype, seed=seed + 1, reset_after=False, stateful=stateful),
              LSTM(5, 3, num_layers=2, dtype=dtype, seed=seed + 2, forget_bias=1.0, stateful=stateful),
              GRU(3, 4, dtype=dtype, seed=seed + 3, stateful=stateful),
              Linear(4, 2, dtype=dtype, seed=seed + 4)]
    return Sequential(layers, return_sequences=return_sequences, stateful=stateful, seed=seed + 5)


def data(N=12, T=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, T, 2)).astype(np.float32), rng.normal(size=(N, 2)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_gives_identical_predictions(tmp_path, dtype):
    x, y = data()
    model = ckpt_model(dtype=dtype).compile("mse", Adam(lr=0.01), clip_norm=2.0)
    model.fit(x.astype(dtype), y.astype(dtype), epochs=2, batch_size=4, progress=False)
    model.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert loaded.config() == model.config()
    assert [type(l) for l in loaded.layers] == [GRU, LSTM, GRU, Linear]
    assert [l.get("reset_after") for l in loaded.config()["layers"]] == [False, None, True, None]
    assert (loaded.layers[0].reset_after, loaded.layers[2].reset_after) == (False, True)
    assert loaded.layers[1].forget_bias == 1.0
    assert_same_params(model, loaded)
    assert np.array_equal(loaded.predict(x.astype(dtype)), model.predict(x.astype(dtype)))


def test_carried_gru_state_round_trips_when_asked(tmp_path):
    x, y = stream()
    model = ckpt_model(stateful=True, return_sequences=True).compile("mse", SGD(lr=0.05, momentum=0.9))
    model.fit(x, y, epochs=1, batch_size=3, shuffle=False, progress=False)
    model.save(tmp_path / "with.npz", include_state=True)
    with np.load(tmp_path / "with.npz") as z:
        names = sorted(k for k in z.files if k.startswith("state/"))
    assert names == ["state/0/h", "state/1/c", "state/1/h", "state/2/h"]
    with_state = load(tmp_path / "with.npz")
    nxt = x[:3]
    assert np.array_equal(with_state.predict(nxt), model.predict(nxt))


@pytest.mark.parametrize("kind", ["stateless-shuffled-adam", "stateful-sgd-momentum"])
def test_resume_equals_uninterrupted_training(tmp_path, kind):
    if kind == "stateful-sgd-momentum":
        x, y = stream()
        build_ = lambda: ckpt_model(stateful=True, return_sequences=True)  # noqa: E731
        opt, fit_kw = (lambda: SGD(lr=0.05, momentum=0.9)), dict(batch_size=3, shuffle=False)
    else:
        x, y = data(N=20)
        build_ = ckpt_model
        opt, fit_kw = (lambda: Adam(lr=0.02)), dict(batch_size=6)
    straight = build_().compile("mse", opt(), clip_norm=0.5)
    h_straight = straight.fit(x, y, epochs=4, progress=False, **fit_kw)
    first = build_().compile("mse", opt(), clip_norm=0.5)
    h1 = first.fit(x, y, epochs=2, progress=False, **fit_kw)
    first.save(tmp_path / "ckpt.npz")
    resumed = load(tmp_path / "ckpt.npz")
    h2 = resumed.fit(x, y, epochs=2, progress=False, **fit_kw)
    assert_same_params(straight, resumed)
    assert h1["loss"] + h2["loss"] == h_straight["loss"]


def _rewrite(src, dst, mutate):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(str(arrays["config"]))
    mutate(config, arrays)
    arrays["config"] = np.array(json.dumps(config))
    arrays["digest"] = np.array(_digest(arrays))
    np.savez(dst, **arrays)


def _reset_after_string(c, a):
    c["layers"][0]["reset_after"] = "yes"


def _reset_after_missing(c, a):
    del c["layers"][2]["reset_after"]


def _gru_as_lstm(c, a):
    c["layers"][0] = {**c["layers"][0], "type": "LSTM", "forget_bias": 0.0}
    del c["layers"][0]["reset_after"]


def _gru_state_missing(c, a):
    del a["state/2/h"]


@pytest.mark.parametrize("mutate, match", [
    (_reset_after_string, "reset_after must be true or false"),
    (_reset_after_missing, "incomplete or malformed config"),
    (_gru_as_lstm, "holds parameters"),
    (_gru_state_missing, "lacks 'state/2/h'"),
], ids=["reset_after-string", "reset_after-missing", "gru-relabelled-lstm", "gru-state-missing"])
def test_inconsistent_gru_checkpoint_is_refused(tmp_path, mutate, match):
    x, y = stream()
    model = ckpt_model(stateful=True, return_sequences=True).compile("mse", Adam())
    model.fit(x, y, epochs=1, batch_size=3, shuffle=False, progress=False)
    model.save(tmp_path / "good.npz", include_state=True)
    _rewrite(tmp_path / "good.npz", tmp_path / "bad.npz", mutate)
    with pytest.raises(ValueError, match=match):
        load(tmp_path / "bad.npz")


# ---------------------------------------------------------------- the experiments with --cell gru
def test_sine_gru_beats_last_value(tmp_path, capsys):
    code = cli.main(["sine", "--cell", "gru", "--quick", "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    results = json.loads((tmp_path / "sine_gru_quick.json").read_text())
    assert results["config"]["cell"] == "gru" and (tmp_path / "sine_gru_quick.png").stat().st_size > 0
    mse = results["test_mse"]
    for model in ("stateless", "stateful"):
        assert mse[model] < mse["last_value"], f"GRU {model} test MSE {mse[model]:.5f} >= last value " \
                                               f"{mse['last_value']:.5f}"
    assert "stateless GRU" in out and "stateful GRU" in out


@pytest.mark.parametrize("seed", (0,) + STATEFUL_SEEDS)
def test_stateful_gru_alphabet_learns_and_recites(seed):
    r = alphabet.run_one("stateful", seed, quick=True, progress=False, cell="gru")
    assert r["cell"] == "gru" and r["num_parameters"] == 3 * 50 * (1 + 50) + 6 * 50 + 50 * 26 + 26
    assert r["accuracy"] == 1.0, f"seed {seed}: training accuracy {r['accuracy']:.2%}"
    assert r["recital_from_A"] == alphabet.LETTERS[1:], f"seed {seed}: seeded with A recites {r['recital_from_A']}"
    assert r["accuracy_stateful_evaluate"] == 1.0
    assert not r["cold_K_correct"], f"seed {seed}: a cold start from K recited {r['cold_K']}"


def test_alphabet_cli_with_gru_writes_its_own_files(tmp_path, capsys):
    code = cli.main(["alphabet", "--cell", "gru", "--quick", "--no-progress", "--only", "one_char", "--epochs", "3",
                     "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "cell: GRU" in out
    results = json.loads((tmp_path / "alphabet_gru_quick.json").read_text())
    assert results["config"]["cell"] == "gru" and results["experiments"][0]["cell"] == "gru"
    assert len(results["experiments"][0]["epoch_seconds"]) == 3
    assert not (tmp_path / "alphabet_quick.json").exists()   # the LSTM's files are not overwritten


def test_gate_recorder_refuses_a_stack_with_a_gru():
    model = Sequential([GRU(2, 3, seed=0), LSTM(3, 3, seed=1)])
    with pytest.raises(ValueError, match="^gate_activations: the Sequential holds GRU layers"):
        gate_activations(model, np.zeros((4, 2), np.float32))


def test_gru_on_cuda_without_a_gru_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(GRU, "cuda_backend", None)
    with pytest.raises(common.CommandError, match="--cell gru --device cuda: the GRU has no CUDA backend"):
        common.require_cell("gru", "cuda")
    common.require_cell("gru", "cpu")
    with pytest.raises(common.CommandError, match="--cell must be one of"):
        common.require_cell("rnn", "cpu")
