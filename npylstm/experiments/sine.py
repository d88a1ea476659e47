"""`npylstm sine`: one-step forecasting of a noisy sine wave, three ways.

Data: S = 1000 points of sin(t) over t in [0, 20π], plus Gaussian noise of σ = 0.1; the first 80 % (in
time order) train, the last 20 % test. The noise is unpredictable, so no model can go under a test
MSE of σ² = 0.01 (the noise floor) in expectation; on one 200-point test sample the floor is the
noise's own mean square, printed as the MSE of the clean sin(t). The last-value baseline
ŷ_{t+1} = y_t pays the noise twice (≈ 2σ² plus the signal's own step).

(a) stateless: windows of 20 points -> the next point; an LSTM over each window from a zero state,
    its last H through a Linear head (Keras: LSTM(return_sequences=False) + Dense(1)).
(b) stateful: the training series cut into parallel streams fed in chunks (stream_batches); the
    state is carried from chunk to chunk and reset at the start of every epoch; a prediction at
    every step (return_sequences=True).
(c) last value.

--cell gru builds the same models with a GRU layer in place of the LSTM (same sizes, seeds, data).

Then both models continue the series on their own for 200 steps from the end of the training data,
each prediction fed back as the next input; the figure shows truth against the one-step predictions
on the test part, and the continuations.
"""

import numpy as np

import npylstm

from . import common

SIGMA = 0.1                 # noise standard deviation
NOISE_FLOOR = SIGMA ** 2    # the test MSE of a perfect predictor of the clean signal
POINTS, SPAN = 1000, 20 * np.pi
TEST_FRACTION = 0.2
WINDOW = 20
FREE_RUN_STEPS = 200

# (full, quick) settings; --epochs overrides both epoch counts
SETTINGS = {
    "full": dict(hidden=32, epochs=100, batch_size=32, lr=0.01, streams=4, steps=20, stateful_epochs=150),
    "quick": dict(hidden=16, epochs=8, batch_size=32, lr=0.02, streams=4, steps=20, stateful_epochs=12),
}


def add_arguments(parser):
    common.add_common_arguments(parser, epochs_help="training epochs of both models (default 100 stateless, "
                                                    "150 stateful; quick: 8 and 12)")
    common.add_cell_argument(parser)


def run(args):
    return common.guarded("sine", _run, args)


