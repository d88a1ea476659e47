"""`npylstm compare --quick`: runs both cells through the three experiments, prints the table, writes
its JSON; the parameter counts are the formulas' (counted here from the sizes, not from the model);
the timing pass alternates the cells."""

import json

import pytest

from npylstm import cli
from npylstm.experiments import alphabet, common, compare, sine


def lstm_params(D, H):
    return 4 * H * (D + H) + 4 * H            # W_x (D, 4H), W_h (H, 4H), b (4H,)


def gru_params(D, H):
    return 3 * H * (D + H) + 6 * H            # W_x (D, 3H), W_h (H, 3H), b_x, b_h (3H,)


def head_params(H, K):
    return H * K + K


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    code = cli.main(["compare", "--quick", "--no-progress", "--seed", "0", "--out", str(out)])
    return code, out


def test_compare_quick_writes_json_with_every_row(compare_run):
    code, out = compare_run
    assert code == 0
    results = json.loads((out / "compare_quick.json").read_text())
    rows = {(r["experiment"], r["cell"]): r for r in results["rows"]}
    assert list(rows) == [(e, c) for e in compare.EXPERIMENTS for c in compare.CELLS]
    H_sine, H_alpha = sine.SETTINGS["quick"]["hidden"], alphabet.SETTINGS["stateful"]["hidden"]
    for kind in ("sine_stateless", "sine_stateful"):
        assert rows[(kind, "lstm")]["num_parameters"] == lstm_params(1, H_sine) + head_params(H_sine, 1)
        assert rows[(kind, "gru")]["num_parameters"] == gru_params(1, H_sine) + head_params(H_sine, 1)
    K = alphabet.K
    assert rows[("alphabet_stateful", "lstm")]["num_parameters"] == lstm_params(1, H_alpha) + head_params(H_alpha, K)
    assert rows[("alphabet_stateful", "gru")]["num_parameters"] == gru_params(1, H_alpha) + head_params(H_alpha, K)
    repeats = compare.REPEATS["quick"]
    for (experiment, cell), r in rows.items():
        expected_epochs = {"sine_stateless": sine.SETTINGS["quick"]["epochs"],
                           "sine_stateful": sine.SETTINGS["quick"]["stateful_epochs"],
                           "alphabet_stateful": alphabet.SETTINGS["stateful"]["epochs"][1]}[experiment]
        assert r["epochs"] == len(r["train_epoch_seconds"]) == expected_epochs, (experiment, cell)
        for k, median in (("timed_epoch_seconds", "seconds_per_epoch"),
                          ("timed_epoch_cpu_seconds", "cpu_seconds_per_epoch")):
            assert len(r[k]) == repeats and 0 < min(r[k]) <= r[median] <= max(r[k]), (experiment, cell, k)
    for cell in compare.CELLS:   # what the experiments' own tests assert, seen through compare
        assert rows[("alphabet_stateful", cell)]["value"] == 1.0
        assert rows[("alphabet_stateful", cell)]["recites_alphabet"]
        for kind in ("sine_stateless", "sine_stateful"):
            assert rows[(kind, cell)]["beats_last_value"], (kind, cell, rows[(kind, cell)]["value"])


def test_compare_table_matches_the_json(compare_run):
    _, out = compare_run
    results = json.loads((out / "compare_quick.json").read_text())
    text = compare.table(results)
    lines = text.splitlines()
    assert lines[0].endswith("[quick run: small settings]") and results["quick"] is True
    lines = lines[1:]
    assert lines[0].split()[:2] == ["experiment", "cell"]
    body = lines[2:2 + len(results["rows"])]
    width = len(lines[0].split("  note")[0])          # fixed width: every row's columns end where the header's do
    for line, r in zip(body, results["rows"]):
        assert line.startswith(compare.LABELS[r["experiment"]]) and f" {r['cell'].upper()} " in line
        assert line[:width].endswith(f"{r['num_parameters']:>9}{r['seconds_per_epoch']:>11.4f}"
                                     f"{r['cpu_seconds_per_epoch']:>15.4f}"), line
        assert line[width:width + 2] == "  ", line


def test_compare_refuses_bad_epochs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--quick", "--epochs", "0", "--out", str(tmp_path)])
    assert e.value.code == common.EXIT_USAGE
    assert "npylstm compare: error: argument --epochs: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_time_epochs_alternates_the_cells():
    """Round k runs the cells in order, round k+1 in reverse: neither always runs first."""
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def fit(self, *args, **kwargs):
            calls.append(self.name)

    fits = {c: (Fake(c), None, None, 1) for c in compare.CELLS}
    times = compare.time_epochs(fits, 4)
    assert calls == ["lstm", "gru", "gru", "lstm", "lstm", "gru", "gru", "lstm"]
    assert all(len(times[c][0]) == len(times[c][1]) == 4 for c in compare.CELLS)


def test_compare_trains_only_the_sine_models_it_reports(monkeypatch):
    """compare reports the stateless and stateful sine rows: the stacked and dense models are not trained."""
    def refuse(*args, **kwargs):
        raise AssertionError("compare trained a model it does not report")

    monkeypatch.setattr(sine, "train_dense", refuse)
    real = sine.train_stateful
    monkeypatch.setattr(sine, "train_stateful", lambda *a: refuse() if a[-1] != 1 else real(*a))
    results, _ = sine.experiment(seed=0, quick=True, progress=False, extras=False)
    assert set(results["free_run_mse_vs_clean"]) == {"stateless", "stateful", "steps"}
