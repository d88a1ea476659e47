"""The gradient checker itself: it passes on the real backward, catches a planted bug, and its CLI."""

import numpy as np
import pytest

from npylstm import check_gradients, cli
from npylstm.gradcheck import (FD_FLOOR, LEVELS, REL_TOL, check_layer, check_sequence, format_table,
                               numeric_gradient, rel_error)

FD_QUADRATIC_RTOL = 1e-9   # central differences are exact for a quadratic up to round-off (~1e-10)


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


@pytest.mark.parametrize("seed", [0, 1])
def test_default_gradcheck_passes_every_tensor_at_every_level(seed):
    rows = check_gradients(seed=seed)
    assert [r.level for r in rows].count("cell") == 6
    assert {r.level for r in rows} == set(LEVELS)
    assert {r.tensor for r in rows if r.level == "layer"} == {"x", "h0", "c0", "W_x_l0", "W_h_l0", "b_l0",
                                                                  "W_x_l1", "W_h_l1", "b_l1"}
    for r in rows:
        assert r.passed and r.max_rel_error < REL_TOL, r
        assert r.max_rel_error > 0, r              # a real comparison, not an identity


def test_gradcheck_with_a_mask_and_batch_first():
    rng = np.random.default_rng(3)
    mask = np.array([[True, True, False], [False, True, True]])          # (N=2, T=3), batch_first
    rows = check_layer(rng, T=3, N=2, D=2, H=3, layers=2, weight_scale=5.0, batch_first=True, mask=mask)
    assert all(r.passed for r in rows), format_table(rows)
    rows = check_sequence(rng, T=3, N=2, D=2, H=3, weight_scale=5.0, mask=mask.T.copy())
    assert all(r.passed for r in rows), format_table(rows)


def _plant_bug(monkeypatch):
    """A backward that gets dW_h wrong by 1e-3 of one entry -- the checker must see it."""
    import npylstm.sequence as seq
    real = seq.sequence_backward

    def buggy(*args, **kwargs):
        dx, dh0, dc0, dW_x, dW_h, db = real(*args, **kwargs)
        dW_h = dW_h.copy()
        dW_h.flat[0] += 1e-3 * np.abs(dW_h).max()
        return dx, dh0, dc0, dW_x, dW_h, db

    monkeypatch.setattr(seq, "sequence_backward", buggy)
    monkeypatch.setattr("npylstm.gradcheck.sequence_backward", buggy)


def test_gradcheck_catches_a_planted_bug(monkeypatch):
    _plant_bug(monkeypatch)
    failed = {(r.level, r.tensor) for r in check_gradients() if not r.passed}
    assert failed == {("sequence", "W_h"), ("layer", "W_h_l0"), ("layer", "W_h_l1")}


def test_cli_prints_the_table_and_exits_zero(capsys):
    assert cli.main(["gradcheck", "--layers", "1", "--hidden", "3", "--steps", "2", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("level"))
    for word in ("level", "tensor", "shape", "max rel error", "result"):
        assert word in header
    rows = [line for line in out.splitlines() if line.split()[:1] in (["cell"], ["sequence"], ["layer"])]
    assert len(rows) == 6 + 6 + 6
    assert all(line.endswith("pass") for line in rows)
    assert len({len(line) for line in rows}) == 1            # fixed width
    assert "18/18 tensors pass" in out


def test_cli_exits_nonzero_when_a_tensor_fails(monkeypatch, capsys):
    _plant_bug(monkeypatch)
    assert cli.main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "18/21 tensors pass" in out


def test_cli_refuses_bad_sizes(capsys):
    assert cli.main(["gradcheck", "--hidden", "0"]) == 2
    assert "npylstm gradcheck: check_gradients: hidden must be a positive int, got 0" in capsys.readouterr().out
