"""The seed experiments: each command's quick mode runs end to end and learns what it should.

Learning outcomes asserted (quick settings, seconds each): the stateful alphabet model reaches 100 %
training accuracy and recites B..Z from A for three seeds; both sine models beat the last-value
baseline. Outputs: each PNG has the PNG signature and decodes; the JSON is written and holds the
numbers printed. Misuse: --device cuda without a usable GPU is one line on stderr and exit status 2.
gate_activations (reference cell, one step at a time) is held against the fast sequence code.
"""

import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npylstm
from npylstm import cli
from npylstm.experiments import alphabet, common, gates, sine

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GATES_VS_SEQUENCE_ATOL = 1e-12   # float64: the same arithmetic, in a different order (one GEMM vs per step)
STATEFUL_SEEDS = (1, 2, 3)       # three seeds besides the CLI run's seed 0


def run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def gpu_usable():
    try:
        common.require_device("cuda")
    except common.CommandError:
        return False
    return True


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, f"{path} does not start with the PNG signature"
    import matplotlib.image
    img = matplotlib.image.imread(path)               # decodes the whole file
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, f"{path} decodes to shape {img.shape}"
    assert float(np.ptp(img[..., :3])) > 0, f"{path} is a blank image"


# ---------------------------------------------------------------------------------- the commands, once each
@pytest.fixture(scope="module")
def sine_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sine")
    code = cli.main(["sine", "--quick", "--no-progress", "--seed", "0", "--out", str(out)])
    return code, out


@pytest.fixture(scope="module")
def alphabet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("alphabet")
    code = cli.main(["alphabet", "--quick", "--no-progress", "--seed", "0", "--out", str(out)])
    return code, out


@pytest.fixture(scope="module", params=["alphabet", "sine"])
def gates_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"gates_{request.param}")
    code = cli.main(["gates", "--quick", "--no-progress", "--model", request.param, "--out", str(out)])
    return code, out, request.param


def load_json(path):
    with open(path) as f:
        return json.load(f)


def test_sine_both_models_beat_last_value(sine_run):
    code, out = sine_run
    assert code == 0
    mse = load_json(out / "sine_quick.json")["test_mse"]
    for model in ("stateless", "stateful"):
        assert mse[model] < mse["last_value"], \
            f"{model} test MSE {mse[model]:.5f} >= last value {mse['last_value']:.5f}"
    assert mse["noise_floor"] == pytest.approx(sine.SIGMA ** 2)


def test_sine_writes_figure_and_json(sine_run):
    code, out = sine_run
    assert code == 0
    assert_png(out / "sine_quick.png")
    results = load_json(out / "sine_quick.json")
    assert results["config"]["train_points"] == 800 and results["config"]["test_points"] == 200
    assert len(results["history"]["stateless"]) == sine.SETTINGS["quick"]["epochs"]


def test_sine_same_seed_same_results_other_seed_differs(sine_run):
    _, out = sine_run
    again, _ = sine.experiment(seed=0, quick=True, progress=False)
    assert again["test_mse"] == load_json(out / "sine_quick.json")["test_mse"]
    other, _ = sine.experiment(seed=1, quick=True, epochs=2, progress=False)
    assert other["test_mse"]["last_value"] != again["test_mse"]["last_value"]   # other noise


def test_alphabet_table_and_json(alphabet_run, capsys):
    code, out = alphabet_run
    assert code == 0
    assert_png(out / "alphabet_quick.png")
    results = load_json(out / "alphabet_quick.json")
    rows = {r["experiment"]: r for r in results["experiments"]}
    assert list(rows) == list(alphabet.SETTINGS)
    for name, r in rows.items():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["tutorial"] == alphabet.TUTORIAL[name]
    stateful = rows["stateful"]
    assert stateful["accuracy"] == 1.0 and stateful["recital_from_A"] == alphabet.LETTERS[1:]
    assert stateful["accuracy_stateful_evaluate"] == stateful["accuracy"]   # toolkit's stateful path agrees


@pytest.mark.parametrize("seed", STATEFUL_SEEDS)
def test_stateful_alphabet_learns_and_recites(seed):
    r = alphabet.run_one("stateful", seed, quick=True, progress=False)
    assert r["accuracy"] == 1.0, f"seed {seed}: training accuracy {r['accuracy']:.2%}"
    assert r["recital_from_A"] == alphabet.LETTERS[1:], f"seed {seed}: seeded with A recites {r['recital_from_A']}"
    assert r["accuracy_stateful_evaluate"] == 1.0
    # the tutorial's observation: the state, not the input, says where we are; a cold K starts over
    assert not r["cold_K_correct"], f"seed {seed}: a cold start from K recited {r['cold_K']}"


