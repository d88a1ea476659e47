"""`npylstm bench --sequence`: one LSTM layer over T = 100 steps, forward and forward+backward, float32.

Backends (each only where it can run; the GPU ones for every version in npylstm.gpu.KERNEL_VERSIONS):

    numpy            npylstm.LSTM on the CPU (sequence.py)
    torch-cpu        torch nn.LSTM on the CPU (oneDNN)          torch-cpu-cell   nn.LSTMCell, a Python loop over T
    kernel<v>        npylstm.LSTM(device="cuda", kernel=v)
    torch-cuda       torch nn.LSTM on CUDA (cuDNN, TF32 off)    torch-cuda-cell  nn.LSTMCell, a Python loop over T

1. Correctness first, at every size a backend is timed at: y, h_n, c_n, dx, dh0, dc0, dW_x, dW_h, db
   against npylstm.LSTM in float64 on the same weights and inputs (non-zero biases and initial states;
   backward from dy). A backend that does not match is not timed, and the command exits 1.
2. Timing. CPU: the NumPy side and the PyTorch side each in its own process, alternating (design.md §5),
   perf_counter around each call; the backends and phases inside a process interleaved call by call.
   GPU: CUDA events around each call (bench.gpu_clock), after at least bench.WARMUP_S of untimed calls,
   every backend and phase interleaved call by call (A B C A B C). Medians.
3. Report: µs per time step (the whole sequence's time / T: the per-step throughput of the loop), one
   table per device and phase, with ratio columns a/b (lower is better); bench_sequence.json, .png.

The GPU grid is the whole of T = 100, N in {1, 8, 64, 256}, H in {128, 512, 1024}, D = H. The CPU rows are
those of at most CPU_MAX_FLOP a forward (16·T·N·H² flop): every H = 128 row, H = 512 with N <= 8, and
H = 1024 with N = 1 -- NumPy's forward at N = 256, H = 1024 alone is ~430 GFLOP (minutes per row on a
few cores); `--cpu-all` times the CPU on the whole grid. `--quick` is T = 20, N in {1, 8}, H = 64.
"""

import time

import numpy as np

from . import bench
from .experiments.common import pyplot
from .files import write_json
from .lstm import LSTM

T_FULL = 100
QUICK_T, QUICK_SIZES = 20, ((1, 64), (8, 64))
CPU_MAX_FLOP = 8e9     # default CPU rows: forward work at most this (16·T·N·H² flop): about a second a call, 2 cores
SEQ_RTOL = 1e-4        # float32 layer vs float64 over T steps, per tensor relative to its largest entry: measured
                       # <= 5e-6 for NumPy and PyTorch on the CPU (T = 100; worst db, a sum of T·N terms); 20x room
CPU_BUDGET_S = 10.0    # CPU: timed repeats per size capped so a process spends about this long on one size ...
MIN_REPEATS = 3        # ... but at least this many (or --repeats, if fewer)
OUTPUTS = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dW_x", "dW_h", "db")
PHASES = {"fwd": "forward", "fwdbwd": "forward+backward"}
LABELS = {"numpy": "numpy", "torch-cpu": "oneDNN", "torch-cpu-cell": "LSTMCell loop",
          "torch-cuda": "cuDNN", "torch-cuda-cell": "LSTMCell loop"}
SIDES = {"numpy": ("numpy",), "torch": ("torch-cpu", "torch-cpu-cell")}   # CPU processes and what each times


def forward_flop(T, N, H):
    """Flop of one forward with D = H: T steps of (N, D + H) @ (D + H, 4H), 2 flop per multiply-add."""
    return 16 * T * N * H * H


def grid(quick, cpu_all):
    """(T, GPU sizes, CPU sizes): sizes are (N, H) pairs, D = H."""
    if quick:
        return QUICK_T, list(QUICK_SIZES), list(QUICK_SIZES)
    sizes = [(N, H) for H in bench.SIZES_H for N in bench.SIZES_N]
    cpu = sizes if cpu_all else [(N, H) for N, H in sizes if forward_flop(T_FULL, N, H) <= CPU_MAX_FLOP]
    return T_FULL, sizes, cpu


