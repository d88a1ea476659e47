"""CPU benchmark: npylstm (NumPy) vs PyTorch's nn.LSTM, float32, microseconds per time step.

    python3 benchmarks/bench_cpu.py [--threads 2] [--rounds 5] [--repeats 15] [--json bench_cpu.json]
    python3 benchmarks/bench_cpu.py --split     # forward and backward apart, and npylstm's products alone

For each (T, N, D, H) it first checks correctness (npylstm loaded from the nn.LSTM's weights gives the
same outputs and gradients, float32), then times forward and forward+backward of a one-layer LSTM
with the same thread count on both sides. Each side runs in its own process, alternating
A B A B (design.md §5: in one process OpenBLAS's and PyTorch's OpenMP worker threads keep spinning
after a call and fight over the cores). Reported: medians over every repeat of every round, per time
step, and the ratio npylstm / torch (below 1: NumPy is faster) as the median over rounds of each round's
ratio, with its min-max: on a shared machine the spread says how far one run can be trusted.

Both sides do the same work: a layer call with validation and layout (npylstm `LSTM.forward`, torch
`nn.LSTM.__call__`), and for forward+backward the gradients of x, h0, c0 and every parameter
(torch: x and the states require grad). Forward alone: torch under no_grad, npylstm keeps its cache
(it cannot tell that no backward will follow).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

CONFIGS = [(50, 32, 1, 64), (100, 1, 64, 64), (100, 32, 128, 128), (100, 64, 256, 256), (100, 128, 512, 512)]
TARGET_ALL, TARGET_BIG = 1.5, 1.1   # the project's targets for the forward+backward ratio npylstm / torch
CHECK_RTOL = 1e-4   # float32: npylstm vs torch on the same weights (see tests/test_interop.py)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def problem(T, N, D, H, seed=0):
    """Weights in PyTorch's layout and inputs, float32, from one seed: both sides build from these."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    f32 = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)
    sd = {"weight_ih_l0": k * f32(4 * H, D), "weight_hh_l0": k * f32(4 * H, H),
          "bias_ih_l0": k * f32(4 * H), "bias_hh_l0": k * f32(4 * H)}
    return sd, f32(T, N, D), f32(1, N, H), f32(1, N, H), f32(T, N, H)


# ---------------------------------------------------------------------- the two sides
def make_numpy(T, N, D, H):
    """(forward, forward_backward, split) closures for npylstm (split: see --split)."""
    from npylstm import from_torch
    sd, x, h0, c0, dy = problem(T, N, D, H)
    lstm = from_torch(sd, dtype=np.float32)

    def forward():
        return lstm(x, (h0, c0))

    def forward_backward():
        y, _ = lstm(x, (h0, c0))
        return lstm.backward(dy)

    products = None

    def split():
        nonlocal products
        products = products or products_alone(T, N, D, H)   # built on the first split call only
        t0 = time.perf_counter()
        lstm(x, (h0, c0))
        t1 = time.perf_counter()
        lstm.backward(dy)
        t2 = time.perf_counter()
        return {"fwd": t1 - t0, "bwd": t2 - t1, **products()}

    return forward, forward_backward, split


