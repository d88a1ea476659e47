"""`npylstm sine`: one-step forecasting of a noisy sine wave, and running free, five ways.

Data: S = 1000 points of sin(t) over t in [0, 20π] (about 100 points a period), plus Gaussian noise of
σ = 0.1 (--noise; 0 is the clean sine); the first 80 % (in time order) train, the last 20 % test. The
noise is unpredictable, so no model can go under a test MSE of σ² = 0.01 (the noise floor) in
expectation; on one 200-point test sample the floor is the noise's own mean square, printed as the MSE
of the clean sin(t). The last-value baseline ŷ_{t+1} = y_t pays the noise twice (≈ 2σ² plus the
signal's own step). --data FILE.csv [--column NAME] runs the same split, models and scores on a
univariate series of your own (scaled to zero mean and unit variance with the training part's
statistics; every MSE is in the file's units).

(a) stateless: windows of 20 points -> the next point; an LSTM over each window from a zero state,
    its last H through a Linear head (Keras: LSTM(return_sequences=False) + Dense(1)).
(b) stateful: the training series cut into parallel streams fed in chunks (stream_batches); the
    state is carried from chunk to chunk and reset at the start of every epoch; a prediction at
    every step (return_sequences=True).
(b') stacked stateful: (b) with --layers LSTM layers (default 2).
(d) dense: the windows of (a) through y = tanh(x W₁ + b₁) W₂ + b₂, no recurrence.
(c) last value.

--cell gru builds the recurrent models with GRU layers in place of the LSTM (same sizes, seeds, data).

Then every model continues the series on its own for 200 steps from the end of the training data,
each prediction fed back as the next input: the window models slide their window, the stateful ones
carry the state they reached over the whole training series. On the sine this free run is scored
against the clean sin(t) (on --data, against the test part).

Free running is what decides the training schedule. The one-step loss is dominated by the noise
(σ² = 0.01), while a free run 200 steps long is spoilt by a drift of the model's period that adds
~2e-5 to that loss. At a constant learning rate Adam keeps moving the weights along such flat
directions, so the continuation wandered from one epoch to the next (MSE 0.03 and 0.9 ten epochs
apart) while the one-step MSE stayed at the floor. Every model is therefore trained with the learning
rate on half a cosine down to 0 (CosineAdam), which lets the weights settle; the stateful models,
which take 9 optimizer steps an epoch against the stateless model's 25, get more epochs at a lower rate.

--seeds 0-9 runs the whole experiment once per seed and prints the spread.
"""

import argparse
import math
import os
import re
import statistics
import sys
import textwrap
import time

import numpy as np

import npylstm

from . import common
from .series import read_series

SIGMA = 0.1                 # noise standard deviation (the default of --noise)
NOISE_FLOOR = SIGMA ** 2    # the test MSE of a perfect predictor of the clean signal
POINTS, SPAN = 1000, 20 * np.pi
TEST_FRACTION = 0.2
WINDOW = 20
FREE_RUN_STEPS = 200
ON_THE_WAVE_MSE = 0.05      # a free run "stays on the wave" when its MSE vs the clean sine is at most this
SEEDS_MAX = 1000            # --seeds: more runs than anyone waits for (a full run takes ~25 s of CPU)

MODELS = ("stateless", "stateful", "stacked_stateful", "dense")
COLORS = {"stateless": "tab:blue", "stateful": "tab:orange", "stacked_stateful": "tab:green", "dense": "tab:purple",
          "last_value": "0.45"}

# (full, quick) settings; --epochs overrides every epoch count, --layers the stacked model's depth
SETTINGS = {
    "full": dict(hidden=32, epochs=100, batch_size=32, lr=0.01, streams=4, steps=20, stateful_epochs=500,
                 stateful_lr=0.005, layers=2),
    "quick": dict(hidden=16, epochs=8, batch_size=32, lr=0.02, streams=4, steps=20, stateful_epochs=60,
                  stateful_lr=0.01, layers=2),
}