def problem(T, N, H, seed=0):
    """float64 weights and inputs, PyTorch's init scale, non-zero everywhere; D = H.

    W_x, W_h (H, 4H), b (4H,), x (T, N, D), h0, c0 (1, N, H), dy (T, N, H).
    """
    rng = np.random.default_rng([seed, T, N, H])
    k = 1 / np.sqrt(H)
    return {"W_x": rng.uniform(-k, k, (H, 4 * H)), "W_h": rng.uniform(-k, k, (H, 4 * H)),
            "b": rng.uniform(-k, k, 4 * H), "x": rng.normal(size=(T, N, H)),
            "h0": rng.uniform(-1, 1, (1, N, H)), "c0": rng.uniform(-1, 1, (1, N, H)), "dy": rng.normal(size=(T, N, H))}


# ------------------------------------------------------------------------------------------ backends
def npylstm_calls(prob, device="cpu", kernel=None, dtype=np.float32):
    """({"fwd": fn, "fwdbwd": fn}, result) for npylstm.LSTM; result() -> {name in OUTPUTS: ndarray}."""
    T, N, H = prob["dy"].shape
    lstm = LSTM(H, H, dtype=dtype)
    lstm.params.update(W_x_l0=prob["W_x"].astype(dtype), W_h_l0=prob["W_h"].astype(dtype), b_l0=prob["b"].astype(dtype))
    lstm.zero_grad()
    xp = np
    if device == "cuda":
        from . import gpu
        lstm.to("cuda", kernel=kernel)
        xp = gpu.require_cuda("npylstm bench")
    x, h0, c0, dy = (xp.asarray(prob[k].astype(dtype)) for k in ("x", "h0", "c0", "dy"))
    as_numpy = (lambda a: a) if xp is np else xp.asnumpy

    def fwd():
        lstm(x, (h0, c0))

    def fwdbwd():
        lstm(x, (h0, c0))
        lstm.backward(dy)

    def result():
        lstm.zero_grad()
        y, (h_n, c_n) = lstm(x, (h0, c0))
        dx, (dh0, dc0) = lstm.backward(dy)
        g = lstm.grads
        got = (y, h_n, c_n, dx, dh0, dc0, g["W_x_l0"], g["W_h_l0"], g["b_l0"])
        return {k: as_numpy(v) for k, v in zip(OUTPUTS, got)}
    return {"fwd": fwd, "fwdbwd": fwdbwd}, result


