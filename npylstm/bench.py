"""`npylstm bench`: the time of one LSTM cell step (forward), NumPy on the CPU against the GPU kernels and PyTorch.

For each N in {1, 8, 64, 256} and H in {128, 512, 1024} (input size D = H, float32):

1. correctness first: every backend's H and C are compared with cell.py in float64 on the same inputs, and
   the line says it matched (a backend that does not match is not timed, and the command exits 1);
2. then timing, medians: NumPy (cell.step_forward) and PyTorch's LSTMCell on the CPU, each in its own
   process, alternating A B A B (in one process the two libraries' worker threads fight over the cores,
   design.md §5), perf_counter around batches of calls; on the GPU, npylstm.gpu.step_forward for every
   kernel version that runs a lone step (gpu.STEP_VERSIONS) and PyTorch's LSTMCell on CUDA, timed with CUDA events after warm-up
   (cupyx.profiler.benchmark).

Output: a fixed-width table (µs per step, and each backend's speed-up over NumPy), bench.json with the
machine (CPU, GPU, driver, library versions), and bench.png (time against N·H, the CPU/GPU crossover
marked). Without a usable GPU the CPU rows are printed and the reason the GPU rows are missing is said.
`--quick` runs a small subset (N in {1, 8}, H = 128) for tests.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import cell
from .files import atomic_write

SIZES_N = (1, 8, 64, 256)
SIZES_H = (128, 512, 1024)
QUICK_N, QUICK_H = (1, 8), (128,)
MATCH_RTOL = 1e-4      # float32 step against float64 cell.py: a few ulp of each of ~2H-term dot products
MIN_BATCH_S = 2e-3     # CPU: calls per timed batch chosen so a batch lasts at least this long
CPU_BACKENDS = ("numpy", "torch-cpu")


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="a small subset (N in {1, 8}, H = 128), for tests")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per backend (default 15, quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="CPU processes per backend, alternated (default 2, quick 1)")
    p.add_argument("--out", default="out/bench", help="folder for bench.json and bench.png (default out/bench)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for NumPy's BLAS and PyTorch in the timing processes (default: theirs)")


def _inputs(N, H, seed=0):
    """float32 x, h, c (N, H), W_x, W_h (H, 4H), b (4H,): PyTorch's init scale, non-zero everywhere."""
    rng = np.random.default_rng(seed + 1000 * N + H)
    k = 1 / np.sqrt(H)
    return [rng.normal(size=(N, H)).astype(np.float32), rng.uniform(-1, 1, (N, H)).astype(np.float32),
            rng.normal(size=(N, H)).astype(np.float32), rng.uniform(-k, k, (H, 4 * H)).astype(np.float32),
            rng.uniform(-k, k, (H, 4 * H)).astype(np.float32), rng.uniform(-k, k, 4 * H).astype(np.float32)]


def _relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300))


# ------------------------------------------------------------------------------------------ backends
def _torch_cell(torch, W_x, W_h, b, device):
    H = W_h.shape[0]
    cell_ = torch.nn.LSTMCell(W_x.shape[0], H).to(device)
    with torch.no_grad():  # npylstm -> PyTorch: weight_ih = W_xᵀ, weight_hh = W_hᵀ, bias_ih = b, bias_hh = 0
        cell_.weight_ih.copy_(torch.from_numpy(W_x.T.copy()))
        cell_.weight_hh.copy_(torch.from_numpy(W_h.T.copy()))
        cell_.bias_ih.copy_(torch.from_numpy(b))
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
    return max(_relerr(H_got, H_ref), _relerr(C_got, C_ref))


def time_cpu(backend, N, H, repeats):
    """Median µs per call: batches of calls long enough for perf_counter, after a warm-up."""
    step, _ = make_step(backend, N, H)
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    step()
    number = max(1, int(MIN_BATCH_S / max(time.perf_counter() - t0, 1e-9)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            step()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times)) * 1e6


def time_gpu(backend, N, H, repeats):
    """Median µs per call from CUDA events around each call, after warm-up (cupyx.profiler.benchmark)."""
    from cupyx.profiler import benchmark
    step, _ = make_step(backend, N, H)
    r = benchmark(step, n_repeat=max(repeats, 20) * 5, n_warmup=10)
    return float(np.median(r.gpu_times[0])) * 1e6


def _worker(argv):
    """In its own process: time one CPU backend over the sizes; print {"N,H": µs} as JSON."""
    backend, sizes, repeats = argv[0], json.loads(argv[1]), int(argv[2])
    print(json.dumps({f"{N},{H}": time_cpu(backend, N, H, repeats) for N, H in sizes}))
    return 0


