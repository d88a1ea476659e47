"""The bug gallery: every classic backward bug it plants is caught by the default check, and the verdicts
of the check with zero biases and zero initial states are the ones the gallery declares and prints."""

import contextlib
import io
import json

import numpy as np
import pytest

from npylstm import cli
from npylstm.gradcheck import check_function
from npylstm.gradcheck_bugs import BUGS, Bug, plant


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """`npylstm gradcheck --bugs --json PATH`, run once: (exit status, printed text, JSON)."""
    path = tmp_path_factory.mktemp("bugs") / "bugs.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["gradcheck", "--bugs", "--json", str(path)])
    return status, out.getvalue(), json.loads(path.read_text())


def test_there_are_at_least_ten_bugs_and_some_hide_behind_zeros():
    assert len(BUGS) >= 10
    assert len({b.title for b in BUGS}) == len(BUGS)
    assert any(b.zero_init_hides for b in BUGS) and not all(b.zero_init_hides for b in BUGS)


def test_every_bug_is_caught_by_the_default_check(gallery):
    status, text, data = gallery
    assert status == 0
    assert [b["title"] for b in data["bugs"]] == [b.title for b in BUGS]
    for b in data["bugs"]:
        assert b["default"]["caught"] and b["default"]["flagged"], b
        assert all(e is None or e > 1e-3 for e in b["default"]["flagged"].values()), b
    assert f"{len(BUGS)}/{len(BUGS)} caught by the default check" in text


def test_the_zero_init_verdicts_are_as_declared_and_as_printed(gallery):
    _, text, data = gallery
    lines = text.splitlines()
    for bug, result in zip(BUGS, data["bugs"]):
        assert result["zero_init"]["caught"] == (not bug.zero_init_hides), bug.title
        row = next(line for line in lines if line.startswith(bug.title + " "))
        assert row.split()[-2:] == ["caught", "caught" if result["zero_init"]["caught"] else "MISSED"], row
        assert f"    - {bug.old}" in lines and f"    + {bug.new}" in lines
    hidden = sum(b.zero_init_hides for b in BUGS)
    assert f"{hidden} of them pass a check with zero biases and zero initial states" in text


def test_planting_changes_a_copy_only():
    import npylstm.cell
    module = plant(BUGS[0])
    assert module.step_backward is not npylstm.cell.step_backward
    rows = check_function(np.random.default_rng(0), "lstm", "cell")          # npylstm's own: untouched
    assert all(r.passed for r in rows)


def test_the_masked_bug_needs_a_masked_check():
    bug = next(b for b in BUGS if "mask" in b.title)
    module = plant(bug)
    rng = np.random.default_rng(0)
    assert all(r.passed for r in check_function(rng, "lstm", "sequence", "none", module=module))
    assert not all(r.passed for r in check_function(rng, "lstm", "sequence", "post", module=module))


def test_a_bug_whose_line_is_not_in_the_module_is_refused():
    with pytest.raises(ValueError, match="occurs 0 times in cell.py, expected once"):
        plant(Bug("nothing", "lstm", "cell", "cell", "no such line", "x", False))