def torch_calls(prob, device, loop):
    """({"fwd": fn, "fwdbwd": fn}, result) for torch nn.LSTM, or (loop) nn.LSTMCell called T times from Python.

    Same weights (weight_ih = W_xᵀ, weight_hh = W_hᵀ, bias_ih = b, bias_hh = 0); x, h0, c0 require grad;
    forward alone under no_grad. On CUDA, TF32 is off for matmuls and cuDNN (float32 means float32).
    """
    import torch
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    T, N, H = prob["dy"].shape
    mod = torch.nn.LSTMCell(H, H) if loop else torch.nn.LSTM(H, H)
    suffix = "" if loop else "_l0"
    w_ih, w_hh, b_ih, b_hh = (getattr(mod, n + suffix) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    with torch.no_grad():
        for p, v in ((w_ih, prob["W_x"].T), (w_hh, prob["W_h"].T), (b_ih, prob["b"]), (b_hh, 0 * prob["b"])):
            p.copy_(torch.from_numpy(np.ascontiguousarray(v, np.float32)))
    mod.to(device)
    x, h0, c0, dy = (torch.tensor(prob[k], dtype=torch.float32, device=device) for k in ("x", "h0", "c0", "dy"))
    for t in (x, h0, c0):
        t.requires_grad_()

    def run():
        if not loop:
            y, (h, c) = mod(x, (h0, c0))
            return y, h, c
        h, c, ys = h0[0], c0[0], []
        for t in range(T):
            h, c = mod(x[t], (h, c))
            ys.append(h)
        return torch.stack(ys), h[None], c[None]

    def fwd():
        with torch.no_grad():
            run()

    def fwdbwd():
        run()[0].backward(dy)

    def result():
        for t in (x, h0, c0, *mod.parameters()):
            t.grad = None
        y, h_n, c_n = run()
        y.backward(dy)
        got = (y, h_n, c_n, x.grad, h0.grad, c0.grad, w_ih.grad.T, w_hh.grad.T, b_ih.grad)
        return {k: v.detach().cpu().numpy() for k, v in zip(OUTPUTS, got)}
    return {"fwd": fwd, "fwdbwd": fwdbwd}, result


def make_calls(backend, prob):
    """({"fwd": fn, "fwdbwd": fn}, result) for a backend name (see the module docstring)."""
    if backend == "numpy":
        return npylstm_calls(prob)
    if backend.startswith("kernel"):
        return npylstm_calls(prob, "cuda", int(backend[len("kernel"):]))
    if backend in ("torch-cpu", "torch-cpu-cell", "torch-cuda", "torch-cuda-cell"):
        return torch_calls(prob, "cuda" if "cuda" in backend else "cpu", backend.endswith("-cell"))
    raise ValueError(f"npylstm bench: unknown backend {backend!r}")


def sequence_backends():
    """(cpu backends, gpu backends, notes): the cell benchmark's, each PyTorch one with its LSTMCell loop after it."""
    cpu, dev, notes = bench.available_backends()
    with_loop = lambda names: [n for b in names for n in ([b, b + "-cell"] if b.startswith("torch") else [b])]
    return with_loop(cpu), with_loop(dev), notes


def reference(prob):
    """npylstm.LSTM in float64 on the same weights: {name in OUTPUTS: ndarray}."""
    return npylstm_calls(prob, dtype=np.float64)[1]()


def check(backend, prob, ref):
    """(max relative error over OUTPUTS, the tensor where it is) of the backend against `ref`."""
    got = make_calls(backend, prob)[1]()
    return max((bench.relerr(got[k], ref[k]), k) for k in OUTPUTS)


def check_all(T, cpu_sizes, gpu_sizes, cpu, dev):
    """{backend: max relative error} at every size it is timed at; prints one line per backend, saying whether
    it matched (error <= SEQ_RTOL) and where its worst tensor is."""
    worst = {}
    for N, H in gpu_sizes:
        names = [b for b in cpu if (N, H) in cpu_sizes] + dev
        if names:
            prob = problem(T, N, H)
            ref = reference(prob)
            for b in names:
                worst[b] = max(worst.get(b, (-1.0,)), (*check(b, prob, ref), N, H))
    for b in cpu + dev:
        err, tensor, N, H = worst[b]
        ok = err <= SEQ_RTOL
        print(f"check {b:<15} against npylstm float64 (y, h_n, c_n, every gradient): max relative error "
              f"{err:.1e} ({tensor} at N = {N}, H = {H}) {'<=' if ok else '>'} {SEQ_RTOL:.0e}: "
              f"{'matched' if ok else 'MISMATCH, not timed'}")
    return {b: worst[b][0] for b in cpu + dev}


# ------------------------------------------------------------------------------------------ timing
def host_clock(fn, now=time.perf_counter):
    """µs that fn() takes on the host clock `now` (bench.CLOCKS)."""
    t0 = now()
    fn()
    return (now() - t0) * 1e6


def _sequence_worker(payload):
    """In its own process: time one CPU side's backends, both phases, interleaved; {"N,H": {"b phase": [µs]}}.

    payload : {"backends": [...], "T": T, "sizes": [[N, H], ...], "repeats": r, "clock": "wall" or "cpu"}.

    Repeats: payload["repeats"] at most, fewer where a round of calls is long (CPU_BUDGET_S), MIN_REPEATS at least.
    """
    T, out, now = payload["T"], {}, bench.CLOCKS[payload["clock"]]
    measure = lambda fn: host_clock(fn, now)
    for N, H in payload["sizes"]:
        prob = problem(T, N, H)
        calls = {f"{b} {p}": fn for b in payload["backends"] for p, fn in make_calls(b, prob)[0].items()}
        round_s = sum(measure(fn) for fn in calls.values()) * 1e-6         # the warm-up round
        n = min(payload["repeats"], max(MIN_REPEATS, int(CPU_BUDGET_S / max(round_s, 1e-9))))
        out[f"{N},{H}"] = bench.time_interleaved(calls, n, measure, warmup_s=0)
    return out


def time_cpu(T, sizes, sides, repeats, rounds, threads, clock="wall"):
    """{(backend, phase, N, H): median µs per call} over `rounds` alternations of one process per side.

    sides : {side: [backends it times]}, e.g. {"numpy": ["numpy"], "torch": ["torch-cpu", "torch-cpu-cell"]}.
    """
    samples = {}
    for _ in range(rounds):
        for backends in sides.values():
            got = bench.run_worker("bench_sequence:_sequence_worker",
                                   {"backends": backends, "T": T, "sizes": sizes, "repeats": repeats,
                                    "clock": clock}, threads)
            for size, per in got.items():
                N, H = map(int, size.split(","))
                for key, v in per.items():
                    samples.setdefault((*key.split(), N, H), []).extend(v)
    return {k: float(np.median(v)) for k, v in samples.items()}


def time_gpu(T, sizes, backends, repeats):
    """{(backend, phase, N, H): median µs per call}: CUDA events, every backend and phase interleaved per size."""
    measure, times = bench.gpu_clock(), {}
    for N, H in sizes:
        prob = problem(T, N, H)
        calls = {(b, p): fn for b in backends for p, fn in make_calls(b, prob)[0].items()}
        for (b, p), v in bench.time_interleaved(calls, repeats, measure).items():
            times[(b, p, N, H)] = float(np.median(v))
    return times


# ------------------------------------------------------------------------------------------ report
def tables(T, cpu_sizes, gpu_sizes, cpu, dev, times, quick):
    """One table per device and phase: µs per time step for each backend; a/b ratios (lower is better)."""
    out = [f"µs per time step = the whole sequence's time / T (T = {T}, float32, D = H; lower is faster)"
           + (" [quick subset]" if quick else ""),
           "oneDNN / cuDNN: torch nn.LSTM on the CPU / on CUDA (TF32 off); LSTMCell loop: torch nn.LSTMCell "
           "called T times from Python",
           "a/b: a's time / b's (lower is better: below 1, a is faster)"]
    kernels = [b for b in dev if b.startswith("kernel")]
    for device, sizes, names, pairs in (("CPU", cpu_sizes, cpu, [("numpy", "torch-cpu")]),
                                        ("GPU", gpu_sizes, dev, [(b, "torch-cuda") for b in kernels])):
        if not names:
            continue
        for p, phase in PHASES.items():
            per = {(b, N, H): times.get((b, p, N, H)) for b in names for N, H in sizes}
            columns = [(LABELS.get(b, b), "µs/step", bench.times_of(sizes, per, b), ".1f") for b in names]
            columns += [(f"{LABELS.get(a, a)}/{LABELS[b]}", "lower=better", bench.ratios(sizes, per, a, b), ".2f")
                        for a, b in pairs if a in names and b in names]
            out += ["", bench.format_table(f"{device}, {phase}:", sizes, columns)]
    return "\n".join(out)


def figure(T, cpu_sizes, gpu_sizes, cpu, dev, times, title_lines):
    """µs per time step against N, a panel per phase (rows) and H (columns), a line per backend (CPU dashed)."""
    Hs = sorted({H for _, H in gpu_sizes})
    fig, axes = pyplot().subplots(2, len(Hs), figsize=(3.6 * len(Hs) + 1.5, 6.5), squeeze=False,
                                        layout="constrained")
    for row, (p, phase) in zip(axes, PHASES.items()):
        for ax, H in zip(row, Hs):
            for names, sizes, device, style in ((cpu, cpu_sizes, "CPU", "--"), (dev, gpu_sizes, "GPU", "-")):
                for b in names:
                    pts = [(N, times[(b, p, N, H_)]) for N, H_ in sizes if H_ == H and times.get((b, p, N, H_))]
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", label=f"{LABELS.get(b, b)} ({device})")
            Ns = sorted({N for N, H_ in gpu_sizes if H_ == H})
            ax.set_xscale("log")
            ax.set_xticks(Ns, [str(N) for N in Ns])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.set_title(f"{phase}, H = D = {H}", fontsize=9)
            ax.set_xlabel("N (batch)", fontsize=8)
        row[0].set_ylabel(f"µs per time step (T = {T})", fontsize=8)
    handles = {}
    for ax in axes.flat:                       # one legend for the figure, every backend once
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right center", fontsize=7)
    return bench.fit_title(fig, title_lines)


# ------------------------------------------------------------------------------------------ run
def run_sequence(args):
    quick = args.quick
    T, gpu_sizes, cpu_sizes = grid(quick, args.cpu_all)
    cpu_repeats = args.repeats or (2 if quick else 5)
    gpu_repeats = args.repeats or (2 if quick else 30)
    rounds = args.rounds or (1 if quick else 2)
    cpu, dev, notes = sequence_backends()
    info = bench.machine_info()
    notes += [n for n in [bench.load_note(info)] if n]
    what = f"one LSTM layer over T = {T} steps, forward and forward+backward, float32, D = H"
    bench.header_lines(what + (" [quick subset]" if quick else ""), info, notes)
    if not quick and not args.cpu_all:
        print(f"CPU rows: forward <= {CPU_MAX_FLOP / 1e9:g} GFLOP ({len(cpu_sizes)} of {len(gpu_sizes)} sizes); "
              f"--cpu-all times the CPU on all of them")

    errs = check_all(T, cpu_sizes, gpu_sizes, cpu, dev)                 # 1. correctness before timing
    failed = {b for b, e in errs.items() if not e <= SEQ_RTOL}

    # 2. timing: CPU sides in their own processes, alternated; GPU backends here, interleaved, CUDA events
    sides = {s: [b for b in names if b in cpu and b not in failed] for s, names in SIDES.items()}
    sides = {s: names for s, names in sides.items() if names}
    times = time_cpu(T, cpu_sizes, sides, cpu_repeats, rounds, args.threads, args.clock) if sides else {}
    timed_dev = [b for b in dev if b not in failed]
    if timed_dev:
        times.update(time_gpu(T, gpu_sizes, timed_dev, gpu_repeats))
    per_step = {k: v / T for k, v in times.items()}

    print()
    print(tables(T, cpu_sizes, gpu_sizes, cpu, dev, per_step, quick))
    json_path, png_path = bench.output_paths(args.out, "bench_sequence", quick)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"quick": quick, "T": T, "machine": info, "notes": notes,
              "unit": f"microseconds per time step: the whole sequence's time / T (T = {T}, float32, D = H)",
              "backends": {b: LABELS.get(b, b) for b in cpu + dev},
              "method": {"cpu": f"{args.clock} clock around each call; one process per side ({', '.join(sides)}) x {rounds} "
                                f"round(s), alternated; inside a process backends and phases interleaved; at most "
                                f"{cpu_repeats} repeats per size; threads: {args.threads or 'library default'}",
                         "gpu": f"CUDA events around each call, after >= {bench.WARMUP_S} s of warm-up calls, backends "
                                f"and phases interleaved call by call, {gpu_repeats} repeats, median"},
              "matched_rtol": SEQ_RTOL, "check_errors": errs,
              "mismatched": sorted(failed),
              "cpu_sizes": [list(s) for s in cpu_sizes], "gpu_sizes": [list(s) for s in gpu_sizes],
              "rows": [{"T": T, "N": N, "H": H, "D": H,
                        **{p: {b: per_step.get((b, p, N, H)) for b in cpu + dev} for p in PHASES}}
                       for N, H in gpu_sizes]}
    print(f"wrote {write_json(json_path, record)}")
    if not args.no_plot:
        title = [f"npylstm: one LSTM layer over T = {T} steps, float32, D = H: µs per time step"
                 + (" (quick subset)" if quick else "")] + [n for n in notes if n.startswith("GPU rows missing")]
        bench.save_png(figure(T, cpu_sizes, gpu_sizes, cpu, dev, per_step, title), png_path)
        print(f"wrote {png_path}")
    return 1 if failed else 0