def noisy_sine(seed, points=POINTS, span=SPAN, sigma=SIGMA):
    """t, clean, noisy : (points,) float32; clean = sin(t), noisy = clean + N(0, σ²)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, span, points)
    clean = np.sin(t)
    noisy = clean + rng.normal(0.0, sigma, points)
    return t.astype(np.float32), clean.astype(np.float32), noisy.astype(np.float32)


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


def sliding_forecast(model, context, steps):
    """Free-running forecast of a windowed model: predict, append, slide the window.

    context : (W, 1), the last W known points; returns (steps,).
    """
    window = list(np.asarray(context, np.float32)[:, 0])
    W = len(window)
    out = np.empty(steps, np.float32)
    for k in range(steps):
        x = np.asarray(window[-W:], np.float32)[None, :, None]   # (1, W, 1)
        out[k] = common.host(model.predict(x))[0, 0]
        window.append(out[k])
    return out


def mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def train_stateful(train_part, s, seed, rng, device="cpu", progress=True, cell="lstm"):
    """(b): a return_sequences stateful model trained on stream_batches of the training series.

    Returns (model, streams, history, seconds)."""
    H = s["hidden"]
    streams = npylstm.stream_batches(train_part, s["streams"], s["steps"])
    model = npylstm.Sequential([common.recurrent(cell, 1, H, seed=seed + 1, device=device, stateful=True),
                                npylstm.Linear(H, 1, seed=seed + 101)], return_sequences=True, stateful=True, seed=seed)
    model.compile(loss="mse", optimizer=npylstm.Adam(lr=s["lr"]))
    with common.Timer() as tm:
        hist = common.train(model, streams.x, streams.y, epochs=s["stateful_epochs"], batch_size=s["streams"],
                            rng=rng, shuffle=False, progress=progress, desc=f"sine stateful {cell}")
    return model, streams, hist, tm.seconds


def settings(quick=False, epochs=None):
    s = dict(SETTINGS["quick" if quick else "full"])
    if epochs is not None:
        s["epochs"] = s["stateful_epochs"] = epochs
    return s


@common.one_blas_thread()
def experiment(seed=0, quick=False, epochs=None, device="cpu", progress=True, cell="lstm"):
    """Run (a), (b), (c) with recurrent layers of kind `cell` ("lstm" / "gru"); returns (results dict
    for the JSON, arrays for the figure)."""
    s = settings(quick, epochs)
    rng = np.random.default_rng(seed + 1)   # shuffling; seed itself made the data
    t, clean, series = noisy_sine(seed)
    S = len(series)
    train_part, test_part = npylstm.chronological_split(series, test_fraction=TEST_FRACTION, window=WINDOW)
    n_train = len(train_part)                       # test targets are series[n_train:]
    y_test = series[n_train:]
    H = s["hidden"]
    timings = {}

    # (a) stateless windows
    X_train, y_train = npylstm.make_windows(train_part, WINDOW)     # (M, 20, 1), (M, 1)
    X_test, _ = npylstm.make_windows(test_part, WINDOW)
    stateless = npylstm.Sequential([common.recurrent(cell, 1, H, seed=seed, device=device),
                                    npylstm.Linear(H, 1, seed=seed + 100)], seed=seed)
    stateless.compile(loss="mse", optimizer=npylstm.Adam(lr=s["lr"]))
    with common.Timer() as tm:
        hist_a = common.train(stateless, X_train, y_train, epochs=s["epochs"], batch_size=s["batch_size"], rng=rng,
                              progress=progress, desc=f"sine stateless {cell}")
    timings["stateless_train_s"] = tm.seconds
    pred_a = common.host(stateless.predict(X_test))[:, 0]              # (S - n_train,)

    # (b) stateful streams
    stateful, streams, hist_b, timings["stateful_train_s"] = train_stateful(train_part, s, seed, rng, device, progress,
                                                                         cell)
    runner = clone_stateless(stateful, return_sequences=True)
    one_step = runner.predict(series[None, :-1, None])[0, :, 0]            # one_step[k] predicts series[k + 1]
    pred_b = one_step[n_train - 1:]

    # (c) last value
    pred_c = series[n_train - 1:-1]

    # free-running continuations from the end of the training data
    free_a = sliding_forecast(stateless, train_part[-WINDOW:, None], FREE_RUN_STEPS)
    free_b = clone_stateless(stateful, return_sequences=False).generate(train_part[:, None], FREE_RUN_STEPS)[:, 0]
    horizon = min(FREE_RUN_STEPS, S - n_train)

    results = {
        "command": "sine",
        "config": dict(seed=seed, quick=quick, device=device, cell=cell, points=S, span="20*pi", sigma=SIGMA,
                       window=WINDOW, test_fraction=TEST_FRACTION, train_points=n_train, test_points=S - n_train,
                       stream_points_dropped=int(streams.dropped), **s),
        "test_mse": {"stateless": mse(pred_a, y_test), "stateful": mse(pred_b, y_test),
                     "last_value": mse(pred_c, y_test), "noise_floor": NOISE_FLOOR,
                     "clean_signal": mse(clean[n_train:], y_test)},   # the perfect predictor on this sample
        "free_run_mse_vs_clean": {"stateless": mse(free_a[:horizon], clean[n_train:n_train + horizon]),
                                  "stateful": mse(free_b[:horizon], clean[n_train:n_train + horizon]),
                                  "steps": horizon},
        "final_train_loss": {"stateless": hist_a["loss"][-1], "stateful": hist_b["loss"][-1]},
        "history": {"stateless": hist_a["loss"], "stateful": hist_b["loss"]},
        "epoch_seconds": {"stateless": hist_a["epoch_seconds"], "stateful": hist_b["epoch_seconds"]},
        "epoch_cpu_seconds": {"stateless": hist_a["epoch_cpu_seconds"], "stateful": hist_b["epoch_cpu_seconds"]},
        "num_parameters": {"stateless": int(stateless.num_parameters()), "stateful": int(stateful.num_parameters())},
        "seconds": timings,
    }
    arrays = dict(t=t, clean=clean, series=series, n_train=n_train, pred_a=pred_a, pred_b=pred_b,
                  free_a=free_a, free_b=free_b,
                  # the trained models and what one more epoch of each would be fed (for compare's timing)
                  fits={"stateless": (stateless, X_train, y_train, s["batch_size"]),
                        "stateful": (stateful, streams.x, streams.y, s["streams"])})
    return results, arrays


def table(results):
    m = results["test_mse"]
    name = results["config"].get("cell", "lstm").upper()
    rows = [(f"stateless {name}, windows of 20", m["stateless"]), (f"stateful {name}, streams", m["stateful"]),
            ("last value", m["last_value"]), ("noise floor σ²", m["noise_floor"]),
            ("clean sin(t) (this sample)", m["clean_signal"])]
    lines = [f"{'one-step forecast, test part':<32}{'test MSE':>10}{'÷ σ²':>8}"]
    lines += [f"{name:<32}{v:>10.5f}{v / NOISE_FLOOR:>8.2f}" for name, v in rows]
    f = results["free_run_mse_vs_clean"]
    lines.append(f"free-running {f['steps']} steps from the end of training, MSE vs the clean sine: "
                 f"stateless {f['stateless']:.4f}, stateful {f['stateful']:.4f}")
    return "\n".join(lines)


def figure(arrays, results, path):
    plt = common.pyplot()
    t, series, clean, n = arrays["t"], arrays["series"], arrays["clean"], arrays["n_train"]
    m = results["test_mse"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), constrained_layout=True)
    ax1.plot(t[n:], series[n:], ".", color="0.55", ms=3, label="noisy truth")
    ax1.plot(t[n:], clean[n:], "-", color="0.2", lw=0.8, label="sin(t)")
    ax1.plot(t[n:], arrays["pred_a"], "-", color="tab:blue", lw=1.3, label=f"stateless, MSE {m['stateless']:.4f}")
    ax1.plot(t[n:], arrays["pred_b"], "-", color="tab:orange", lw=1.3, label=f"stateful, MSE {m['stateful']:.4f}")
    cell = results["config"].get("cell", "lstm").upper()
    ax1.set_title(f"{cell}: one-step predictions on the test part (last value MSE {m['last_value']:.4f}; noise floor "
                  f"σ² = {NOISE_FLOOR:.2f}, on this sample {m['clean_signal']:.4f})")
    ax1.set_xlabel("t")
    ax1.legend(loc="upper right", fontsize=8, ncol=2)
    k = len(arrays["free_a"])
    ctx = slice(max(0, n - 100), n)
    t_free = t[n - 1] + (np.arange(1, k + 1)) * (t[1] - t[0])
    ax2.plot(t[ctx], series[ctx], ".", color="0.55", ms=3, label="training data (end)")
    ax2.plot(t[n:n + k], series[n:n + k], ".", color="0.8", ms=3, label="test truth")
    ax2.plot(t_free, np.sin(t_free), "-", color="0.2", lw=0.8, label="sin(t)")
    ax2.plot(t_free, arrays["free_a"], "-", color="tab:blue", lw=1.3, label="stateless, sliding window")
    ax2.plot(t_free, arrays["free_b"], "-", color="tab:orange", lw=1.3, label="stateful, state carried")
    ax2.axvline(t[n - 1], color="0.4", ls=":", lw=1)
    ax2.set_title(f"{k}-step autoregressive continuation from the end of the training data")
    ax2.set_xlabel("t")
    ax2.legend(loc="upper right", fontsize=8, ncol=2)
    return common.save_figure(fig, path)


def _run(args):
    common.positive_epochs(args.epochs)
    common.require_device(args.device)
    common.require_cell(args.cell, args.device)
    out = common.out_dir(args)
    with common.Timer() as tm:
        results, arrays = experiment(seed=args.seed, quick=args.quick, epochs=args.epochs, device=args.device,
                                     progress=args.progress, cell=args.cell)
    results["seconds"]["total_s"] = tm.seconds
    stem = "sine" if args.cell == "lstm" else f"sine_{args.cell}"    # the LSTM keeps its file names
    js = common.write_json(common.output_path(out, stem, "json", args.quick), results)
    written = [figure(arrays, results, common.output_path(out, stem, "png", args.quick))] if args.plot else []
    print(table(results))
    print(f"wrote {' and '.join(written + [js])} ({tm.seconds:.1f} s)")
    return 0