def products_alone(T, N, D, H):
    """A closure timing only the matrix products npylstm's sequence makes at this size (same shapes, same
    calls, random operands): the floor under its forward and backward with this BLAS, {"fwd_products": s,
    "bwd_products": s}."""
    from npylstm.sequence import folds_input
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
    K = H + D + 1
    fold = folds_input(D, H)                                # sequence_forward's choice
    Z, dA, W1, W_hT, W_xT = r(T, N, K), r(T, N, 4 * H), r(K, 4 * H), r(4 * H, H), r(4 * H, D)
    A, dH, dW = np.empty((T, N, 4 * H), np.float32), np.empty((N, H), np.float32), np.empty((K, 4 * H), np.float32)

    def run():
        t0 = time.perf_counter()
        if not fold:                                        # the input product of all steps, then H_prev W_h
            np.dot(Z.reshape(T * N, K)[:, H:], W1[H:], out=A.reshape(T * N, 4 * H))
        for t in range(T):
            np.dot(Z[t] if fold else Z[t, :, :H], W1 if fold else W1[:H], A[t])
        t1 = time.perf_counter()
        for t in range(T - 1, -1, -1):
            np.dot(dA[t], W_hT, dH)                         # dH_prev = dA W_hᵀ
        np.dot(Z.reshape(T * N, K).T, dA.reshape(T * N, 4 * H), out=dW)   # [dW_h ; dW_x ; db] = Zᵀ dA
        dA.reshape(T * N, 4 * H) @ W_xT                     # dx = dA W_xᵀ
        return {"fwd_products": t1 - t0, "bwd_products": time.perf_counter() - t1}

    return run


def torch_reference(T, N, D, H):
    """nn.LSTM loaded with problem()'s weights, its inputs as tensors (x and states require grad), and dy."""
    import torch
    sd, x, h0, c0, dy = problem(T, N, D, H)
    ref = torch.nn.LSTM(D, H)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    tx, th0, tc0 = (torch.from_numpy(a).requires_grad_() for a in (x, h0, c0))
    return ref, tx, th0, tc0, torch.from_numpy(dy)


def make_torch(T, N, D, H):
    import torch
    ref, tx, th0, tc0, tdy = torch_reference(T, N, D, H)

    def forward():
        with torch.no_grad():
            return ref(tx, (th0, tc0))

    def forward_backward():
        y, _ = ref(tx, (th0, tc0))
        y.backward(tdy)

    def split():
        t0 = time.perf_counter()
        y, _ = ref(tx, (th0, tc0))                          # forward with autograd on (what f+b runs)
        t1 = time.perf_counter()
        y.backward(tdy)
        return {"fwd": t1 - t0, "bwd": time.perf_counter() - t1}

    return forward, forward_backward, split


def check(T, N, D, H):
    """npylstm vs torch on the same weights, float32: max relative error over y, h_n, c_n and every gradient."""
    from npylstm import from_torch
    sd, x, h0, c0, dy = problem(T, N, D, H)
    ref, tx, th0, tc0, tdy = torch_reference(T, N, D, H)
    ty, (thn, tcn) = ref(tx, (th0, tc0))
    ty.backward(tdy)
    g = {n: p.grad.numpy() for n, p in ref.named_parameters()}
    theirs = [ty, thn, tcn, tx.grad, th0.grad, tc0.grad]
    theirs = [t.detach().numpy() for t in theirs] + [g["weight_ih_l0"].T, g["weight_hh_l0"].T, g["bias_ih_l0"]]
    lstm = from_torch(sd, dtype=np.float32)
    y, (h_n, c_n) = lstm(x, (h0, c0))
    dx, (dh0, dc0) = lstm.backward(dy)
    mine = [y, h_n, c_n, dx, dh0, dc0, lstm.grads["W_x_l0"], lstm.grads["W_h_l0"], lstm.grads["b_l0"]]
    errs = [float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-30)) for a, b in zip(mine, theirs)]
    return max(errs)


