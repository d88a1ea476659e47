"""`npylstm bench`: the time of one LSTM cell step (forward), NumPy on the CPU against the GPU kernels and PyTorch.

    npylstm bench [--quick] [--out out/bench] [--threads N] [--no-plot]     # this file: one cell step
    npylstm bench --sequence [--cpu-all] ...                                # bench_sequence.py: a whole layer

For each N in {1, 8, 64, 256} and H in {128, 512, 1024} (input size D = H, float32):

1. correctness first: every backend's H and C are compared with cell.py in float64 on the same inputs, and
   the line says it matched (a backend that does not match is not timed, and the command exits 1);
2. then timing, medians: NumPy (cell.step_forward) and PyTorch's LSTMCell on the CPU, each in its own
   process, alternating A B A B (in one process the two libraries' worker threads fight over the cores,
   design.md §5), perf_counter around batches of calls; on the GPU, npylstm.gpu.step_forward for every
   kernel version that runs a lone step (gpu.STEP_VERSIONS) and PyTorch's LSTMCell on CUDA, CUDA events around
   each call, after at least WARMUP_S of untimed calls (the clocks come up), the backends interleaved call by
   call (A B C A B C).

Output: a fixed-width table (µs per step; ratio columns, each saying which way is better), bench.json with
the machine (CPU, GPU, driver, library versions), and bench.png (time against N·H, the CPU/GPU crossover
marked). Without a usable GPU the CPU rows are printed and one line says why the GPU rows are missing.
`--quick` runs a small subset (N in {1, 8}, H = 128) for tests; it writes bench_quick.json / .png, labelled.

The helpers the sequence benchmark shares live here too: the argument types (a bad value is one line and
exit status 2), the worker processes, the interleaved GPU timer, the machine record, the table, the figure title.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from . import cell
from .experiments.common import out_folder, positive_int, pyplot
from .files import atomic_write, write_json

SIZES_N = (1, 8, 64, 256)
SIZES_H = (128, 512, 1024)
QUICK_N, QUICK_H = (1, 8), (128,)
MATCH_RTOL = 1e-4      # float32 step against float64 cell.py: a few ulp of each of ~2H-term dot products
MIN_BATCH_S = 2e-3     # CPU: calls per timed batch chosen so a batch lasts at least this long
WARMUP_S = 0.2         # GPU: untimed calls first, at least this long in all, so the clocks come up before timing
CLOCKS = {"wall": time.perf_counter,   # CPU rows: wall time, or (--clock cpu, with --threads 1) the process's CPU
          "cpu": time.process_time}    # time, which leaves out the waits for a core on a machine shared with other work
PLOT_FIX = 'pip install "npylstm[plot]"'


# ------------------------------------------------------------------------------------------ arguments
def add_arguments(p):
    # one usage line (argparse would wrap its own over three): a bad value is this line and the error, exit 2
    p.usage = ("%(prog)s [--sequence] [--quick] [--cpu-all] [--repeats N] [--rounds N] [--out DIR] [--no-plot] "
               "[--threads N] [--clock {wall,cpu}]")
    p.add_argument("--sequence", action="store_true",
                   help="time a whole layer over T = 100 steps, forward and forward+backward, instead of one cell step")
    p.add_argument("--quick", action="store_true", help="a small subset, for tests (written as *_quick.json / .png)")
    p.add_argument("--cpu-all", action="store_true",
                   help="--sequence: time the CPU on the whole grid (default: the rows of at most 8 GFLOP a forward)")
    p.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                   help="timed repeats per backend (cell: default 15, quick 3; sequence: CPU 5, GPU 30, quick 2)")
    p.add_argument("--rounds", type=positive_int, default=None, metavar="N",
                   help="CPU processes per side, alternated (default 2, quick 1)")
    p.add_argument("--out", type=lambda text: Path(out_folder(text)), default="out/bench", metavar="DIR",
                   help="folder for the JSON and PNG (default out/bench)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (then matplotlib is not needed)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads for NumPy's BLAS and PyTorch in the timing processes (default: theirs)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="CPU rows: wall time (default), or the timing process's CPU time, for a machine shared with "
                        "other work (needs --threads 1: with more it adds up the threads and their spin-waiting)")


def output_paths(out, stem, quick):
    """(json path, png path): a quick run writes under its own names, never over a full run's files."""
    stem += "_quick" if quick else ""
    return Path(out) / f"{stem}.json", Path(out) / f"{stem}.png"


