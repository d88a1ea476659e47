"""Checkpoints: round trips, bit-exact resume, atomic writes that survive a crash, and refusal of
truncated, corrupted or inconsistent files with a clear error."""

import json
import os

import numpy as np
import pytest

import npylstm
from npylstm import LSTM, SGD, Adam, Linear, Sequential, load
from npylstm.checkpoint import _digest

from model_helpers import assert_same_params, stream


def make_model(stateful=False, dtype=np.float32, head=True, return_sequences=False, seed=0, D=2):
    layers = [LSTM(D, 5, batch_first=True, dtype=dtype, seed=seed + 1, stateful=stateful),
              LSTM(5, 3, num_layers=2, dtype=dtype, seed=seed + 2, forget_bias=1.0, stateful=stateful)]
    if head:
        layers.append(Linear(3, D, dtype=dtype, seed=seed + 3))
    return Sequential(layers, return_sequences=return_sequences, stateful=stateful, seed=seed + 4)


def data(N=12, T=6, D=2, seed=0, return_sequences=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, T, D)).astype(np.float32)
    y = (rng.normal(size=(N, T, D)) if return_sequences else rng.normal(size=(N, D))).astype(np.float32)
    return x, y


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("head", [True, False])
def test_save_load_gives_identical_predictions(tmp_path, dtype, head):
    x, y = data()
    model = make_model(dtype=dtype, head=head)
    model.compile("mse", Adam(lr=0.01), clip_norm=2.0)
    if head:
        model.fit(x, y, epochs=2, batch_size=4, progress=False)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = load(path)
    assert loaded.config() == model.config()
    assert_same_params(model, loaded)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert (loaded.loss, loaded.clip_norm, type(loaded.optimizer)) == ("mse", 2.0, Adam)
    assert loaded.optimizer.state_dict()["t"] == model.optimizer.state_dict()["t"]
    assert [l.forget_bias for l in loaded.lstms] == [l.forget_bias for l in model.lstms]


def test_uncompiled_model_round_trips(tmp_path):
    model = make_model()
    model.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert loaded.loss is None and loaded.optimizer is None
    x, _ = data()
    assert np.array_equal(loaded.predict(x), model.predict(x))


def test_carried_state_round_trips_when_asked(tmp_path):
    x, y = stream()
    model = make_model(stateful=True, return_sequences=True)
    model.compile("mse", SGD(lr=0.05, momentum=0.9))
    model.fit(x, y, epochs=1, batch_size=3, shuffle=False, progress=False)
    model.save(tmp_path / "with.npz", include_state=True)
    model.save(tmp_path / "without.npz")
    with_state, without = load(tmp_path / "with.npz"), load(tmp_path / "without.npz")
    assert with_state.batch_size == 3 and without.batch_size == 3 and without.states is None
    nxt = x[:3]
    expected = model.predict(nxt)                                  # continues from the carried state
    assert np.array_equal(with_state.predict(nxt), expected)
    assert not np.array_equal(without.predict(nxt), expected)      # starts from zeros


# ---------------------------------------------------------------- resume = uninterrupted, bit for bit
@pytest.mark.parametrize("kind", ["stateless-shuffled-adam", "stateful-sgd-momentum", "cross-entropy"])
def test_resume_equals_uninterrupted_training(tmp_path, kind):
    if kind == "stateful-sgd-momentum":
        x, y = stream()
        build = lambda: make_model(stateful=True, return_sequences=True)  # noqa: E731
        opt, loss, fit_kw = (lambda: SGD(lr=0.05, momentum=0.9)), "mse", dict(batch_size=3, shuffle=False)
    elif kind == "cross-entropy":
        x, _ = data(N=20)
        y = np.random.default_rng(1).integers(0, 2, size=20)
        build = make_model
        opt, loss, fit_kw = (lambda: Adam(lr=0.02)), "cross_entropy", dict(batch_size=6)
    else:
        x, y = data(N=20)
        build = make_model
        opt, loss, fit_kw = (lambda: Adam(lr=0.02)), "mse", dict(batch_size=6)
    straight = build().compile(loss, opt(), clip_norm=0.5)
    h_straight = straight.fit(x, y, epochs=4, progress=False, **fit_kw)

    first = build().compile(loss, opt(), clip_norm=0.5)
    h1 = first.fit(x, y, epochs=2, progress=False, **fit_kw)
    first.save(tmp_path / "ckpt.npz")
    del first
    resumed = load(tmp_path / "ckpt.npz")
    assert resumed.epochs_trained == 2
    h2 = resumed.fit(x, y, epochs=2, progress=False, **fit_kw)
    assert_same_params(straight, resumed)
    assert h1["loss"] + h2["loss"] == h_straight["loss"]
    s1, s2 = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert s1["t"] == s2["t"]
    for b in s1["buffers"]:
        for k in s1["buffers"][b]:
            assert np.array_equal(s1["buffers"][b][k], s2["buffers"][b][k])


# ---------------------------------------------------------------- atomic writes
def _good_checkpoint(tmp_path):
    x, y = data()
    model = make_model()
    model.compile("mse", Adam(lr=0.01))
    model.fit(x, y, epochs=1, batch_size=4, progress=False)
    path = tmp_path / "ckpt.npz"
    model.save(path)
    return model, path, path.read_bytes(), x


def _half_write_then_crash(f, **arrays):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("disk full (simulated)")