def worker(side, T, N, D, H, threads, repeats, warmup, clock="wall", split=False):
    """Runs in its own process: times one side, prints {"fwd": [s, ...], "fwdbwd": [s, ...]} (per call);
    with split, the forward and the backward of each forward+backward call instead, and for numpy the
    products alone ({"fwd": [...], "bwd": [...], "fwd_products": [...], "bwd_products": [...]}, wall clock).

    clock "wall" is time.perf_counter; "cpu" is time.process_time, the CPU time of this process: on a
    machine shared with other work it leaves out the time spent waiting for a core (meaningful with
    threads=1 only: with more, it adds up the threads and counts their spin-waiting).
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:                                 # then NumPy's BLAS keeps its default (all cores)
        if threads != os.cpu_count():
            raise SystemExit("bench_cpu: --threads other than all cores needs threadpoolctl (pip install threadpoolctl)")
    if side == "torch":
        import torch
        torch.set_num_threads(threads)
    forward, forward_backward, split_call = (make_numpy if side == "numpy" else make_torch)(T, N, D, H)
    out = {}
    if split:
        for _ in range(warmup):
            split_call()
        for _ in range(repeats):
            for k, v in split_call().items():
                out.setdefault(k, []).append(v)
        print(json.dumps(out))
        return
    for name, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = now()
            fn()
            times.append(now() - t0)
        out[name] = times
    print(json.dumps(out))


def run_worker(side, cfg, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--config", ",".join(map(str, cfg)),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--clock", args.clock] + ["--split"] * args.split
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{side} worker failed for {cfg}:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def time_config(cfg, args):
    """One benchmark row: `args.rounds` rounds, each a numpy worker then a torch worker, back to back.

    Times: medians over every repeat of every round, per time step, as `{side}_{what}_us`. Ratios, for
    what both sides time: the median over rounds of (numpy's median / torch's median in that round), as
    `ratio_{what}`, and each round's as `ratio_{what}_rounds`. A round's two workers run seconds apart, so
    the per-round ratio cancels the machine's slow drifts (other tenants on a shared VM), and the spread
    of the per-round ratios shows how far one run can be trusted.
    """
    T = cfg[0]
    reps = repeats_for(cfg, args.repeats)
    samples, ratios = {}, {}
    for _ in range(args.rounds):
        got = {side: run_worker(side, cfg, argparse.Namespace(**{**vars(args), "repeats": reps}))
               for side in ("numpy", "torch")}
        for k in got["torch"]:                          # what both sides time
            ratios.setdefault(k, []).append(float(np.median(got["numpy"][k]) / np.median(got["torch"][k])))
        for side, times in got.items():
            for k, v in times.items():
                samples.setdefault(f"{side}_{k}_us", []).extend(v)
    row = dict(T=cfg[0], N=cfg[1], D=cfg[2], H=cfg[3], samples_per_side=len(samples["numpy_fwd_us"]))
    row.update({name: float(np.median(v)) / T * 1e6 for name, v in samples.items()})
    row.update({f"ratio_{k}": float(np.median(v)) for k, v in ratios.items()})
    row.update({f"ratio_{k}_rounds": v for k, v in ratios.items()})
    return row


def repeats_for(cfg, base):
    """Fewer repeats where one call is long (the largest configs), so a run stays a few minutes."""
    T, N, D, H = cfg
    work = T * N * H * (D + H)
    return max(5, min(base, int(base * 2e7 / work))) if work > 2e7 else base


def machine_info(threads):
    import torch
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = lambda: [{"internal_api": "unknown (pip install threadpoolctl)", "version": ""}]
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": os.getloadavg(),
            "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__,
            "blas": [{k: v for k, v in d.items() if k != "filepath"} for d in threadpool_info()],
            "torch_parallel": torch.__config__.parallel_info().splitlines()[:4],
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                                   "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads on both sides (default: all cores)")
    p.add_argument("--rounds", type=int, default=5, help="A B alternations per configuration (default 5)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per worker (default 15; fewer for big configs)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--configs", default=None, help="T,N,D,H;T,N,D,H;... (default: the five benchmark rows)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: perf_counter (default); cpu: process CPU time, for a loaded machine, with --threads 1")
    p.add_argument("--split", action="store_true",
                   help="time the forward and the backward of forward+backward apart, and npylstm's products alone")
    p.add_argument("--json", default="bench_cpu.json", help="where to write the results (default bench_cpu.json)")
    p.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from npylstm.files import atomic_write
    if args.worker:
        worker(args.worker, *map(int, args.config.split(",")), args.threads, args.repeats, args.warmup, args.clock,
               args.split)
        return 0
    if args.split and args.clock == "cpu":
        p.error("--split times with the wall clock")
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1 (CPU time adds up the threads and counts their spin-waiting)")

    configs = CONFIGS if args.configs is None else [tuple(map(int, c.split(","))) for c in args.configs.split(";")]
    info = machine_info(args.threads)
    print(f"# {info['cpu']}, {info['cores']} cores, threads={args.threads}, numpy {info['numpy']}, "
          f"torch {info['torch']}, BLAS: " + ", ".join(f"{b['internal_api']} {b['version']} {b.get('architecture', '')}"
                                                       for b in info["blas"]))
    print("# correctness first (float32, same weights, y, h_n, c_n and every gradient):")
    for cfg in configs:
        err = check(*cfg)
        ok = err < CHECK_RTOL
        print(f"#   T,N,D,H = {','.join(map(str, cfg)):<16} max rel error {err:.1e}  {'matched' if ok else 'MISMATCH'}")
        if not ok:
            print("npylstm and torch disagree: not timing")
            return 1
    print(f"# times: microseconds per time step ({args.clock} clock), median of {args.rounds} rounds x repeats, "
          f"each side in its own process, alternating; ratio: median over rounds of the round's numpy / torch "
          f"(its min-max after the last ratio)")
    if args.split:
        print("# split: the forward (torch: with autograd on) and the backward of each forward+backward call; "
              "'products': npylstm's matrix products alone, same shapes and calls")
    phases = {"fwd": "fwd", "bwd": "bwd"} if args.split else {"fwd": "fwd", "fwdbwd": "f+b"}
    last = list(phases)[-1]

    def cells(k, row=None):
        """One phase's columns: numpy, [numpy's products alone,] torch, ratio (headers when row is None)."""
        if row is None:
            return f"{'numpy ' + phases[k]:>10} " + "products " * args.split + f"{'torch ' + phases[k]:>10} {'ratio':>6}"
        products = f"{row[f'numpy_{k}_products_us']:>8.1f} " if args.split else ""
        return f"{row[f'numpy_{k}_us']:>10.1f} {products}{row[f'torch_{k}_us']:>10.1f} {row[f'ratio_{k}']:>6.2f}"

    head = f"{'T':>4} {'N':>4} {'D':>4} {'H':>4} | " + " | ".join(map(cells, phases)) + f" {'rounds':>11}"
    print(head)
    print("-" * len(head))
    rows = []
    for cfg in configs:
        row = time_config(cfg, args)
        rows.append(row)
        spread = f"{min(row[f'ratio_{last}_rounds']):.2f}-{max(row[f'ratio_{last}_rounds']):.2f}"
        print(f"{cfg[0]:>4} {cfg[1]:>4} {cfg[2]:>4} {cfg[3]:>4} | " + " | ".join(cells(k, row) for k in phases)
              + f" {spread:>11}", flush=True)
    if configs == CONFIGS and not args.split:
        worst = max(r["ratio_fwdbwd"] for r in rows)
        big = max(r["ratio_fwdbwd"] for r in rows[-2:])
        print(f"# targets (forward+backward ratio): <= {TARGET_ALL} on every row: worst {worst:.2f} "
              f"{'met' if worst <= TARGET_ALL else 'NOT met'}; <= {TARGET_BIG} on the two largest: worst {big:.2f} "
              f"{'met' if big <= TARGET_BIG else 'NOT met'}")
    info["load_average_at_end"] = os.getloadavg()
    print(f"# load average (1, 5, 15 min): {info['load_average_at_start'][0]:.1f} at start, "
          f"{info['load_average_at_end'][0]:.1f} at end, on {info['cores']} cores (ratios assume a quiet machine)")
    record = {"machine": info, "rounds": args.rounds, "clock": args.clock, "split": args.split, "results": rows}
    atomic_write(args.json, lambda f: f.write(json.dumps(record, indent=2).encode()))
    print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