def _inputs(N, H, seed=0):
    """float32 x, h, c (N, H), W_x, W_h (H, 4H), b (4H,): PyTorch's init scale, non-zero everywhere."""
    rng = np.random.default_rng(seed + 1000 * N + H)
    k = 1 / np.sqrt(H)
    return [rng.normal(size=(N, H)).astype(np.float32), rng.uniform(-1, 1, (N, H)).astype(np.float32),
            rng.normal(size=(N, H)).astype(np.float32), rng.uniform(-k, k, (H, 4 * H)).astype(np.float32),
            rng.uniform(-k, k, (H, 4 * H)).astype(np.float32), rng.uniform(-k, k, 4 * H).astype(np.float32)]


def relerr(a, b):
    """max |a - b| / max(max |a|, max |b|): one number per tensor, in float64; inf where either has a NaN or inf."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300))


# ------------------------------------------------------------------------------------------ backends
def _torch_cell(torch, W_x, W_h, b, device):
    H = W_h.shape[0]
    cell_ = torch.nn.LSTMCell(W_x.shape[0], H).to(device)
    with torch.no_grad():  # npylstm -> PyTorch: weight_ih = W_xᵀ, weight_hh = W_hᵀ, bias_ih = b, bias_hh = 0
        cell_.weight_ih.copy_(torch.from_numpy(np.ascontiguousarray(W_x.T)))
        cell_.weight_hh.copy_(torch.from_numpy(np.ascontiguousarray(W_h.T)))
        cell_.bias_ih.copy_(torch.from_numpy(np.asarray(b)))
        cell_.bias_hh.zero_()
    return cell_


def make_step(backend, N, H):
    """(step(), result()) for one backend: step() runs one cell step; result() returns (H, C) as NumPy."""
    x, h, c, W_x, W_h, b = _inputs(N, H)
    if backend == "numpy":
        out = {}

        def step():
            out["r"] = cell.step_forward(x, h, c, W_x, W_h, b)
        return step, lambda: out["r"][:2]
    if backend.startswith("torch"):
        import torch
        device = "cuda" if backend == "torch-cuda" else "cpu"
        cell_ = _torch_cell(torch, W_x, W_h, b, device)
        xt, ht, ct = (torch.from_numpy(a).to(device) for a in (x, h, c))
        out = {}

        def step():
            with torch.no_grad():
                out["r"] = cell_(xt, (ht, ct))
        return step, lambda: tuple(t.cpu().numpy() for t in out["r"])
    if backend.startswith("kernel"):
        from . import gpu
        cupy = gpu.require_cuda("npylstm bench")
        version = int(backend[len("kernel"):])
        args = [cupy.asarray(a) for a in (x, h, c, W_x, W_h, b)]
        out = {}

        def step():
            out["r"] = gpu.step_forward(*args, kernel=version)
        return step, lambda: tuple(cupy.asnumpy(a) for a in out["r"][:2])
    raise ValueError(f"npylstm bench: unknown backend {backend!r}")


def check(backend, N, H):
    """Max relative error of the backend's (H, C) against cell.py in float64 on the same inputs."""
    step, result = make_step(backend, N, H)
    step()
    H_got, C_got = result()
    H_ref, C_ref, _ = cell.step_forward(*(a.astype(np.float64) for a in _inputs(N, H)))
    return max(relerr(H_got, H_ref), relerr(C_got, C_ref))


def time_cpu(backend, N, H, repeats, clock="wall"):
    """Median µs per call: batches of calls long enough for the clock (CLOCKS[clock]), after a warm-up."""
    now = CLOCKS[clock]
    step, _ = make_step(backend, N, H)
    for _ in range(3):
        step()
    t0 = now()
    step()
    number = max(1, int(MIN_BATCH_S / max(now() - t0, 1e-9)))
    times = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(number):
            step()
        times.append((now() - t0) / number)
    return float(np.median(times)) * 1e6


# ------------------------------------------------------------------------------------------ timing
def gpu_clock():
    """measure(fn) -> µs between two CUDA events recorded around fn() on the current stream.

    CuPy and PyTorch both issue to the legacy default stream unless told otherwise, so the events bracket
    the work of either library (and the gaps while the GPU waits for the host to launch, which a per-step
    loop pays for). Tests replace this function with a host clock to run the GPU path on the CPU.
    """
    from . import gpu
    cupy = gpu.require_cuda("npylstm bench")
    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def measure(fn):
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) * 1e3
    return measure