def _run_worker(backend, sizes, repeats, threads=None):
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; from npylstm.bench import _worker; sys.exit(_worker(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, backend, json.dumps(sizes), str(repeats)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"npylstm bench: the {backend} timing process failed:\n{r.stderr}")
    return {tuple(map(int, k.split(","))): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


# ------------------------------------------------------------------------------------------ environment
def machine_info():
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        import torch
        info["torch"] = torch.__version__
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


def available_backends():
    """(cpu backends, gpu backends, notes on what is missing and why)."""
    from . import gpu
    cpu, dev, notes = ["numpy"], [], []
    try:
        import torch
        cpu.append("torch-cpu")
    except ImportError:
        torch = None
        notes.append("PyTorch rows missing: torch is not installed")
    try:
        gpu.require_cuda("npylstm bench")
        dev += [f"kernel{v}" for v in gpu.STEP_VERSIONS]
        if torch is not None:
            if torch.cuda.is_available():
                dev.append("torch-cuda")
            else:
                notes.append("torch-cuda row missing: this PyTorch build has no CUDA")
    except RuntimeError as e:
        notes.append(f"GPU rows missing: {e}")
    return cpu, dev, notes


# ------------------------------------------------------------------------------------------ report
def format_table(sizes, backends, times):
    """Fixed width: µs per step, and in brackets each backend's speed-up over NumPy (>1: faster)."""
    head = f"{'N':>5} {'H':>5} {'N*H':>8} " + " ".join(f"{b:>19}" for b in backends)
    lines = [head, "-" * len(head)]
    for N, H in sizes:
        cells = []
        base = times.get(("numpy", N, H))
        for b in backends:
            t = times.get((b, N, H))
            if t is None:
                cells.append(f"{'-':>19}")
            else:
                ratio = f"({base / t:6.2f}x)" if base else " " * 9
                cells.append(f"{t:9.1f} {ratio}")
        lines.append(f"{N:>5} {H:>5} {N * H:>8} " + " ".join(cells))
    return "\n".join(lines)


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


def plot(path, sizes, backends, times, cross, note):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in backends:
        pts = sorted((N * H, times[(b, N, H)]) for N, H in sizes if (b, N, H) in times)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=b)
    if cross is not None:
        ax.axvline(cross, color="grey", linestyle="--")
        ax.annotate(f"GPU faster from N·H = {cross}", (cross, ax.get_ylim()[1]), rotation=90, va="top", ha="right",
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N·H (batch × hidden size; input size = H)")
    ax.set_ylabel("µs per cell step (forward, float32)")
    ax.set_title("npylstm: one LSTM cell step" + (f"\n{note}" if note else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def run(args):
    quick = args.quick
    repeats = args.repeats or (3 if quick else 15)
    rounds = args.rounds or (1 if quick else 2)
    sizes = [(N, H) for H in (QUICK_H if quick else SIZES_H) for N in (QUICK_N if quick else SIZES_N)]
    cpu, dev, notes = available_backends()
    backends = cpu + dev
    info = machine_info()
    print(f"npylstm bench: one cell step, forward, float32, D = H; CPU: {info['cpu']} ({info['cpu_count']} cores)"
          + (f"; GPU: {info['gpu']}" if "gpu" in info else ""))
    if info["load_average_1min"] and info["load_average_1min"] > info["cpu_count"]:
        notes.append(f"warning: load average {info['load_average_1min']:.1f} on {info['cpu_count']} cores: "
                     f"other processes compete, CPU times are not trustworthy")
    for n in notes:
        print(n)

    # 1. correctness before timing
    failed = set()
    for b in backends:
        errs = [check(b, N, H) for N, H in sizes]
        ok = max(errs) <= MATCH_RTOL
        print(f"check {b:<11} against cell.py (float64): max relative error {max(errs):.1e} "
              f"{'<=' if ok else '>'} {MATCH_RTOL:.0e}: {'matched' if ok else 'MISMATCH, not timed'}")
        if not ok:
            failed.add(b)

    # 2. timing: CPU backends in their own processes, alternated; GPU backends here, with CUDA events
    times = {}
    samples = {b: [] for b in cpu if b not in failed}
    for _ in range(rounds):
        for b in samples:
            samples[b].append(_run_worker(b, sizes, repeats, args.threads))
    for b, runs in samples.items():
        for N, H in sizes:
            times[(b, N, H)] = float(np.median([r[(N, H)] for r in runs]))
    for b in dev:
        if b not in failed:
            for N, H in sizes:
                times[(b, N, H)] = time_gpu(b, N, H, repeats)

    print()
    print(format_table(sizes, backends, times))
    gpu_ok = [b for b in dev if b not in failed and b != "torch-cuda"]
    cross = crossover(sizes, times, gpu_ok) if gpu_ok else None
    if gpu_ok:
        print("CPU/GPU crossover (npylstm kernels vs NumPy): "
              + (f"the GPU is faster from N·H = {cross}" if cross is not None else "the GPU never wins here"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "notes": notes, "unit": "microseconds per cell step (forward, float32, D = H)",
              "method": {"cpu": f"perf_counter, median of {repeats} batches x {rounds} process(es) per backend, "
                                f"alternated; threads: {args.threads or 'library default'}",
                         "gpu": "cupyx.profiler.benchmark, CUDA events, median"},
              "matched_rtol": MATCH_RTOL, "mismatched": sorted(failed), "crossover_NH": cross,
              "rows": [{"N": N, "H": H, "D": H, **{b: times.get((b, N, H)) for b in backends}} for N, H in sizes]}
    atomic_write(out / "bench.json", lambda f: f.write(json.dumps(record, indent=2).encode()))
    print(f"wrote {out / 'bench.json'}")
    if not args.no_plot:
        missing = "no GPU rows: " + next(n for n in notes if n.startswith("GPU")).split(": ", 2)[-1][:70] \
            if not dev else ""
        plot(out / "bench.png", sizes, backends, times, cross, missing)
        print(f"wrote {out / 'bench.png'}")
    return 1 if failed else 0
