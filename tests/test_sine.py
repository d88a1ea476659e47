"""`npylstm sine` beyond one run: every model of the comparison, free running, --seeds, --data, --noise.

Learning outcomes asserted on the quick settings (seconds): every model beats the last value on the
one-step test MSE, and the stateful model's free run keeps swinging over its last period instead of
settling to a constant. The full-size seed table is measured, not asserted (README). Plumbing: the
seeds table's median and worst are the runs' own; a CSV series is scored in the file's units; each
kind of run writes its own files; every command-line mistake is one line on stderr and exit status 2.
The dense model's hand-written backward is held against finite differences in float64.
"""

import argparse
import csv
import json
import math
import os
import statistics

import numpy as np
import pytest

import npylstm
from npylstm import cli
from npylstm.experiments import common, series, sine

# the stateful free run's standard deviation over its last 100 steps (one period): the clean sine's is
# 1/√2 ≈ 0.71, a run settled to a constant has ~0; half of the sine's is "still swinging"
MIN_FREE_RUN_STD = 0.35
FD_EPS = 1e-6          # central differences in float64: truncation O(eps²), rounding O(1e-16 / eps)
FD_RTOL = 1e-6         # relative error allowed between the analytic and the finite-difference gradient
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def load_json(path):
    with open(path) as f:
        return json.load(f)


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100 and float(np.ptp(img[..., :3])) > 0, f"{path}: {img.shape}"


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sine_quick")
    code = cli.main(["sine", "--quick", "--no-progress", "--seed", "0", "--out", str(out)])
    return code, out


# ---------------------------------------------------------------------------------- one quick run
def test_every_model_beats_the_last_value(quick_run):
    code, out = quick_run
    assert code == 0
    mse = load_json(out / "sine_quick.json")["test_mse"]
    for model in sine.MODELS:
        assert mse[model] < mse["last_value"], \
            f"{model}: test MSE {mse[model]:.5f} >= last value {mse['last_value']:.5f}"


def test_stateful_free_run_keeps_swinging(quick_run):
    _, out = quick_run
    results = load_json(out / "sine_quick.json")
    free = np.array(results["free_run"]["stateful"])
    assert free.shape == (sine.FREE_RUN_STEPS,) and results["free_run_mse_vs_clean"]["steps"] == sine.FREE_RUN_STEPS
    std = float(np.std(free[-100:]))
    assert std > MIN_FREE_RUN_STD, f"the stateful free run's last 100 steps have std {std:.3f} <= {MIN_FREE_RUN_STD}"


def test_quick_run_writes_its_own_files_with_every_row(quick_run):
    _, out = quick_run
    assert sorted(os.listdir(out)) == ["sine_quick.json", "sine_quick.png"]
    assert_png(out / "sine_quick.png")
    results = load_json(out / "sine_quick.json")
    assert results["config"]["quick"] is True and results["config"]["layers"] == 2
    assert set(results["test_mse"]) == set(sine.MODELS) | {"last_value", "noise_floor", "clean_signal"}
    assert set(results["free_run_mse_vs_clean"]) == set(sine.MODELS) | {"steps"}
    assert results["num_parameters"]["stacked_stateful"] > results["num_parameters"]["stateful"]


def test_table_has_every_row_and_says_quick(quick_run):
    _, out = quick_run
    text = sine.table(load_json(out / "sine_quick.json"))
    for name in ("stateless LSTM", "stateful LSTM", "stacked stateful LSTM x2", "dense MLP", "last value",
                 "noise floor"):
        assert name in text, text
    assert "quick run" in text


# ---------------------------------------------------------------------------------- --seeds
@pytest.mark.parametrize("text, seeds", [("0-9", list(range(10))), ("3", [3]), ("0-3,7", [0, 1, 2, 3, 7]),
                                         ("5-5", [5]), ("2, 1", [1, 2])])
def test_parse_seeds(text, seeds):
    assert sine.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["9-3", "a", "", "1-", "-2", "1.5", "0-1000", f"{2 ** 32}"])
def test_parse_seeds_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="^takes a range"):
        sine.parse_seeds(text)


@pytest.mark.parametrize("seeds, text", [([0, 1, 2, 3, 7], "0-3, 7"), ([5], "5"), ([1, 3, 4], "1, 3-4")])
def test_format_seeds(seeds, text):
    assert sine.format_seeds(seeds) == text and sine.parse_seeds(text) == seeds


