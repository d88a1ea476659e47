"""The gradient checker on npylstm's own code: it passes on the real backward, catches a planted bug, and its CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npylstm import check_gradients, cli
from npylstm.gradcheck import (FD_FLOOR, MASKS, REL_TOL, VARIANTS, format_table, numeric_gradient, padding_mask,
                               rel_error)

SMALL = ["--steps", "3", "--batch", "2", "--hidden", "2", "--input-size", "2", "--layers", "1"]


def test_numeric_gradient_of_a_known_function_and_restores_the_input():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4))
    w = rng.normal(size=(3, 4))
    saved = a.copy()
    num = numeric_gradient(lambda: float(np.sum(w * np.sin(a)) + np.sum(a * a)), a)
    exact = w * np.cos(a) + 2 * a
    assert rel_error(num, exact) < 1e-8
    np.testing.assert_array_equal(a, saved)        # perturbed in place, restored exactly


def test_numeric_gradient_refuses_a_non_contiguous_array():
    with pytest.raises(ValueError, match="numeric_gradient: a must be contiguous"):
        numeric_gradient(lambda: 0.0, np.ones((3, 4)).T)


def test_rel_error_is_scaled_by_the_larger_tensor_and_floored():
    a = np.array([1.0, -3.0])
    b = np.array([1.0, -3.3])
    assert rel_error(a, b) == pytest.approx(0.3 / 3.3)
    assert rel_error(a, b) == rel_error(b, a)
    tiny = np.array([1e-8, 0.0])
    assert rel_error(tiny, 0 * tiny) == pytest.approx(1e-8 / FD_FLOOR)
    assert rel_error(np.zeros(0), np.zeros(0)) == 0.0


def test_padding_masks_hold_full_partial_and_empty_rows():
    post, pre = padding_mask("post", 5, 3), padding_mask("pre", 5, 3)
    assert padding_mask("none", 5, 3) is None
    np.testing.assert_array_equal(post.sum(axis=0), [5, 3, 0])
    np.testing.assert_array_equal(pre.sum(axis=0), [5, 3, 0])
    assert post[:3, 1].all() and not post[3:, 1].any()        # real steps first
    assert pre[2:, 1].all() and not pre[:2, 1].any()          # real steps last


def test_the_default_check_covers_both_cells_every_mask_and_the_model():
    rows = check_gradients()
    levels = {r.level for r in rows}
    for v in VARIANTS:
        assert {f"{v} cell", f"{v} sequence", f"{v} sequence pre", f"{v} sequence post", f"{v} layer post"} <= levels
    assert {"model cross_entropy post", "model mse post"} <= levels
    assert {r.tensor for r in rows if r.level == "lstm layer post"} == {
        "x", "h0", "c0", "W_x_l0", "W_h_l0", "b_l0", "W_x_l1", "W_h_l1", "b_l1"}
    assert {r.tensor for r in rows if r.level == "gru-before cell"} == {"x", "h_prev", "W_x", "W_h", "b_x", "b_h"}
    for r in rows:
        assert r.passed and 0 < r.max_rel_error < REL_TOL, r   # a real comparison, not an identity


def test_the_same_seed_gives_the_same_rows():
    kw = dict(steps=2, batch=2, hidden=2, input_size=2, layers=1, variants=["gru-after"], masks=["post"])
    assert check_gradients(seed=3, **kw) == check_gradients(seed=3, **kw)
    assert check_gradients(seed=3, **kw) != check_gradients(seed=4, **kw)


def _plant_bug(monkeypatch):
    """A sequence backward that gets dW_h wrong by 1e-3 of one entry -- the checker must see it."""
    import npylstm.sequence as seq
    real = seq.sequence_backward

    def buggy(*args, **kwargs):
        dx, dh0, dc0, dW_x, dW_h, db = real(*args, **kwargs)
        dW_h = dW_h.copy()
        dW_h.flat[0] += 1e-3 * np.abs(dW_h).max()
        return dx, dh0, dc0, dW_x, dW_h, db

    monkeypatch.setattr(seq, "sequence_backward", buggy)


def test_a_planted_bug_fails_exactly_its_rows(monkeypatch):
    _plant_bug(monkeypatch)
    rows = check_gradients(variants=["lstm"], steps=3, batch=2, hidden=3, input_size=2)
    failed = {(r.level, r.tensor) for r in rows if not r.passed}
    assert failed == {("lstm sequence", "W_h"), ("lstm sequence pre", "W_h"), ("lstm sequence post", "W_h"),
                      ("lstm layer post", "W_h_l0"), ("lstm layer post", "W_h_l1")}


def test_cli_exits_one_and_shows_the_worst_entries_when_a_tensor_fails(monkeypatch, capsys):
    _plant_bug(monkeypatch)
    assert cli.main(["gradcheck", *SMALL, "--cell", "lstm", "--mask", "none"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "24/26 tensors pass" in out
    assert "at [0, 0]: analytic" in out


def gradcheck(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    return subprocess.run([sys.executable, "-m", "npylstm", "gradcheck", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def table_levels(out):
    """The table's rows and the set of their levels (the first column, as wide as the header says)."""
    header = next(line for line in out.splitlines() if line.startswith("level "))
    rows = [line for line in out.splitlines() if line.endswith(("  pass", "  FAIL"))]
    assert len({len(line) for line in rows}) == 1                # fixed width
    return rows, {line[:header.index("tensor")].strip() for line in rows}