@pytest.mark.parametrize("target, replacement", [
    ("savez", lambda *a, **k: (_ for _ in ()).throw(OSError("crash in savez (simulated)"))),
    ("savez", _half_write_then_crash),
    ("replace", lambda *a, **k: (_ for _ in ()).throw(OSError("crash in os.replace (simulated)"))),
    ("fsync", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())),
])
def test_a_crash_during_save_leaves_the_good_checkpoint(tmp_path, monkeypatch, target, replacement):
    model, path, good, x = _good_checkpoint(tmp_path)
    model.fit(x, np.zeros((12, 2), np.float32), epochs=1, batch_size=4, progress=False)  # changed weights
    module = {"savez": np, "replace": os, "fsync": os}[target]
    monkeypatch.setattr(module, target, replacement)
    with pytest.raises((OSError, KeyboardInterrupt)):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"], "a temporary file was left behind"
    load(path)                                                     # and it still loads


def test_a_crash_saving_to_a_new_path_leaves_nothing(tmp_path, monkeypatch):
    model = make_model()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError):
        model.save(tmp_path / "new.npz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- truncated, corrupted, inconsistent
@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
    _, path, good, _ = _good_checkpoint(tmp_path)
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good[:int(len(good) * keep)])
    with pytest.raises(ValueError, match="not a readable npylstm checkpoint"):
        load(bad)


def test_corrupted_checkpoint_is_refused_or_loads_the_same_model(tmp_path):
    """Flip one byte anywhere: load refuses with a clear error, or (metadata bytes such as zip timestamps)
    gives exactly the saved model -- never a silently different one."""
    model, path, good, x = _good_checkpoint(tmp_path)
    expected = model.predict(x)
    rng = np.random.default_rng(0)
    bad = tmp_path / "corrupt.npz"
    refused = 0
    positions = np.unique(np.concatenate([rng.integers(0, len(good), 150), np.arange(0, len(good), len(good) // 50)]))
    for pos in positions:
        blob = bytearray(good)
        blob[pos] ^= 0x5A
        bad.write_bytes(bytes(blob))
        try:
            loaded = load(bad)
        except ValueError as e:
            assert "load:" in str(e)
            refused += 1
            continue
        assert_same_params(model, loaded)
        assert np.array_equal(loaded.predict(x), expected)
    assert refused > len(positions) // 2


def _rewrite(src, dst, mutate, fix_digest=True):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(str(arrays["config"]))
    mutate(config, arrays)
    arrays["config"] = np.array(json.dumps(config))
    if fix_digest:
        arrays["digest"] = np.array(_digest(arrays))
    np.savez(dst, **arrays)


def _set_hidden(c, a):
    c["layers"][1]["hidden_size"] = 4
    c["layers"][2]["in_features"] = 4


def _drop_param(c, a):
    del a["param/2.W"]


def _bad_buffer(c, a):
    a["optim/m/2.b"] = np.zeros(7, np.float32)


def _state_missing(c, a):
    c["has_state"] = True


INCONSISTENT = [
    ("format", lambda c, a: c.update(format="something.else"), "not a npylstm.Sequential checkpoint"),
    ("version", lambda c, a: c.update(version=99), "checkpoint version 99"),
    ("shape", _set_hidden, "parameter '1.W_x_l0' has shape"),
    ("missing param", _drop_param, "holds parameters"),
    ("dtype", lambda c, a: [l.update(dtype="float64") for l in c["layers"]], "dtype float32"),
    ("layer type", lambda c, a: c["layers"][2].update(type="Conv1d"), "unknown layer type"),
    ("no layers key", lambda c, a: c.pop("layers"), "incomplete or malformed config"),
    ("optimizer buffer", _bad_buffer, "invalid optimizer state"),
    ("optimizer type", lambda c, a: c["compile"]["optimizer"].update(type="RMSprop"), "unknown optimizer"),
    ("loss", lambda c, a: c["compile"].update(loss="mae"), "loss must be one of"),
    ("state missing", _state_missing, "lacks"),
    ("stateless batch size", lambda c, a: c.update(batch_size=4), "stateless model has no locked batch size"),
    ("layer chaining", lambda c, a: c["layers"][2].update(in_features=4), "takes 4 features"),
]


@pytest.mark.parametrize("name, mutate, match", INCONSISTENT, ids=[i[0] for i in INCONSISTENT])
def test_inconsistent_checkpoint_is_refused_with_a_clear_error(tmp_path, name, mutate, match):
    _, path, _, _ = _good_checkpoint(tmp_path)
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, mutate)
    with pytest.raises(ValueError, match=match):
        load(bad)


def test_changed_content_without_a_matching_digest_is_refused(tmp_path):
    _, path, _, _ = _good_checkpoint(tmp_path)
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, lambda c, a: a["param/2.b"].__setitem__(0, 123.0), fix_digest=False)
    with pytest.raises(ValueError, match="does not match its SHA-256 digest"):
        load(bad)


def test_other_files_are_refused(tmp_path):
    np.savez(tmp_path / "objects.npz", config=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable npylstm checkpoint"):
        load(tmp_path / "objects.npz")
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(ValueError, match="lacks the 'config' and 'digest'"):
        load(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable npylstm checkpoint"):
        load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load(tmp_path / "absent.npz")


def test_include_state_needs_a_stateful_model(tmp_path):
    with pytest.raises(ValueError, match="include_state=True needs a stateful model"):
        make_model().save(tmp_path / "m.npz", include_state=True)


def test_load_is_exported():
    assert npylstm.load is load