def add_arguments(parser):
    common.add_common_arguments(parser, epochs_help="training epochs of every model (default 100 for the window "
                                                    "models, 500 for the stateful ones; quick: 8 and 60)")
    common.add_cell_argument(parser)
    parser.add_argument("--seeds", type=parse_seeds, default=None, metavar="A-B",
                        help="run once per seed (a range such as 0-9, a single seed, or a comma list such as "
                             "0-3,7) and print the spread; overrides --seed")
    parser.add_argument("--layers", type=stacked_layers, default=None,
                        help="LSTM layers of the stacked stateful model (default 2)")
    parser.add_argument("--noise", type=noise_value, default=None,
                        help=f"standard deviation of the noise added to the sine (default {SIGMA}; 0: the clean sine)")
    parser.add_argument("--data", default=None, metavar="FILE.csv",
                        help="a univariate series of your own from a CSV file, in place of the sine")
    parser.add_argument("--column", default=None,
                        help="--data's column: a header name or a 0-based index (default: the last column)")


def run(args):
    return common.guarded("sine", _run, args)


def noisy_sine(seed, points=POINTS, span=SPAN, sigma=SIGMA):
    """t, clean, noisy : (points,) float32; clean = sin(t), noisy = clean + N(0, σ²)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, span, points)
    clean = np.sin(t)
    noisy = clean + rng.normal(0.0, sigma, points)
    return t.astype(np.float32), clean.astype(np.float32), noisy.astype(np.float32)


class CosineAdam(npylstm.Adam):
    """Adam with the learning rate on half a cosine, from lr at the first step down to 0 at total_steps:

        lr_t = lr · ½ (1 + cos(π t / total_steps))        t = the steps taken before this one

    and 0 after total_steps."""

    def __init__(self, lr, total_steps):
        super().__init__(lr=lr)
        self.peak_lr, self.total_steps = lr, max(1, int(total_steps))

    def step(self, params, grads):
        self.lr = self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(self.t, self.total_steps) / self.total_steps))
        super().step(params, grads)


def clone_stateless(model, return_sequences):
    """A stateless batch-any copy of a trained Sequential (LSTM/GRU layers + Linear head), same weights.

    The stateful model is locked to its training batch size; its copy runs one long sequence
    (batch 1) from a zero state, which is what carrying the state one step at a time computes.
    """
    layers = []
    for layer in model.layers:
        if isinstance(layer, npylstm.Linear):
            W = layer.params["W"]
            new = npylstm.Linear(W.shape[0], W.shape[1], dtype=W.dtype)
            for k, v in layer.params.items():
                new.params[k] = np.array(common.host(v), copy=True)
        else:
            new = common.host_copy(layer)
        layers.append(new)
    return npylstm.Sequential(layers, return_sequences=return_sequences)


def sliding_forecast(predict, context, steps):
    """Free-running forecast of a window model: predict, append, slide the window.

    predict : x (1, W, 1) -> (1, 1); context : (W,) or (W, 1), the last W known points; returns (steps,).
    """
    window = list(np.asarray(context, np.float32).reshape(-1))
    W = len(window)
    out = np.empty(steps, np.float32)
    for k in range(steps):
        x = np.asarray(window[-W:], np.float32)[None, :, None]   # (1, W, 1)
        out[k] = common.host(predict(x))[0, 0]
        window.append(out[k])
    return out


def mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def train_stateful(train_part, s, seed, rng, device="cpu", progress=True, cell="lstm", layers=1):
    """(b), and (b') with layers > 1: a return_sequences stateful model trained on stream_batches of the
    training series, learning rate on a cosine (CosineAdam).

    Returns (model, streams, history, seconds)."""
    H = s["hidden"]
    streams = npylstm.stream_batches(train_part, s["streams"], s["steps"])
    model = npylstm.Sequential([common.recurrent(cell, 1, H, seed=seed + 1, device=device, num_layers=layers,
                                                 stateful=True),
                                npylstm.Linear(H, 1, seed=seed + 101)], return_sequences=True, stateful=True, seed=seed)
    batches = len(streams.x) // s["streams"]
    model.compile(loss="mse", optimizer=CosineAdam(s["stateful_lr"], s["stateful_epochs"] * batches))
    name = "stateful" if layers == 1 else f"stacked x{layers}"
    with common.Timer() as tm:
        hist = common.train(model, streams.x, streams.y, epochs=s["stateful_epochs"], batch_size=s["streams"],
                            rng=rng, shuffle=False, progress=progress, desc=f"sine {name} {cell}")
    return model, streams, hist, tm.seconds


def dense_model(W, H, seed, dtype=np.float32):
    """(d): two npylstm.Linear layers, (W -> H) and (H -> 1), for dense_forward / dense_backward."""
    return npylstm.Linear(W, H, dtype=dtype, seed=seed + 200), npylstm.Linear(H, 1, dtype=dtype, seed=seed + 201)


def dense_forward(mlp, x):
    """x : (N, W, 1) -> (y : (N, 1), Z : (N, H));   Z = tanh(x W₁ + b₁),  y = Z W₂ + b₂."""
    first, head = mlp
    Z = np.tanh(first.forward(x[:, :, 0]))
    return head.forward(Z), Z


def dense_backward(mlp, Z, dy):
    """dy : (N, 1) -> dx : (N, W); adds dW₁, db₁, dW₂, db₂ to the layers' grads (after dense_forward)."""
    # forward: y = Z W₂ + b₂, Z = tanh(A₁)  ->  dZ = dy W₂ᵀ, dA₁ = dZ (1 − Z²)
    return mlp[0].backward(mlp[1].backward(dy) * (1.0 - Z * Z))


def train_dense(X, y, s, seed, rng, progress=True):
    """(d): the windows X : (M, W, 1), targets y : (M, 1) through a one-hidden-layer tanh network built from
    two npylstm.Linear layers, trained as (a) (MSE, Adam on a cosine, shuffled batches). Runs on the CPU.

    Returns (mlp, history) with history as common.train's."""
    H, bs, epochs = s["hidden"], s["batch_size"], s["epochs"]
    mlp = dense_model(X.shape[1], H, seed)
    params = {f"{i}.{k}": v for i, layer in enumerate(mlp) for k, v in layer.params.items()}
    opt = CosineAdam(s["lr"], epochs * math.ceil(len(X) / bs))
    history = {"loss": [], "epoch_seconds": [], "epoch_cpu_seconds": []}
    for _ in common.progress_range(epochs, "sine dense", progress):
        perm = rng.permutation(len(X))
        total, t0, c0 = 0.0, time.perf_counter(), time.process_time()
        for b in range(0, len(X), bs):
            rows = perm[b:b + bs]
            for layer in mlp:
                layer.zero_grad()
            out, Z = dense_forward(mlp, X[rows])
            loss, dout = npylstm.mse_loss(out, y[rows])
            dense_backward(mlp, Z, dout)
            opt.step(params, {f"{i}.{k}": v for i, layer in enumerate(mlp) for k, v in layer.grads.items()})
            total += loss * len(rows)
        history["loss"].append(total / len(X))
        history["epoch_seconds"].append(time.perf_counter() - t0)
        history["epoch_cpu_seconds"].append(time.process_time() - c0)
    return mlp, history


def settings(quick=False, epochs=None, layers=None):
    s = dict(SETTINGS["quick" if quick else "full"])
    if epochs is not None:
        s["epochs"] = s["stateful_epochs"] = epochs
    if layers is not None:
        s["layers"] = layers
    return s


def min_points(s):
    """The shortest series the experiment can split: the training part must fill one stream batch."""
    S = 2
    while S - int(round(S * TEST_FRACTION)) < s["streams"] * s["steps"] + 1 or int(round(S * TEST_FRACTION)) < 1:
        S += 1
    return S


def source(seed, noise, data):
    """t, clean (None for --data), series : (S,) float32, and (mean, std) the models see the series through."""
    if data is None:
        t, clean, series = noisy_sine(seed, sigma=noise)
        return t, clean, series, (0.0, 1.0)
    series = np.asarray(data, np.float32)
    n_train = len(series) - int(round(len(series) * TEST_FRACTION))
    train = series[:n_train].astype(np.float64)
    return np.arange(len(series), dtype=np.float32), None, series, (float(train.mean()), float(train.std()))


@common.one_blas_thread()
def experiment(seed=0, quick=False, epochs=None, device="cpu", progress=True, cell="lstm", layers=None,
               noise=SIGMA, data=None, extras=True):
    """Run (a), (b), (b'), (d), (c) with recurrent layers of kind `cell` ("lstm" / "gru") on the noisy sine,
    or on `data` : (S,) (a series of your own); returns (results dict for the JSON, arrays for the figure).
    extras=False trains only (a) and (b), the two `npylstm compare` reports."""
    models = MODELS if extras else MODELS[:2]
    s = settings(quick, epochs, layers)
    rng = np.random.default_rng(seed + 1)   # shuffling; seed itself made the data
    t, clean, series, (mu, sd) = source(seed, noise, data)
    S = len(series)
    z = ((series - mu) / sd).astype(np.float32)                        # what the models see
    train_part, test_part = npylstm.chronological_split(z, test_fraction=TEST_FRACTION, window=WINDOW)
    n_train = len(train_part)                       # test targets are series[n_train:]
    y_test = series[n_train:]
    H = s["hidden"]
    pred, free, hist, seconds, fits, params = {}, {}, {}, {}, {}, {}

    def unscale(a):
        return np.asarray(a, np.float64) * sd + mu

    # (a) stateless windows
    X_train, y_train = npylstm.make_windows(train_part, WINDOW)     # (M, 20, 1), (M, 1)
    X_test, _ = npylstm.make_windows(test_part, WINDOW)
    stateless = npylstm.Sequential([common.recurrent(cell, 1, H, seed=seed, device=device),
                                    npylstm.Linear(H, 1, seed=seed + 100)], seed=seed)
    steps = s["epochs"] * math.ceil(len(X_train) / s["batch_size"])
    stateless.compile(loss="mse", optimizer=CosineAdam(s["lr"], steps))
    with common.Timer() as tm:
        hist["stateless"] = common.train(stateless, X_train, y_train, epochs=s["epochs"], batch_size=s["batch_size"],
                                         rng=rng, progress=progress, desc=f"sine stateless {cell}")
    seconds["stateless"] = tm.seconds
    pred["stateless"] = common.host(stateless.predict(X_test))[:, 0]              # (S - n_train,)
    free["stateless"] = sliding_forecast(stateless.predict, train_part[-WINDOW:], FREE_RUN_STEPS)
    fits["stateless"] = (stateless, X_train, y_train, s["batch_size"])
    params["stateless"] = stateless.num_parameters()

    # (b) stateful streams, (b') the same stacked
    for name, L in (("stateful", 1), ("stacked_stateful", s["layers"])):
        if name not in models:
            continue
        model, streams, hist[name], seconds[name] = train_stateful(train_part, s, seed, rng, device, progress, cell, L)
        one_step = clone_stateless(model, True).predict(z[None, :-1, None])[0, :, 0]   # one_step[k] predicts z[k + 1]
        pred[name] = one_step[n_train - 1:]
        free[name] = clone_stateless(model, False).generate(train_part[:, None], FREE_RUN_STEPS)[:, 0]
        fits[name] = (model, streams.x, streams.y, s["streams"])
        params[name] = model.num_parameters()

    # (d) dense, on the windows of (a)
    if "dense" in models:
        with common.Timer() as tm:
            mlp, hist["dense"] = train_dense(X_train, y_train, s, seed, np.random.default_rng(seed + 2), progress)
        seconds["dense"] = tm.seconds
        pred["dense"] = dense_forward(mlp, X_test)[0][:, 0]
        free["dense"] = sliding_forecast(lambda x: dense_forward(mlp, x)[0], train_part[-WINDOW:], FREE_RUN_STEPS)
        params["dense"] = sum(layer.num_parameters() for layer in mlp)

    pred = {k: unscale(v) for k, v in pred.items()}
    free = {k: unscale(v) for k, v in free.items()}
    pred["last_value"] = series[n_train - 1:-1]                                   # (c)
    horizon = min(FREE_RUN_STEPS, S - n_train)
    reference = series if clean is None else clean                 # what the free run is held against
    test_mse = {k: mse(v, y_test) for k, v in pred.items()}
    free_mse = {k: mse(free[k][:horizon], reference[n_train:n_train + horizon]) for k in models}
    free_mse["steps"] = horizon
    config = dict(seed=seed, quick=quick, device=device, cell=cell, window=WINDOW, test_fraction=TEST_FRACTION,
                  points=S, train_points=n_train, test_points=S - n_train,
                  stream_points_dropped=int(streams.dropped), **s)
    if clean is None:
        config.update(source="csv", scale_mean=mu, scale_std=sd)
    else:
        config.update(source="sine", span="20*pi", sigma=noise)
        test_mse.update(noise_floor=noise ** 2, clean_signal=mse(clean[n_train:], y_test))  # the perfect predictor
    results = {
        "command": "sine",
        "config": config,
        "test_mse": test_mse,
        ("free_run_mse_vs_test" if clean is None else "free_run_mse_vs_clean"): free_mse,
        "free_run": {k: free[k] for k in models},          # the continuations themselves, in the data's units
        "final_train_loss": {k: h["loss"][-1] for k, h in hist.items()},
        "history": {k: h["loss"] for k, h in hist.items()},
        "epoch_seconds": {k: h["epoch_seconds"] for k, h in hist.items()},
        "epoch_cpu_seconds": {k: h["epoch_cpu_seconds"] for k, h in hist.items()},
        "num_parameters": {k: int(v) for k, v in params.items()},
        "seconds": {f"{k}_train_s": v for k, v in seconds.items()},
    }
    arrays = dict(t=t, clean=clean, series=series, n_train=n_train, pred=pred, free=free,
                  # the trained models and what one more epoch of each would be fed (for compare's timing)
                  fits=fits)
    return results, arrays


# ---------------------------------------------------------------------------------- what is printed and drawn
def free_run_key(results):
    return "free_run_mse_vs_clean" if "free_run_mse_vs_clean" in results else "free_run_mse_vs_test"


def row_names(config):
    cell = config.get("cell", "lstm").upper()
    return {"stateless": f"stateless {cell}, windows of {WINDOW}", "stateful": f"stateful {cell}, streams",
            "stacked_stateful": f"stacked stateful {cell} x{config['layers']}",
            "dense": f"dense MLP, windows of {WINDOW}", "last_value": "last value"}


def mse_format(results, digits):
    """A format for the MSEs: `digits` decimals on the noisy sine, significant digits otherwise (a clean sine's
    one-step MSEs are ~1e-6; a CSV's are in its own units)."""
    noisy = results["config"]["source"] == "sine" and results["test_mse"]["noise_floor"] > 0
    return f".{digits}f" if noisy else ".4g"


def table(results):
    m, c = results["test_mse"], results["config"]
    f = results[free_run_key(results)]
    floor = m.get("noise_floor", 0.0)
    ratio = (lambda v: f"{v / floor:>8.2f}") if floor > 0 else (lambda v: "")
    one, free = mse_format(results, 5), mse_format(results, 4)
    names = row_names(c)
    head = (f"{'one-step forecast, test part':<34}{'test MSE':>10}{'÷ σ²' if floor > 0 else '':>8}"
            f"{'free-run MSE':>14}")
    lines = [common.quick_label(head, c["quick"])]
    lines += [f"{names[k]:<34}{m[k]:>10{one}}{ratio(m[k])}{f[k]:>14{free}}" for k in MODELS]
    lines.append(f"{names['last_value']:<34}{m['last_value']:>10{one}}{ratio(m['last_value'])}")
    if c["source"] == "sine":
        lines.append(f"{'noise floor σ²':<34}{floor:>10{one}}{ratio(floor)}")
        lines.append(f"{'clean sin(t) (this sample)':<34}{m['clean_signal']:>10{one}}{ratio(m['clean_signal'])}")
    against = "the clean sine" if c["source"] == "sine" else f"the test part ({f['steps']} points)"
    lines.append(f"free run: {FREE_RUN_STEPS} steps from the end of the training data, each prediction fed back; "
                 f"MSE vs {against}")
    return "\n".join(lines)


def figure(arrays, results, path):
    plt = common.pyplot()
    t, series, clean, n = arrays["t"], arrays["series"], arrays["clean"], arrays["n_train"]
    m, c, names = results["test_mse"], results["config"], row_names(results["config"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7.5), constrained_layout=True)
    noisy = clean is not None and m["noise_floor"] > 0
    fmt = mse_format(results, 4)
    ax1.plot(t[n:], series[n:], ".", color="0.55", ms=3, label="noisy truth" if noisy else "truth")
    if noisy:
        ax1.plot(t[n:], clean[n:], "-", color="0.2", lw=0.8, label="sin(t)")
    for k in MODELS:
        ax1.plot(t[n:], arrays["pred"][k], "-", color=COLORS[k], lw=1.2, label=f"{names[k]}, MSE {m[k]:{fmt}}")
    what = f"; noise floor σ² = {m['noise_floor']:.3g}, on this sample {m['clean_signal']:.4f}" if noisy else ""
    ax1.set_title(common.quick_label(f"one-step predictions on the test part (last value MSE "
                                     f"{m['last_value']:{fmt}}{what})", c["quick"]))
    ax1.set_xlabel("t" if clean is not None else "row of the series")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    f = results[free_run_key(results)]
    k_steps = len(arrays["free"]["stateless"])
    dt = t[1] - t[0]
    t_free = t[n - 1] + np.arange(1, k_steps + 1) * dt
    ctx = slice(max(0, n - 100), n)
    ax2.plot(t[ctx], series[ctx], ".", color="0.55", ms=3, label="training data (end)")
    ax2.plot(t[n:n + k_steps], series[n:n + k_steps], ".", color="0.8", ms=3, label="test truth")
    if clean is not None:
        ax2.plot(t_free, np.sin(t_free), "-", color="0.2", lw=0.8, label="sin(t)")
    for k in MODELS:
        ax2.plot(t_free, arrays["free"][k], "-", color=COLORS[k], lw=1.2, label=f"{names[k]}, MSE {f[k]:{fmt}}")
    ax2.axvline(t[n - 1], color="0.4", ls=":", lw=1)
    against = "the clean sine" if clean is not None else f"the test part, {f['steps']} points"
    ax2.set_title(f"{k_steps} steps running free from the end of the training data, each prediction fed back "
                  f"(MSE vs {against})")
    ax2.set_xlabel("t" if clean is not None else "row of the series")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return common.save_figure(fig, path)


# ---------------------------------------------------------------------------------- --seeds
def parse_seeds(text):
    """argparse type for --seeds: '0-9', '3', '0-3,7' -> [0, ..., 9], [3], [0, 1, 2, 3, 7] (sorted, no repeats),
    each seed in --seed's range, at most SEEDS_MAX of them."""
    seeds = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        a, b = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, -1)
        if b < a or b > common.SEED_MAX or len(seeds) + b - a + 1 > SEEDS_MAX:
            raise argparse.ArgumentTypeError(
                f"takes a range A-B (A <= B), a seed or a comma list of them (e.g. 0-9, 3, 0-3,7), at most "
                f"{SEEDS_MAX} seeds in [0, {common.SEED_MAX}], got {text!r}")
        seeds.update(range(a, b + 1))
    return sorted(seeds)