def time_interleaved(calls, repeats, measure, warmup_s=WARMUP_S):
    """{key: [µs, ...]}: `repeats` samples of measure(fn) for each of calls {key: fn}, interleaved (A B C A B C).

    First untimed rounds for at least warmup_s in all (the GPU's clocks come up, caches and plans fill);
    then `repeats` rounds. Interleaving puts every backend under the same clocks and temperature.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < warmup_s:
        for fn in calls.values():
            measure(fn)
    samples = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            samples[k].append(measure(fn))
    return samples


def _cell_worker(payload):
    """In its own process: time one CPU backend over the sizes; {"N,H": µs}."""
    return {f"{N},{H}": time_cpu(payload["backend"], N, H, payload["repeats"], payload["clock"])
            for N, H in payload["sizes"]}


def run_worker(function, payload, threads=None):
    """Run npylstm.<module>.<function>(payload) in a fresh Python process; its JSON result.

    function : "module:function" inside npylstm. threads : the BLAS / OpenMP thread count there (None: theirs).
    """
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    module, name = function.split(":")
    code = (f"import json, sys; from npylstm.{module} import {name}; "
            f"print(json.dumps({name}(json.loads(sys.argv[1]))))")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"npylstm bench: a timing process ({name}) failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ environment
def machine_info():
    """Date, load, CPU, GPU, driver, CUDA, and the versions of NumPy, CuPy, PyTorch (and cuDNN)."""
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    try:
        import cupy
        info["cupy"] = cupy.__version__
        if cupy.is_available():
            props = cupy.cuda.runtime.getDeviceProperties(0)
            info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except ImportError:
        info["cupy"] = None
    return info


def gpu_missing_note():
    """None if CUDA is usable here; else the one line that says why the GPU rows are missing."""
    from . import gpu
    try:
        gpu.require_cuda("npylstm bench")
        return None
    except RuntimeError as e:
        return "GPU rows missing: " + " ".join(str(e).split())


def torch_cuda_note(torch):
    """None if this PyTorch build can run on the GPU; else the line that says why its GPU rows are missing."""
    return None if torch.cuda.is_available() else "PyTorch GPU rows missing: this PyTorch build has no CUDA"


def available_backends(kernels=None):
    """(cpu backends, gpu backends, notes on what is missing and why). kernels: the npylstm kernel versions
    timed (default gpu.KERNEL_VERSIONS; a cell step takes gpu.STEP_VERSIONS: version 3 runs whole sequences)."""
    from . import gpu
    cpu, dev, notes = ["numpy"], [], []
    try:
        import torch
        cpu.append("torch-cpu")
    except ImportError:
        torch = None
        notes.append("PyTorch rows missing: torch is not installed")
    missing = gpu_missing_note()
    if missing:
        notes.append(missing)
    else:
        dev += [f"kernel{v}" for v in (gpu.KERNEL_VERSIONS if kernels is None else kernels)]
        if torch is not None:
            note = torch_cuda_note(torch)
            dev += [] if note else ["torch-cuda"]
            notes += [note] if note else []
    return cpu, dev, notes


def load_note(info):
    if info["load_average_1min"] and info["load_average_1min"] > info["cpu_count"]:
        return (f"warning: load average {info['load_average_1min']:.1f} on {info['cpu_count']} cores: "
                f"other processes compete, CPU times are not trustworthy")
    return None


# ------------------------------------------------------------------------------------------ report
def format_table(title, sizes, columns):
    """A fixed-width table: a title line, then per row N, H and one cell per column.

    columns : [(name, unit, {(N, H): value}, fmt)]; the second header line gives each column's unit
    ("µs/step") or, for a ratio, which way is better; a value that is missing prints "-".
    """
    widths = [max(10, len(name), len(unit)) for name, unit, _, _ in columns]
    head = f"{'N':>5} {'H':>5}" + "".join(f"  {name:>{w}}" for (name, _, _, _), w in zip(columns, widths))
    unit = " " * 11 + "".join(f"  {u:>{w}}" for (_, u, _, _), w in zip(columns, widths))
    lines = [title, head, unit, "-" * len(head)]
    for N, H in sizes:
        cells = "".join(f"  {format(vals[(N, H)], fmt) if vals.get((N, H)) is not None else '-':>{w}}"
                        for (_, _, vals, fmt), w in zip(columns, widths))
        lines.append(f"{N:>5} {H:>5}" + cells)
    return "\n".join(lines)


def ratios(sizes, times, top, bottom):
    """{(N, H): times[top] / times[bottom]} where both exist."""
    return {(N, H): times[(top, N, H)] / times[(bottom, N, H)] for N, H in sizes
            if times.get((top, N, H)) and times.get((bottom, N, H))}


def times_of(sizes, times, backend):
    return {(N, H): times.get((backend, N, H)) for N, H in sizes}


def cell_table(sizes, backends, times, quick):
    """The cell-step table: µs per step for each backend; numpy/torch-cpu and kernel/numpy ratios."""
    columns = [(b, "µs/step", times_of(sizes, times, b), ".1f") for b in backends]
    pairs = [("numpy", "torch-cpu")] + [(b, "numpy") for b in backends if b.startswith("kernel")]
    columns += [(f"{a}/{b}", "lower=better", ratios(sizes, times, a, b), ".2f") for a, b in pairs
                if a in backends and b in backends]
    title = (f"one LSTM cell step, forward, float32, D = H{' [quick subset]' if quick else ''}: µs per step "
             f"(lower is faster); torch-*: PyTorch nn.LSTMCell\n"
             f"a/b: a's time / b's (lower is better: below 1, a is faster)")
    return format_table(title, sizes, columns)


def crossover(sizes, times, gpu_backends):
    """The smallest N·H from which the fastest GPU backend beats NumPy at every larger N·H; None if never."""
    points = sorted((N * H, min((times[(b, N, H)] for b in gpu_backends if (b, N, H) in times), default=None),
                     times.get(("numpy", N, H))) for N, H in sizes)
    points = [(nh, g, c) for nh, g, c in points if g is not None and c is not None]
    found = None
    for nh, g, c in reversed(points):
        if g < c:
            found = nh
        else:
            break
    return found


def fit_title(fig, lines, fontsize=9):
    """fig.suptitle from `lines`, each wrapped to the figure's width (the layout engine then keeps it inside)."""
    chars = int(fig.get_figwidth() * 72 / (0.55 * fontsize))   # an average glyph is about 0.55 em wide
    text = "\n".join(textwrap.fill(line, chars) for line in lines if line)
    fig.suptitle(text, fontsize=fontsize)
    return fig


