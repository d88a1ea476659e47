"""`npylstm bench --quick` end to end (CPU rows; GPU rows when a device is there), its command-line errors, and
its pure helpers.

No timing assertions: only that it checks before it times, writes its table, JSON and PNG under the quick
run's own names and labelled as quick, says why rows are missing, and refuses bad flags in one line.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from npylstm import bench, bench_sequence
from npylstm.cli import main

MISSING_GPU = "GPU rows missing: "


def test_bench_quick_writes_a_labelled_table_json_and_png(tmp_path, capsys):
    assert main(["bench", "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "check numpy" in out and "matched" in out
    assert "[quick subset]" in out and "µs/step" in out and "lower=better" in out and "lower is better" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_quick.json", "bench_quick.png"]
    record = json.loads((tmp_path / "bench_quick.json").read_text())
    assert record["quick"] is True
    assert [(r["N"], r["H"]) for r in record["rows"]] == [(N, H) for H in bench.QUICK_H for N in bench.QUICK_N]
    assert all(r["numpy"] > 0 for r in record["rows"])
    assert {"cpu", "numpy", "date", "torch", "cupy"} <= set(record["machine"])
    cpu, dev, notes = bench.available_backends()
    if not dev:  # no usable GPU: the reason is printed once and recorded
        assert sum(line.startswith(MISSING_GPU) for line in out.splitlines()) == 1
        assert any(n.startswith(MISSING_GPU) for n in record["notes"])
    else:
        assert all(r[b] > 0 for r in record["rows"] for b in dev)
    assert (tmp_path / "bench_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_does_not_time_a_backend_that_does_not_match(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "available_backends", lambda *_: (["numpy"], [], []))
    monkeypatch.setattr(bench, "check", lambda backend, N, H: 1.0)
    monkeypatch.setattr(bench, "run_worker", lambda *a: pytest.fail("a mismatched backend was timed"))
    assert main(["bench", "--quick", "--no-plot", "--out", str(tmp_path)]) == 1
    assert "MISMATCH, not timed" in capsys.readouterr().out
    record = json.loads((tmp_path / "bench_quick.json").read_text())
    assert record["mismatched"] == ["numpy"] and all(r["numpy"] is None for r in record["rows"])


@pytest.mark.parametrize("got,expected", [([1.0, 2.0], 0.0), ([1.0, 2.5], 0.5 / 2.5), ([np.nan, 2.0], np.inf),
                                          ([np.inf, 2.0], np.inf), ([1.0, 2.0, 3.0], np.inf)])
def test_relerr_is_scaled_by_the_largest_entry_and_never_lets_nan_pass(got, expected):
    assert bench.relerr(got, [1.0, 2.0]) == pytest.approx(expected)


def test_quick_and_full_runs_write_under_their_own_names(tmp_path):
    full, quick = bench.output_paths(tmp_path, "bench", False), bench.output_paths(tmp_path, "bench", True)
    assert [p.name for p in full] == ["bench.json", "bench.png"]
    assert [p.name for p in quick] == ["bench_quick.json", "bench_quick.png"]


def _run_cli(args, prelude=""):
    code = f"import sys; {prelude}from npylstm.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flag,value,says", [
    ("--repeats", "0", "must be an integer >= 1, got 0"),
    ("--rounds", "-1", "must be an integer >= 1, got -1"),
    ("--threads", "0", "must be an integer >= 1, got 0"),
    ("--repeats", "two", "must be an integer >= 1, got 'two'"),
    ("--clock", "gpu", "invalid choice: 'gpu'"),
    ("--out", "{file}", "exists and is not a folder"),
    ("--out", "{file}/sub", "is a file, not a folder"),
])
def test_a_bad_flag_value_is_one_error_line_and_exit_2(tmp_path, capsys, flag, value, says):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", flag, value.format(file=tmp_path / "f")])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("npylstm bench: error: argument " + flag) and says in last


def test_a_bad_flag_value_in_a_real_process_has_no_traceback():
    r = _run_cli(["bench", "--sequence", "--rounds", "-1"])
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    usage, error = r.stderr.strip().splitlines()          # one usage line, one error line
    assert usage.startswith("usage: npylstm bench ") and error.startswith("npylstm bench: error: argument --rounds")


def test_without_matplotlib_it_says_how_to_fix_it_before_any_work(tmp_path):
    r = _run_cli(["bench", "--quick", "--out", str(tmp_path / "o")], prelude="sys.modules['matplotlib'] = None; ")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert 'pip install "npylstm[plot]"' in r.stderr and "--no-plot" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,says", [(["--cpu-all"], "--cpu-all applies to --sequence only"),
                                        (["--clock", "cpu"], "--clock cpu needs --threads 1"),
                                        (["--clock", "cpu", "--threads", "2"], "--clock cpu needs --threads 1")])
def test_flags_that_do_not_go_together_are_refused_in_one_line(tmp_path, capsys, flags, says):
    assert main(["bench", *flags, "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and says in err


def test_interleaved_timer_warms_up_then_takes_turns():
    order = []
    calls = {k: (lambda k=k: order.append(k)) for k in "ABC"}
    samples = bench.time_interleaved(calls, 3, lambda fn: fn() or 1.0, warmup_s=0)
    assert order == list("ABC") * 3 and samples == {k: [1.0] * 3 for k in "ABC"}
    order.clear()
    bench.time_interleaved(calls, 2, lambda fn: fn() or 1.0, warmup_s=0.01)
    assert len(order) > 6 and order[-6:] == list("ABC") * 2


@pytest.mark.parametrize("gpu_times,expected", [
    ({(1, 128): 50.0, (8, 128): 40.0, (64, 128): 30.0}, 8 * 128),     # wins from N·H = 1024 on
    ({(1, 128): 5.0, (8, 128): 50.0, (64, 128): 30.0}, 64 * 128),     # an early win that does not last is not it
    ({(1, 128): 50.0, (8, 128): 400.0, (64, 128): 300.0}, None),      # never wins
])
def test_crossover_is_where_the_gpu_starts_to_win_for_good(gpu_times, expected):
    cpu = {(1, 128): 10.0, (8, 128): 45.0, (64, 128): 200.0}
    sizes = list(cpu)
    times = {("numpy", N, H): t for (N, H), t in cpu.items()}
    times.update({("kernel1", N, H): t for (N, H), t in gpu_times.items()})
    assert bench.crossover(sizes, times, ["kernel1"]) == expected


def test_cell_table_names_its_unit_and_ratio_direction_fixed_width_with_gaps():
    times = {("numpy", 1, 128): 20.0, ("kernel1", 1, 128): 10.0}
    table = bench.cell_table([(1, 128), (8, 128)], ["numpy", "kernel1"], times, quick=False)
    lines = table.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("N "))
    assert "µs per step" in table and "lower is better" in table
    assert "kernel1/numpy" in lines[head] and "lower=better" in lines[head + 1] and "µs/step" in lines[head + 1]
    rows = lines[head:]
    assert len({len(line) for line in rows}) == 1
    assert rows[3].split()[-1] == "0.50" and rows[4].split()[2:] == ["-", "-", "-"]


@pytest.mark.parametrize("which", ["cell", "sequence"])
def test_figure_titles_fit_the_figure(which):
    note = "GPU rows missing: " + "a very long reason that would run off the edge of the figure " * 3
    times = {("numpy", 1, 128): 20.0, ("numpy", "fwd", 1, 128): 2.0, ("numpy", "fwdbwd", 1, 128): 5.0}
    if which == "cell":
        fig = bench.cell_figure([(1, 128)], ["numpy"], times, None, ["npylstm: one LSTM cell step", note])
    else:
        fig = bench_sequence.figure(100, [(1, 128)], [(1, 128)], ["numpy"], [], times, ["npylstm: a layer", note])
    fig.canvas.draw()
    box, title = fig.bbox, fig._suptitle.get_window_extent()
    assert box.x0 <= title.x0 and title.x1 <= box.x1 and box.y0 <= title.y0 and title.y1 <= box.y1
    bench.pyplot().close(fig)