def format_seeds(seeds):
    """[0, 1, 2, 3, 7] -> '0-3, 7'."""
    runs, start = [], seeds[0]
    for prev, k in zip(seeds, seeds[1:] + [None]):
        if k is None or k != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = k
    return ", ".join(runs)


def stacked_layers(text):
    """argparse type for --layers: an int >= 2 (one layer is the stateful model itself)."""
    n = common.positive_int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"is the stacked stateful model's depth, an integer >= 2, got {n}")
    return n


def noise_value(text):
    """argparse type for --noise: a finite number >= 0."""
    try:
        sigma = float(text)
    except ValueError:
        sigma = math.nan
    if not (math.isfinite(sigma) and sigma >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return sigma


def spread(runs):
    """{"test_mse" | free-run key: {model: {"median", "worst"}}} over the runs (worst = largest MSE), and
    how many free runs stay on the wave (sine only)."""
    key = free_run_key(runs[0])
    out = {}
    for what, models in (("test_mse", MODELS + ("last_value",)), (key, MODELS)):
        out[what] = {k: {"median": statistics.median(r[what][k] for r in runs),
                         "worst": max(r[what][k] for r in runs)} for k in models}
    if key == "free_run_mse_vs_clean":
        out["on_the_wave"] = {k: sum(r[key][k] <= ON_THE_WAVE_MSE for r in runs) for k in MODELS}
    return out


def seeds_table(summary):
    runs, s = summary["runs"], summary["spread"]
    key = free_run_key(runs[0])
    short = {"stateless": "stateless", "stateful": "stateful", "stacked_stateful": "stacked", "dense": "dense",
             "last_value": "last"}
    one = MODELS + ("last_value",)
    lines = [common.quick_label(f"{'':<8}{'one-step test MSE':<{10 * len(one)}}  "
                                f"free-run {runs[0][key]['steps']} steps, MSE vs "
                                f"{'the clean sine' if key == 'free_run_mse_vs_clean' else 'the test part'}",
                                runs[0]["config"]["quick"]),
             f"{'seed':<8}" + "".join(f"{short[k]:>10}" for k in one) + "  "
             + "".join(f"{short[k]:>10}" for k in MODELS)]

    f_one, f_free = mse_format(runs[0], 5), mse_format(runs[0], 4)

    def row(label, test, free):
        return (f"{label:<8}" + "".join(f"{test[k]:>10{f_one}}" for k in one) + "  "
                + "".join(f"{free[k]:>10{f_free}}" for k in MODELS))
    for r in runs:
        lines.append(row(str(r["config"]["seed"]), r["test_mse"], r[key]))
    for stat in ("median", "worst"):
        lines.append(row(stat, {k: v[stat] for k, v in s["test_mse"].items()},
                         {k: v[stat] for k, v in s[key].items()}))
    if "on_the_wave" in s:
        lines.append(f"free runs on the wave (MSE <= {ON_THE_WAVE_MSE}): "
                     + ", ".join(f"{short[k]} {s['on_the_wave'][k]}/{len(runs)}" for k in MODELS))
    c = runs[0]["config"]
    if c["source"] == "sine":
        lines.append(f"noise floor σ² = {c['sigma'] ** 2:.5f}")
    return "\n".join(lines)


def seeds_figure(summary, path):
    """Left: one-step test MSE per model, one dot per seed, the median as a bar; right: the same for the
    free-running MSE, on a log scale, with the on-the-wave line (sine)."""
    plt = common.pyplot()
    runs = summary["runs"]
    key = free_run_key(runs[0])
    c = runs[0]["config"]
    names = row_names(c)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for ax, what, models in ((axes[0], "test_mse", MODELS + ("last_value",)), (axes[1], key, MODELS)):
        for i, k in enumerate(models):
            v = np.array([r[what][k] for r in runs])
            jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1)
            ax.plot(i + jitter, v, "o", color=COLORS[k], ms=5, alpha=0.8)
            ax.plot([i - 0.3, i + 0.3], [np.median(v)] * 2, "-", color="0.1", lw=2)
        ax.set_xticks(range(len(models)), [textwrap.fill(names[k], 16) for k in models], fontsize=8)
    if c["source"] == "sine" and c["sigma"] > 0:
        axes[0].axhline(c["sigma"] ** 2, color="0.3", ls="--", lw=1, label=f"noise floor σ² = {c['sigma'] ** 2:.3g}")
        axes[0].legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("one-step test MSE")
    axes[0].set_title(f"one-step forecast, {len(runs)} seeds (bar: median)")
    axes[1].set_yscale("log")
    if key == "free_run_mse_vs_clean":
        axes[1].axhline(ON_THE_WAVE_MSE, color="0.3", ls="--", lw=1, label=f"on the wave: MSE <= {ON_THE_WAVE_MSE}")
        axes[1].legend(loc="upper left", fontsize=8)
    axes[1].set_ylabel("free-running MSE")
    axes[1].set_title(f"{runs[0][key]['steps']} steps running free, {len(runs)} seeds")
    fig.suptitle(common.quick_label(f"npylstm sine, seeds {format_seeds(summary['seeds'])}", c["quick"]))
    return common.save_figure(fig, path)