def test_seeds_table_and_json(tmp_path, capsys):
    code, out, _ = run_cli(["sine", "--quick", "--epochs", "2", "--no-progress", "--seeds", "3-4",
                            "--out", str(tmp_path)], capsys)
    assert code == 0
    summary = load_json(tmp_path / "sine_seeds_quick.json")
    assert summary["seeds"] == [3, 4] and [r["config"]["seed"] for r in summary["runs"]] == [3, 4]
    for what in ("test_mse", "free_run_mse_vs_clean"):
        for model in sine.MODELS:
            values = [r[what][model] for r in summary["runs"]]
            assert summary["spread"][what][model] == {"median": statistics.median(values), "worst": max(values)}
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[2:6]] == ["3", "4", "median", "worst"], out
    first = summary["runs"][0]
    assert f"{first['test_mse']['stateless']:.5f}" in lines[2]
    assert f"{first['free_run_mse_vs_clean']['dense']:.4f}" in lines[2]
    assert_png(tmp_path / "sine_seeds_quick.png")


# ---------------------------------------------------------------------------------- --noise 0
def test_noise_zero_is_the_clean_sine(tmp_path, capsys):
    code, out, _ = run_cli(["sine", "--quick", "--epochs", "1", "--no-progress", "--noise", "0",
                            "--out", str(tmp_path)], capsys)
    assert code == 0
    results = load_json(tmp_path / "sine_noise0_quick.json")
    assert results["config"]["sigma"] == 0 and results["test_mse"]["noise_floor"] == 0
    assert results["test_mse"]["clean_signal"] == 0         # the series is the clean sine itself
    assert "÷ σ²" not in out


# ---------------------------------------------------------------------------------- --data
def test_data_csv_runs_in_the_files_units(tmp_path, capsys):
    t = np.arange(300)
    value = 100.0 + 50.0 * np.sin(2 * np.pi * t / 40) + np.random.default_rng(0).normal(0, 2, t.size)
    path = write_csv(tmp_path / "my series.csv", ["when", "value"], [[f"d{i}", f"{v:.6f}"] for i, v in zip(t, value)])
    code, out, err = run_cli(["sine", "--quick", "--epochs", "2", "--no-progress", "--data", path, "--column", "value",
                              "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    results = load_json(tmp_path / "out" / "sine_my_series_quick.json")
    y = np.round(value, 6)
    n = results["config"]["train_points"]
    assert results["config"]["source"] == "csv" and n == 240 and results["config"]["test_points"] == 60
    last_value = float(np.mean((y[n:] - y[n - 1:-1]) ** 2))
    assert results["test_mse"]["last_value"] == pytest.approx(last_value, rel=1e-5)   # float32 series
    assert results["config"]["scale_mean"] == pytest.approx(y[:n].mean(), rel=1e-5)
    assert results["free_run_mse_vs_test"]["steps"] == 60 and "noise_floor" not in results["test_mse"]
    assert "MSE vs the test part (60 points)" in out
    assert_png(tmp_path / "out" / "sine_my_series_quick.png")


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("nan", "must be finite"),
    ("short", "needs at least"),
    ("text", "is not numeric"),
    ("no_column", "no column 'price'"),
    ("constant", "is constant"),
])
def test_data_errors_exit_2(case, message, tmp_path, capsys):
    n = 300
    rows = {"missing": None, "nan": [[i, "nan" if i == 7 else i % 5] for i in range(n)],
            "short": [[i, i % 5] for i in range(50)], "text": [[i, "x" if i == 9 else i] for i in range(n)],
            "no_column": [[i, i % 5] for i in range(n)], "constant": [[i, 1.0] for i in range(n)]}[case]
    path = str(tmp_path / "missing.csv") if rows is None else write_csv(tmp_path / "s.csv", ["t", "v"], rows)
    argv = ["sine", "--quick", "--data", path, "--out", str(tmp_path / "out")]
    argv += ["--column", "price"] if case == "no_column" else []
    code, out, err = run_cli(argv, capsys)
    assert code == common.EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"npylstm sine: error: --data {path}: ") and message in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--layers", "1"], "argument --layers: is the stacked stateful model's depth"),
    (["--layers", "two"], "argument --layers: must be an integer"),
    (["--noise", "-0.1"], "argument --noise: must be a finite number >= 0"),
    (["--noise", "nan"], "argument --noise: must be a finite number >= 0"),
    (["--seeds", "4-2"], "argument --seeds: takes a range"),
])
def test_bad_flag_values_are_usage_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sine", "--quick", "--out", str(tmp_path / "out")] + argv)
    err = capsys.readouterr().err
    assert e.value.code == common.EXIT_USAGE and f"npylstm sine: error: {message}" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_column_without_data_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["sine", "--column", "v", "--out", str(tmp_path / "out")], capsys)
    assert code == common.EXIT_USAGE and err == "npylstm sine: error: --column needs --data FILE.csv\n", err
    assert not (tmp_path / "out").exists()


