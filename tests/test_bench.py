"""`npylstm bench --quick` end to end (CPU rows; GPU rows when a device is there), and its pure helpers.

No timing assertions: only that it checks before it times, writes its table, JSON and PNG, and says why
rows are missing.
"""

import json

import pytest

from npylstm import bench
from npylstm.cli import main


def test_bench_quick_writes_table_json_and_png(tmp_path, capsys):
    assert main(["bench", "--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "check numpy" in out and "matched" in out
    assert "    N     H      N*H" in out
    record = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["N"], r["H"]) for r in record["rows"]] == [(N, H) for H in bench.QUICK_H for N in bench.QUICK_N]
    assert all(r["numpy"] > 0 for r in record["rows"])
    assert {"cpu", "numpy", "date"} <= set(record["machine"])
    cpu, dev, notes = bench.available_backends()
    if not dev:  # no usable GPU: the reason is printed and recorded
        assert any(n.startswith("GPU rows missing: ") for n in record["notes"])
        assert "GPU rows missing: " in out
    else:
        assert all(r[b] > 0 for r in record["rows"] for b in dev)
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_does_not_time_a_backend_that_does_not_match(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "available_backends", lambda: (["numpy"], [], []))
    monkeypatch.setattr(bench, "check", lambda backend, N, H: 1.0)
    monkeypatch.setattr(bench, "_run_worker", lambda *a: pytest.fail("a mismatched backend was timed"))
    assert main(["bench", "--quick", "--no-plot", "--out", str(tmp_path)]) == 1
    assert "MISMATCH, not timed" in capsys.readouterr().out
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["mismatched"] == ["numpy"] and all(r["numpy"] is None for r in record["rows"])


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


def test_table_is_fixed_width_with_ratios_and_gaps():
    times = {("numpy", 1, 128): 20.0, ("kernel1", 1, 128): 10.0}
    table = bench.format_table([(1, 128), (8, 128)], ["numpy", "kernel1"], times)
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "(  2.00x)" in lines[2] and lines[3].rstrip().endswith("-")