def test_alphabet_same_seed_same_results():
    a = alphabet.run_one("one_char", 5, quick=True, epochs=5, progress=False)
    b = alphabet.run_one("one_char", 5, quick=True, epochs=5, progress=False)
    c = alphabet.run_one("one_char", 6, quick=True, epochs=5, progress=False)
    assert (a["final_loss"], a["accuracy"]) == (b["final_loss"], b["accuracy"])
    assert c["final_loss"] != a["final_loss"]


@pytest.mark.parametrize("name", list(alphabet.SETTINGS))
def test_alphabet_datasets(name):
    x, labels, mask = alphabet.dataset(name, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.ndim == 3 and len(labels) == len(x)
    letters = np.rint(x * alphabet.K).astype(int)                      # back to letter indices
    assert np.allclose(letters / alphabet.K, x)
    if mask is None:
        last = letters[:, -1, -1]                                      # the last letter given (step or feature)
    else:
        assert mask[:, -1].all() and (mask.sum(1) >= 1).all() and (mask.sum(1) <= alphabet.MAX_LEN).all()
        last = letters[:, -1, 0]
    assert np.array_equal(labels, last + 1), "every target is the letter after the last one given"


def test_gates_command(gates_run):
    code, out, model = gates_run
    assert code == 0
    stem = "gates_quick" if model == "alphabet" else f"gates_{model}_quick"   # one name per model and size
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.{ext}" for ext in ("json", "npz", "png"))
    assert_png(out / f"{stem}.png")
    results = load_json(out / f"{stem}.json")
    acts = np.load(out / f"{stem}.npz")
    assert sorted(acts.files) == sorted(gates.FIELDS)
    T, H = results["steps"], results["units"]
    assert all(acts[k].shape == (T, H) for k in gates.FIELDS)
    for k in ("I", "F", "O"):
        assert 0.0 <= acts[k].min() and acts[k].max() <= 1.0
    if model == "alphabet":   # the stateful model fed A..Z from a zero state recites as it goes
        assert results["predicted_next"][:25] == alphabet.LETTERS[1:]


# ---------------------------------------------------------------------------------- misuse
@pytest.mark.parametrize("command", ["sine", "alphabet", "gates"])
def test_device_cuda_without_gpu_fails_cleanly(command, tmp_path, capsys):
    if gpu_usable():
        pytest.skip("a usable GPU is present")
    code, out, err = run_cli([command, "--quick", "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert code == common.EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"npylstm {command}: error: --device cuda: "), err
    assert "Traceback" not in err and not os.listdir(tmp_path)


def test_device_cuda_reports_what_require_cuda_says(monkeypatch):
    fake = types.ModuleType("npylstm.gpu")

    def require_cuda():
        raise RuntimeError("no CUDA device visible (cupy.is_available() is False)")
    fake.require_cuda = require_cuda
    monkeypatch.setitem(sys.modules, "npylstm.gpu", fake)
    with pytest.raises(common.CommandError, match=r"^--device cuda: no CUDA device visible"):
        common.require_device("cuda")


def test_device_cuda_without_gpu_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "npylstm.gpu", None)              # import of npylstm.gpu raises ImportError
    with pytest.raises(common.CommandError, match="no GPU path"):
        common.require_device("cuda")


def test_device_cuda_subprocess_exit_status(tmp_path):
    if gpu_usable():
        pytest.skip("a usable GPU is present")
    p = subprocess.run([sys.executable, "-m", "npylstm", "sine", "--device", "cuda", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(npylstm.__file__)))
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "--device cuda" in p.stderr, p.stderr
    if importlib.util.find_spec("npylstm.gpu") is None:
        assert "this build of npylstm has no GPU path" in p.stderr, p.stderr


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(common.CommandError, match="needs matplotlib"):
        common.pyplot()


def test_bad_epochs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["alphabet", "--epochs", "0", "--out", str(tmp_path)])
    assert e.value.code == common.EXIT_USAGE
    assert "npylstm alphabet: error: argument --epochs: must be an integer >= 1, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- gate_activations
@settings(max_examples=15, deadline=None)
@given(D=st.integers(1, 4), H=st.integers(1, 6), L=st.integers(1, 3), T=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_gate_activations_match_the_sequence_code(D, H, L, T, seed):
    """Top layer's H from the reference cell step by step == LSTM.forward (hoisted GEMM, fused tanh)."""
    rng = np.random.default_rng(seed)
    lstm = npylstm.LSTM(D, H, num_layers=L, dtype=np.float64, seed=seed, forget_bias=float(rng.normal()))
    x = rng.normal(size=(T, D))
    y, (h_n, c_n) = lstm(x)
    acts = gates.gate_activations(lstm, x, layer=L - 1)
    assert np.abs(acts["H"] - y).max() <= GATES_VS_SEQUENCE_ATOL
    assert np.abs(acts["C"][-1] - c_n[-1]).max() <= GATES_VS_SEQUENCE_ATOL
    # the equations hold between the recorded arrays
    C_prev = np.vstack([np.zeros((1, H)), acts["C"][:-1]])
    assert np.allclose(acts["C"], acts["F"] * C_prev + acts["I"] * acts["C_tilde"], rtol=0, atol=1e-14)
    assert np.allclose(acts["H"], acts["O"] * np.tanh(acts["C"]), rtol=0, atol=1e-14)


def test_gate_activations_on_a_sequential_stack():
    """Two LSTM objects in a Sequential: layer 1 is the second one, reading the first one's H."""
    rng = np.random.default_rng(3)
    first = npylstm.LSTM(2, 4, batch_first=True, dtype=np.float64, seed=1)
    second = npylstm.LSTM(4, 3, batch_first=True, dtype=np.float64, seed=2)
    model = npylstm.Sequential([first, second], return_sequences=True)
    x = rng.normal(size=(6, 2))
    y = model.predict(x[None])[0]                                      # (6, 3)
    assert np.abs(gates.gate_activations(model, x, layer=1)["H"] - y).max() <= GATES_VS_SEQUENCE_ATOL
    assert gates.gate_activations(model, x)["H"].shape == (6, 4)


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((1, 5, 2))), r"^gate_activations: x has shape \(1, 5, 2\), expected \(T, 2\)"),
    (dict(x=np.zeros((5, 3))), r"^gate_activations: x has shape \(5, 3\), expected \(T, 2\)"),
    (dict(x=np.zeros((5, 2), dtype=int)), r"^gate_activations: x must be a real floating array"),
    (dict(layer=1), r"^gate_activations: layer must be an int in \[0, 1\), got 1"),
    (dict(model="lstm"), r"^gate_activations: model must be an npylstm LSTM or a Sequential"),
])
def test_gate_activations_refuses(bad, match):
    args = dict(model=npylstm.LSTM(2, 3, seed=0), x=np.zeros((5, 2), np.float32), layer=0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        gates.gate_activations(args["model"], args["x"], layer=args["layer"])


@pytest.fixture(scope="module")
def small_acts():
    lstm = npylstm.LSTM(1, 4, seed=0)
    x = np.sin(np.linspace(0, 6, 30, dtype=np.float32))[:, None]
    return npylstm.gate_activations(lstm, x)


def test_plot_gates_writes_png(small_acts, tmp_path):
    fig = npylstm.plot_gates(small_acts, tmp_path / "g.png", title="t")
    assert len(fig.axes) >= 6
    assert_png(tmp_path / "g.png")
    with pytest.raises(ValueError, match="^plot_gates: acts lacks"):
        npylstm.plot_gates({"H": np.zeros((3, 2))})


@pytest.mark.parametrize("name, opening", [("g.svg", b"<svg"), ("G.PDF", b"%PDF-"), ("g.png", PNG_SIGNATURE)])
def test_plot_gates_writes_the_format_its_suffix_names(small_acts, tmp_path, name, opening):
    npylstm.plot_gates(small_acts, tmp_path / name)
    data = (tmp_path / name).read_bytes()
    head = data[:400] if opening == b"<svg" else data[:len(opening)]   # SVG: after the XML prolog
    assert opening in head, f"{name} starts with {data[:40]!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]        # no temp file left behind


@pytest.mark.parametrize("name", ["g.xyz", "gates"])
def test_plot_gates_refuses_an_unknown_suffix(small_acts, tmp_path, name):
    with pytest.raises(ValueError, match=rf"^plot_gates: cannot tell the figure format of path .*{name}"):
        npylstm.plot_gates(small_acts, tmp_path / name)
    assert not list(tmp_path.iterdir())
