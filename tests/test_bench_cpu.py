"""benchmarks/bench_cpu.py end to end on a tiny size, both tables (no timing assertions): it checks
before it times, runs both sides in worker processes, and records every phase it prints."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_cpu.py"
spec = importlib.util.spec_from_file_location("bench_cpu", SCRIPT)
bench_cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_cpu)
TINY = ["--configs", "3,2,2,5", "--rounds", "2", "--repeats", "1", "--warmup", "0"]


@pytest.mark.parametrize("split", [False, True])
def test_bench_cpu_times_both_sides_and_records_each_phase(tmp_path, capsys, split):
    path = tmp_path / "bench.json"
    assert bench_cpu.main(TINY + ["--json", str(path)] + ["--split"] * split) == 0
    out = capsys.readouterr().out
    assert "T,N,D,H = 3,2,2,5" in out and "matched" in out
    (row,) = json.loads(path.read_text())["results"]
    assert (row["T"], row["N"], row["D"], row["H"]) == (3, 2, 2, 5)
    phases = ["fwd", "bwd"] if split else ["fwd", "fwdbwd"]
    for k in phases:
        assert row[f"numpy_{k}_us"] > 0 and row[f"torch_{k}_us"] > 0
        assert len(row[f"ratio_{k}_rounds"]) == 2 and row[f"ratio_{k}"] > 0
    products = {f"numpy_{k}_products_us" for k in ("fwd", "bwd")}
    assert products <= set(row) if split else not products & set(row)
    header = next(line for line in out.splitlines() if line.startswith("   T"))
    assert ("numpy bwd" in header and "products" in header) == split


def test_products_alone_times_the_forward_and_the_backward_products():
    for D, H in ((1, 8), (9, 8)):                       # folded (4 (D + 1) <= H) and hoisted input product
        times = bench_cpu.products_alone(3, 2, D, H)()
        assert set(times) == {"fwd_products", "bwd_products"} and min(times.values()) > 0
