"""`npylstm bench --sequence`: end to end on the quick subset on the CPU, and its GPU path on the CPU.

The GPU path runs here with the GPU backends standing in as the NumPy layer and a host clock for CUDA
events: it checks that every kernel version in npylstm.gpu.KERNEL_VERSIONS is picked up, checked, timed
interleaved and reported, and that one which does not match is not timed. No timing assertions.
"""

import json

import numpy as np
import pytest

from npylstm import bench, bench_sequence, gpu
from npylstm.cli import main

MISSING_GPU = "GPU rows missing: "


def test_sequence_quick_checks_times_and_writes_labelled_results(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["bench", "--sequence", "--quick", "--repeats", "1", "--threads", "1", "--clock", "cpu",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for b in ("numpy", "torch-cpu", "torch-cpu-cell"):
        assert f"check {b} " in out
    assert out.count(": matched") >= 3 and "MISMATCH" not in out
    assert "CPU, forward:" in out and "CPU, forward+backward:" in out
    assert "µs per time step" in out and "numpy/oneDNN" in out and "lower=better" in out and "[quick subset]" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_sequence_quick.json", "bench_sequence_quick.png"]
    record = json.loads((tmp_path / "bench_sequence_quick.json").read_text())
    assert record["quick"] is True and record["T"] == bench_sequence.QUICK_T
    assert [(r["N"], r["H"]) for r in record["rows"]] == list(bench_sequence.QUICK_SIZES)
    for r in record["rows"]:
        for phase in bench_sequence.PHASES:
            assert all(r[phase][b] > 0 for b in ("numpy", "torch-cpu", "torch-cpu-cell"))
    assert {"cpu", "numpy", "torch", "cupy", "date"} <= set(record["machine"])
    assert record["method"]["cpu"].startswith("cpu clock")
    if not bench_sequence.sequence_backends()[1]:      # no usable GPU: one line says why
        assert sum(line.startswith(MISSING_GPU) for line in out.splitlines()) == 1
        assert "GPU, forward" not in out


def _fake_gpu(monkeypatch, wrong=()):
    """A GPU that is the CPU: versions 1, 2 and a later 3; each GPU backend runs the NumPy layer, host-timed.

    Backends in `wrong` (GPU or CPU) return a perturbed dW_h. Returns (the keys the GPU timer was given,
    the CPU sides the CPU timer was given).
    """
    monkeypatch.setattr(gpu, "KERNEL_VERSIONS", (1, 2, 3))
    monkeypatch.setattr(bench, "gpu_missing_note", lambda: None)
    monkeypatch.setattr(bench, "torch_cuda_note", lambda torch: None)
    monkeypatch.setattr(bench, "gpu_clock", lambda: bench_sequence.host_clock)
    real = bench_sequence.make_calls

    def make_calls(backend, prob):
        cpu = backend == "numpy" or backend.startswith("torch-cpu")
        calls, result = real(backend if cpu else "numpy", prob)
        if backend in wrong:
            return calls, lambda: {**result(), "dW_h": result()["dW_h"] + 1.0}
        return calls, result
    monkeypatch.setattr(bench_sequence, "make_calls", make_calls)
    cpu_sides = {}
    monkeypatch.setattr(bench_sequence, "time_cpu", lambda T, sizes, sides, *a: cpu_sides.update(sides) or {
        (b, p, N, H): 1.0 * T for names in sides.values() for b in names for p in bench_sequence.PHASES
        for N, H in sizes})
    timed = []
    real_interleaved = bench.time_interleaved
    monkeypatch.setattr(bench, "time_interleaved",
                        lambda calls, *a, **k: timed.extend(calls) or real_interleaved(calls, *a, **k))
    return timed, cpu_sides


def test_gpu_path_picks_up_every_kernel_version_and_reports_it(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    timed, cpu_sides = _fake_gpu(monkeypatch)
    assert main(["bench", "--sequence", "--quick", "--repeats", "1", "--no-plot", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    dev = ["kernel1", "kernel2", "kernel3", "torch-cuda", "torch-cuda-cell"]
    assert {b for b, _ in timed} == set(dev) and {p for _, p in timed} == set(bench_sequence.PHASES)
    assert cpu_sides == {"numpy": ["numpy"], "torch": ["torch-cpu", "torch-cpu-cell"]}
    assert MISSING_GPU not in out
    assert "GPU, forward:" in out and "GPU, forward+backward:" in out
    assert all(f"kernel{v}/cuDNN" in out for v in (1, 2, 3))
    record = json.loads((tmp_path / "bench_sequence_quick.json").read_text())
    assert all(r[p][b] > 0 for r in record["rows"] for p in bench_sequence.PHASES for b in dev)


def test_a_backend_that_does_not_match_is_not_timed_and_exit_is_1(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    timed, cpu_sides = _fake_gpu(monkeypatch, wrong=("kernel2", "torch-cpu-cell"))
    assert main(["bench", "--sequence", "--quick", "--repeats", "1", "--no-plot", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "check kernel2 " in out and "(dW_h at" in out and "MISMATCH, not timed" in out
    assert timed and not any(b == "kernel2" for b, _ in timed)
    assert cpu_sides == {"numpy": ["numpy"], "torch": ["torch-cpu"]}
    record = json.loads((tmp_path / "bench_sequence_quick.json").read_text())
    assert record["mismatched"] == ["kernel2", "torch-cpu-cell"]
    assert all(r[p]["kernel2"] is None and r[p]["kernel1"] > 0 for r in record["rows"] for p in bench_sequence.PHASES)


def test_cpu_rows_are_the_affordable_ones_unless_cpu_all():
    T, gpu_sizes, cpu_sizes = bench_sequence.grid(quick=False, cpu_all=False)
    assert T == 100 and len(gpu_sizes) == len(bench.SIZES_N) * len(bench.SIZES_H)
    assert set(cpu_sizes) < set(gpu_sizes) and (256, 1024) not in cpu_sizes and (1, 128) in cpu_sizes
    assert all(bench_sequence.forward_flop(T, N, H) <= bench_sequence.CPU_MAX_FLOP for N, H in cpu_sizes)
    assert all(bench_sequence.forward_flop(T, N, H) > bench_sequence.CPU_MAX_FLOP
               for N, H in set(gpu_sizes) - set(cpu_sizes))
    assert bench_sequence.grid(quick=False, cpu_all=True)[2] == gpu_sizes


@pytest.mark.parametrize("backend", ["torch-cpu", "torch-cpu-cell"])
def test_torch_backends_compute_what_the_float64_layer_does(backend):
    """The check itself can fail: torch on the same weights matches, and a tampered weight does not."""
    pytest.importorskip("torch")
    prob = bench_sequence.problem(5, 3, 4)
    ref = bench_sequence.reference(prob)
    err, _ = bench_sequence.check(backend, prob, ref)
    assert err <= bench_sequence.SEQ_RTOL
    bad = {**prob, "b": prob["b"] + np.r_[np.zeros(4), 0.5, np.zeros(11)]}   # the F gate's bias, one unit
    assert bench_sequence.check(backend, bad, ref)[0] > 100 * bench_sequence.SEQ_RTOL