# ---------------------------------------------------------------------------------- the command
def output_stem(args):
    """sine[_gru][_noise<σ> | _<data file>][_seeds] (common.output_path adds _quick): each kind of run keeps
    its own files."""
    stem = "sine" if args.cell == "lstm" else f"sine_{args.cell}"    # the LSTM keeps its file names
    if args.data is not None:
        stem += "_" + re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(args.data))[0])
    elif args.noise is not None and args.noise != SIGMA:
        stem += f"_noise{args.noise:g}"
    if args.seeds is not None:
        stem += "_seeds"
    return stem


def load_data(args, s):
    """(S,) float64 from --data, checked to be long enough for the split and not constant; None for the sine."""
    if args.data is None:
        if args.column is not None:
            raise common.CommandError("--column needs --data FILE.csv")
        return None
    if args.noise is not None:
        raise common.CommandError("--noise applies to the sine only, not to --data")
    values, name = read_series(args.data, args.column)
    need = min_points(s)
    if len(values) < need:
        raise common.CommandError(f"--data {args.data}: column {name!r} has {len(values)} points; the experiment "
                                  f"needs at least {need} (window {WINDOW}, {s['streams']} streams of "
                                  f"{s['steps']} steps in the first {1 - TEST_FRACTION:.0%})")
    n_train = len(values) - int(round(len(values) * TEST_FRACTION))
    if np.ptp(values[:n_train]) == 0:
        raise common.CommandError(f"--data {args.data}: column {name!r} is constant over its training part")
    return values