def nh_axis(ax, values):
    """A log x axis of N·H labelled at the values measured, in plain numbers."""
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(values)), [str(v) for v in sorted(set(values))], fontsize=7, rotation=45)
    ax.minorticks_off()
    ax.set_xlabel("N·H (batch × hidden size; input size = H)")


def save_png(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    pyplot().close(fig)


def cell_figure(sizes, backends, times, cross, title_lines):
    """Time per cell step against N·H, log-log: a colour per backend, a line and marker per H (so that sizes with
    the same N·H do not zigzag); the crossover as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    Hs = sorted({H for _, H in sizes})
    markers = dict(zip(Hs, "os^Dv"))
    styles = dict(zip(Hs, ["-", "--", ":", "-."]))
    for color, b in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2, backends):
        for H in Hs:
            pts = sorted((N * H, times[(b, N, H_)]) for N, H_ in sizes if H_ == H and times.get((b, N, H_)))
            if pts:
                ax.plot(*zip(*pts), styles[H], marker=markers[H], color=color)
        ax.plot([], [], color=color, label=b)
    for H in Hs:                                  # legend entries for H: grey marker and line style
        ax.plot([], [], styles[H], marker=markers[H], color="grey", label=f"H = D = {H}")
    if cross is not None:
        ax.axvline(cross, color="grey", linestyle="--")
        ax.annotate(f"GPU faster from N·H = {cross}", (cross, ax.get_ylim()[1]), rotation=90, va="top", ha="right",
                    fontsize=8)
    nh_axis(ax, [N * H for N, H in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("µs per cell step (forward, float32)")
    ax.legend(fontsize=7)
    return fit_title(fig, title_lines)


def header_lines(what, info, notes):
    """The lines printed before any work: what is timed, on which machine, and what is missing and why."""
    print(f"npylstm bench: {what}; CPU: {info['cpu']} ({info['cpu_count']} cores)"
          + (f"; GPU: {info['gpu']}" if "gpu" in info else ""))
    for n in notes:
        print(n)


# ------------------------------------------------------------------------------------------ run
def run(args):
    if args.clock == "cpu" and args.threads != 1:
        print("npylstm bench: --clock cpu needs --threads 1 (CPU time adds up the threads and counts their "
              "spin-waiting)", file=sys.stderr)
        return 2
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"npylstm bench: the PNG needs matplotlib, which is not installed: {PLOT_FIX}, or pass --no-plot",
                  file=sys.stderr)
            return 2
    if args.sequence:
        from .bench_sequence import run_sequence
        return run_sequence(args)
    if args.cpu_all:
        print("npylstm bench: --cpu-all applies to --sequence only", file=sys.stderr)
        return 2
    return run_cell(args)


def run_cell(args):
    quick = args.quick
    repeats = args.repeats or (3 if quick else 15)
    rounds = args.rounds or (1 if quick else 2)
    sizes = [(N, H) for H in (QUICK_H if quick else SIZES_H) for N in (QUICK_N if quick else SIZES_N)]
    from . import gpu
    cpu, dev, notes = available_backends(gpu.STEP_VERSIONS)
    backends = cpu + dev
    info = machine_info()
    notes += [n for n in [load_note(info)] if n]
    header_lines("one cell step, forward, float32, D = H" + (" [quick subset]" if quick else ""), info, notes)

    # 1. correctness before timing
    failed = set()
    for b in backends:
        errs = [check(b, N, H) for N, H in sizes]
        ok = max(errs) <= MATCH_RTOL
        print(f"check {b:<11} against cell.py (float64): max relative error {max(errs):.1e} "
              f"{'<=' if ok else '>'} {MATCH_RTOL:.0e}: {'matched' if ok else 'MISMATCH, not timed'}")
        if not ok:
            failed.add(b)

    # 2. timing: CPU backends in their own processes, alternated; GPU backends here, interleaved, CUDA events
    times = {}
    samples = {b: [] for b in cpu if b not in failed}
    for _ in range(rounds):
        for b in samples:
            payload = {"backend": b, "sizes": sizes, "repeats": repeats, "clock": args.clock}
            samples[b].append(run_worker("bench:_cell_worker", payload, args.threads))
    for b, runs in samples.items():
        for N, H in sizes:
            times[(b, N, H)] = float(np.median([r[f"{N},{H}"] for r in runs]))
    timed_dev = [b for b in dev if b not in failed]
    if timed_dev:
        measure = gpu_clock()
        for N, H in sizes:
            calls = {b: make_step(b, N, H)[0] for b in timed_dev}
            for b, v in time_interleaved(calls, max(repeats, 20) * 5, measure).items():
                times[(b, N, H)] = float(np.median(v))

    print()
    print(cell_table(sizes, backends, times, quick))
    gpu_ok = [b for b in timed_dev if b != "torch-cuda"]
    cross = crossover(sizes, times, gpu_ok) if gpu_ok else None
    if gpu_ok:
        print("CPU/GPU crossover (npylstm kernels vs NumPy): "
              + (f"the GPU is faster from N·H = {cross}" if cross is not None else "the GPU never wins here"))
    json_path, png_path = output_paths(args.out, "bench", quick)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"quick": quick, "machine": info, "notes": notes,
              "unit": "microseconds per cell step (forward, float32, D = H)",
              "method": {"cpu": f"{args.clock} clock, median of {repeats} batches x {rounds} process(es) per "
                                f"backend, alternated; threads: {args.threads or 'library default'}",
                         "gpu": f"CUDA events around each call, after >= {WARMUP_S} s of warm-up calls, backends "
                                f"interleaved call by call, median"},
              "matched_rtol": MATCH_RTOL, "mismatched": sorted(failed), "crossover_NH": cross,
              "rows": [{"N": N, "H": H, "D": H, **{b: times.get((b, N, H)) for b in backends}} for N, H in sizes]}
    print(f"wrote {write_json(json_path, record)}")
    if not args.no_plot:
        title = ["npylstm: one LSTM cell step, forward, float32" + (" (quick subset)" if quick else "")]
        title += [n for n in notes if n.startswith("GPU rows missing")]
        save_png(cell_figure(sizes, backends, times, cross, title), png_path)
        print(f"wrote {png_path}")
    return 1 if failed else 0