@pytest.mark.parametrize("flags, expected", [
    (["--cell", "lstm", "--mask", "none"], {"lstm cell", "lstm sequence", "lstm layer", "model cross_entropy",
                                            "model mse"}),
    (["--cell", "gru", "--reset-after", "false", "--mask", "pre"],
     {"gru-before cell", "gru-before sequence pre", "gru-before layer pre", "model cross_entropy pre", "model mse pre"}),
    (["--cell", "gru", "--mask", "post"],
     {f"{v} {level}" for v in ("gru-after", "gru-before") for level in ("cell", "sequence post", "layer post")}
     | {"model cross_entropy post", "model mse post"}),
    (["--reset-after", "true", "--mask", "post"],
     {"gru-after cell", "gru-after sequence post", "gru-after layer post", "model cross_entropy post", "model mse post"}),
])
def test_cli_flags_choose_the_checks(flags, expected):
    res = gradcheck(*SMALL, *flags)
    assert res.returncode == 0, res.stdout + res.stderr
    rows, levels = table_levels(res.stdout)
    assert levels == expected
    assert f"{len(rows)}/{len(rows)} tensors pass" in res.stdout and res.stderr == ""


def test_cli_json_holds_the_rows(tmp_path):
    path = tmp_path / "rows.json"
    res = gradcheck(*SMALL, "--cell", "lstm", "--json", str(path))
    assert res.returncode == 0, res.stderr
    data = json.loads(path.read_text())
    rows, _ = table_levels(res.stdout)
    assert data["total"] == data["passed"] == len(data["rows"]) == len(rows)
    assert data["variants"] == ["lstm"] and data["masks"] == list(MASKS) and data["hidden"] == 2
    first = data["rows"][0]
    assert first["level"] == "lstm cell" and first["tensor"] == "x" and first["shape"] == [2, 2]
    assert first["passed"] is True and 0 < first["max_rel_error"] < REL_TOL and "worst" not in first
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]      # no temp file left


@pytest.mark.parametrize("flags, message", [
    (["--cell", "rnn"], "argument --cell: invalid choice: 'rnn'"),
    (["--mask", "middle"], "argument --mask: invalid choice: 'middle'"),
    (["--reset-after", "maybe"], "argument --reset-after: invalid choice: 'maybe'"),
    (["--cell", "lstm", "--reset-after", "true"], "--reset-after is the GRU's"),
    (["--hidden", "0"], "check_gradients: hidden must be a positive int, got 0"),
    (["--hidden", "two"], "argument --hidden: invalid int value: 'two'"),
    (["--scale", "0"], "weight_scale must be a positive number"),
    (["--seed", "-1"], "--seed must be a non-negative int"),
    (["--json", os.path.join("no", "such", "folder", "rows.json")], "does not exist"),
    (["--bugs", "--cell", "lstm"], "--bugs runs its own checks"),
])
def test_cli_bad_values_exit_two_with_one_line(flags, message, tmp_path):
    res = gradcheck(*flags, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()   # argparse's refusals come after the command's usage, like every command's
    assert "Traceback" not in res.stderr and [line for line in lines if message in line] == [lines[-1]], res.stderr
    assert lines[-1].startswith("npylstm gradcheck: "), res.stderr
    assert len(lines) == 1 or lines[0].startswith("usage: npylstm gradcheck "), res.stderr
    assert list(tmp_path.iterdir()) == []


def test_format_table_is_fixed_width_and_counts():
    rows = check_gradients(steps=2, batch=2, hidden=2, input_size=2, layers=1, variants=["lstm"], masks=["none"],
                           levels=["cell"])
    text = format_table(rows)
    assert "6/6 tensors pass" in text
    assert len({len(line) for line in text.splitlines()[2:-1]}) == 1