def check_args(args):
    """Every command-line check, before anything runs; returns (seeds, data)."""
    common.require_device(args.device)
    common.require_cell(args.cell, args.device)
    seeds = args.seeds if args.seeds is not None else [args.seed]
    data = load_data(args, settings(args.quick, args.epochs, args.layers))
    return seeds, data


def _run(args):
    seeds, data = check_args(args)
    out = common.out_dir(args)
    stem = output_stem(args)
    noise = SIGMA if args.noise is None else args.noise
    runs = []
    with common.Timer() as total:
        for seed in seeds:
            with common.Timer() as tm:
                results, arrays = experiment(seed=seed, quick=args.quick, epochs=args.epochs, device=args.device,
                                             progress=args.progress, cell=args.cell, layers=args.layers, noise=noise,
                                             data=data)
            results["seconds"]["total_s"] = tm.seconds
            if args.data is not None:
                results["config"].update(data=args.data, column=args.column)
            runs.append(results)
            if args.seeds is not None and args.progress:
                print(f"seed {seed}: {tm.seconds:.1f} s", file=sys.stderr)
    if args.seeds is None:
        content, draw, text = results, (lambda path: figure(arrays, results, path)), table(results)
    else:
        content = {"command": "sine --seeds", "quick": args.quick, "seeds": seeds, "spread": spread(runs),
                   "runs": runs, "seconds": total.seconds}
        draw, text = (lambda path: seeds_figure(content, path)), seeds_table(content)
    js = common.write_json(common.output_path(out, stem, "json", args.quick), content)
    written = [draw(common.output_path(out, stem, "png", args.quick))] if args.plot else []
    print(text)
    print(f"wrote {' and '.join(written + [js])} ({total.seconds:.1f} s)")
    return 0