def test_noise_with_data_is_refused(tmp_path, capsys):
    path = write_csv(tmp_path / "s.csv", None, [[i % 7] for i in range(300)])
    code, _, err = run_cli(["sine", "--data", path, "--noise", "0", "--out", str(tmp_path / "out")], capsys)
    assert code == common.EXIT_USAGE and "--noise applies to the sine only" in err, err


# ---------------------------------------------------------------------------------- read_series
def test_read_series_header_name_index_and_default(tmp_path):
    rows = [[f"2024-{i:02d}", i * 1.5, -i] for i in range(1, 6)]
    with_header = write_csv(tmp_path / "h.csv", ["month", "a", "b"], rows)
    no_header = write_csv(tmp_path / "n.csv", None, [r[1:] for r in rows])
    a = np.array([r[1] for r in rows])
    b = np.array([r[2] for r in rows], float)
    for path, column, expected, name in [(with_header, "a", a, "a"), (with_header, "2", b, "b"),
                                         (with_header, None, b, "b"), (no_header, "0", a, "column 0"),
                                         (no_header, None, b, "column 1")]:
        values, got_name = series.read_series(path, column)
        np.testing.assert_array_equal(values, expected)
        assert got_name == name


def test_read_series_reports_the_row_and_column(tmp_path):
    path = write_csv(tmp_path / "h.csv", ["month", "a"], [["jan", 1], ["feb", 2]])
    with pytest.raises(common.CommandError, match=r"column 'month' is not numeric: row 2 holds 'jan'"):
        series.read_series(path, "month")
    with pytest.raises(common.CommandError, match="column index 5 is out of range"):
        series.read_series(path, "5")


# ---------------------------------------------------------------------------------- pieces
def test_dense_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    W, H, N = 5, 4, 3
    mlp = sine.dense_model(W, H, seed=1, dtype=np.float64)
    for layer in mlp:                                  # non-zero biases, drawn
        layer.params["b"][...] = rng.normal(0, 0.5, layer.params["b"].shape)
    x = rng.normal(0, 1, (N, W, 1))
    g = rng.normal(0, 1, (N, 1))                       # upstream gradient: loss = Σ g ⊙ y

    def loss():
        return float(np.sum(g * sine.dense_forward(mlp, x)[0]))
    for layer in mlp:
        layer.zero_grad()
    _, Z = sine.dense_forward(mlp, x)
    dx = sine.dense_backward(mlp, Z, g)
    checks = [(f"{i}.{k}", P, layer.grads[k]) for i, layer in enumerate(mlp) for k, P in layer.params.items()]
    checks.append(("x", x[:, :, 0], dx))
    for name, P, analytic in checks:
        numeric = np.zeros_like(P)
        for idx in np.ndindex(P.shape):
            keep = P[idx]
            P[idx] = keep + FD_EPS
            up = loss()
            P[idx] = keep - FD_EPS
            down = loss()
            P[idx] = keep
            numeric[idx] = (up - down) / (2 * FD_EPS)
        err = np.max(np.abs(analytic - numeric)) / max(1e-12, np.max(np.abs(numeric)))
        assert err < FD_RTOL, f"{name}: max relative error {err:.2e} >= {FD_RTOL}"


def test_cosine_adam_schedule():
    opt = sine.CosineAdam(0.01, total_steps=4)
    P = {"w": np.zeros(2)}
    seen = []
    for _ in range(6):
        opt.step(P, {"w": np.ones(2)})
        seen.append(opt.lr)
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(6)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert seen[0] == 0.01 and seen[2] == pytest.approx(0.005) and seen[4] == seen[5] == 0.0


def test_min_points_is_the_shortest_series_that_splits():
    s = sine.settings(quick=True)
    need = sine.min_points(s)
    for points, fits in ((need, True), (need - 1, False)):
        train, _ = npylstm.chronological_split(np.zeros(points), sine.TEST_FRACTION, window=sine.WINDOW)
        if fits:
            npylstm.stream_batches(train, s["streams"], s["steps"])
        else:
            with pytest.raises(ValueError, match="stream_batches"):
                npylstm.stream_batches(train, s["streams"], s["steps"])
